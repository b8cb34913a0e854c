"""The built documentation site works in a real browser, offline.

Every page of the site is opened in headless Chromium (driven by selenium), served
over http from localhost, with every other host unresolvable. On every page: no
console errors (failed resource loads included) and no request to another host; the
maths is typeset (MathML with a size on screen, no TeX left in the visible text); every
image has loaded, and every notebook that draws with matplotlib shows a figure.

The site is `JAXDEQ_SITE_DIR` when set (CI builds it once, in the docs stage), and
otherwise built here with `mkdocs build --strict`, which executes the notebooks.
Chromium and ChromeDriver come from the system: `apt-get install chromium
chromium-driver` on Debian and Ubuntu. Without them this test fails; it never skips.
"""

import functools
import http.server
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest


pytestmark = pytest.mark.slow

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_NOTEBOOKS = sorted((_ROOT / "notebooks").glob("*.ipynb"))
_INSTALL = "apt-get install chromium chromium-driver"
_CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1024",
    # Offline, whatever the machine's network: any other host fails to resolve, so a
    # page that needs one logs an error instead of depending on it.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)
# TeX left in the visible text: a delimiter, or a `$...$` holding a command.
_RAW_TEX = re.compile(r"\\\(|\\\[|\$\$|\$[^$\s][^$]*?\\[A-Za-z]+")
_LOAD_TIMEOUT = 60
_SHOWN = 20  # Problems shown per kind.

# What each page shows, read in the browser. Code is hidden while the text is read,
# since code may hold dollars and backslashes that are not maths.
_INSPECT = """
const code = Array.from(document.querySelectorAll("pre, code"));
const display = code.map((e) => e.style.display);
code.forEach((e) => { e.style.display = "none"; });
const text = document.body.innerText;
code.forEach((e, i) => { e.style.display = display[i]; });
const box = (e) => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
return {
    text: text,
    maths: Array.from(document.querySelectorAll("article math")).map(box),
    docstring_maths: document.querySelectorAll(".doc-contents math").length,
    maths_errors: Array.from(document.querySelectorAll(".maths-error"))
        .map((e) => e.textContent),
    images: Array.from(document.images).map((e) => ({
        src: e.currentSrc.slice(0, 80),
        complete: e.complete,
        width: e.naturalWidth,
        in_notebook: e.closest(".jupyter-wrapper") !== null,
    })),
    resources: performance.getEntriesByType("resource").map((e) => e.name),
};
"""


def _build_site(out: pathlib.Path) -> pathlib.Path:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir"]
    result = subprocess.run(
        [*command, str(out)], cwd=_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, (
        f"`mkdocs build --strict` failed:\n{result.stdout[-5000:]}"
        f"{result.stderr[-10000:]}"
    )
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    prebuilt = os.environ.get("JAXDEQ_SITE_DIR")
    if prebuilt:
        path = pathlib.Path(prebuilt)
        assert (path / "index.html").is_file(), (
            f"JAXDEQ_SITE_DIR={prebuilt} holds no built site (no index.html)."
        )
        return path
    return _build_site(tmp_path_factory.mktemp("site"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        del format, args


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = next(filter(None, map(shutil.which, _CHROMIUM)), None)
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.fail(
            "The docs test needs Chromium and ChromeDriver on the PATH (found: "
            f"chromium {chromium}, chromedriver {chromedriver}). Install them with "
            f"`{_INSTALL}` (Debian, Ubuntu; `.ci/run` does it)."
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in _FLAGS:
        options.add_argument(flag)
    profile = tmp_path_factory.mktemp("chromium-profile")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(_LOAD_TIMEOUT)
    yield driver
    driver.quit()


def _pages(site: pathlib.Path) -> list[str]:
    """Every page of the site, as a path relative to its root."""
    pages = []
    for path in sorted(site.rglob("index.html")):
        page = path.parent.relative_to(site).as_posix()
        pages.append("" if page == "." else f"{page}/")
    return pages


@pytest.fixture(scope="module")
def visited(site, server, browser) -> dict[str, dict]:
    """What every page of the site shows, and what the browser logged on it."""
    results = {}
    for page in _pages(site):
        browser.get(urllib.parse.urljoin(server, page))
        deadline = time.monotonic() + _LOAD_TIMEOUT
        while not browser.execute_script(
            "return document.readyState === 'complete' && "
            "Array.from(document.images).every((e) => e.complete);"
        ):
            assert time.monotonic() < deadline, f"{page} did not finish loading."
            time.sleep(0.1)
        result = browser.execute_script(_INSPECT)
        result["log"] = browser.get_log("browser")
        results[page] = result
    return results


def _source_has_maths(page: str) -> bool:
    """Whether the Markdown or notebook behind a page writes maths."""
    stem = page.rstrip("/") or "index"
    if stem.startswith("notebooks/"):
        notebook = json.loads((_ROOT / f"{stem}.ipynb").read_text())
        return any(
            "$" in "".join(cell["source"])
            for cell in notebook["cells"]
            if cell["cell_type"] == "markdown"
        )
    markdown = _ROOT / "docs" / f"{stem}.md"
    return (
        markdown.is_file() and re.search(r"\$[^$\s]", markdown.read_text()) is not None
    )


def _missing_pages(visited) -> list[str]:
    api = {f"api/{p.stem}/" for p in (_ROOT / "docs" / "api").glob("*.md")}
    notebooks = {f"notebooks/{p.stem}/" for p in _NOTEBOOKS}
    return [
        f"{page}: no such page in the built site"
        for page in sorted(({""} | api | notebooks) - set(visited))
    ]


def _console_errors(visited) -> list[str]:
    return [
        f"{page}: {entry['message']}"
        for page, result in visited.items()
        for entry in result["log"]
        if entry["level"] == "SEVERE"
    ]


def _external_requests(visited, server: str) -> list[str]:
    return [
        f"{page}: {url}"
        for page, result in visited.items()
        for url in result["resources"]
        if not url.startswith((server, "data:", "blob:"))
    ]


def _untypeset_maths(visited) -> list[str]:
    problems = []
    for page, result in visited.items():
        for match in _RAW_TEX.finditer(result["text"]):
            start = max(match.start() - 40, 0)
            context = result["text"][start : match.end() + 40].replace("\n", " ")
            problems.append(f"{page}: TeX left in the text: ...{context}...")
        for tex in result["maths_errors"]:
            problems.append(f"{page}: maths shown as TeX: {tex}")
        empty = [box for box in result["maths"] if not (box[0] > 0 and box[1] > 0)]
        if empty:
            problems.append(f"{page}: {len(empty)} <math> elements take no space")
        if _source_has_maths(page) and not result["maths"]:
            problems.append(f"{page}: its source writes maths; the page shows none")
    # The maths of docstrings (mkdocstrings) is typeset too.
    for page in ("api/ode/", "api/econ/", "api/solvers/"):
        if page in visited and not visited[page]["docstring_maths"]:
            problems.append(f"{page}: no typeset maths in its docstrings")
    return problems


def _missing_images(visited) -> list[str]:
    problems = [
        f"{page}: image not loaded: {image['src']}"
        for page, result in visited.items()
        for image in result["images"]
        if not (image["complete"] and image["width"] > 0)
    ]
    for path in _NOTEBOOKS:
        notebook = json.loads(path.read_text())
        code = "".join(
            "".join(cell["source"])
            for cell in notebook["cells"]
            if cell["cell_type"] == "code"
        )
        page = visited.get(f"notebooks/{path.stem}/", {"images": []})
        figures = [image for image in page["images"] if image["in_notebook"]]
        if re.search(r"matplotlib|\bplt\.|\.plot_\w+\(", code) and not figures:
            problems.append(f"notebooks/{path.stem}/: draws figures but shows none")
    return problems


def test_site_in_browser(visited, server):
    # One test, so that pytest-xdist cannot split it over several browsers (or
    # several builds of the site).
    checks = {
        "Pages missing": _missing_pages(visited),
        "Console errors": _console_errors(visited),
        "Resources from other hosts (the site must work offline)": (
            _external_requests(visited, server)
        ),
        "Maths not typeset": _untypeset_maths(visited),
        "Images and figures": _missing_images(visited),
    }
    report = [
        f"{title}:\n"
        + "\n".join(f"  {line}" for line in problems[:_SHOWN])
        + (
            f"\n  ... and {len(problems) - _SHOWN} more"
            if len(problems) > _SHOWN
            else ""
        )
        for title, problems in checks.items()
        if problems
    ]
    assert not report, f"The site checked in Chromium ({len(visited)} pages):\n" + (
        "\n".join(report)
    )
