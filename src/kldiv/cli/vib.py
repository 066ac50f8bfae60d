"""`kldiv vib train|sweep`: the variational information bottleneck on the digits or MNIST (thin: parse, call
:mod:`kldiv.vib.train`, print)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table as RichTable

from kldiv.cli._common import (
    AllowChange,
    CheckpointSteps,
    DataDir,
    Out,
    Overwrite,
    Progress,
    Resume,
    Threads,
    console,
    fail,
    resolve_config,
    run_options,
    user_errors,
)

app = typer.Typer(help="The variational information bottleneck: accuracy against the rate KL(q(z|x) || N(0, I)).")

Dataset = Annotated[str, typer.Option(help="'digits' (embedded, 8x8) or 'mnist' (needs --data-dir).")]
Hidden = Annotated[str, typer.Option(help="Hidden widths of the encoder, comma-separated.")]
ZDim = Annotated[int, typer.Option(help="Dimension of the code z.")]
TrainSamples = Annotated[int, typer.Option(help="Codes drawn per example in training.")]
EvalSamples = Annotated[int, typer.Option(help="Codes averaged per example at evaluation.")]
Epochs = Annotated[int, typer.Option(help="Training epochs.")]
BatchSize = Annotated[int, typer.Option(help="Batch size.")]
Lr = Annotated[float, typer.Option(help="Adam learning rate.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]
Figures = Annotated[bool, typer.Option(help="Write the figures (curves.png; sweep.png for a sweep).")]


@app.command("train")
def train_command(
    ctx: typer.Context,
    beta: Annotated[float, typer.Option(help="Weight of the rate KL(q(z|x) || N(0, I)).")] = 1e-3,
    dataset: Dataset = "digits",
    data_dir: DataDir = None,
    hidden: Hidden = "1024,1024",
    z_dim: ZDim = 256,
    train_samples: TrainSamples = 1,
    eval_samples: EvalSamples = 12,
    epochs: Epochs = 10,
    batch_size: BatchSize = 100,
    lr: Lr = 1e-3,
    seed: Seed = 0,
    figures: Figures = True,
    out: Out = Path("runs/vib"),
    resume: Resume = False,
    overwrite: Overwrite = False,
    allow_change: AllowChange = None,
    checkpoint_steps: CheckpointSteps = 0,
    progress: Progress = True,
    threads: Threads = "auto",
) -> None:
    """Train a VIB classifier; writes run.json, metrics.csv, checkpoints and curves.png into --out."""
    from kldiv.vib.train import TrainConfig, train

    options = run_options(
        out,
        resume=resume,
        overwrite=overwrite,
        allow_change=allow_change,
        checkpoint_steps=checkpoint_steps,
        progress=progress,
        threads=threads,
    )
    values = {k: v for k, v in locals().items() if k in TrainConfig.__dataclass_fields__}
    config = resolve_config(ctx, values, options, TrainConfig)
    with user_errors():
        result = train(config, options)
    t = result.test
    console().print(f"test: accuracy {t.accuracy:.4f}, NLL {t.nll:.4f} nats, rate {t.rate:.2f} nats")
    console().print(f"Wrote {result.out_dir}.")


def _betas(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise fail(f"--betas: comma-separated numbers such as 1e-4,1e-3,1e-2, got {text!r}") from None
    if any(not (0 <= v < float("inf")) for v in values) or len({f"{v:g}" for v in values}) != len(values):
        raise fail(f"--betas: distinct finite numbers >= 0 (distinct in 6 significant digits), got {text!r}")
    return values


@app.command("sweep")
def sweep_command(
    betas: Annotated[str, typer.Option(help="The values of beta, comma-separated.")] = "1e-5,1e-4,1e-3,1e-2,1e-1",
    dataset: Dataset = "digits",
    data_dir: DataDir = None,
    hidden: Hidden = "1024,1024",
    z_dim: ZDim = 256,
    train_samples: TrainSamples = 1,
    eval_samples: EvalSamples = 12,
    epochs: Epochs = 10,
    batch_size: BatchSize = 100,
    lr: Lr = 1e-3,
    seed: Seed = 0,
    figures: Figures = True,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for one run per beta and the sweep.")] = Path(
        "runs/vib-sweep"
    ),
    resume: Annotated[bool, typer.Option(help="Continue the runs in --out (finished runs are kept).")] = False,
    overwrite: Overwrite = False,
    progress: Progress = True,
    threads: Threads = "auto",
) -> None:
    """Train one VIB classifier per beta (each a run in --out/beta-B); writes sweep.json and sweep.png into --out."""
    from kldiv.runs import Run, atomic_write_bytes
    from kldiv.runs import options as check
    from kldiv.vib.train import COMMAND, TrainConfig, run_rules, train

    values = _betas(betas)
    with user_errors():
        configs = [
            TrainConfig(
                dataset=dataset,
                data_dir=data_dir,
                hidden=hidden,
                z_dim=z_dim,
                beta=b,
                train_samples=train_samples,
                eval_samples=eval_samples,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                figures=figures,
            )
            for b in values
        ]
        data = check.dataset(dataset, data_dir, val_size=0)
        runs = [
            run_options(
                out / f"beta-{b:g}",
                resume=resume,
                overwrite=overwrite,
                allow_change=None,
                progress=progress,
                threads=threads,
            )
            for b in values
        ]
        for config, options in zip(configs, runs, strict=True):  # every run checked before the first one trains
            Run.check(options, command=COMMAND, **run_rules(config, data))
    rows: list[dict[str, Any]] = []
    for config, options in zip(configs, runs, strict=True):
        with user_errors():
            result = train(config, options, data=data)
        t = result.test
        rows.append({"beta": config.beta, "accuracy": t.accuracy, "nll": t.nll, "rate": t.rate})
    table = RichTable(title=f"VIB on {dataset}: test set, {eval_samples} codes per image", title_justify="left")
    for column in ("beta", "accuracy", "NLL (nats)", "rate (nats)"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{row['beta']:g}", f"{row['accuracy']:.4f}", f"{row['nll']:.4f}", f"{row['rate']:.2f}")
    with user_errors():
        atomic_write_bytes(
            out / "sweep.json", json.dumps({"dataset": dataset, "epochs": epochs, "runs": rows}, indent=2).encode()
        )
        if figures:
            from kldiv.report import png_bytes
            from kldiv.vib.plots import sweep_figure

            png = png_bytes(sweep_figure(values, [r["rate"] for r in rows], [r["accuracy"] for r in rows]))
            atomic_write_bytes(out / "sweep.png", png)
    console().print(table)
    console().print(f"Wrote {out}.")
