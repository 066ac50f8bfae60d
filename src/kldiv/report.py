"""A tiny report builder: sections of paragraphs, tables and PNG figures, written as HTML and Markdown.

A report is plain data (`Report` -> `Section` -> blocks). `write_report` writes, into one directory:

- `index.html`: self-contained (figures embedded as base64 `data:` URIs, CSS inline);
- `report.md`: the same content, figures referenced as relative PNG files;
- `figures/<name>.png`: every figure.

Sections of the tour are registered by name with `register_section`; each is a function
`section(ctx) -> Section` that computes its numbers and figures from the library:

    @register_section("vae", order=30)
    def vae_section(ctx: Context) -> Section: ...
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

__all__ = [
    "Block",
    "Cell",
    "Context",
    "Figure",
    "Report",
    "Section",
    "SectionFn",
    "SectionRegistry",
    "Table",
    "format_cell",
    "png_bytes",
    "register_section",
    "render_html",
    "render_markdown",
    "tour_sections",
    "write_pngs",
    "write_report",
]

Cell: TypeAlias = str | int | float
FIGURES_DIR = "figures"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Table:
    """A table: a header and rows of cells; floats are formatted by `format_cell`.

    `summary_columns` names the columns (by header) that the CLI also prints to the terminal;
    empty: the table is only in the report.
    """

    header: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    title: str = ""
    summary_columns: Sequence[str] = ()

    def __post_init__(self) -> None:
        unknown = [c for c in self.summary_columns if c not in self.header]
        if unknown:
            raise ValueError(
                f"Table {self.title!r}: summary_columns {unknown} are not in the header {list(self.header)}"
            )
        for i, row in enumerate(self.rows):
            if len(row) != len(self.header):
                raise ValueError(
                    f"Table {self.title!r}: row {i} has {len(row)} cells, expected {len(self.header)} "
                    f"(one per header column {list(self.header)})"
                )


@dataclass(frozen=True)
class Figure:
    """A PNG figure. `name` is the file stem (letters, digits, '-', '_'), unique within a report."""

    name: str
    png: bytes
    caption: str = ""

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(
                f"Figure name must match {_NAME_RE.pattern} (it is used as a file name), got {self.name!r}"
            )
        if not self.png.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError(f"Figure {self.name!r}: png does not start with the PNG signature")


Block: TypeAlias = str | Table | Figure
"""A block of a section: a markdown-ish paragraph (str), a table or a figure."""


@dataclass(frozen=True)
class Section:
    title: str
    blocks: Sequence[Block] = ()


@dataclass(frozen=True)
class Report:
    title: str
    sections: Sequence[Section]
    meta: Mapping[str, str] = field(default_factory=dict)

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]

    def summary_tables(self) -> list[Table]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Table) and b.summary_columns]


@dataclass(frozen=True)
class Context:
    """What a section function gets: where the report goes, the random seed, and ``quick``: shorten the trainings
    (a fast look; the numbers are rougher)."""

    out_dir: Path
    seed: int = 0
    quick: bool = False


SectionFn: TypeAlias = Callable[[Context], Section]


@dataclass(frozen=True)
class _Entry:
    name: str
    order: int
    build: SectionFn


class SectionRegistry:
    """Named section functions, listed by (order, name)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def register(self, name: str, *, order: int = 100) -> Callable[[SectionFn], SectionFn]:
        def decorator(fn: SectionFn) -> SectionFn:
            if name in self._entries:
                raise ValueError(f"a tour section named {name!r} is already registered")
            self._entries[name] = _Entry(name, order, fn)
            return fn

        return decorator

    def names(self) -> list[str]:
        return [e.name for e in self._sorted()]

    def items(self) -> list[tuple[str, SectionFn]]:
        return [(e.name, e.build) for e in self._sorted()]

    def _sorted(self) -> list[_Entry]:
        return sorted(self._entries.values(), key=lambda e: (e.order, e.name))


tour_sections = SectionRegistry()
"""The sections of `kldiv tour`."""
register_section = tour_sections.register


def png_bytes(fig: MplFigure, *, dpi: int = 110) -> bytes:
    """Render a matplotlib figure to PNG bytes (Agg; no pyplot state, nothing to close)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def write_pngs(figures: Mapping[str, MplFigure], out_dir: Path) -> list[Path]:
    """Write each figure as ``out_dir/<name>.png``, atomically (a reader never sees half a file)."""
    from kldiv.runs.checkpoint import atomic_write_bytes

    paths = []
    for name, fig in figures.items():
        path = out_dir / f"{name}.png"
        atomic_write_bytes(path, png_bytes(fig))
        paths.append(path)
    return paths


def format_cell(value: Cell) -> str:
    """Strings as they are; floats with 8 significant digits; inf/nan spelled out."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"  # also -0.0
    return f"{value:.8g}"


# --- Markdown ------------------------------------------------------------------------------------


def _md_cell(value: Cell) -> str:
    return format_cell(value).replace("|", r"\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = [f"**{table.title}**", ""] if table.title else []
    lines.append("| " + " | ".join(_md_cell(h) for h in table.header) + " |")
    lines.append("|" + "|".join("---" for _ in table.header) + "|")
    lines.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows)
    return "\n".join(lines)


def _md_figure(fig: Figure) -> str:
    return f"![{fig.caption or fig.name}]({FIGURES_DIR}/{fig.name}.png)" + (
        f"\n\n*{fig.caption}*" if fig.caption else ""
    )


def render_markdown(report: Report) -> str:
    parts = [f"# {report.title}"]
    if report.meta:
        parts.append(" · ".join(f"{k}: {v}" for k, v in report.meta.items()))
    for section in report.sections:
        parts.append(f"## {section.title}")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(_md_table(block))
            elif isinstance(block, Figure):
                parts.append(_md_figure(block))
            else:
                parts.append(block.strip())
    return "\n\n".join(parts) + "\n"


# --- HTML ----------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 62rem; margin: 2rem auto;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.5; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { margin-top: 2.5rem; border-bottom: 1px solid #eee; }
code { background: #f3f3f3; padding: 0 .25rem; border-radius: 3px; font-size: 90%; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 90%; }
caption { font-weight: 600; text-align: left; padding-bottom: .3rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; }
th { background: #f6f6f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; font-family: ui-monospace, monospace; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; }
figcaption { color: #555; font-size: 90%; }
.meta { color: #666; font-size: 85%; }
"""

_INLINE = [
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])"), r"<em>\1</em>"),
]


def _inline_html(text: str) -> str:
    """Escape, then render `code`, **bold** and *italic* (no nesting inside code)."""
    pieces = re.split(r"(`[^`]+`)", text)
    out = []
    for piece in pieces:
        escaped = html.escape(piece, quote=False)
        if piece.startswith("`") and piece.endswith("`") and len(piece) > 1:
            out.append(f"<code>{escaped[1:-1]}</code>")
            continue
        for pattern, repl in _INLINE:
            escaped = pattern.sub(repl, escaped)
        out.append(escaped)
    return "".join(out)


def _html_paragraph(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if lines and all(ln.startswith("- ") for ln in lines):
        items = "".join(f"<li>{_inline_html(ln[2:])}</li>" for ln in lines)
        return f"<ul>{items}</ul>"
    return f"<p>{_inline_html(' '.join(lines))}</p>"


def _is_number(value: Cell) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _html_table(table: Table) -> str:
    caption = f"<caption>{_inline_html(table.title)}</caption>" if table.title else ""
    head = "".join(f"<th>{_inline_html(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{html.escape(format_cell(c))}</td>'
            if _is_number(c)
            else f"<td>{_inline_html(format_cell(c))}</td>"
            for c in row
        )
        + "</tr>"
        for row in table.rows
    )
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_figure(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    alt = html.escape(fig.caption or fig.name)
    caption = f"<figcaption>{_inline_html(fig.caption)}</figcaption>" if fig.caption else ""
    return f'<figure id="fig-{fig.name}"><img alt="{alt}" src="data:image/png;base64,{data}">{caption}</figure>'


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def render_html(report: Report) -> str:
    title = html.escape(report.title)
    body = [f"<h1>{title}</h1>"]
    if report.meta:
        meta = " · ".join(f"{html.escape(k)}: {html.escape(v)}" for k, v in report.meta.items())
        body.append(f'<p class="meta">{meta}</p>')
    toc = "".join(
        f'<li><a href="#{_slug(s.title)}-{i}">{_inline_html(s.title)}</a></li>' for i, s in enumerate(report.sections)
    )
    body.append(f"<nav><ul>{toc}</ul></nav>")
    for i, section in enumerate(report.sections):
        body.append(f'<section id="{_slug(section.title)}-{i}"><h2>{_inline_html(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Table):
                body.append(_html_table(block))
            elif isinstance(block, Figure):
                body.append(_html_figure(block))
            else:
                body.append(_html_paragraph(block))
        body.append("</section>")
    content = "\n".join(body)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{content}\n</body>\n</html>\n"
    )


# --- Writing -------------------------------------------------------------------------------------


def write_report(report: Report, out_dir: Path) -> Path:
    """Write index.html, report.md and figures/*.png into `out_dir`; return the path of index.html."""
    figures = report.figures()
    names = [f.name for f in figures]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"figure names must be unique within a report; repeated: {duplicates}")
    fig_dir = out_dir / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    for fig in figures:
        (fig_dir / f"{fig.name}.png").write_bytes(fig.png)
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    index = out_dir / "index.html"
    index.write_text(render_html(report), encoding="utf-8")
    return index
