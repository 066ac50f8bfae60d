"""Training a regularized or distilled classifier, top to bottom: data, model, loss, the loop, evaluation, figures.

The loss is the cross-entropy plus one regularizer of the predictive distribution (:mod:`kldiv.classify.objective`,
whose formulas all come from :mod:`kldiv.losses`); by default the tutorial's: ``beta KL(pbar || U)`` of the
batch-average prediction. Given a ``teacher`` (the run directory of another classification run), the loss is
instead Hinton's distillation loss against the teacher's logits on the training images, computed once, in eval
mode, before training; a regularizer cannot be added to it. ``train_fraction`` trains on a class-stratified random
subset of the training set drawn from the random seed (:func:`training_subset`), the same for every run of that seed.
The metrics come from :mod:`kldiv.metrics`; the run directory, checkpoints, exact resume, metrics file, progress
bar and NaN stop from :mod:`kldiv.runs`. Training runs in one process.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from kldiv._validate import validation
from kldiv.classify.model import DEFAULT_HIDDEN, MODELS, STUDENT_HIDDEN, Classifier, build_model
from kldiv.classify.objective import (
    REGULARIZERS,
    Evaluation,
    LossTerms,
    distilled_loss,
    evaluate,
    predict_logits,
    regularized_loss,
)
from kldiv.data import DATASETS, IMAGE_SHAPES, ImageDataset
from kldiv.metrics import accuracy
from kldiv.runs import (
    OptionError,
    Run,
    RunError,
    RunOptions,
    TrainingLoop,
    load_checkpoint,
    option_text,
    saved_config,
    world,
)
from kldiv.runs import load_config as load_run_config
from kldiv.runs import options as check

COMMAND = "classify train"
NUM_CLASSES = 10
# options a resume may change without changing the run (n_bins is not one: the ECE column would change meaning)
# (the teacher's directory may move: its weights, ``teacher_weights``, are what the run depends on)
VOLATILE = ("data_dir", "figures", "eval_batch_size", "epochs", "teacher")
# options that can never change within a run: the weights' shapes, the data and its order, the teacher
FIXED = ("dataset", "data", "val_size", "train_fraction", "batch_size", "model", "hidden", "seed", "teacher_weights")
DEFAULT_TEMPERATURE = 4.0
DEFAULT_ALPHA = 0.9
SUBSET_SEED_OFFSET = 2  # the subset's generator: seed + 2 (the model's initialization and data order use seed)
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
    hidden: int | None = None
    reg: str | None = None
    beta: float = 0.1
    target: str | None = None
    eps: float = 0.1
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    val_size: int = 0
    seed: int = 0
    figures: bool = True
    eval_batch_size: int = 256
    n_bins: int = 15
    train_fraction: float = 1.0
    teacher: str | None = None
    temperature: float | None = None
    alpha: float | None = None

    def __post_init__(self) -> None:
        check.choice("dataset", self.dataset, DATASETS)
        check.choice("model", self.model, MODELS)
        if self.hidden is not None:
            check.integer("hidden", self.hidden, low=1)
            if self.model != "mlp":
                raise OptionError("hidden", f"is the width of model 'mlp'; the {self.model!r} model's are fixed")
        elif self.model == "mlp":
            object.__setattr__(self, "hidden", STUDENT_HIDDEN.get(IMAGE_SHAPES[self.dataset], DEFAULT_HIDDEN))
        object.__setattr__(
            self,
            "train_fraction",
            check.number("train_fraction", self.train_fraction, low=0.0, low_open=True, high=1.0),
        )
        self._check_teacher()
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

    def _check_teacher(self) -> None:
        """With a teacher: reg 'none' (the default), temperature > 0 and alpha in [0, 1] (defaults 4 and 0.9).
        Without: the default reg 'kl-uniform', and no temperature or alpha."""
        if self.teacher is None:
            for name in ("temperature", "alpha"):
                if getattr(self, name) is not None:
                    raise OptionError(name, "is only used with a teacher (--teacher, a run of `kldiv classify train`)")
            object.__setattr__(self, "reg", "kl-uniform" if self.reg is None else self.reg)
            return
        if not isinstance(self.teacher, str) or not self.teacher:
            raise OptionError("teacher", f"must be the path of a run directory, got {self.teacher!r}")
        if self.reg not in (None, "none"):
            raise OptionError(
                "reg",
                f"{self.reg!r} cannot be combined with a teacher: the distilled loss already replaces the labels' "
                "cross-entropy by a mixture with the teacher's soft targets; give reg 'none' (the default with a "
                "teacher)",
            )
        object.__setattr__(self, "reg", "none")
        temperature = DEFAULT_TEMPERATURE if self.temperature is None else self.temperature
        alpha = DEFAULT_ALPHA if self.alpha is None else self.alpha
        object.__setattr__(self, "temperature", check.number("temperature", temperature, low=0.0, low_open=True))
        object.__setattr__(self, "alpha", check.number("alpha", alpha, low=0.0, high=1.0))

    def target_probs(self) -> torch.Tensor | None:
        """The target distribution of ``kl-target`` as a float32 tensor ``(C,)``, else ``None``."""
        return None if self.target is None else torch.tensor(parse_target(self.target))


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
    return load_run_config(run_dir, COMMAND, TrainConfig)


def load_trained(run_dir: str | Path) -> tuple[TrainConfig, Classifier]:
    """The configuration and the model of a run, with the weights of its last checkpoint, in eval mode."""
    config = load_config(run_dir)
    model = build_model(config.model, IMAGE_SHAPES[config.dataset], NUM_CLASSES, hidden=config.hidden)
    load_checkpoint(run_dir, model=model)
    model.eval()
    return config, model


def training_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """The sorted indices of a class-stratified random subset of the images with ``labels``: from each class with
    ``n_c`` images, ``max(1, round(fraction * n_c))`` drawn without replacement (classes in increasing order, one
    ``randperm`` each, from a generator seeded with ``seed + SUBSET_SEED_OFFSET``); every index when ``fraction``
    is 1. Two runs of the same seed and fraction get the same subset, whatever else differs."""
    if fraction == 1.0:
        return torch.arange(labels.shape[0])
    generator = torch.Generator().manual_seed(seed + SUBSET_SEED_OFFSET)
    chosen = []
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero().flatten()
        take = max(1, round(fraction * members.shape[0]))
        chosen.append(members[torch.randperm(members.shape[0], generator=generator)[:take]])
    return torch.cat(chosen).sort().values


def weights_fingerprint(model: torch.nn.Module) -> str:
    """What a model's weights are, to tell a teacher from another: the SHA-256 of its state dict (every entry's
    name, dtype, shape and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(f"{name} {value.dtype} {tuple(value.shape)}\n".encode())
        digest.update(value.detach().contiguous().cpu().numpy().tobytes())
    return f"sha256 {digest.hexdigest()[:16]}"


def load_teacher(config: TrainConfig) -> tuple[Classifier, str] | None:
    """The teacher of a distilled run (its model in eval mode, and its weights' fingerprint), or ``None``.
    Raises :class:`OptionError` naming ``teacher`` when it is not a classification run of the same dataset."""
    if config.teacher is None:
        return None
    try:
        teacher_config, model = load_trained(config.teacher)
    except (FileNotFoundError, ValueError, RunError) as e:
        raise OptionError("teacher", str(e)) from None
    if teacher_config.dataset != config.dataset:
        raise OptionError(
            "teacher", f"{config.teacher} was trained on {teacher_config.dataset!r}, this run uses {config.dataset!r}"
        )
    return model, weights_fingerprint(model)


@dataclass(frozen=True)
class _Prepared:
    """A run's training data (the subset), its teacher, and what the run layer is told."""

    data: ImageDataset
    teacher: Classifier | None
    rules: dict[str, Any]


def _prepare(config: TrainConfig, data: ImageDataset | None) -> _Prepared:
    data = data if data is not None else load_data(config)
    if data.train.shape[0] == 0:
        raise OptionError("val_size", f"leaves no training images (the dataset has {data.val.shape[0]})")
    index = training_subset(data.train_labels, config.train_fraction, config.seed)
    data = replace(data, train=data.train[index], train_labels=data.train_labels[index])
    teacher = load_teacher(config)
    run_config = {
        **asdict(config),
        "data": data.fingerprint(labels=True),
        "teacher_weights": None if teacher is None else teacher[1],
    }
    rules = {"config": run_config, "volatile": VOLATILE, "fixed": FIXED}
    return _Prepared(data, None if teacher is None else teacher[0], rules)


def _check_same_teacher(prepared: _Prepared, options: RunOptions) -> None:
    """On a resume, refuse a teacher whose weights differ from the ones the run was distilled from."""
    if not options.resume:
        return
    saved = saved_config(options.out)
    if saved is None:
        return
    before, now = saved[0].get("teacher_weights"), prepared.rules["config"]["teacher_weights"]
    if before != now:

        def describe(weights: object) -> str:
            return "no teacher" if weights is None else f"a teacher with weights {weights}"

        teacher = option_text("teacher", options.cli)
        raise RunError(
            f"resuming {options.out} would change the teacher: the run was trained with {describe(before)} "
            f"(see {saved[1]}), this one has {describe(now)}. The teacher cannot change within a run: pass the "
            f"run's own {teacher}, or start a new run with another {option_text('out', options.cli)}"
        )


def check_run(config: TrainConfig, options: RunOptions, *, data: ImageDataset | None = None) -> None:
    """Raise what :func:`train` would raise about its options, teacher and run directory, without training or
    writing anything."""
    prepared = _prepare(config, data)
    _check_same_teacher(prepared, options)
    Run.check(options, command=COMMAND, **prepared.rules)


def train(config: TrainConfig, options: RunOptions | None = None, *, data: ImageDataset | None = None) -> TrainResult:
    """Train (or, with ``options.resume``, continue) a classifier in the run directory ``options.out`` (default
    ``runs/classify``); see :mod:`kldiv.runs` for the rules of the directory and the guarantees of resume.
    ``data`` is the whole dataset (``train_fraction`` selects the subset here)."""
    options = options or RunOptions(out="runs/classify")
    prepared = _prepare(config, data)
    data, teacher = prepared.data, prepared.teacher
    n = data.train.shape[0]
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.image_shape, NUM_CLASSES, hidden=config.hidden)
    model.check_images(data.train, "the training images")
    target = config.target_probs()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)  # one kernel for all tensors
    if world()[1] > 1:
        raise RunError("kldiv classify train runs in one process; start it without torchrun")
    _check_same_teacher(prepared, options)
    with Run.open(options, command=COMMAND, **prepared.rules) as run:
        # the teacher's predictions on the training images, once: eval mode (no dropout, fixed statistics)
        teacher_logits = (
            None if teacher is None else predict_logits(teacher, data.train, batch_size=config.eval_batch_size)
        )

        def loss_of(logits: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> LossTerms:
            if teacher_logits is not None:
                assert config.alpha is not None  # both are set with a teacher
                assert config.temperature is not None
                return distilled_loss(
                    logits, y, teacher_logits[index], alpha=config.alpha, temperature=config.temperature
                )
            return regularized_loss(
                logits, y, reg=config.reg or "none", beta=config.beta, target=target, eps=config.eps
            )

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
                    terms = loss_of(logits, y, index)
                loop.check_finite(terms.total, hint="Try a smaller learning rate.")
                optimizer.zero_grad(set_to_none=True)
                terms.total.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                with torch.no_grad(), validation(False):
                    size = x.shape[0]
                    extra = {} if terms.teacher_kl is None else {"train_teacher_kl": terms.teacher_kl * size}
                    loop.accumulate(
                        size,
                        train_loss=terms.total.detach() * size,
                        train_ce=terms.cross_entropy.detach() * size,
                        train_reg=terms.regularizer.detach() * size,
                        train_accuracy=accuracy(logits.detach(), y) * size,
                        **extra,
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
