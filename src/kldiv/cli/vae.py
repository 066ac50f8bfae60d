"""`kldiv vae train|eval|sample|sweep`: train and evaluate VAEs with the KL term under control (thin: parse, call
:mod:`kldiv.vae`, print)."""

from __future__ import annotations

import json
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
    fail,
    resolve_config,
    run_options,
    user_errors,
)

app = typer.Typer(help="Variational autoencoders: beta-VAE, KL schedules, free bits, IWAE evaluation.")

RunDir = Annotated[Path, typer.Option("--run", help="A run directory of `kldiv vae train`.")]


def _png_path(path: Path, option: str) -> Path:
    """An output file whose directory exists (checked before any work)."""
    if path.is_dir():
        raise fail(f"{option}: {path} is a directory; give a file name such as {path / 'samples.png'}")
    if not path.parent.is_dir():
        raise fail(f"{option}: the directory {path.parent} does not exist")
    return path


@app.command("train")
def train_command(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option(help="'digits' (embedded, 8x8) or 'mnist' (needs --data-dir).")] = "digits",
    data_dir: DataDir = None,
    model: Annotated[str, typer.Option(help="'mlp' (784-400-400-z, the tutorial's) or 'conv'.")] = "mlp",
    z_dim: Annotated[int, typer.Option(help="Latent dimensions.")] = 20,
    likelihood: Annotated[str, typer.Option(help="'bernoulli' or 'gaussian' decoder.")] = "bernoulli",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Global batch size (split across processes).")] = 128,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    beta: Annotated[float, typer.Option(help="KL weight (beta-VAE); multiplies the schedule.")] = 1.0,
    schedule: Annotated[
        str, typer.Option(help="KL schedule: constant | linear:E | logistic:E:K | cyclical:N:R (E in epochs).")
    ] = "constant",
    free_bits: Annotated[float, typer.Option(help="Free-bits floor per latent dimension (nats); 0: off.")] = 0.0,
    binarize: Annotated[bool, typer.Option(help="Dynamic binarization of the pixels.")] = False,
    val_size: Annotated[int, typer.Option(help="Training images held out for per-epoch evaluation.")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Out = Path("runs/vae"),
    resume: Resume = False,
    overwrite: Overwrite = False,
    allow_change: AllowChange = None,
    checkpoint_steps: CheckpointSteps = 0,
    progress: Progress = True,
    threads: Threads = "auto",
) -> None:
    """Train a VAE; writes run.json, metrics.csv, checkpoints (safetensors) and figures into --out."""
    from kldiv.vae.train import TrainConfig, train

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
        "z_dim": z_dim,
        "likelihood": likelihood,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "beta": beta,
        "schedule": schedule,
        "free_bits": free_bits,
        "binarize": binarize,
        "val_size": val_size,
        "seed": seed,
    }
    config = resolve_config(ctx, values, options, TrainConfig)
    with user_errors():
        result = train(config, options)
    t = result.test
    console().print(
        f"test: -ELBO {-t.elbo:.2f} nats = reconstruction {t.reconstruction:.2f} + KL {t.kl:.2f}; "
        f"active units {t.active_units}/{config.z_dim}. Wrote {result.out_dir}."
    )


@app.command("eval")
def eval_command(
    run: RunDir = Path("runs/vae"),
    data_dir: DataDir = None,
    iwae_k: Annotated[int, typer.Option(help="Importance samples of the IWAE bound (0: skip).")] = 5000,
    limit: Annotated[int, typer.Option(help="Evaluate on the first N test images (0: all).")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed of the Monte Carlo estimates.")] = 0,
) -> None:
    """Test ELBO (reconstruction and KL, per dimension), IWAE-k bound on log p(x), active units; eval.json."""
    import torch

    from kldiv.data import binarize
    from kldiv.runs import atomic_write_bytes
    from kldiv.runs import options as check
    from kldiv.vae.objective import evaluate, iwae_bound
    from kldiv.vae.train import load_data, load_trained

    with user_errors():
        check.integer("iwae_k", iwae_k, low=0)
        check.integer("limit", limit, low=0)
        check.seed("seed", seed)
        config, model = load_trained(run)
        data = load_data(replace(config, data_dir=data_dir or config.data_dir))
    x = data.test[:limit] if limit else data.test
    if config.binarize:
        x = binarize(x, torch.Generator().manual_seed(seed))
    result: dict[str, Any] = {"images": int(x.shape[0])}
    ev = evaluate(model, x, generator=torch.Generator().manual_seed(seed))
    result.update(
        {
            "elbo": ev.elbo,
            "reconstruction": ev.reconstruction,
            "kl": ev.kl,
            "kl_per_dim": ev.kl_per_dim,
            "active_units": ev.active_units,
        }
    )
    if iwae_k:
        bound = iwae_bound(model, x, k=iwae_k, generator=torch.Generator().manual_seed(seed), progress=True)
        result["iwae_k"] = iwae_k
        result["iwae_nll"] = -float(bound.mean())
    with user_errors():
        atomic_write_bytes(run / "eval.json", json.dumps(result, indent=2).encode())
    table = RichTable(title=f"{run}: {result['images']} test images", title_justify="left")
    table.add_column("quantity")
    table.add_column("nats per image", justify="right")
    table.add_row("-ELBO", f"{-ev.elbo:.3f}")
    table.add_row("reconstruction", f"{ev.reconstruction:.3f}")
    table.add_row("KL", f"{ev.kl:.3f}")
    if iwae_k:
        table.add_row(f"IWAE-{iwae_k} NLL", f"{result['iwae_nll']:.3f}")
    table.add_row("active units", f"{ev.active_units}/{len(ev.kl_per_dim)}")
    console().print(table)


@app.command("sample")
def sample_command(
    run: RunDir = Path("runs/vae"),
    n: Annotated[int, typer.Option("-n", help="Number of samples.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="PNG path (default: RUN/samples.png).")] = None,
) -> None:
    """A PNG grid of decoder means of samples from the prior."""
    import torch

    from kldiv.report import png_bytes
    from kldiv.runs import atomic_write_bytes
    from kldiv.runs import options as check
    from kldiv.vae.plots import samples_figure
    from kldiv.vae.train import load_trained

    with user_errors():
        check.integer("n", n, low=1, high=10_000)
        check.seed("seed", seed)
    path = _png_path(out, "--out") if out is not None else run / "samples.png"
    with user_errors():
        _, model = load_trained(run)
        atomic_write_bytes(path, png_bytes(samples_figure(model, n=n, generator=torch.Generator().manual_seed(seed))))
    console().print(f"Wrote {path}.")


@app.command("sweep", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def sweep_command(
    ctx: typer.Context,
    beta: Annotated[
        list[float] | None, typer.Option("--beta", help="KL weights to compare, e.g. --beta 0.5 1 4.")
    ] = None,
    dataset: Annotated[str, typer.Option(help="'digits' or 'mnist'.")] = "digits",
    data_dir: DataDir = None,
    model: Annotated[str, typer.Option(help="'mlp' or 'conv'.")] = "mlp",
    z_dim: Annotated[int, typer.Option(help="Latent dimensions.")] = 20,
    epochs: Annotated[int, typer.Option(help="Training epochs per run.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 128,
    schedule: Annotated[str, typer.Option(help="KL schedule (as for train).")] = "constant",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Sweep directory (one run per beta inside).")] = Path(
        "runs/vae-sweep"
    ),
    resume: Annotated[bool, typer.Option("--resume", help="Continue each beta's run from its checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the runs of an earlier sweep.")] = False,
    progress: Progress = True,
) -> None:
    """Train one VAE per beta; writes the reconstruction/KL trade-off as sweep.csv, sweep.md and tradeoff.png."""
    from kldiv.report import png_bytes
    from kldiv.runs import atomic_write_bytes, csv_bytes
    from kldiv.vae.plots import tradeoff_figure
    from kldiv.vae.train import TrainConfig, check_run, load_data, train

    try:
        betas = [*(beta or []), *(float(extra) for extra in ctx.args)]
    except ValueError:
        raise fail(f"--beta takes numbers, got {' '.join(ctx.args)}") from None
    if not betas:
        raise fail("--beta: give at least one value, e.g. --beta 0.5 1 4")
    if out.exists() and not out.is_dir():
        raise fail(f"--out: {out} is a file, not a directory")
    values = {
        "dataset": dataset,
        "data_dir": data_dir,
        "model": model,
        "z_dim": z_dim,
        "epochs": epochs,
        "batch_size": batch_size,
        "schedule": schedule,
        "seed": seed,
    }
    names = [f"beta-{b:g}" for b in betas]
    if len(set(names)) < len(names):
        raise fail(f"--beta: each value once (their run directories are named {', '.join(names)})")
    runs = []  # every beta's options and run directory, checked before the first one trains
    for b, name in zip(betas, names, strict=True):
        options = run_options(out / name, resume=resume, overwrite=overwrite, allow_change=None)
        runs.append(
            (resolve_config(ctx, {**values, "beta": b}, options, TrainConfig), replace(options, progress=progress))
        )
    with user_errors():
        data = load_data(runs[0][0])
        for config, options in runs:
            check_run(config, options, data)
    rows = []
    for config, options in runs:
        with user_errors():
            result = train(config, options, data=data)
        t = result.test
        rows.append(
            {
                "beta": config.beta,
                "reconstruction": t.reconstruction,
                "kl": t.kl,
                "neg_elbo": -t.elbo,
                "active_units": t.active_units,
            }
        )
        console().print(
            f"beta {config.beta:g}: reconstruction {t.reconstruction:.2f}, KL {t.kl:.2f}, -ELBO {-t.elbo:.2f}"
        )
    lines = ["| beta | reconstruction | KL | -ELBO | active units |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['beta']:g} | {r['reconstruction']:.2f} | {r['kl']:.2f} | {r['neg_elbo']:.2f} | {r['active_units']} |"
        for r in rows
    ]
    with user_errors():
        atomic_write_bytes(out / "sweep.csv", csv_bytes(rows))
        atomic_write_bytes(out / "sweep.md", ("\n".join(lines) + "\n").encode())
        atomic_write_bytes(out / "tradeoff.png", png_bytes(tradeoff_figure(rows)))
    table = RichTable(title=f"beta sweep ({dataset}, test set, nats per image)", title_justify="left")
    for col in ("beta", "reconstruction", "KL", "-ELBO", "active units"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['beta']:g}",
            f"{r['reconstruction']:.2f}",
            f"{r['kl']:.2f}",
            f"{r['neg_elbo']:.2f}",
            str(r["active_units"]),
        )
    console().print(table)
