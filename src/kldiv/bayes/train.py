"""Training a Bayesian MLP, top to bottom: data, networks, the negative ELBO, the loop, the predictive, figures.

The network is an MLP whose every ``nn.Linear`` is a :class:`~kldiv.bayes.layers.BayesianLinear`
(:func:`~kldiv.bayes.convert.bayesianize` of the deterministic MLP, so both start from the same weights). Its
loss is the negative ELBO per training example (:func:`~kldiv.bayes.objective.negative_elbo`),
``loss = mean NLL + beta_t KL(q || p) / N`` with ``beta_t = beta * schedule(t)`` at optimizer step ``t``
(:mod:`kldiv.schedules`). The deterministic baseline, the same MLP with plain layers, is trained alongside on
the same batches by its own optimizer with the same likelihood (cross-entropy, or the Gaussian NLL with the same
noise std): one run, one checkpoint holding both.

Two tasks: ``classify`` (digits or MNIST, inputs flattened, a categorical likelihood) and ``regression`` (the
1-D toy of :mod:`kldiv.bayes.toy`, a Gaussian likelihood with a fixed noise std). Evaluation uses the Monte
Carlo predictive with ``samples`` draws (:mod:`kldiv.bayes.predict`), drawn from a generator seeded per epoch,
so an evaluation neither depends on nor disturbs the training noise. The weight noise comes from torch's
global generator, which the run layer saves in every checkpoint: a resumed run replays it exactly.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kldiv.bayes.convert import bayesianize, kl_loss
from kldiv.bayes.layers import MODES, BayesianLayer
from kldiv.bayes.objective import classification_nll, gaussian_nll, negative_elbo
from kldiv.bayes.predict import (
    ClassMetrics,
    RegressionPredictive,
    class_predictive,
    classification_metrics,
    mixture_nll,
    ood_auroc,
    regression_predictive,
    sample_outputs,
)
from kldiv.bayes.priors import GaussianPrior, Prior, ScaleMixturePrior
from kldiv.bayes.toy import NOISE_STD, PLOT_RANGE, ToyData, toy_regression
from kldiv.data import DATASETS, IMAGE_SHAPES, ImageDataset
from kldiv.report import write_pngs
from kldiv.runs import OptionError, Run, RunOptions, TrainingLoop, load_checkpoint
from kldiv.runs import load_config as load_run_config
from kldiv.runs import options as check
from kldiv.schedules import Cyclical, Scaled, parse_schedule

__all__ = [
    "OOD_KINDS",
    "RegressionMetrics",
    "TrainConfig",
    "TrainResult",
    "baseline_of",
    "evaluate",
    "evaluate_ood",
    "load_config",
    "load_trained",
    "toy_predictive",
    "train",
]

COMMAND = "bnn train"
TASKS = ("classify", "regression")
PRIORS = ("gaussian", "mixture")
OOD_KINDS = ("rotate", "noise")
NUM_CLASSES = 10
TOY = "toy"
MIXTURE_PI = 0.5
MIXTURE_SIGMA2 = math.exp(-6.0)  # the narrow component of Blundell et al.'s scale mixture
# per task: the defaults of the options left unset
DEFAULTS: dict[str, dict[str, Any]] = {
    "classify": {
        "dataset": "digits",
        "hidden": "400,400",
        "init_std": 1e-3,
        "epochs": 10,
        "batch_size": 128,
        "lr": 1e-3,
    },
    "regression": {"dataset": TOY, "hidden": "32,32", "init_std": 0.05, "epochs": 20, "batch_size": 5, "lr": 1e-2},
}
# options a resume may change without changing the run (epochs too, unless the schedule spans the whole run)
VOLATILE = ("data_dir", "figures")
# options that can never change within a run: the networks' shapes, the data and its order
FIXED = ("task", "dataset", "data", "hidden", "baseline", "batch_size", "seed")
GRID_POINTS = 321
BAND_SAMPLES = 200
EVAL_SEED_OFFSET = 1000  # epoch e's evaluation draws from seed + 1000 + e; the test evaluation from seed


def parse_hidden(text: object) -> tuple[int, ...]:
    """The hidden widths from ``"400,400"``; :class:`OptionError` naming ``hidden``."""
    return check.widths("hidden", text)


@dataclass(frozen=True)
class TrainConfig:
    """The options that define a Bayesian MLP run (saved in ``run.json`` and every checkpoint; ``kldiv bnn train
    --help`` documents each). ``None`` means the task's default (:data:`DEFAULTS`)."""

    task: str = "classify"
    dataset: str | None = None
    data_dir: str | None = None
    hidden: str | None = None
    mode: str = "local"
    prior: str = "gaussian"
    prior_sigma: float = 1.0
    init_std: float | None = None
    kl_schedule: str = "constant"
    beta: float = 1.0
    samples: int = 20
    noise_std: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    baseline: bool = True
    seed: int = 0
    n_bins: int = 15
    figures: bool = True

    def __post_init__(self) -> None:
        check.choice("task", self.task, TASKS)
        for name, value in DEFAULTS[self.task].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.task == "classify":
            check.choice("dataset", self.dataset, DATASETS)
            if self.noise_std is not None:
                raise OptionError("noise_std", "is the Gaussian likelihood's; only used with task 'regression'")
        else:
            if self.dataset != TOY:
                raise OptionError("dataset", f"the regression task uses its own 1-D toy set, got {self.dataset!r}")
            if self.data_dir is not None:
                raise OptionError("data_dir", "is only used with task 'classify' (the toy set is generated)")
            noise = NOISE_STD if self.noise_std is None else self.noise_std
            object.__setattr__(self, "noise_std", check.number("noise_std", noise, low=0.0, low_open=True))
        object.__setattr__(self, "hidden", ",".join(map(str, parse_hidden(self.hidden))))
        check.choice("mode", self.mode, MODES)
        check.choice("prior", self.prior, PRIORS)
        for name in ("prior_sigma", "init_std", "lr"):
            object.__setattr__(self, name, check.number(name, getattr(self, name), low=0.0, low_open=True))
        object.__setattr__(self, "beta", check.number("beta", self.beta, low=0.0))
        for name in ("samples", "epochs", "batch_size", "n_bins"):
            check.integer(name, getattr(self, name), low=1)
        check.seed("seed", self.seed)
        for name in ("baseline", "figures"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(name, "must be True or False")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise OptionError("data_dir", f"must be a path, got {self.data_dir!r}")
        self.schedule(steps_per_epoch=1)  # the spec's grammar and numbers; the step counts once the data is known

    @property
    def widths(self) -> tuple[int, ...]:
        """The hidden widths as ints."""
        return parse_hidden(self.hidden)

    def schedule(self, steps_per_epoch: int) -> Scaled:
        """``beta * kl_schedule`` per optimizer step, for ``steps_per_epoch`` steps per epoch."""
        assert self.epochs is not None
        try:
            inner = parse_schedule(
                self.kl_schedule, total_steps=steps_per_epoch * self.epochs, steps_per_epoch=steps_per_epoch
            )
        except (ValueError, TypeError) as e:
            raise OptionError("kl_schedule", str(e)) from None
        return Scaled(inner, self.beta)

    def weight_prior(self) -> Prior:
        """``N(0, prior_sigma^2)``, or the scale mixture ``1/2 N(0, prior_sigma^2) + 1/2 N(0, e^-12)``."""
        if self.prior == "gaussian":
            return GaussianPrior(self.prior_sigma)
        return ScaleMixturePrior(pi=MIXTURE_PI, sigma1=self.prior_sigma, sigma2=MIXTURE_SIGMA2)


@dataclass(frozen=True)
class RegressionMetrics:
    """The predictive mixture's NLL (nats per point) and the RMSE of its mean, on the test and training points."""

    nll: float
    rmse: float
    train_nll: float
    train_rmse: float


@dataclass
class TrainResult:
    """What a run produced: the Bayesian MLP, the baseline (or ``None``), the metrics per epoch, where the files
    are, and the test metrics of both (``baseline_test`` ``None`` without a baseline)."""

    model: nn.Module
    baseline: nn.Module | None
    metrics: list[dict[str, float]]
    out_dir: Path
    test: ClassMetrics | RegressionMetrics
    baseline_test: ClassMetrics | RegressionMetrics | None


Data = ImageDataset | ToyData


def load_data(config: TrainConfig) -> Data:
    """The configuration's data: the image dataset, or the toy set generated from the random seed."""
    if config.task == "regression":
        return toy_regression(config.seed)
    assert config.dataset is not None
    return check.dataset(config.dataset, config.data_dir, val_size=0)


def load_config(run_dir: str | Path) -> TrainConfig:
    """The configuration the run's last checkpoint was trained with."""
    return load_run_config(run_dir, COMMAND, TrainConfig)


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    """``Flatten, Linear(sizes[0], sizes[1]), ReLU, ..., Linear(sizes[-2], sizes[-1])``."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


def build_networks(config: TrainConfig) -> nn.ModuleDict:
    """``{"bnn": ..., "baseline": ...}`` (no baseline when ``config.baseline`` is false), initialized from the
    seed: the Bayesian MLP's means start at the baseline's weights."""
    if config.task == "classify":
        assert config.dataset is not None
        c, h, w = IMAGE_SHAPES[config.dataset]
        sizes = (c * h * w, *config.widths, NUM_CLASSES)
    else:
        sizes = (1, *config.widths, 1)
    torch.manual_seed(config.seed)
    net = mlp(sizes)
    bnn = bayesianize(net, prior=config.weight_prior(), mode=config.mode, init_std=config.init_std)  # type: ignore[arg-type]
    return nn.ModuleDict({"bnn": bnn, "baseline": net} if config.baseline else {"bnn": bnn})


def load_trained(run_dir: str | Path) -> tuple[TrainConfig, nn.Module, nn.Module | None]:
    """The configuration, the Bayesian MLP and the baseline (or ``None``) of a run, with the weights of its last
    checkpoint, in eval mode."""
    config = load_config(run_dir)
    nets = build_networks(config)
    load_checkpoint(run_dir, model=nets)
    nets.eval()
    return config, nets["bnn"], baseline_of(nets)


def baseline_of(nets: nn.ModuleDict) -> nn.Module | None:
    """The baseline of the networks of :func:`build_networks`, or ``None``."""
    return nets["baseline"] if "baseline" in nets else None  # noqa: SIM401 (a ModuleDict has no get)


@contextlib.contextmanager
def seeded_noise(seed: int) -> Iterator[None]:
    """Draw torch's global noise from ``seed`` inside, and leave the global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def stacks(bnn: nn.Module) -> bool:
    """Whether the ``S`` draws may run as one stacked batch: only when every Bayesian layer draws independent
    noise per row (``"local"``); a shared weight draw per pass ("reparam", "flipout") needs one pass per draw."""
    return all(m.mode == "local" for m in bnn.modules() if isinstance(m, BayesianLayer))


def draws(bnn: nn.Module, x: Tensor, samples: int) -> Tensor:
    """``samples`` draws of the Bayesian MLP's outputs ``(S, B, ...)`` (its layers sample in training mode; it has
    no dropout or batch norm), back in its former mode afterwards."""
    was_training = bnn.training
    bnn.train()
    try:
        return sample_outputs(bnn, x, samples, stack=stacks(bnn))
    finally:
        bnn.train(was_training)


def deterministic(net: nn.Module, x: Tensor) -> Tensor:
    """The baseline's outputs as one draw ``(1, B, ...)``, in eval mode, without gradients."""
    net.eval()
    with torch.no_grad():
        out: Tensor = net(x)
    return out.unsqueeze(0)


def evaluate_classes(net: nn.Module, x: Tensor, y: Tensor, *, samples: int, n_bins: int) -> ClassMetrics:
    """Accuracy, NLL, Brier, ECE and mean uncertainties of the predictive: ``samples`` draws of a Bayesian MLP,
    or a deterministic network's single prediction."""
    is_bayesian = any(isinstance(m, BayesianLayer) for m in net.modules())
    logits = draws(net, x, samples) if is_bayesian else deterministic(net, x)
    return classification_metrics(class_predictive(logits), y, n_bins=n_bins)


def evaluate_regression(net: nn.Module, data: ToyData, *, samples: int, noise_std: float) -> RegressionMetrics:
    """The predictive mixture's NLL and the RMSE of its mean on the test and the training points."""
    is_bayesian = any(isinstance(m, BayesianLayer) for m in net.modules())
    values = []
    for x, y in ((data.test, data.test_targets), (data.train, data.train_targets)):
        means = draws(net, x, samples) if is_bayesian else deterministic(net, x)
        mean = regression_predictive(means, noise_std).mean
        values += [float(mixture_nll(means, noise_std, y)), float((mean - y).square().mean().sqrt())]
    return RegressionMetrics(*values)


def _row(prefix: str, m: ClassMetrics | RegressionMetrics) -> dict[str, float]:
    if isinstance(m, RegressionMetrics):
        return {f"{prefix}_nll": m.nll, f"{prefix}_rmse": m.rmse, f"{prefix}_train_nll": m.train_nll}
    row = {f"{prefix}_{k}": getattr(m, k) for k in ("accuracy", "nll", "ece", "brier")}
    if prefix == "eval":
        row |= {"eval_entropy": m.predictive_entropy, "eval_bald": m.mutual_information}
    return row


def evaluate(
    config: TrainConfig, nets: nn.ModuleDict, data: Data, seed: int
) -> tuple[ClassMetrics | RegressionMetrics, ClassMetrics | RegressionMetrics | None]:
    """The test metrics of the Bayesian MLP (``config.samples`` draws, from ``seed``) and of the baseline (``None``
    without one), for the networks of :func:`build_networks`."""
    out: list[ClassMetrics | RegressionMetrics] = []
    for name in ("bnn", "baseline"):
        if name not in nets:
            continue
        with seeded_noise(seed):
            if isinstance(data, ToyData):
                assert config.noise_std is not None
                out.append(evaluate_regression(nets[name], data, samples=config.samples, noise_std=config.noise_std))
            else:
                out.append(
                    evaluate_classes(
                        nets[name], data.test, data.test_labels, samples=config.samples, n_bins=config.n_bins
                    )
                )
    return out[0], out[1] if len(out) > 1 else None


def _run_rules(config: TrainConfig, data: Data) -> dict[str, Any]:
    spans_run = isinstance(config.schedule(steps_per_epoch=1).schedule, Cyclical)
    fingerprint = data.fingerprint() if isinstance(data, ToyData) else data.fingerprint(labels=True)
    return {
        "config": {**asdict(config), "data": fingerprint},
        "volatile": VOLATILE if spans_run else (*VOLATILE, "epochs"),
        "fixed": FIXED,
    }


def train(config: TrainConfig, options: RunOptions | None = None, *, data: Data | None = None) -> TrainResult:
    """Train (or, with ``options.resume``, continue) a Bayesian MLP and its baseline in the run directory
    ``options.out`` (default ``runs/bnn``); see :mod:`kldiv.runs` for the rules of the directory and the
    guarantees of resume. ``data``: an :class:`~kldiv.data.ImageDataset` (classify) or a
    :class:`~kldiv.bayes.toy.ToyData` (regression); default: the configuration's."""
    options = options or RunOptions(out="runs/bnn")
    data = data if data is not None else load_data(config)
    regression = config.task == "regression"
    if regression != isinstance(data, ToyData):
        kind = "ToyData" if regression else "ImageDataset"
        raise TypeError(f"data must be a {kind} for task {config.task!r}, got {type(data).__name__}")
    x_all, y_all = (data.train, data.train_targets) if isinstance(data, ToyData) else (data.train, data.train_labels)
    n = x_all.shape[0]
    assert config.batch_size is not None
    assert config.epochs is not None
    assert config.lr is not None
    schedule = config.schedule(math.ceil(n / config.batch_size))
    nets = build_networks(config)
    bnn = nets["bnn"]
    optimizers = {name: torch.optim.Adam(net.parameters(), lr=config.lr) for name, net in nets.items()}
    noise_std = config.noise_std

    def nll(outputs: Tensor, targets: Tensor) -> Tensor:
        if noise_std is not None:
            return gaussian_nll(outputs, targets, noise_std)
        return classification_nll(outputs, targets)

    with Run.open(options, command=COMMAND, **_run_rules(config, data)) as run:
        loop = TrainingLoop(
            run,
            model=nets,
            epochs=config.epochs,
            optimizers=optimizers,
            data_size=n,
            batch_size=config.batch_size,
            seed=config.seed,
            tensorboard=config.figures,
        )
        for epoch in loop.epochs():
            nets.train()
            for index in loop.batches():
                x, y = x_all[index], y_all[index]
                beta_t = schedule(loop.step)
                terms = negative_elbo(nll(bnn(x), y), kl_loss(bnn), dataset_size=n, kl_weight=beta_t)
                loop.check_finite(terms.loss, hint="Try a smaller learning rate or --init-std.")
                losses = {"bnn": terms.loss}
                if "baseline" in nets:
                    losses["baseline"] = nll(nets["baseline"](x), y).mean()
                    loop.check_finite(losses["baseline"], name="baseline loss", hint="Try a smaller learning rate.")
                for name, loss in losses.items():
                    optimizers[name].zero_grad(set_to_none=True)
                    loss.backward()  # type: ignore[no-untyped-call]
                    optimizers[name].step()
                size = x.shape[0]
                sums = {"train_loss": terms.loss.detach() * size, "train_nll": terms.nll.detach() * size}
                sums["train_kl"] = terms.kl.detach() * size
                if "baseline" in losses:
                    sums["baseline_train_nll"] = losses["baseline"].detach() * size
                loop.accumulate(size, **sums)
                loop.show(loss=terms.loss, beta=beta_t)
            ev, base = evaluate(config, nets, data, config.seed + EVAL_SEED_OFFSET + epoch)
            row = {"beta": schedule(max(loop.step - 1, 0)), **_row("eval", ev)}
            loop.end_epoch(**row, **({} if base is None else _row("baseline", base)))
        loop.close()
        test, baseline_test = evaluate(config, nets, data, config.seed)
        nets.eval()
        if run.is_main and config.figures:
            _write_figures(config, nets, data, loop.metrics, (test, baseline_test), run.directory)
    return TrainResult(
        model=bnn,
        baseline=baseline_of(nets),
        metrics=loop.metrics,
        out_dir=run.directory,
        test=test,
        baseline_test=baseline_test,
    )


def toy_predictive(bnn: nn.Module, noise_std: float, *, seed: int = 0) -> tuple[Tensor, RegressionPredictive]:
    """A grid of ``GRID_POINTS`` inputs ``(G, 1)`` over :data:`~kldiv.bayes.toy.PLOT_RANGE` and the Bayesian MLP's
    predictive there, from ``BAND_SAMPLES`` draws (from ``seed``)."""
    grid = torch.linspace(*PLOT_RANGE, GRID_POINTS).unsqueeze(1)
    with seeded_noise(seed):
        means = draws(bnn, grid, BAND_SAMPLES)
    return grid, regression_predictive(means, noise_std)


def _write_figures(
    config: TrainConfig,
    nets: nn.ModuleDict,
    data: Data,
    metrics: list[dict[str, float]],
    tests: tuple[ClassMetrics | RegressionMetrics, ClassMetrics | RegressionMetrics | None],
    out_dir: Path,
) -> list[Path]:
    """curves.png, and reliability.png (classification) or uncertainty.png (regression)."""
    from kldiv.bayes.plots import curves_figure, reliability_pair_figure, uncertainty_figure

    figures = {"curves": curves_figure(metrics)} if metrics else {}
    test, baseline_test = tests
    if isinstance(data, ToyData):
        assert config.noise_std is not None
        grid, predictive = toy_predictive(nets["bnn"], config.noise_std, seed=config.seed)
        base = deterministic(nets["baseline"], grid)[0] if "baseline" in nets else None
        figures["uncertainty"] = uncertainty_figure(data, grid, predictive, base)
    elif isinstance(test, ClassMetrics):
        other = baseline_test if isinstance(baseline_test, ClassMetrics) else None
        figures["reliability"] = reliability_pair_figure(test, other)
    return write_pngs(figures, out_dir)


def ood_images(kind: str, images: Tensor, seed: int) -> Tensor:
    """Out-of-distribution images of ``images``' shape: ``"rotate"``, the images turned by 90 degrees; ``"noise"``,
    pixels uniform in ``[0, 1]`` (from ``seed``)."""
    check.choice("ood", kind, OOD_KINDS)
    if kind == "rotate":
        return torch.rot90(images, 1, dims=(-2, -1))
    return torch.rand(images.shape, generator=torch.Generator().manual_seed(seed))


def evaluate_ood(
    bnn: nn.Module,
    baseline: nn.Module | None,
    images: Tensor,
    *,
    samples: int,
    kinds: tuple[str, ...] = OOD_KINDS,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per kind of OOD image (:func:`ood_images`), the AUROC of telling it from ``images`` (the in-distribution
    test images) by a score (:func:`~kldiv.bayes.predict.ood_auroc`): the Bayesian MLP's predictive entropy
    (``"bnn_entropy"``) and mutual information (``"bnn_mutual_information"``, BALD), and the baseline's entropy
    (``"baseline_entropy"``). The draws come from ``seed``."""
    check.integer("samples", samples, low=1)

    def scores(x: Tensor) -> dict[str, Tensor]:
        with seeded_noise(seed):
            p = class_predictive(draws(bnn, x, samples))
        out = {"bnn_entropy": p.predictive_entropy, "bnn_mutual_information": p.mutual_information}
        if baseline is not None:
            out["baseline_entropy"] = class_predictive(deterministic(baseline, x)).predictive_entropy
        return out

    inside = scores(images)
    result = {}
    for kind in kinds:
        outside = scores(ood_images(kind, images, seed))
        result[kind] = {name: ood_auroc(inside[name], outside[name]) for name in inside}
    return result
