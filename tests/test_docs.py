"""The documentation covers the public API, and its examples run.

The API pages are built from `::: jaxdeq.Name` directives (mkdocstrings). These tests
read the Markdown under docs/ directly (no mkdocs needed): every public name must
appear in some directive under docs/api/, every directive must name a real object,
and a class documented with `members: [__init__]` must have an `__init__` docstring.
The slow test runs the Python code blocks of the prose pages, in float32.
"""

import importlib
import pathlib
import pkgutil
import re
import types

import jax
import pytest

import jaxdeq


_ROOT = pathlib.Path(__file__).resolve().parent.parent
_DOCS = _ROOT / "docs"
_API = _DOCS / "api"
# Public subpackages that are not API: the command-line entry point, and helpers
# that are semi-public by design (style guide: `jaxdeq/internal`).
_NOT_API = {"cli", "internal"}
# Prose pages whose ```python blocks run top to bottom, in one namespace per page.
_EXAMPLE_PAGES = ("index.md", "getting_started.md")

_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*):::[ \t]+(?P<name>[\w.]+)[ \t]*$")
_CODE_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _directives() -> list[tuple[pathlib.Path, str, list[str] | None]]:
    """`(file, name, members)` for every `::: name` under docs/api.

    `members` is the list under `options: members:` (None when not given, [] for
    `members: false`).
    """
    found = []
    for path in sorted(_API.rglob("*.md")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            match = _DIRECTIVE.match(line)
            if match is None:
                continue
            indent = len(match["indent"].expandtabs())
            members = None
            in_members = False
            for option in lines[i + 1 :]:
                if option.strip() and len(option) - len(option.lstrip()) <= indent:
                    break
                stripped = option.strip()
                if stripped.startswith("members:"):
                    value = stripped.removeprefix("members:").strip()
                    members = [] if value in ("false", "[]") else None
                    if value.startswith("[") and value.endswith("]") and value != "[]":
                        members = [m.strip() for m in value[1:-1].split(",")]
                    in_members = not value
                    if in_members:
                        members = []
                elif in_members and stripped.startswith("- "):
                    assert members is not None
                    members.append(stripped[2:].strip())
                elif stripped:
                    in_members = False
            found.append((path, match["name"], members))
    return found


def _locate(name: str) -> object:
    """Import `name`, a dotted path to a module or an attribute of one."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def _public_names(module: types.ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in dir(module) if not n.startswith("_")]
    return [n for n in names if not isinstance(getattr(module, n), types.ModuleType)]


def _public_api() -> list[str]:
    """Every public name: `jaxdeq.X`, and `jaxdeq.sub.X` for public subpackages."""
    api = [f"jaxdeq.{n}" for n in _public_names(jaxdeq)]
    for info in pkgutil.iter_modules(jaxdeq.__path__):
        if info.name.startswith("_") or info.name in _NOT_API:
            continue
        sub = importlib.import_module(f"jaxdeq.{info.name}")
        api += [f"jaxdeq.{info.name}.{n}" for n in _public_names(sub)]
    return sorted(api)


def test_public_api_is_documented():
    documented = {name for _, name, _ in _directives()}
    # A `::: jaxdeq.sub` module directive documents the subpackage's members.
    missing = [
        name
        for name in _public_api()
        if name not in documented
        and name.rsplit(".", 1)[0] not in documented - {"jaxdeq"}
    ]
    assert not missing, (
        f"Public names with no `::: name` directive under docs/api/: {missing}. Add "
        "each to the API page of its topic (or make it private with a leading "
        "underscore)."
    )


def test_directives_name_real_objects():
    for path, name, members in _directives():
        try:
            obj = _locate(name)
        except (ImportError, AttributeError):
            pytest.fail(f"{path.relative_to(_ROOT)}: `::: {name}` names no object.")
        for member in members or []:
            assert hasattr(obj, member), (
                f"{path.relative_to(_ROOT)}: `::: {name}` lists member `{member}`, "
                "which it does not have."
            )


def test_documented_objects_have_docstrings():
    for path, name, members in _directives():
        obj = _locate(name)
        assert (obj.__doc__ or "").strip(), (
            f"{path.relative_to(_ROOT)}: `{name}` has no docstring."
        )
        # A dataclass without a docstring gets its signature as __doc__ (e.g. when
        # the "docstring" is an expression such as a concatenation).
        short = name.rsplit(".", 1)[-1]
        assert not (obj.__doc__ or "").startswith(f"{short}("), (
            f"{path.relative_to(_ROOT)}: `{name}` has only a generated docstring; "
            "its class body must start with a string literal."
        )
        for member in members or []:
            doc = (getattr(obj, member).__doc__ or "").strip()
            # Dataclass-style __init__s inherit object.__init__'s placeholder.
            short = name.rsplit(".", 1)[-1]
            assert doc and doc != (object.__init__.__doc__ or "").strip(), (
                f"{path.relative_to(_ROOT)}: `{name}.{member}` is listed in the docs "
                "but has no docstring of its own. Give it one, e.g. "
                f'`{short}.{member}.__doc__ = """**Arguments:** ..."""`.'
            )


def test_every_page_is_in_the_nav():
    mkdocs_yml = (_ROOT / "mkdocs.yml").read_text()
    nav = mkdocs_yml[mkdocs_yml.index("\nnav:") :]
    pages = [
        path.relative_to(_DOCS).as_posix()
        for path in sorted(_DOCS.rglob("*.md"))
        if not any(part.startswith("_") for part in path.relative_to(_DOCS).parts)
    ]
    missing = [page for page in pages if f'"{page}"' not in nav]
    assert not missing, f"Pages missing from the nav of mkdocs.yml: {missing}."


@pytest.mark.slow
@pytest.mark.parametrize("page", _EXAMPLE_PAGES)
def test_examples_run(page, capsys):
    blocks = _CODE_BLOCK.findall((_DOCS / page).read_text())
    assert blocks, f"docs/{page} has no ```python blocks."
    namespace = {"__name__": f"docs_{page.removesuffix('.md')}"}
    # As a reader runs them: in JAX's default float32, not the suite's float64.
    with (
        jax.enable_x64(False),
        jax.numpy_dtype_promotion("standard"),
        jax.numpy_rank_promotion("allow"),
    ):
        for block in blocks:
            exec(compile(block, f"docs/{page}", "exec"), namespace)
    capsys.readouterr()
