"""`kldiv mle`: maximum likelihood as KL minimization, measured at every gradient step (thin: parse, call
:mod:`kldiv.mle`, print)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table as RichTable

from kldiv.cli._common import console, fail, user_errors

FILES = ("mle.csv", "mle.png")


def _check_out(out: Path, overwrite: bool) -> None:
    """--out is a directory (or will be) holding no earlier result, unless --overwrite."""
    if out.exists() and not out.is_dir():
        raise fail(f"--out: {out} is a file, not a directory")
    existing = [name for name in FILES if (out / name).exists()]
    if existing and not overwrite:
        raise fail(f"--out: {out} already holds {' and '.join(existing)}; add --overwrite to replace them")


def mle(
    model: Annotated[str, typer.Option(help="Which model to fit: 'categorical', 'gaussian' or 'both'.")] = "both",
    steps: Annotated[int, typer.Option(help="Gradient descent steps.")] = 200,
    lr: Annotated[
        float | None,
        typer.Option(help="Step size (default: 2 for the categorical, 0.5 for the Gaussian)."),
    ] = None,
    samples: Annotated[int, typer.Option(help="Samples drawn from each source.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed of the samples.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for mle.csv and mle.png.")] = Path("runs/mle"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace mle.csv and mle.png in --out.")] = False,
) -> None:
    """Fit a categorical and a Gaussian model by gradient descent on the negative log-likelihood (NLL) and show
    that KL(data || model) falls with NLL - H(data) at every step. Writes mle.csv (one row per step) and mle.png."""
    from kldiv.mle import MODELS, CategoricalFit, GaussianFit, MLEConfig, run_categorical, run_gaussian
    from kldiv.runs import options as check

    with user_errors():
        chosen = check.choice("model", model, (*MODELS, "both"))
        config = MLEConfig(steps=steps, lr=lr, samples=samples, seed=seed)
    _check_out(out, overwrite)
    from kldiv.mle_plots import mle_figure
    from kldiv.report import png_bytes
    from kldiv.runs import atomic_write_bytes, csv_bytes

    fits: dict[str, Callable[[MLEConfig], CategoricalFit | GaussianFit]] = {
        "categorical": run_categorical,
        "gaussian": run_gaussian,
    }
    with user_errors():
        traces = [fits[name](config).trace for name in MODELS if chosen in (name, "both")]
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "mle.csv", csv_bytes([row for t in traces for row in t.rows()]))
        atomic_write_bytes(out / "mle.png", png_bytes(mle_figure(traces)))
    table = RichTable(title=f"{config.samples} samples, {config.steps} gradient steps (nats)", title_justify="left")
    for column in ("model", "NLL", "H", "KL", "NLL − H", "max |gap|"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
    for t in traces:
        table.add_row(
            t.model,
            f"{t.nll[-1]:.6f}",
            f"{t.entropy:.6f}",
            f"{t.kl[-1]:.2e}",
            f"{t.nll_minus_entropy[-1]:.2e}",
            f"{t.max_gap:.1e}",
        )
    printer = console()
    printer.print(table)
    printer.print("gap = KL − (NLL − H), its largest size over the steps.")
    for t in traces:
        if t.model == "categorical":
            printer.print("categorical: KL(P_n || Q) with P_n the empirical distribution; H = H(P_n).")
        else:
            printer.print(
                f"gaussian: KL(P || Q) from the source P in closed form; H = H(P); the difference is sampling "
                f"error, at most {t.max_gap_in_standard_errors:.2f} standard errors of the NLL."
            )
    printer.print(f"Wrote {out / 'mle.csv'} and {out / 'mle.png'}.")
