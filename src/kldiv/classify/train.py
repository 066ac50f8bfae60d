"""Training a regularized classifier, top to bottom: data, model, loss, the loop, evaluation, figures.

The loss is the cross-entropy plus one regularizer of the predictive distribution (:mod:`kldiv.classify.objective`,
whose formulas all come from :mod:`kldiv.losses`); by default the tutorial's: ``beta KL(pbar || U)`` of the
batch-average prediction. The metrics come from :mod:`kldiv.metrics`; the run directory, checkpoints, exact
resume, metrics file, progress bar and NaN stop from :mod:`kldiv.runs`. Training runs in one process.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from kldiv._validate import validation
from kldiv.classify.model import MODELS, Classifier, build_model
from kldiv.classify.objective import REGULARIZERS, Evaluation, evaluate, regularized_loss
from kldiv.data import DATASETS, IMAGE_SHAPES, ImageDataset
from kldiv.metrics import accuracy
from kldiv.runs import (
    OptionError,
    Run,
    RunError,
    RunOptions,
    TrainingLoop,
    load_checkpoint,
    world,
)
from kldiv.runs import load_config as load_run_config
from kldiv.runs import options as check

COMMAND = "classify train"
NUM_CLASSES = 10
# options a resume may change without changing the run (n_bins is not one: the ECE column would change meaning)
VOLATILE = ("data_dir", "figures", "eval_batch_size", "epochs")
# options that can never change within a run: the weights' shapes, the data and its order
FIXED = ("dataset", "data", "val_size", "batch_size", "model", "seed")
_SUM_TOLERANCE = 1e-6


def parse_target(text: str, num_classes: int = NUM_CLASSES) -> tuple[float, ...]:
    """A comma list of ``num_classes`` class probabilities (``"0.1,0.1,..."``), checked: each finite and >= 0,
    summing to 1 within 1e-6. Raises :class:`OptionError` naming ``target``."""
    parts = [p.strip() for p in text.split(",")]
    values = []
    for i, part in enumerate(parts):
        try:
            value = float(part)
        except ValueError:
            raise OptionError("target", f"entry {i} is {part!r}, not a number") from None
        if not math.isfinite(value) or value < 0:
            raise OptionError("target", f"entry {i} is {part}; probabilities are finite and >= 0")
        values.append(value)
    if len(values) != num_classes:
        raise OptionError("target", f"expected {num_classes} probabilities (one per class), got {len(values)}")
    total = math.fsum(values)
    if abs(total - 1.0) > _SUM_TOLERANCE:
        raise OptionError("target", f"the probabilities sum to {total:.9g}, expected 1")
    return tuple(values)


@dataclass(frozen=True)
class TrainConfig:
    """The options that define a classification run (saved in ``run.json`` and every checkpoint; ``kldiv classify
    train --help`` documents each)."""

    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "cnn"
    reg: str = "kl-uniform"
    beta: float = 0.1
    target: str | None = None
    eps: float = 0.1
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    val_size: int = 0
    seed: int = 0
    figures: bool = True
    eval_batch_size: int = 1000
    n_bins: int = 15

    def __post_init__(self) -> None:
        check.choice("dataset", self.dataset, DATASETS)
        check.choice("model", self.model, MODELS)
        check.choice("reg", self.reg, REGULARIZERS)
        for name in ("epochs", "batch_size", "eval_batch_size", "n_bins"):
            check.integer(name, getattr(self, name), low=1)
        check.integer("val_size", self.val_size, low=0)
        check.seed("seed", self.seed)
        object.__setattr__(self, "lr", check.number("lr", self.lr, low=0.0, low_open=True))
        object.__setattr__(self, "beta", check.number("beta", self.beta, low=0.0))
        object.__setattr__(self, "eps", check.number("eps", self.eps, low=0.0, high=1.0))
        if self.target is not None and not isinstance(self.target, str):
            raise OptionError("target", f"must be a comma list of probabilities, got {self.target!r}")
        if self.reg == "kl-target":
            if self.target is None:
                raise OptionError("target", "is required with --reg kl-target (e.g. ten values 0.1,0.1,...)")
            parse_target(self.target)
        elif self.target is not None:
            raise OptionError("target", f"is only used with reg 'kl-target', not with {self.reg!r}")
        if not isinstance(self.figures, bool):
            raise OptionError("figures", "must be True or False")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise OptionError("data_dir", f"must be a path, got {self.data_dir!r}")

    def target_probs(self) -> torch.Tensor | None:
        """The target distribution of ``kl-target`` as a float32 tensor ``(C,)``, else ``None``."""
        return None if self.target is None else torch.tensor(parse_target(self.target))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class TrainResult:
    """What a run produced: the model, its metrics per epoch, where the files are, the test evaluation."""

    model: Classifier
    metrics: list[dict[str, float]]
    out_dir: Path
    test: Evaluation


def load_data(config: TrainConfig) -> ImageDataset:
    """The configuration's dataset (errors name the option at fault)."""
    return check.dataset(config.dataset, config.data_dir, val_size=config.val_size)


def load_config(run_dir: str | Path) -> TrainConfig:
    """The configuration the run's last checkpoint was trained with."""
    return load_run_config(run_dir, COMMAND, TrainConfig.from_dict)


def load_trained(run_dir: str | Path) -> tuple[TrainConfig, Classifier]:
    """The configuration and the model of a run, with the weights of its last checkpoint, in eval mode."""
    config = load_config(run_dir)
    model = build_model(config.model, IMAGE_SHAPES[config.dataset], NUM_CLASSES)
    load_checkpoint(run_dir, model=model)
    model.eval()
    return config, model


def _run_rules(config: TrainConfig, data: ImageDataset) -> dict[str, Any]:
    """What the run layer needs to know of a classification run: its description and which options may change."""
    return {"config": {**asdict(config), "data": data.fingerprint(labels=True)}, "volatile": VOLATILE, "fixed": FIXED}


def train(config: TrainConfig, options: RunOptions | None = None, *, data: ImageDataset | None = None) -> TrainResult:
    """Train (or, with ``options.resume``, continue) a classifier in the run directory ``options.out`` (default
    ``runs/classify``); see :mod:`kldiv.runs` for the rules of the directory and the guarantees of resume."""
    options = options or RunOptions(out="runs/classify")
    data = data if data is not None else load_data(config)
    n = data.train.shape[0]
    if n == 0:
        raise OptionError("val_size", f"leaves no training images (the dataset has {data.val.shape[0]})")
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.image_shape, NUM_CLASSES)
    model.check_images(data.train, "the training images")
    target = config.target_probs()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    if world()[1] > 1:
        raise RunError("kldiv classify train runs in one process; start it without torchrun")
    with Run.open(options, command=COMMAND, **_run_rules(config, data)) as run:
        loop = TrainingLoop(
            run,
            model=model,
            epochs=config.epochs,
            optimizers={"adam": optimizer},
            data_size=n,
            batch_size=config.batch_size,
            seed=config.seed,
            tensorboard=config.figures,
        )
        for _ in loop.epochs():
            model.train()
            for index in loop.batches():
                x, y = data.train[index], data.train_labels[index]
                logits = model(x)
                with validation(False):  # the images were checked once; a non-finite loss stops training below
                    terms = regularized_loss(logits, y, reg=config.reg, beta=config.beta, target=target, eps=config.eps)
                loop.check_finite(terms.total, hint="Try a smaller learning rate.")
                optimizer.zero_grad(set_to_none=True)
                terms.total.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                with torch.no_grad():
                    size = x.shape[0]
                    loop.accumulate(
                        size,
                        train_loss=terms.total.detach() * size,
                        train_ce=terms.cross_entropy.detach() * size,
                        train_reg=terms.regularizer.detach() * size,
                        train_accuracy=accuracy(logits.detach(), y) * size,
                    )
                loop.show(loss=terms.total)
            held_out = data.val.shape[0] > 0
            ev = evaluate(
                model,
                data.val if held_out else data.test,
                data.val_labels if held_out else data.test_labels,
                batch_size=config.eval_batch_size,
                n_bins=config.n_bins,
            )
            loop.end_epoch(eval_accuracy=ev.accuracy, eval_nll=ev.nll, eval_ece=ev.ece, eval_brier=ev.brier)
        loop.close()
        test = evaluate(model, data.test, data.test_labels, batch_size=config.eval_batch_size, n_bins=config.n_bins)
        if run.is_main and config.figures:
            from kldiv.classify.plots import write_figures

            write_figures(loop.metrics, test, run.directory)
    return TrainResult(model=model, metrics=loop.metrics, out_dir=run.directory, test=test)
