"""`kldiv mi bench`: the staircase benchmark of the mutual-information bounds (thin: parse, call
:func:`kldiv.mi.staircase.staircase`, write, print)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table as RichTable

from kldiv.cli._common import console, fail, user_errors

app = typer.Typer(help="Mutual information as a KL: the bounds' staircase benchmark.")

FILES = ("staircase.csv", "table.csv", "staircase.json", "staircase.png")


def _levels(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise fail(f"--levels: comma-separated numbers of nats such as 2,4,6, got {text!r}") from None
    if not values or any(not (v >= 0 and v < float("inf")) for v in values):
        raise fail(f"--levels: each level must be a finite number >= 0, got {text!r}")
    return values


@app.command("bench")
def bench_command(
    bounds: Annotated[
        str, typer.Option(help="Comma-separated bounds: dv, mine, nwj, infonce, smile:TAU (smile:inf: no clipping).")
    ] = "dv,mine,nwj,infonce,smile:5",
    levels: Annotated[str, typer.Option(help="The true mutual information of each stage, in nats.")] = "2,4,6,8,10",
    dim: Annotated[int, typer.Option(help="Dimension of x and of y.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Batch size B (InfoNCE cannot exceed log B).")] = 64,
    steps_per_level: Annotated[int, typer.Option(help="Training steps at each level.")] = 4000,
    critic: Annotated[str, typer.Option(help="separable (g(x).h(y)) or concat (f([x, y]), slower).")] = "separable",
    cubic: Annotated[bool, typer.Option(help="Use y^3 instead of y (the same mutual information).")] = False,
    lr: Annotated[float, typer.Option(help="Adam learning rate of the critics.")] = 5e-4,
    seed: Annotated[int, typer.Option(help="Random seed (critics and samples).")] = 0,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for the table, the estimates and the plot.")
    ] = Path("runs/mi-bench"),
    overwrite: Annotated[bool, typer.Option(help="Replace the results already in --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train one critic per bound while the true MI of correlated Gaussians steps up; writes staircase.csv (every
    estimate), table.csv (bias and standard deviation per level), staircase.json and staircase.png into --out."""
    from kldiv.mi.estimate import CRITICS
    from kldiv.mi.staircase import parse_bound, staircase
    from kldiv.runs import atomic_write_bytes, csv_bytes
    from kldiv.runs.options import MAX_SEED

    specs = [part.strip() for part in bounds.split(",") if part.strip()]
    if not specs:
        raise fail("--bounds: give at least one bound")
    for spec in specs:
        try:
            parse_bound(spec)
        except ValueError as e:
            raise fail(f"--bounds: {e}") from None
    if len(set(specs)) != len(specs):
        raise fail(f"--bounds: {bounds!r} names a bound twice")
    values = _levels(levels)
    for name, number, low in (
        ("--dim", dim, 1),
        ("--batch-size", batch_size, 2),
        ("--steps-per-level", steps_per_level, 2),
    ):
        if number < low:
            raise fail(f"{name}: must be an integer >= {low}, got {number}")
    if critic not in CRITICS:
        raise fail(f"--critic: one of {', '.join(CRITICS)}, got {critic!r}")
    if not (lr > 0 and lr < float("inf")):
        raise fail(f"--lr: must be a finite number > 0, got {lr}")
    if not 0 <= seed <= MAX_SEED:
        raise fail(f"--seed: must be an integer in [0, {MAX_SEED}], got {seed}")
    if out.exists() and not out.is_dir():
        raise fail(f"--out: {out} is a file, not a directory")
    taken = [name for name in FILES if (out / name).exists()]
    if taken and not overwrite:
        raise fail(f"--out: {out} already holds results ({', '.join(taken)}); pass --overwrite to replace them")
    with user_errors():
        out.mkdir(parents=True, exist_ok=True)
        result = staircase(
            specs,
            levels=values,
            dim=dim,
            batch_size=batch_size,
            steps_per_level=steps_per_level,
            critic=critic,
            cubic=cubic,
            lr=lr,
            seed=seed,
            progress=progress,
        )
    from kldiv.mi.plots import staircase_figure
    from kldiv.report import png_bytes

    stats = result.stats()
    n = result.steps_per_level
    rows = [
        {"step": i, "true_mi": result.levels[min(i // n, len(result.levels) - 1)]}
        | {spec: result.estimates[spec][i] for spec in specs}
        for i in range(n * len(result.levels))
    ]
    table = [
        {"bound": spec, "true_mi": s.truth, "mean": s.mean, "bias": s.bias, "std": s.std}
        for spec in specs
        for s in stats[spec]
    ]
    summary = {
        "levels": list(result.levels),
        "dim": dim,
        "batch_size": batch_size,
        "steps_per_level": n,
        "critic": critic,
        "cubic": cubic,
        "seed": seed,
        "table": table,
    }
    with user_errors():
        atomic_write_bytes(out / "staircase.csv", csv_bytes(rows))
        atomic_write_bytes(out / "table.csv", csv_bytes(table))
        atomic_write_bytes(out / "staircase.json", json.dumps(summary, indent=2).encode())
        atomic_write_bytes(out / "staircase.png", png_bytes(staircase_figure(result)))
    shown = RichTable(
        title=f"bias / standard deviation (nats), batch {batch_size}, dimension {dim}", title_justify="left"
    )
    shown.add_column("bound")
    for level in result.levels:
        shown.add_column(f"I = {level:g}", justify="right")
    for spec in specs:
        shown.add_row(spec, *(f"{s.bias:+.2f}/{s.std:.2f}" for s in stats[spec]))
    console().print(shown)
    console().print(f"Wrote {out}.")
