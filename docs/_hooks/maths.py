"""MkDocs hook: typeset the maths at build time, as MathML, so pages need no script.

`pymdownx.arithmatex` (generic mode) leaves the `$...$` and `$$...$$` maths of the
Markdown pages and of the docstrings as `<span class="arithmatex">\\(...\\)</span>`
and `<div class="arithmatex">\\[...\\]</div>`; the notebooks' Markdown cells keep
their `$...$` and `$$...$$` as text. This hook converts both to MathML with
`latex2mathml`, which browsers render natively: no MathJax, no network.

A few things latex2mathml gets wrong are mended here: `\\arg` (unknown to it), the
delimiters after `\\big`/`\\Big` and the escapes inside `\\text{...}` (copied
verbatim).

TeX that `latex2mathml` cannot convert (an unknown command, an unsupported
environment) is a warning, which fails the strict build, and the page shows the TeX
source in place of the maths rather than dropping it.
"""

import html
import re

from latex2mathml.converter import convert
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import get_plugin_logger
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page


log = get_plugin_logger("maths")

_ARITHMATEX = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">(?P<tex>.*?)</(?P=tag)>', re.DOTALL
)
# In the HTML of a notebook's Markdown cell: $$...$$ (display), then $...$ (inline,
# not starting or ending with a space, as in Jupyter), and \[...\] and \(...\).
_NOTEBOOK_MATH = re.compile(
    r"\$\$(?P<display>.+?)\$\$"
    r"|(?<![\\$])\$(?P<inline>[^\s$](?:[^$]*?[^\s\\$])?)\$(?!\$)"
    r"|\\\[(?P<display2>.+?)\\\]"
    r"|\\\((?P<inline2>.+?)\\\)",
    re.DOTALL,
)
# Code, whose dollars are not maths.
_CODE = re.compile(r"(<(code|pre)\b.*?</\2>)", re.DOTALL)
# Where each cell of a notebook rendered by nbconvert's lab template starts.
_CELL = re.compile(r'(?=<div class="jp-Cell )')
# What latex2mathml passes through when it does not know a command or an
# environment: text that keeps a backslash (`<mi>\foo</mi>`, `<mtext>a\_b</mtext>`),
# an alignment `&` as a symbol, or an empty operator (what it leaves of
# `\operatorname{a\_b}` and the like).
_UNCONVERTED = re.compile(r">([^<]*\\[^<]*)<|<m[ion]>(&amp;|&)</m[ion]>|<mo ?/>")
# Standard TeX operator names that latex2mathml does not know.
_OPERATORS = re.compile(r"\\(arg)(?![A-Za-z])")
# What latex2mathml copies verbatim into an operator (the delimiter after `\big`,
# `\Big`, ...) or into text (`\text{a\_b}`), and the character TeX prints for it.
_VERBATIM = re.compile(
    r"<(?P<tag>mo|mtext)(?P<attrs>[^>]*)>(?P<text>[^<]*\\[^<]*)</(?P=tag)>"
)
_SYMBOLS = {
    "mo": {
        r"\|": "&#x02016;",
        r"\Vert": "&#x02016;",
        r"\lVert": "&#x02016;",
        r"\rVert": "&#x02016;",
        r"\vert": "|",
        r"\lvert": "|",
        r"\rvert": "|",
        r"\langle": "&#x027E8;",
        r"\rangle": "&#x027E9;",
        r"\{": "{",
        r"\}": "}",
        r"\lbrace": "{",
        r"\rbrace": "}",
    },
    "mtext": {r"\_": "_", r"\%": "%", r"\#": "#", r"\&amp;": "&amp;", r"\$": "$"},
}


def _verbatim(match: re.Match) -> str:
    text = match["text"]
    symbols = _SYMBOLS[match["tag"]]
    if match["tag"] == "mo":
        text = symbols.get(text, text)
    else:
        for command, symbol in symbols.items():
            text = text.replace(command, symbol)
    return f"<{match['tag']}{match['attrs']}>{text}</{match['tag']}>"


def _to_mathml(tex: str, display: bool, page: Page) -> str:
    tex = tex.strip()
    try:
        mathml = convert(
            _OPERATORS.sub(r"\\operatorname{\1}", tex),
            display="block" if display else "inline",
        )
        mathml = _VERBATIM.sub(_verbatim, mathml)
        bad = _UNCONVERTED.search(mathml)
        if bad is not None:
            found = next(group for group in bad.groups(default="") + (bad[0],) if group)
            raise ValueError(f"cannot convert {html.unescape(found)!r}")
    except Exception as error:  # latex2mathml raises many types on bad input.
        log.warning(
            "%s: maths not converted to MathML (%s): %s",
            page.file.src_uri,
            error,
            tex,
        )
        tag = "div" if display else "span"
        return f'<{tag} class="maths-error"><code>{html.escape(tex)}</code></{tag}>'
    if display:
        return f'<div class="maths">{mathml}</div>'
    return mathml


def _arithmatex(match: re.Match, page: Page) -> str:
    tex = html.unescape(match["tex"]).strip()
    display = match["tag"] == "div"
    for left, right in (("\\[", "\\]"), ("\\(", "\\)"), ("$$", "$$")):
        if tex.startswith(left) and tex.endswith(right):
            tex = tex[len(left) : -len(right)]
            break
    # Otherwise a bare \begin{env}...\end{env} block.
    return _to_mathml(tex, display, page)


def _notebook_math(match: re.Match, page: Page) -> str:
    display = match["display"] or match["display2"]
    if display is not None:
        return _to_mathml(html.unescape(display), True, page)
    return _to_mathml(html.unescape(match["inline"] or match["inline2"]), False, page)


def _markdown_cell(cell: str, page: Page) -> str:
    parts = _CODE.split(cell)
    # re.split with two groups: text, code, tag name, text, code, tag name, ...
    out = []
    for index, part in enumerate(parts):
        if index % 3 == 0:
            out.append(_NOTEBOOK_MATH.sub(lambda m: _notebook_math(m, page), part))
        elif index % 3 == 1:
            out.append(part)
    return "".join(out)


def on_page_content(html_: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    del config, files
    html_ = _ARITHMATEX.sub(lambda m: _arithmatex(m, page), html_)
    if page.file.src_uri.endswith(".ipynb"):
        cells = _CELL.split(html_)
        html_ = "".join(
            _markdown_cell(cell, page) if "jp-MarkdownCell" in cell[:200] else cell
            for cell in cells
        )
    return html_
