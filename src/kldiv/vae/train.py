"""Training a VAE, top to bottom: data, model, KL schedule, the loop, evaluation, figures.

The objective is the negative ELBO of Kingma & Welling (2014) with the KL weight of Higgins et al. (2017),
``loss = E_q[-log p(x|z)] + beta_t * KL(q(z|x) || N(0, I))``, where ``beta_t = beta * schedule(t)`` at optimizer
step ``t`` (:mod:`kldiv.schedules`) and the KL may be floored per dimension ("free bits", Kingma et al. 2016).
Every formula comes from :mod:`kldiv.vae.objective`; the run directory, checkpoints, exact resume, metrics,
progress bar and NaN stop come from :mod:`kldiv.runs`. Under ``torchrun`` the model is wrapped in
DistributedDataParallel; every rank draws the same global batch and noise and keeps its contiguous shard, so the
averaged gradient equals the single-process one on the same global batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kldiv._validate import validation
from kldiv.data import DATASETS, IMAGE_SHAPES, ImageDataset, binarize, shard
from kldiv.runs import OptionError, Run, RunOptions, TrainingLoop, load_checkpoint
from kldiv.runs import load_config as load_run_config
from kldiv.runs import options as check
from kldiv.schedules import Cyclical, Scaled, parse_schedule
from kldiv.vae.model import VAE, build_model, check_images
from kldiv.vae.objective import Evaluation, elbo_terms, evaluate, vae_loss

COMMAND = "vae train"
MODELS = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")
# options a resume may change without changing the run (epochs too, unless the schedule spans the whole run)
VOLATILE = ("data_dir", "figures", "eval_batch_size")
# options that can never change within a run: the weights' shapes, the data and its order, the position
FIXED = ("dataset", "data", "val_size", "batch_size", "model", "z_dim", "likelihood", "seed")
MAX_Z_DIM = 4096


@dataclass(frozen=True)
class TrainConfig:
    """The options that define a VAE run (saved in ``run.json`` and every checkpoint; ``kldiv vae train --help``
    documents each)."""

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
    figures: bool = True
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        check.choice("dataset", self.dataset, DATASETS)
        check.choice("model", self.model, MODELS)
        check.choice("likelihood", self.likelihood, LIKELIHOODS)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            check.integer(name, getattr(self, name), low=1)
        check.integer("z_dim", self.z_dim, low=1, high=MAX_Z_DIM)
        check.integer("val_size", self.val_size, low=0)
        check.seed("seed", self.seed)
        object.__setattr__(self, "lr", check.number("lr", self.lr, low=0.0, low_open=True))
        object.__setattr__(self, "beta", check.number("beta", self.beta, low=0.0))
        object.__setattr__(self, "free_bits", check.number("free_bits", self.free_bits, low=0.0))
        if not isinstance(self.binarize, bool) or not isinstance(self.figures, bool):
            raise OptionError("binarize" if not isinstance(self.binarize, bool) else "figures", "must be True or False")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise OptionError("data_dir", f"must be a path, got {self.data_dir!r}")
        self.kl_schedule(steps_per_epoch=1)  # the spec's grammar and numbers; the step counts once the data is known

    def kl_schedule(self, steps_per_epoch: int) -> Scaled:
        """``beta * schedule`` per optimizer step, for ``steps_per_epoch`` steps per epoch."""
        try:
            inner = parse_schedule(
                self.schedule, total_steps=steps_per_epoch * self.epochs, steps_per_epoch=steps_per_epoch
            )
        except (ValueError, TypeError) as e:
            raise OptionError("schedule", str(e)) from None
        return Scaled(inner, self.beta)


@dataclass
class TrainResult:
    """What a run produced: the model (unwrapped), its metrics per epoch and where the files are."""

    model: VAE
    metrics: list[dict[str, float]]
    out_dir: Path
    test: Evaluation


def load_data(config: TrainConfig) -> ImageDataset:
    """The configuration's dataset (errors name the option at fault)."""
    return check.dataset(config.dataset, config.data_dir, val_size=config.val_size)


def load_config(run_dir: str | Path) -> TrainConfig:
    """The configuration the run's last checkpoint was trained with."""
    return load_run_config(run_dir, COMMAND, TrainConfig)


def load_trained(run_dir: str | Path) -> tuple[TrainConfig, VAE]:
    """The configuration and the model of a run, with the weights of its last checkpoint."""
    config = load_config(run_dir)
    model = build_model(config.model, IMAGE_SHAPES[config.dataset], z_dim=config.z_dim, likelihood=config.likelihood)  # type: ignore[arg-type]
    load_checkpoint(run_dir, model=model)
    model.eval()
    return config, model


def _run_rules(config: TrainConfig, data: ImageDataset) -> dict[str, Any]:
    """What the run layer needs to know of a VAE run: its description and which options may change."""
    spans_run = isinstance(config.kl_schedule(steps_per_epoch=1).schedule, Cyclical)
    return {
        "config": {**asdict(config), "data": data.fingerprint()},
        "volatile": VOLATILE if spans_run else (*VOLATILE, "epochs"),
        "fixed": FIXED,
    }


def check_run(config: TrainConfig, options: RunOptions, data: ImageDataset) -> None:
    """Raise what :func:`train` would raise about its run directory, without training or writing anything."""
    Run.check(options, command=COMMAND, **_run_rules(config, data))


def train(config: TrainConfig, options: RunOptions | None = None, *, data: ImageDataset | None = None) -> TrainResult:
    """Train (or, with ``options.resume``, continue) a VAE in the run directory ``options.out`` (default
    ``runs/vae``); see :mod:`kldiv.runs` for the rules of the directory and the guarantees of resume."""
    options = options or RunOptions(out="runs/vae")
    data = data if data is not None else load_data(config)
    n = data.train.shape[0]
    if n == 0:
        raise OptionError("val_size", f"leaves no training images (the dataset has {data.val.shape[0]})")
    steps_per_epoch = math.ceil(n / config.batch_size)
    schedule = config.kl_schedule(steps_per_epoch)
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.image_shape, z_dim=config.z_dim, likelihood=config.likelihood)  # type: ignore[arg-type]
    check_images(model, data.train, "the training images")  # once: the steps then skip the per-batch checks
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)  # one kernel for all tensors
    noise = torch.Generator().manual_seed(config.seed + 1)  # binarization and the reparameterization noise
    with Run.open(options, command=COMMAND, **_run_rules(config, data)) as run:
        net: nn.Module = nn.parallel.DistributedDataParallel(model) if run.world_size > 1 else model
        loop = TrainingLoop(
            run,
            model=model,
            epochs=config.epochs,
            optimizers={"adam": optimizer},
            generators={"noise": noise},
            data_size=n,
            batch_size=config.batch_size,
            seed=config.seed,
            tensorboard=config.figures,
        )
        for epoch in loop.epochs():
            model.train()
            for index in loop.batches():
                x_all = data.train[index]
                if config.binarize:
                    x_all = binarize(x_all, noise)
                eps_all = torch.randn(x_all.shape[0], config.z_dim, generator=noise)
                part = shard(x_all.shape[0], run.rank, run.world_size)
                x = x_all[part]
                beta_t = schedule(loop.step)
                with validation(False):  # the images were checked once; a non-finite loss stops training below
                    terms = elbo_terms(net, x, eps=eps_all[part])  # type: ignore[arg-type]
                    loss = vae_loss(terms, beta=beta_t, free_bits=config.free_bits)
                loop.check_finite(loss, hint="Try a smaller learning rate.")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                with torch.no_grad():
                    loop.accumulate(
                        x.shape[0],
                        train_loss=loss.detach() * x.shape[0],
                        train_reconstruction=terms.reconstruction.sum(),
                        train_kl=terms.kl.sum(),
                    )
                loop.show(loss=loss, beta=beta_t)
            evaluation = evaluate(
                model,
                data.val if data.val.shape[0] else data.test,
                batch_size=config.eval_batch_size,
                generator=torch.Generator().manual_seed(config.seed + 1000 + epoch),  # the same after a resume
            )
            loop.end_epoch(
                beta=schedule(max(loop.step - 1, 0)),
                eval_elbo=evaluation.elbo,
                eval_reconstruction=evaluation.reconstruction,
                eval_kl=evaluation.kl,
                active_units=evaluation.active_units,
            )
        loop.close()
        test = evaluate(
            model, data.test, batch_size=config.eval_batch_size, generator=torch.Generator().manual_seed(config.seed)
        )
        if run.is_main and config.figures:
            from kldiv.vae.plots import write_figures

            write_figures(
                model, data, loop.metrics, run.directory, generator=torch.Generator().manual_seed(config.seed)
            )
    return TrainResult(model=model, metrics=loop.metrics, out_dir=run.directory, test=test)
