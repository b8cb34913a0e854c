"""MkDocs hook: the notebooks in notebooks/, executed, as pages of the site.

The notebooks are committed without outputs, so the build runs them (the
`mkdocs-jupyter` plugin, `execute: true`, `allow_errors: false`). This hook

- adds every `notebooks/*.ipynb` of the repository to the site, at the same place
  (`notebooks/<name>.ipynb`, beside docs/api/), so that the nav and the API pages
  can link to them;
- registers a Jupyter kernel, `jaxdeq-docs` (in `.cache/jaxdeq-docs-jupyter/` beside
  mkdocs.yml), that runs the interpreter running mkdocs (so the notebooks import the
  jaxdeq being documented), with matplotlib's inline backend (figures as PNGs in the
  outputs, no display needed) and in the notebooks' small configuration
  (`JAXDEQ_NOTEBOOK_SMALL=1`; docs/examples.md says why);
- keeps the outputs in mkdocs-jupyter's cache (`.cache/mkdocs-jupyter/` beside
  mkdocs.yml), keyed by the notebook's content, so that `mkdocs serve` does not rerun
  every notebook on every edit;
- makes the relative links of a rendered notebook point at the site's pages: a link
  may be written relative to the notebook's place in the site (`../api/deq.md`) or
  in the repository (`../docs/api/deq.md`); a link to neither is a warning, which
  fails the strict build;
- drops the scripts that nbconvert's template loads from CDNs (MathJax, Mermaid),
  since the site must work offline (the maths hook typesets the notebooks' maths),
  and warns about any other external resource.
"""

import json
import os
import pathlib
import posixpath
import re
import sys
import urllib.parse

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority, get_plugin_logger
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page


log = get_plugin_logger("notebooks")

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_NOTEBOOKS = _ROOT / "notebooks"
_DEST = "notebooks"
KERNEL = "jaxdeq-docs"
# The environment of the kernel that runs the notebooks. Matplotlib's inline backend
# renders figures with Agg, with no display, and puts them in the cells' outputs;
# plain `Agg` (which CI exports) would render none.
_KERNEL_ENV = {
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    "JAXDEQ_NOTEBOOK_SMALL": "1",
}

_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.DOTALL | re.IGNORECASE)
# What nbconvert's lab template loads from the network: MathJax (`<script src=...>`
# and its `text/x-mathjax-config`), and Mermaid (a module that imports it from a CDN).
_CDN_SCRIPT = re.compile(r"mathjax|mermaid|\bsrc=\"\"", re.IGNORECASE)
_HREF = re.compile(
    r'(?P<attr>\bhref=")(?P<url>[^"#]+\.(?:md|ipynb))(?P<anchor>#[^"]*)?"'
)
# Anything fetched from another host; links (`<a href>`) are not fetched.
_EXTERNAL = re.compile(
    r"<(?!a\b)[a-z]+\b[^>]*\b(?:src|href)=\"(?:https?:)?//[^\"]*\""
    r"|@import\s+url\(\s*[\"']?(?:https?:)?//",
    re.IGNORECASE,
)


def _kernel_spec(data: pathlib.Path) -> None:
    """Write the `jaxdeq-docs` kernel spec into the Jupyter data directory `data`."""
    spec = data / "kernels" / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    kernel = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python ({KERNEL})",
        "language": "python",
        "env": _KERNEL_ENV,
    }
    (spec / "kernel.json").write_text(json.dumps(kernel, indent=1))


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    root = pathlib.Path(config.config_file_path).resolve().parent
    # First on the Jupyter path, so that no other kernel of that name is used.
    data = root / ".cache" / "jaxdeq-docs-jupyter"
    _kernel_spec(data)
    path = os.environ.get("JUPYTER_PATH", "")
    if str(data) not in path.split(os.pathsep):
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(data), path]))
    jupyter = config.plugins["mkdocs-jupyter"].config
    jupyter["kernel_name"] = KERNEL
    # Beside mkdocs.yml, wherever mkdocs is run from.
    jupyter["cache_dir"] = str(root / jupyter["cache_dir"])
    return config


@event_priority(50)  # Before mkdocs-jupyter's on_files, which claims the .ipynb files.
def on_files(files: Files, config: MkDocsConfig) -> Files:
    # Read from the repository, not from docs/: the site's notebooks/ mirrors it.
    for path in sorted(_NOTEBOOKS.glob("*.ipynb")):
        files.append(
            File(
                f"{_DEST}/{path.name}",
                src_dir=str(_ROOT),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    return files


def on_serve(server, config: MkDocsConfig, builder):
    del config
    server.watch(str(_NOTEBOOKS))
    return server


def _resolve(url: str, page: Page, files: Files, docs_dir: str) -> File | None:
    """The file a notebook's relative link `url` names, or None."""
    url = urllib.parse.unquote(url)
    # Relative to the page's place in the site (`../api/deq.md`, `monotone.ipynb`).
    site = posixpath.normpath(posixpath.join(posixpath.dirname(page.file.src_uri), url))
    # Relative to the notebook in the repository (`../docs/api/deq.md`).
    repo = pathlib.Path(os.path.normpath(_NOTEBOOKS / url))
    docs = pathlib.Path(docs_dir).resolve()
    for candidate in (
        site,
        repo.relative_to(docs).as_posix() if repo.is_relative_to(docs) else None,
    ):
        found = None if candidate is None else files.get_file_from_path(candidate)
        if found is not None:
            return found
    return None


def on_page_content(html: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if not page.file.src_uri.startswith(f"{_DEST}/"):
        return html

    def link(match: re.Match) -> str:
        url = match["url"]
        if urllib.parse.urlsplit(url).scheme:
            return match[0]
        target = _resolve(url, page, files, config.docs_dir)
        if target is None:
            log.warning(
                "%s: the link '%s' names no page of the site (write it relative to "
                "notebooks/, e.g. '../docs/api/deq.md').",
                page.file.src_uri,
                url,
            )
            return match[0]
        anchor = match["anchor"] or ""
        return f'{match["attr"]}{target.url_relative_to(page.file)}{anchor}"'

    html = _HREF.sub(link, html)
    html = _SCRIPT.sub(
        lambda m: "" if _CDN_SCRIPT.search(m[0]) else m[0],
        html,
    )
    for match in _EXTERNAL.finditer(html):
        log.warning(
            "%s: loads a resource from the network, and the site must work offline: %s",
            page.file.src_uri,
            match[0][:200],
        )
    return html
