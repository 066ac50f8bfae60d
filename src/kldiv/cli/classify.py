"""`kldiv classify train|eval`: classifiers with a KL regularizer, judged by accuracy and calibration (thin:
parse, call :mod:`kldiv.classify`, print)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
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
    resolve_config,
    run_options,
    user_errors,
)

app = typer.Typer(help="Classifiers with a KL regularizer of their predictions; accuracy, NLL and calibration.")


@app.command("train")
def train_command(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option(help="'digits' (embedded, 8x8) or 'mnist' (needs --data-dir).")] = "digits",
    data_dir: DataDir = None,
    model: Annotated[str, typer.Option(help="'cnn' (the tutorial's) or 'mlp' (a small fully connected net).")] = "cnn",
    hidden: Annotated[
        int | None,
        typer.Option(
            help="Hidden width of --model mlp (default: about a tenth of the CNN's parameters: 100 on MNIST, 116 on "
            "the digits)."
        ),
    ] = None,
    reg: Annotated[
        str | None,
        typer.Option(
            help="Regularizer added to the cross-entropy: none | kl-uniform (beta KL(batch-average prediction || "
            "uniform), the tutorial's) | kl-target (beta KL(target || prediction)) | confidence (-beta entropy) | "
            "label-smoothing (with --eps). Default: kl-uniform; none with --teacher (they do not combine)."
        ),
    ] = None,
    beta: Annotated[float, typer.Option(help="Weight of the kl-uniform, kl-target and confidence terms.")] = 0.1,
    target: Annotated[
        str | None,
        typer.Option(help="With --reg kl-target: the class distribution, ten comma-separated probabilities."),
    ] = None,
    eps: Annotated[float, typer.Option(help="Label smoothing: the mass spread uniformly over the classes.")] = 0.1,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    val_size: Annotated[
        int, typer.Option(help="Training images held out for per-epoch evaluation (0: evaluate on the test set).")
    ] = 0,
    n_bins: Annotated[int, typer.Option(help="Confidence bins of the expected calibration error.")] = 15,
    train_fraction: Annotated[
        float,
        typer.Option(
            help="Train on this fraction in (0, 1] of the training set: a class-stratified subset drawn from --seed."
        ),
    ] = 1.0,
    teacher: Annotated[
        Path | None,
        typer.Option(
            help="Distill from this run of `kldiv classify train`: the loss becomes alpha T^2 KL(teacher_T || "
            "model_T) + (1 - alpha) CE, with the teacher's logits computed once in eval mode."
        ),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="With --teacher: the temperature T > 0 (default 4).")
    ] = None,
    alpha: Annotated[
        float | None, typer.Option(help="With --teacher: the weight in [0, 1] of the teacher term (default 0.9).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    figures: Annotated[bool, typer.Option(help="Write curves.png and reliability.png.")] = True,
    out: Out = Path("runs/classify"),
    resume: Resume = False,
    overwrite: Overwrite = False,
    allow_change: AllowChange = None,
    checkpoint_steps: CheckpointSteps = 0,
    progress: Progress = True,
    threads: Threads = "auto",
) -> None:
    """Train a classifier; writes run.json, metrics.csv, checkpoints (safetensors) and figures into --out."""
    from kldiv.classify.model import parameter_count
    from kldiv.classify.train import TrainConfig, train

    options = run_options(
        out,
        resume=resume,
        overwrite=overwrite,
        allow_change=allow_change,
        checkpoint_steps=checkpoint_steps,
        progress=progress,
        threads=threads,
    )
    values = {
        "dataset": dataset,
        "data_dir": data_dir,
        "model": model,
        "hidden": hidden,
        "reg": reg,
        "beta": beta,
        "target": target,
        "eps": eps,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "val_size": val_size,
        "n_bins": n_bins,
        "seed": seed,
        "figures": figures,
        "train_fraction": train_fraction,
        "teacher": None if teacher is None else str(teacher),
        "temperature": temperature,
        "alpha": alpha,
    }
    config = resolve_config(ctx, values, options, TrainConfig)
    with user_errors():
        result = train(config, options)
    t = result.test
    console().print(
        f"test: accuracy {t.accuracy:.4f}, NLL {t.nll:.4f} nats, ECE {t.ece:.4f}, Brier {t.brier:.4f} "
        f"({config.model}, {parameter_count(result.model):,} parameters). Wrote {result.out_dir}."
    )


@app.command("eval")
def eval_command(
    run: Annotated[Path, typer.Argument(help="A run directory of `kldiv classify train`.")],
    data_dir: DataDir = None,
    n_bins: Annotated[int, typer.Option(help="Confidence bins of the expected calibration error.")] = 15,
    limit: Annotated[int, typer.Option(help="Evaluate on the first N test images (0: all).")] = 0,
) -> None:
    """Test accuracy, NLL, Brier score and ECE (with the reliability bins) of a trained run; writes eval.json."""
    from kldiv.classify.objective import evaluate
    from kldiv.classify.train import load_data, load_trained
    from kldiv.runs import atomic_write_bytes
    from kldiv.runs import options as check

    with user_errors():
        check.integer("n_bins", n_bins, low=1)
        check.integer("limit", limit, low=0)
        config, model = load_trained(run)
        data = load_data(replace(config, data_dir=data_dir or config.data_dir))
    x, y = (data.test[:limit], data.test_labels[:limit]) if limit else (data.test, data.test_labels)
    ev = evaluate(model, x, y, n_bins=n_bins)
    result: dict[str, Any] = {
        "images": int(x.shape[0]),
        "accuracy": ev.accuracy,
        "nll": ev.nll,
        "brier": ev.brier,
        "ece": ev.ece,
        "n_bins": n_bins,
        "bins": {
            "edges": ev.bins.edges.tolist(),
            "count": ev.bins.count.tolist(),
            "accuracy": [None if math.isnan(v) else v for v in ev.bins.accuracy.tolist()],  # null: empty bin
            "confidence": [None if math.isnan(v) else v for v in ev.bins.confidence.tolist()],
        },
    }
    with user_errors():
        atomic_write_bytes(run / "eval.json", json.dumps(result, indent=2).encode())
    table = RichTable(title=f"{run}: {result['images']} test images", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("accuracy", f"{ev.accuracy:.4f}")
    table.add_row("NLL (nats per image)", f"{ev.nll:.4f}")
    table.add_row("Brier score", f"{ev.brier:.4f}")
    table.add_row(f"ECE ({n_bins} bins)", f"{ev.ece:.4f}")
    console().print(table)
