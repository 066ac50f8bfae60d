"""Training a VAE, top to bottom: data, model, KL schedule, the loop, evaluation, checkpoints, figures.

The objective is the negative ELBO of Kingma & Welling (2014) with the KL weight of Higgins et al. (2017),
``loss = E_q[-log p(x|z)] + beta_t * KL(q(z|x) || N(0, I))``, where ``beta_t = beta * schedule(t)`` at optimizer
step ``t`` (:mod:`kldiv.schedules`) and the KL may be floored per dimension ("free bits", Kingma et al. 2016).
Every formula comes from :mod:`kldiv.vae.objective`; this module only runs it.

Guarantees:

* **Exact resume.** A checkpoint (:mod:`kldiv.vae.checkpoint`, weights in safetensors, the rest loaded with
  ``weights_only=True``) holds the model, the optimizer, both random generators (data order; sampling noise and
  binarization), the position in the epoch and the metrics so far. ``resume=True`` continues from it, and the
  parameters are bit-identical to an uninterrupted run (same seed, CPU).
* **No lost data.** Checkpoints are written atomically at every epoch end (and every ``checkpoint_steps``
  steps), so a run killed at any moment resumes from its last complete checkpoint.
* **No silent NaN.** A non-finite loss stops training with :class:`TrainingDivergedError`, naming the epoch and step;
  the last good checkpoint is kept.
* **Multi-process.** Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel
  (gloo on CPU, nccl on CUDA); every rank draws the same global batch order and the same noise and keeps its
  contiguous shard, so the averaged gradient equals the single-process one on the same global batch. Only rank 0
  writes files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kldiv.data import ImageDataset, batches, binarize, load_dataset, shard
from kldiv.schedules import Scaled, Schedule, parse_schedule
from kldiv.vae.checkpoint import atomic_write_bytes, has_checkpoint, load_checkpoint, save_checkpoint
from kldiv.vae.model import VAE, build_model
from kldiv.vae.objective import Evaluation, elbo_terms, evaluate, vae_loss

METRICS_FILE = "metrics.csv"
CONFIG_FILE = "config.json"


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Every knob of a run (saved in its checkpoints; ``kldiv vae train --help`` documents each)."""

    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "mlp"
    z_dim: int = 20
    likelihood: str = "bernoulli"
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    beta: float = 1.0
    schedule: str = "constant"
    free_bits: float = 0.0
    binarize: bool = False
    val_size: int = 0
    seed: int = 0
    out: str = "runs/vae"
    resume: bool = False
    checkpoint_steps: int = 0
    progress: bool = True
    figures: bool = True
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        for name in ("z_dim", "epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.checkpoint_steps < 0:
            raise ValueError(f"checkpoint_steps must be >= 0 (0: only at epoch ends), got {self.checkpoint_steps}")
        for name in ("lr", "beta", "free_bits"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                raise ValueError(f"{name} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, got {value}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class TrainResult:
    """What a run produced: the model (unwrapped), its metrics per epoch and where the files are."""

    model: VAE
    metrics: list[dict[str, float]]
    out_dir: Path
    test: Evaluation


def load_config(run_dir: str | Path) -> TrainConfig:
    """The configuration a run was trained with (its ``config.json``)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} the --out directory of `kldiv vae train`?")
    return TrainConfig.from_dict(json.loads(path.read_text()))


def load_trained(run_dir: str | Path) -> tuple[TrainConfig, VAE]:
    """The configuration and the model of a run, with the weights of its last checkpoint."""
    config = load_config(run_dir)
    data_shape = {"digits": (1, 8, 8), "mnist": (1, 28, 28)}.get(config.dataset)
    if data_shape is None:
        raise ValueError(f"{run_dir}: unknown dataset {config.dataset!r} in {CONFIG_FILE}")
    model = build_model(config.model, data_shape, z_dim=config.z_dim, likelihood=config.likelihood)  # type: ignore[arg-type]
    load_checkpoint(run_dir, model=model, optimizer=None)
    model.eval()
    return config, model


def _world() -> tuple[int, int]:
    """(rank, world size), initializing the default process group under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _generator_state(g: torch.Generator) -> Tensor:
    return g.get_state().clone()


def write_csv(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    """Rows as CSV, rewritten whole and atomically (so a resumed run's metrics.csv never duplicates or loses rows)."""
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def _tensorboard(out_dir: Path) -> Any:
    """A TensorBoard SummaryWriter when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


def flush_subnormal_state_(optimizer: torch.optim.Optimizer) -> None:
    """Set the subnormal entries of the optimizer's state to zero, in place.

    Adam's first moment of a parameter whose gradient is exactly zero (weights of MNIST's always-blank border
    pixels, dead ReLUs) decays by beta1 per step into the subnormal range, where x86 arithmetic is many times
    slower: measured here, the optimizer step went from 0.25 to 1.34 s per MNIST epoch after three epochs (205k
    subnormal entries). ``torch.set_flush_denormal`` cannot help reliably, as it only sets the calling thread.
    Zeroing values below the smallest normal float (1.2e-38 in float32) changes nothing that matters.
    """
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, Tensor) and value.is_floating_point() and value.dim():
                value.masked_fill_(value.abs() < torch.finfo(value.dtype).tiny, 0.0)


_FLUSH_EVERY = 16  # steps; a value decaying by 0.9 per step stays subnormal for about 150 steps


def train(config: TrainConfig, *, data: ImageDataset | None = None) -> TrainResult:
    """Train (or, with ``config.resume``, continue) a VAE; see the module docstring for the guarantees."""
    rank, world = _world()
    out_dir = Path(config.out)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_dir / CONFIG_FILE, json.dumps(asdict(config), indent=2).encode())
    data = data if data is not None else load_dataset(config.dataset, config.data_dir, val_size=config.val_size)
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.image_shape, z_dim=config.z_dim, likelihood=config.likelihood)  # type: ignore[arg-type]
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)  # one kernel for all tensors
    data_gen = torch.Generator().manual_seed(config.seed)
    noise_gen = torch.Generator().manual_seed(config.seed + 1)
    n = data.train.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    schedule: Schedule = Scaled(
        parse_schedule(config.schedule, total_steps=steps_per_epoch * config.epochs, steps_per_epoch=steps_per_epoch),
        config.beta,
    )
    metrics: list[dict[str, float]] = []
    step, start_epoch, start_batch = 0, 0, 0
    epoch_state = _generator_state(data_gen)
    if config.resume and has_checkpoint(out_dir):
        state = load_checkpoint(out_dir, model=model, optimizer=optimizer)
        saved = TrainConfig.from_dict(dict(state["config"]))  # type: ignore[call-overload]
        if (saved.model, saved.z_dim, saved.likelihood, saved.dataset) != (
            config.model,
            config.z_dim,
            config.likelihood,
            config.dataset,
        ):
            raise ValueError(
                f"--resume: the checkpoint in {out_dir} was trained with model={saved.model} z_dim={saved.z_dim} "
                f"likelihood={saved.likelihood} dataset={saved.dataset}; pass the same options or another --out"
            )
        step, start_epoch, start_batch = int(state["step"]), int(state["epoch"]), int(state["batch"])  # type: ignore[call-overload]
        epoch_state = state["data_generator"]  # type: ignore[assignment]
        noise_gen.set_state(state["noise_generator"])  # type: ignore[arg-type]
        metrics = [dict(row) for row in state["metrics"]]  # type: ignore[attr-defined]
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)
    writer = _tensorboard(out_dir) if rank == 0 and config.figures else None

    def checkpoint(epoch: int, batch: int, data_state: Tensor) -> None:
        if rank != 0:
            return
        state = {
            "config": asdict(config),
            "step": step,
            "epoch": epoch,
            "batch": batch,
            "data_generator": data_state,
            "noise_generator": _generator_state(noise_gen),
            "metrics": metrics,
        }
        save_checkpoint(out_dir, model=model, optimizer=optimizer, state=state)

    from tqdm.auto import tqdm

    for epoch in range(start_epoch, config.epochs):
        this_epoch_state = epoch_state
        data_gen.set_state(epoch_state)
        order = list(batches(n, config.batch_size, generator=data_gen))
        epoch_state = _generator_state(data_gen)  # the next epoch's order
        resume_at = start_batch if epoch == start_epoch else 0
        started = time.perf_counter()
        totals = torch.zeros(3, dtype=torch.float64)
        seen = 0
        model.train()
        bar = tqdm(
            range(resume_at, len(order)),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not config.progress or rank != 0,
            leave=False,
        )
        for b in bar:
            x_all = data.train[order[b]]
            if config.binarize:
                x_all = binarize(x_all, noise_gen)
            eps_all = torch.randn(x_all.shape[0], config.z_dim, generator=noise_gen)
            part = shard(x_all.shape[0], rank, world)
            x = x_all[part]
            beta_t = schedule(step)
            terms = elbo_terms(net if world > 1 else model, x, eps=eps_all[part])  # type: ignore[arg-type]
            loss = vae_loss(terms, beta=beta_t, free_bits=config.free_bits)
            finite = torch.isfinite(loss.detach()).to(torch.float32)
            if world > 1:  # every rank stops together (a rank that stopped alone would leave the others waiting)
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if not bool(finite):
                raise TrainingDivergedError(
                    f"the loss is {float(loss.detach())} at epoch {epoch + 1}, step {step} (batch {b}); training "
                    f"stopped and the last good checkpoint in {out_dir} is kept. Try a smaller --lr."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            step += 1
            if step % _FLUSH_EVERY == 0 and not next(model.parameters()).is_cuda:
                flush_subnormal_state_(optimizer)
            with torch.no_grad():
                totals += torch.stack(
                    [loss.detach().double() * x.shape[0], terms.reconstruction.sum().double(), terms.kl.sum().double()]
                )
                seen += x.shape[0]
            if rank == 0 and config.progress:
                bar.set_postfix(loss=f"{float(loss):.2f}", beta=f"{beta_t:.3g}")
            if config.checkpoint_steps and step % config.checkpoint_steps == 0:
                checkpoint(epoch, b + 1, this_epoch_state)
        elapsed = time.perf_counter() - started
        evaluation = evaluate(
            model,
            data.val if data.val.shape[0] else data.test,
            batch_size=config.eval_batch_size,
            generator=torch.Generator().manual_seed(config.seed + 1000 + epoch),  # the same after a resume
        )
        row = {
            "epoch": epoch + 1,
            "step": step,
            "beta": schedule(max(step - 1, 0)),
            "train_loss": float(totals[0]) / max(seen, 1),
            "train_reconstruction": float(totals[1]) / max(seen, 1),
            "train_kl": float(totals[2]) / max(seen, 1),
            "eval_elbo": evaluation.elbo,
            "eval_reconstruction": evaluation.reconstruction,
            "eval_kl": evaluation.kl,
            "active_units": evaluation.active_units,
            "seconds": elapsed,
        }
        metrics.append(row)
        if rank == 0:
            write_csv(out_dir / METRICS_FILE, metrics)
            if writer is not None:
                for key, value in row.items():
                    writer.add_scalar(key, value, step)
        checkpoint(epoch + 1, 0, epoch_state)
    test = evaluate(
        model, data.test, batch_size=config.eval_batch_size, generator=torch.Generator().manual_seed(config.seed)
    )
    if rank == 0 and config.figures:
        from kldiv.vae.plots import write_figures

        write_figures(model, data, metrics, out_dir, generator=torch.Generator().manual_seed(config.seed))
    if writer is not None:
        writer.close()
    return TrainResult(model=model, metrics=metrics, out_dir=out_dir, test=test)
