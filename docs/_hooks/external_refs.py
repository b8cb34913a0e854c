"""MkDocs hook: resolve cross-references to optimistix, lineax, equinox and diffrax.

Docstrings link to the libraries jaxdeq builds on with autorefs syntax, e.g.
[`optimistix.fixed_point`][]. mkdocstrings would normally resolve these through the
projects' `objects.inv` inventories, but the docs are built without network access,
so instead this hook registers the URLs listed in `external_objects.txt` with the
autorefs plugin, exactly as an inventory would. Anything not listed still fails the
strict build, as it should: add a line to the list.
"""

import pathlib

from mkdocs.config.defaults import MkDocsConfig


_OBJECTS = pathlib.Path(__file__).with_name("external_objects.txt")


def _read_objects() -> dict[str, str]:
    urls = {}
    base = None
    for number, raw in enumerate(_OBJECTS.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            # A section header: `[project] https://base/url/`.
            _, base = line.split(maxsplit=1)
            continue
        identifier, page = line.split()
        if base is None:
            raise ValueError(f"{_OBJECTS}:{number}: entry before any [project] header.")
        urls[identifier] = f"{base}{page}#{identifier}"
    return urls


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    autorefs = config.plugins["autorefs"]
    for identifier, url in _read_objects().items():
        autorefs.register_url(identifier, url)  # pyright: ignore[reportAttributeAccessIssue]
    return config
