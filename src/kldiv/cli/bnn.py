"""`kldiv bnn train|eval`: a Bayesian MLP trained by the negative ELBO beside its deterministic baseline, judged by
accuracy, calibration and out-of-distribution detection (thin: parse, call :mod:`kldiv.bayes.train`, print)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
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

app = typer.Typer(help="Bayesian neural networks: a Bayesian MLP and its deterministic baseline, side by side.")


@app.command("train")
def train_command(
    ctx: typer.Context,
    task: Annotated[
        str, typer.Option(help="'classify' (digits or MNIST) or 'regression' (a generated 1-D toy set).")
    ] = "classify",
    dataset: Annotated[
        str | None, typer.Option(help="With --task classify: 'digits' (embedded, 8x8, the default) or 'mnist'.")
    ] = None,
    data_dir: DataDir = None,
    hidden: Annotated[
        str | None, typer.Option(help="Hidden widths, comma-separated (default: 400,400; 32,32 for regression).")
    ] = None,
    mode: Annotated[
        str,
        typer.Option(help="How the layers draw weights: local (local reparameterization) | reparam | flipout."),
    ] = "local",
    prior: Annotated[
        str,
        typer.Option(
            help="Weight prior: gaussian N(0, s^2) | mixture 1/2 N(0, s^2) + 1/2 N(0, e^-12); s is --prior-sigma."
        ),
    ] = "gaussian",
    prior_sigma: Annotated[float, typer.Option(help="The prior's (wide) standard deviation s.")] = 1.0,
    init_std: Annotated[
        float | None,
        typer.Option(help="Initial posterior std of every weight (default 1e-3; 0.05 for regression)."),
    ] = None,
    kl_schedule: Annotated[
        str, typer.Option(help="KL schedule: constant | linear:E | logistic:E:K | cyclical:N:R (E in epochs).")
    ] = "constant",
    beta: Annotated[float, typer.Option(help="KL weight; multiplies the schedule (1: the ELBO).")] = 1.0,
    samples: Annotated[int, typer.Option(help="Weight draws S of the Monte Carlo predictive at evaluation.")] = 20,
    noise_std: Annotated[
        float | None, typer.Option(help="With --task regression: the likelihood's noise std (default 0.1).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default 10; 20 for regression).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default 128; 5 for regression).")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate (default 1e-3; 1e-2 for regression).")] = None,
    baseline: Annotated[
        bool, typer.Option(help="Train the same MLP with plain layers alongside, on the same batches.")
    ] = True,
    n_bins: Annotated[int, typer.Option(help="Confidence bins of the expected calibration error.")] = 15,
    seed: Annotated[int, typer.Option(help="Random seed (also of the regression's toy set).")] = 0,
    figures: Annotated[
        bool, typer.Option(help="Write curves.png and reliability.png (or uncertainty.png for regression).")
    ] = True,
    out: Out = Path("runs/bnn"),
    resume: Resume = False,
    overwrite: Overwrite = False,
    allow_change: AllowChange = None,
    checkpoint_steps: CheckpointSteps = 0,
    progress: Progress = True,
    threads: Threads = "auto",
) -> None:
    """Train a Bayesian MLP (and its baseline); writes run.json, metrics.csv, checkpoints and figures into --out."""
    from kldiv.bayes.train import RegressionMetrics, TrainConfig, train

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
        "task": task,
        "dataset": dataset,
        "data_dir": data_dir,
        "hidden": hidden,
        "mode": mode,
        "prior": prior,
        "prior_sigma": prior_sigma,
        "init_std": init_std,
        "kl_schedule": kl_schedule,
        "beta": beta,
        "samples": samples,
        "noise_std": noise_std,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "baseline": baseline,
        "n_bins": n_bins,
        "seed": seed,
        "figures": figures,
    }
    config = resolve_config(ctx, values, options, TrainConfig)
    with user_errors():
        result = train(config, options)
    for name, m in (("BNN", result.test), ("baseline", result.baseline_test)):
        if isinstance(m, RegressionMetrics):
            console().print(f"{name} test: predictive NLL {m.nll:.4f} nats, RMSE {m.rmse:.4f}")
        elif m is not None:
            console().print(
                f"{name} test: accuracy {m.accuracy:.4f}, NLL {m.nll:.4f} nats, ECE {m.ece:.4f}, Brier {m.brier:.4f}"
            )
    console().print(f"Wrote {result.out_dir}.")


@app.command("eval")
def eval_command(
    run: Annotated[Path, typer.Argument(help="A run directory of `kldiv bnn train`.")],
    samples: Annotated[int | None, typer.Option(help="Weight draws S of the predictive (default: the run's).")] = None,
    ood: Annotated[
        str,
        typer.Option(help="Out-of-distribution images: rotate (by 90 degrees) | noise (uniform pixels) | both."),
    ] = "both",
    data_dir: DataDir = None,
    seed: Annotated[int, typer.Option(help="Seed of the weight draws and of the noise images.")] = 0,
) -> None:
    """Test metrics of the BNN and its baseline and, for classification, OOD AUROCs; writes RUN/eval.json."""
    from kldiv.bayes.predict import ClassMetrics
    from kldiv.bayes.train import (
        OOD_KINDS,
        baseline_of,
        build_networks,
        evaluate,
        evaluate_ood,
        load_config,
        load_data,
    )
    from kldiv.data import ImageDataset
    from kldiv.runs import atomic_write_bytes, load_checkpoint
    from kldiv.runs import options as check

    with user_errors():
        check.choice("ood", ood, (*OOD_KINDS, "both"))
        check.seed("seed", seed)
        config = load_config(run)
        if samples is not None:
            config = replace(config, samples=samples)
        if config.task == "regression" and (data_dir is not None or ood != "both"):
            option = "--data-dir" if data_dir is not None else "--ood"
            raise fail(f"{option}: only used with a classification run (the regression's toy set is generated)")
        data = load_data(replace(config, data_dir=data_dir or config.data_dir))
        nets = build_networks(config)
        load_checkpoint(run, model=nets)
    test, base = evaluate(config, nets, data, seed)
    result: dict[str, Any] = {"task": config.task, "samples": config.samples, "seed": seed}
    result["bnn"] = {k: v for k, v in asdict(test).items() if k != "bins"}
    result["baseline"] = None if base is None else {k: v for k, v in asdict(base).items() if k != "bins"}
    table = RichTable(title=f"{run}: test set, S = {config.samples}", title_justify="left")
    table.add_column("metric")
    table.add_column("BNN", justify="right")
    table.add_column("baseline", justify="right")
    for key, value in result["bnn"].items():
        other = "" if result["baseline"] is None else f"{result['baseline'][key]:.4f}"
        table.add_row(key.replace("_", " "), f"{value:.4f}", other)
    if isinstance(test, ClassMetrics):
        assert isinstance(data, ImageDataset)
        images = data.test
        kinds = OOD_KINDS if ood == "both" else (ood,)
        auroc = evaluate_ood(
            nets["bnn"],
            baseline_of(nets),
            images,
            samples=config.samples,
            kinds=kinds,
            seed=seed,
        )
        result["ood_auroc"] = auroc
        for kind, scores in auroc.items():
            table.add_row(f"AUROC {kind}, entropy", f"{scores['bnn_entropy']:.4f}", _cell(scores, "baseline_entropy"))
            table.add_row(f"AUROC {kind}, mutual information", f"{scores['bnn_mutual_information']:.4f}", "")
    with user_errors():
        atomic_write_bytes(run / "eval.json", json.dumps(result, indent=2).encode())
    console().print(table)


def _cell(scores: dict[str, float], key: str) -> str:
    return f"{scores[key]:.4f}" if key in scores else ""
