"""The report's building blocks, each rendered twice: as self-contained HTML and as Markdown.

A section is written once, as a list of blocks (text, table, figure, preformatted text, nested
section), so the HTML page and its Markdown twin cannot drift apart. Text uses a small subset of
Markdown (``**bold**``, ```code```, ``[label](href)``) that is rendered to HTML here, after escaping:
stage summaries carry user data (prompts, generations, file names) that may hold markup.

Numbers print as :func:`number_text` does (``lmforge show`` prints them the same way); a value with
a standard error is an :class:`Est` and prints ``0.22 ± 0.059``. ``None`` prints as an em dash.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from typing import Any

_INLINE = [
    (re.compile(r"\*\*(.+?)\*\*"), r"<b>\1</b>"),
    (re.compile(r"`(.+?)`"), r"<code>\1</code>"),
    (re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)"), r'<a href="\2">\1</a>'),
]


def number_text(v: Any) -> str:
    """A number as the report prints it (MLflow returns every metric as a float; whole ones print as integers)."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    return str(v)


@dataclass(frozen=True)
class Est:
    """A measured value with its standard error (``se`` None: none was reported)."""

    value: float
    se: float | None = None

    def __str__(self) -> str:
        if self.se is None:
            return number_text(self.value)
        return f"{number_text(self.value)} ± {self.se:.2g}"


def cell_text(v: Any) -> str:
    """A table cell as text (Markdown subset): numbers formatted, None as an em dash."""
    if v is None:
        return "—"
    if isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() and abs(v) >= 10_000:
        return f"{int(v):,}"  # counts people read: 154,908 tokens
    if isinstance(v, (bool, int, float)):
        return number_text(v)
    return str(v)


def inline_html(text: str) -> str:
    """The Markdown subset of ``text`` as HTML, everything else escaped."""
    out = html.escape(text, quote=True)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Table:
    head: tuple[str, ...]
    rows: list[tuple]
    #: a class for the HTML table (``facts``: a two-column label/value table; ``text``: columns of prose)
    kind: str = ""


@dataclass(frozen=True)
class Figure:
    name: str  # file name beside report.md
    png: bytes
    alt: str


@dataclass(frozen=True)
class Pre:
    text: str


@dataclass(frozen=True)
class Details:
    """Blocks folded away in HTML (``<details>``): numbers few readers need, kept for the ones who do."""

    summary: str
    blocks: list


@dataclass
class Section:
    key: str  # HTML id and the stage it describes
    title: str
    blocks: list = field(default_factory=list)
    level: int = 2


def facts(rows: list[tuple[str, Any]]) -> Table:
    """A two-column table of labelled values, skipping values that are absent (None)."""
    return Table(("", ""), [(label, value) for label, value in rows if value is not None], kind="facts")


#: A text cell that reads as a number (``440 (12.4%)``, ``+0.25%``, ``0.64 (×0.64)``): aligned like one.
_NUMERIC_TEXT = re.compile(r"^[-+]?[\d,.]+%?( \([^)]*\))?$")


def _is_number(v: Any) -> bool:
    if isinstance(v, str):  # a short one: a long run of digits is generated text, which must wrap
        return len(v) <= 24 and bool(_NUMERIC_TEXT.match(v))
    return isinstance(v, (int, float, Est)) and not isinstance(v, bool)


def to_html(block, images: dict[str, bytes]) -> str:
    """One block as HTML; figures are embedded (base64) and also collected into ``images``."""
    if isinstance(block, Text):
        return f"<p>{inline_html(block.text)}</p>"
    if isinstance(block, Pre):
        return f"<pre>{html.escape(block.text)}</pre>"
    if isinstance(block, Figure):
        images[block.name] = block.png
        data = base64.b64encode(block.png).decode()
        return f'<figure><img alt="{html.escape(block.alt)}" src="data:image/png;base64,{data}"/></figure>'
    if isinstance(block, Table):
        cls = f' class="{block.kind}"' if block.kind else ""
        head = (
            "" if not any(block.head) else "<tr>" + "".join(f"<th>{inline_html(h)}</th>" for h in block.head) + "</tr>"
        )
        body = "".join(
            "<tr>"
            + "".join(f"<td{' class=n' if _is_number(c) else ''}>{inline_html(cell_text(c))}</td>" for c in row)
            + "</tr>"
            for row in block.rows
        )
        return f"<table{cls}>{head}{body}</table>"
    if isinstance(block, Details):
        inner = "".join(to_html(b, images) for b in block.blocks)
        return f"<details><summary>{inline_html(block.summary)}</summary>{inner}</details>"
    if isinstance(block, Section):
        inner = "".join(to_html(b, images) for b in block.blocks)
        tag = f"h{block.level}"
        return f'<section id="{html.escape(block.key)}"><{tag}>{html.escape(block.title)}</{tag}>{inner}</section>'
    raise TypeError(f"not a report block: {block!r}")


def _md_cell(v: Any) -> str:
    return cell_text(v).replace("|", "\\|").replace("\n", " ")


def to_markdown(block) -> str:
    """One block as Markdown; figures are referenced by file name (they are stored beside report.md)."""
    if isinstance(block, Text):
        return block.text + "\n\n"
    if isinstance(block, Pre):
        return "```\n" + block.text.replace("```", "'''") + "\n```\n\n"
    if isinstance(block, Figure):
        return f"![{block.alt}]({block.name})\n\n"
    if isinstance(block, Table):
        head = [_md_cell(h) for h in block.head] if any(block.head) else [" ", " "]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines) + "\n\n"
    if isinstance(block, Details):
        return f"**{block.summary}**\n\n" + "".join(to_markdown(b) for b in block.blocks)
    if isinstance(block, Section):
        return f"{'#' * block.level} {block.title}\n\n" + "".join(to_markdown(b) for b in block.blocks)
    raise TypeError(f"not a report block: {block!r}")
