"""Imports of optional dependencies, with a message that says which extra to
install when one is missing."""

import importlib
from types import ModuleType


# The extra of jaxdeq's pyproject.toml that installs each optional distribution.
_EXTRAS = {"matplotlib": "plots"}


def require(module: str, caller: str) -> ModuleType:
    """Import `module` (e.g. `"matplotlib.figure"`) on behalf of `caller`.

    **Arguments:**

    - `module`: the dotted name of the module to import; its top-level package must
        be one of jaxdeq's optional dependencies.
    - `caller`: the public function that needs it, named in the error message.

    **Returns:**

    The imported module.

    **Raises:**

    `ImportError` naming the extra to install (`pip install "jaxdeq[plots]"` for
    matplotlib) when the package is not installed.
    """
    package = module.partition(".")[0]
    extra = _EXTRAS[package]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{caller}: needs {package}, which is not installed. Install jaxdeq's "
            f'`{extra}` extra: pip install "jaxdeq[{extra}]" (or pip install '
            f"{package})."
        ) from e


def matplotlib_figure(caller: str) -> type:
    """matplotlib's `Figure` class, for figures drawn without pyplot (no backend is
    chosen or changed for the caller); an `ImportError` naming the `plots` extra
    when matplotlib is missing."""
    return require("matplotlib.figure", caller).Figure
