"""Training a VIB classifier, top to bottom: data, the network, the objective, the loop, the evaluation, and the
beta sweep.

The loss per example is :func:`kldiv.vib.model.vib_terms`: the cross-entropy of ``train_samples`` sampled codes plus
``beta`` times the rate ``KL(q(z|x) || N(0, I))``. Evaluation on the test set averages the softmax over
``eval_samples`` codes (drawn from a generator seeded per epoch, so it neither depends on nor disturbs the training
noise) and reports the accuracy, the NLL of that average and the mean rate (nats per example: an upper bound on
``I(Z; X)``). The code noise comes from torch's global generator, which the run layer saves in every checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kldiv.bayes.predict import predictive_log_probs
from kldiv.data import DATASETS, IMAGE_SHAPES, ImageDataset
from kldiv.runs import OptionError, Run, RunOptions, TrainingLoop, load_checkpoint
from kldiv.runs import load_config as load_run_config
from kldiv.runs import options as check
from kldiv.vib.model import VIBClassifier, vib_terms

__all__ = ["TrainConfig", "TrainResult", "VIBMetrics", "evaluate", "load_config", "load_trained", "run_rules", "train"]

COMMAND = "vib train"
NUM_CLASSES = 10
VOLATILE = ("data_dir", "figures", "epochs")
FIXED = ("dataset", "data", "hidden", "z_dim", "batch_size", "seed")
EVAL_SEED_OFFSET = 1000


@dataclass(frozen=True)
class TrainConfig:
    """The options of a VIB run (``kldiv vib train --help`` documents each)."""

    dataset: str = "digits"
    data_dir: str | None = None
    hidden: str = "1024,1024"
    z_dim: int = 256
    beta: float = 1e-3
    train_samples: int = 1
    eval_samples: int = 12
    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    figures: bool = True

    def __post_init__(self) -> None:
        check.choice("dataset", self.dataset, DATASETS)
        object.__setattr__(self, "hidden", ",".join(map(str, check.widths("hidden", self.hidden))))
        for name in ("z_dim", "train_samples", "eval_samples", "epochs", "batch_size"):
            check.integer(name, getattr(self, name), low=1)
        check.number("beta", self.beta, low=0.0)
        check.number("lr", self.lr, low=0.0, low_open=True)
        check.seed("seed", self.seed)
        if not isinstance(self.figures, bool):
            raise OptionError("figures", "must be True or False")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise OptionError("data_dir", f"must be a path, got {self.data_dir!r}")


@dataclass(frozen=True)
class VIBMetrics:
    """Test metrics: accuracy and NLL of the ``S``-code predictive, and the mean rate (nats per example)."""

    accuracy: float
    nll: float
    rate: float


@dataclass
class TrainResult:
    """The trained model, the metrics per epoch, the test metrics and where the files are."""

    model: VIBClassifier
    metrics: list[dict[str, float]]
    test: VIBMetrics
    out_dir: Path


def load_config(run_dir: str | Path) -> TrainConfig:
    """The configuration the run's last checkpoint was trained with."""
    return load_run_config(run_dir, COMMAND, TrainConfig)


def build_model(config: TrainConfig) -> VIBClassifier:
    """The VIB classifier of the configuration, initialized from its seed."""
    c, h, w = IMAGE_SHAPES[config.dataset]
    torch.manual_seed(config.seed)
    return VIBClassifier(c * h * w, check.widths("hidden", config.hidden), config.z_dim, NUM_CLASSES)


def load_trained(run_dir: str | Path) -> tuple[TrainConfig, VIBClassifier]:
    """The configuration and the model of a run (its last checkpoint), in eval mode."""
    config = load_config(run_dir)
    model = build_model(config)
    load_checkpoint(run_dir, model=model)
    return config, model.eval()


@torch.no_grad()
def evaluate(model: VIBClassifier, x: Tensor, y: Tensor, *, samples: int, seed: int, chunk: int = 1000) -> VIBMetrics:
    """Accuracy, NLL and mean rate on ``(x, y)``: the softmax averaged over ``samples`` codes (from ``seed``; torch's
    global generator is left as it was)."""
    check.integer("samples", samples, low=1)
    check.integer("chunk", chunk, low=1)
    was_training = model.training
    model.eval()
    correct, nll, rate = 0.0, 0.0, 0.0
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for start in range(0, x.shape[0], chunk):
                xb, yb = x[start : start + chunk], y[start : start + chunk]
                logits, mu, log_sigma = model(xb, samples)
                log_p = predictive_log_probs(torch.log_softmax(logits, -1))
                correct += float((log_p.argmax(-1) == yb).sum())
                nll += float(-log_p.gather(-1, yb[:, None]).sum())
                rate += float(vib_terms(logits, yb, mu, log_sigma, beta=0.0).rate) * xb.shape[0]
    finally:
        model.train(was_training)
    n = x.shape[0]
    return VIBMetrics(correct / n, nll / n, rate / n)


def run_rules(config: TrainConfig, data: ImageDataset) -> dict[str, Any]:
    """What defines a run (its configuration and data) and which options a resume may change, for
    :meth:`kldiv.runs.Run.open` and :meth:`kldiv.runs.Run.check`."""
    return {
        "config": {**asdict(config), "data": data.fingerprint(labels=True)},
        "volatile": VOLATILE,
        "fixed": FIXED,
    }


def train(config: TrainConfig, options: RunOptions | None = None, *, data: ImageDataset | None = None) -> TrainResult:
    """Train (or, with ``options.resume``, continue) a VIB classifier in ``options.out`` (default ``runs/vib``);
    see :mod:`kldiv.runs` for the rules of the directory and the guarantees of resume."""
    options = options or RunOptions(out="runs/vib")
    data = data if data is not None else check.dataset(config.dataset, config.data_dir, val_size=0)
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, foreach=True)
    n = data.train.shape[0]
    with Run.open(options, command=COMMAND, **run_rules(config, data)) as run:
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
        for epoch in loop.epochs():
            model.train()
            for index in loop.batches():
                x, y = data.train[index], data.train_labels[index]
                logits, mu, log_sigma = model(x, config.train_samples)
                terms = vib_terms(logits, y, mu, log_sigma, beta=config.beta)
                loop.check_finite(terms.loss, hint="Try a smaller --lr.")
                optimizer.zero_grad(set_to_none=True)
                terms.loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                size = x.shape[0]
                loop.accumulate(
                    size, train_loss=terms.loss * size, train_nll=terms.nll * size, train_rate=terms.rate * size
                )
                loop.show(loss=terms.loss, rate=terms.rate)
            m = evaluate(
                model,
                data.test,
                data.test_labels,
                samples=config.eval_samples,
                seed=config.seed + EVAL_SEED_OFFSET + epoch,
            )
            loop.end_epoch(test_accuracy=m.accuracy, test_nll=m.nll, test_rate=m.rate)
        loop.close()
        test = evaluate(model, data.test, data.test_labels, samples=config.eval_samples, seed=config.seed)
        if run.is_main and config.figures and loop.metrics:
            from kldiv.report import write_pngs
            from kldiv.vib.plots import curves_figure

            write_pngs({"curves": curves_figure(loop.metrics)}, run.directory)
    model.eval()
    return TrainResult(model=model, metrics=loop.metrics, test=test, out_dir=run.directory)
