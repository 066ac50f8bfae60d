"""`kldiv tour`: compute every registered tour section and write the report (HTML + Markdown + PNGs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from kldiv.cli._common import console, fail
from kldiv.report import Context, Section, Table, format_cell, tour_sections, write_report


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _rich_table(table: Table) -> RichTable:
    """The table's summary columns as a rich table: numbers are never cut (their columns keep their width),
    text columns wrap to fit the terminal (80 columns when piped)."""
    keep = [table.header.index(c) for c in table.summary_columns]
    out = RichTable(title=table.title, title_justify="left")
    for i in keep:
        cells = [format_cell(row[i]).replace("`", "") for row in table.rows]
        if all(_is_number(c) for c in cells):
            width = max(map(len, cells)) if cells else None
            out.add_column(table.header[i], no_wrap=True, min_width=width, justify="right")
        else:
            out.add_column(table.header[i], overflow="fold")
    for row in table.rows:
        out.add_row(*(format_cell(row[i]).replace("`", "") for i in keep))
    return out


def tour(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for index.html, report.md and figures/.")] = Path(
        "runs/tour"
    ),
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Shorter trainings in the sections that train: a fast look, rougher numbers."),
    ] = False,
) -> None:
    """Run the tour: every section computed live from kldiv, next to SciPy and PyTorch.

    Writes OUT/index.html (self-contained), OUT/report.md and OUT/figures/*.png; prints the summary.
    """
    if out.exists() and not out.is_dir():
        raise fail(f"--out: {out} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"--out: cannot create the directory {out}: {exc.strerror}") from None
    from kldiv import tour as tour_lib  # heavy (torch, scipy, matplotlib): imported when the tour runs

    tour_lib.import_section_modules()
    start = time.perf_counter()
    ctx = Context(out_dir=out, quick=quick)
    entries = tour_sections.items()
    sections: list[Section] = []
    err = Console(stderr=True)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} sections"),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        task = progress.add_task("tour", total=len(entries))
        for name, build in entries:
            progress.update(task, description=f"section [bold]{name}[/bold]")
            sections.append(build(ctx))
            progress.advance(task)
    report = tour_lib.make_report(sections)
    out.mkdir(parents=True, exist_ok=True)
    index = write_report(report, out)
    out_console = console()
    for table in report.summary_tables():
        out_console.print(_rich_table(table))
    out_console.print(
        f"Wrote {index} and {out / 'report.md'} ({len(report.figures())} figures) "
        f"in {time.perf_counter() - start:.1f} s."
    )
