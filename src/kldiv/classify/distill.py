"""Knowledge distillation, measured: a CNN teacher, then per seed a label-only and a distilled MLP student.

Every model is an ordinary classification run (:func:`kldiv.classify.train.train`) in its own directory under
``out``: ``teacher`` (unless an existing run is given as ``teacher``), ``labels-seed{S}`` and
``distilled-seed{S}``. The two students of a seed are paired: the same subset of the training set
(``train_fraction``, drawn from the random seed), the same initial weights and the same order of batches; only their
loss differs (the cross-entropy of the labels, or Hinton's loss against the teacher). The teacher trains on the
whole training set, so with ``train_fraction < 1`` it knows more than the labels the students see.

The summary reports, over the seeds, the mean and the sample standard deviation (``ddof = 1``) of each student's
test accuracy, NLL and ECE, and of the paired difference in accuracy (distilled minus label-only), with that
difference in units of its standard deviation.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from kldiv.classify.model import Classifier, parameter_count
from kldiv.classify.objective import Evaluation, evaluate
from kldiv.classify.train import TrainConfig, check_run, load_trained, train, training_subset
from kldiv.data import ImageDataset
from kldiv.runs import OptionError, RunError, RunOptions, atomic_write_bytes, option_text, read_checkpoint
from kldiv.runs import options as check
from kldiv.runs.checkpoint import has_checkpoint

__all__ = [
    "DistillConfig",
    "DistillResult",
    "accuracy_figure",
    "distill",
    "mean_std_text",
    "student_config",
    "teacher_config",
]

SUMMARY_FILE = "summary.json"
FIGURE_NAME = "accuracy"
TEACHER_SEED = 0


@dataclass(frozen=True)
class DistillConfig:
    """The options of a distillation experiment (``kldiv distill --help`` documents each). ``teacher``: the run
    directory of an existing ``kldiv classify train`` run to distill from, instead of training one."""

    dataset: str = "digits"
    data_dir: str | None = None
    teacher: str | None = None
    teacher_epochs: int = 10
    student_epochs: int = 30
    temperature: float = 4.0
    alpha: float = 0.9
    train_fraction: float = 1.0
    hidden: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 64
    lr: float = 1e-3

    def __post_init__(self) -> None:
        check.integer("teacher_epochs", self.teacher_epochs, low=1)
        check.integer("student_epochs", self.student_epochs, low=1)
        if isinstance(self.seeds, (str, bytes)) or not isinstance(self.seeds, Sequence) or not self.seeds:
            raise OptionError("seeds", f"must be a non-empty list of seeds, got {self.seeds!r}")
        for seed in self.seeds:
            check.seed("seeds", seed)
        if len(set(self.seeds)) < len(self.seeds):
            raise OptionError("seeds", f"each seed once (each names two run directories), got {list(self.seeds)}")
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if self.teacher is not None and (not isinstance(self.teacher, str) or not self.teacher):
            raise OptionError("teacher", f"must be the path of a run directory, got {self.teacher!r}")
        # the students' and the teacher's own checks (every other option), with a stand-in for a teacher to come
        student_config(self, self.seeds[0], teacher=self.teacher or "teacher")
        teacher_config(self)


def teacher_config(config: DistillConfig) -> TrainConfig:
    """The teacher's run: the tutorial's CNN on the whole training set, plain cross-entropy."""
    return TrainConfig(
        dataset=config.dataset,
        data_dir=config.data_dir,
        model="cnn",
        reg="none",
        epochs=config.teacher_epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=TEACHER_SEED,
        figures=False,
    )


def student_config(config: DistillConfig, seed: int, *, teacher: str | None) -> TrainConfig:
    """A student's run: the MLP on the subset drawn from the random seed; distilled from ``teacher`` (a run
    directory), or, with ``None``, trained on the labels alone."""
    distilled = teacher is not None
    return TrainConfig(
        dataset=config.dataset,
        data_dir=config.data_dir,
        model="mlp",
        hidden=config.hidden,
        reg=None if distilled else "none",
        epochs=config.student_epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=seed,
        figures=False,
        train_fraction=config.train_fraction,
        teacher=teacher,
        temperature=config.temperature if distilled else None,
        alpha=config.alpha if distilled else None,
    )


@dataclass
class DistillResult:
    """The test evaluations of the teacher and of each seed's students, and the summary (``summary.json``)."""

    teacher: Evaluation
    labels: list[Evaluation]
    distilled: list[Evaluation]
    summary: dict[str, Any]
    out_dir: Path


def _finished(directory: Path, epochs: int) -> bool:
    """Whether the run in ``directory`` has completed ``epochs`` epochs (its checkpoint is an epoch end)."""
    if not has_checkpoint(directory):
        return False
    loop = read_checkpoint(directory).state.get("loop")
    return isinstance(loop, dict) and loop.get("epoch") == epochs and loop.get("batch") == 0


def _plan(options: RunOptions, epochs: int) -> RunOptions | None:
    """How to run one directory: ``None`` when ``resume`` finds it finished (it is evaluated, not opened); with
    ``resume``, a fresh start where nothing was saved yet."""
    if not options.resume:
        return options
    if _finished(Path(options.out), epochs):
        return None
    return options if has_checkpoint(options.out) else replace(options, resume=False)


def _train_or_load(
    config: TrainConfig, options: RunOptions, data: ImageDataset, epochs_option: str
) -> tuple[Classifier, Evaluation]:
    """The trained model of a run and its test evaluation: trained (or continued) now, or, when ``resume`` finds
    it finished, loaded. ``epochs_option`` names this run's epochs in messages."""
    plan = _plan(options, config.epochs)
    if plan is not None:
        try:
            result = train(config, plan, data=data)
        except OptionError as e:  # the run has more epochs than asked
            if e.option != "epochs":
                raise
            raise OptionError(epochs_option, e.message) from None
        return result.model, result.test
    check_run(config, options, data=data)  # a finished run is reused only if it is the run asked for
    _, model = load_trained(options.out)
    test = evaluate(model, data.test, data.test_labels, batch_size=config.eval_batch_size, n_bins=config.n_bins)
    return model, test


def _check(config: TrainConfig, options: RunOptions, data: ImageDataset) -> None:
    plan = _plan(options, config.epochs)
    check_run(config, options if plan is None else plan, data=data)


def _stats(values: Sequence[float]) -> dict[str, Any]:
    """The values, their mean and their sample standard deviation (``ddof = 1``; None for one value)."""
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"values": list(values), "mean": statistics.fmean(values), "std": std}


def mean_std_text(stats: dict[str, Any], digits: int = 4, *, signed: bool = False) -> str:
    """``mean ± std`` of a summary entry (the mean alone when there is one seed); ``signed``: ``+`` shown."""
    std = stats["std"]
    sign = "+" if signed else ""
    return f"{stats['mean']:{sign}.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def _student_summary(evaluations: Sequence[Evaluation]) -> dict[str, Any]:
    return {key: _stats([getattr(e, key) for e in evaluations]) for key in ("accuracy", "nll", "ece", "brier")}


def summarize(
    config: DistillConfig,
    teacher: tuple[Classifier, Evaluation, str],
    student: Classifier,
    labels: Sequence[Evaluation],
    distilled: Sequence[Evaluation],
    train_images: int,
) -> dict[str, Any]:
    """The numbers of ``summary.json`` (see the module docstring)."""
    teacher_model, teacher_test, teacher_run = teacher
    difference = _stats([d.accuracy - b.accuracy for d, b in zip(distilled, labels, strict=True)])
    std = difference["std"]
    difference["in_std"] = difference["mean"] / std if std else None
    teacher_params, student_params = parameter_count(teacher_model), parameter_count(student)
    return {
        "dataset": config.dataset,
        "seeds": list(config.seeds),
        "train_fraction": config.train_fraction,
        "temperature": config.temperature,
        "alpha": config.alpha,
        "std": "sample standard deviation over the seeds (ddof=1)",
        "teacher": {
            "run": teacher_run,
            "parameters": teacher_params,
            "accuracy": teacher_test.accuracy,
            "nll": teacher_test.nll,
            "ece": teacher_test.ece,
            "brier": teacher_test.brier,
        },
        "student": {
            "parameters": student_params,
            "teacher_to_student": teacher_params / student_params,
            "train_images": train_images,
        },
        "labels": _student_summary(labels),
        "distilled": _student_summary(distilled),
        "accuracy_difference": difference,
    }


def accuracy_figure(summary: dict[str, Any]) -> Figure:
    """Test accuracy per seed of both students, with the teacher's as a horizontal line."""
    from kldiv.viz import new_figure

    fig, ax = new_figure(5.0, 3.5)
    seeds = summary["seeds"]
    positions = range(len(seeds))
    for key, label, marker in (("labels", "label-only student", "o"), ("distilled", "distilled student", "s")):
        ax.plot(positions, summary[key]["accuracy"]["values"], marker=marker, ls="", ms=7, label=label)
    ax.axhline(summary["teacher"]["accuracy"], ls="--", color="#555555", label="teacher")
    ax.set_xticks(list(positions), [str(s) for s in seeds])
    ax.set_xlabel("seed")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    ax.set_title(f"distillation, {summary['dataset']}, train fraction {summary['train_fraction']:g}")
    return fig


def distill(config: DistillConfig, options: RunOptions, *, data: ImageDataset | None = None) -> DistillResult:
    """Train (or reuse) the teacher, then each seed's label-only and distilled students, in ``options.out``;
    write ``summary.json`` and ``accuracy.png`` there. ``options.resume`` continues the unfinished runs and leaves
    the finished ones as they are; ``options.overwrite`` replaces them. Every run directory is checked before the
    first one trains (a distilled student's teacher, when it is trained here, after the teacher)."""
    out = Path(options.out)
    _check_out(out)
    data = data if data is not None else check.dataset(config.dataset, config.data_dir, val_size=0)
    at = {name: replace(options, out=out / name) for name in ("teacher", *_student_names(config.seeds))}
    teacher_run = Path(config.teacher) if config.teacher is not None else out / "teacher"
    own_teacher = config.teacher is None
    teacher_ready = not own_teacher or _finished(teacher_run, config.teacher_epochs)
    if own_teacher:
        _check(teacher_config(config), at["teacher"], data)
    for seed in config.seeds:
        _check(student_config(config, seed, teacher=None), at[f"labels-seed{seed}"], data)
        student_options = at[f"distilled-seed{seed}"]
        if not teacher_ready and student_options.resume and has_checkpoint(student_options.out):
            raise RunError(
                f"{student_options.out} was distilled from {teacher_run}, which has not completed "
                f"{config.teacher_epochs} epochs: training it further would change the teacher of that run. Give "
                f"the teacher's own {option_text('teacher_epochs', options.cli)}, or replace every run with "
                f"{option_text('overwrite', options.cli)}"
            )
        # before the teacher exists, only the directory can be checked (any configuration does for that)
        teacher = str(teacher_run) if teacher_ready else None
        _check(student_config(config, seed, teacher=teacher), student_options, data)
    if own_teacher:
        teacher_model, teacher_test = _train_or_load(teacher_config(config), at["teacher"], data, "teacher_epochs")
    else:
        _, teacher_model = load_trained(teacher_run)
        teacher_test = evaluate(teacher_model, data.test, data.test_labels)
    if not teacher_ready:
        for seed in config.seeds:
            _check(student_config(config, seed, teacher=str(teacher_run)), at[f"distilled-seed{seed}"], data)
    labels, distilled = [], []
    student: Classifier | None = None
    for seed in config.seeds:
        config_l = student_config(config, seed, teacher=None)
        student, test = _train_or_load(config_l, at[f"labels-seed{seed}"], data, "student_epochs")
        labels.append(test)
        config_d = student_config(config, seed, teacher=str(teacher_run))
        distilled.append(_train_or_load(config_d, at[f"distilled-seed{seed}"], data, "student_epochs")[1])
    assert student is not None  # there is at least one seed
    train_images = training_subset(data.train_labels, config.train_fraction, config.seeds[0]).shape[0]
    summary = summarize(
        config, (teacher_model, teacher_test, str(teacher_run)), student, labels, distilled, train_images
    )
    atomic_write_bytes(out / SUMMARY_FILE, (json.dumps(_finite_or_null(summary), indent=2) + "\n").encode())
    from kldiv.report import write_pngs

    write_pngs({FIGURE_NAME: accuracy_figure(summary)}, out)
    return DistillResult(teacher=teacher_test, labels=labels, distilled=distilled, summary=summary, out_dir=out)


def _check_out(out: Path) -> None:
    """Refuse an ``out`` that holds anything but the files of a distillation experiment."""
    if not out.is_dir():
        return
    own = {"teacher", SUMMARY_FILE, f"{FIGURE_NAME}.png"}
    others = sorted(p.name for p in out.iterdir() if p.name not in own and not _is_student_name(p.name))
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise OptionError(
            "out", f"{out} holds files that are not of a distillation experiment ({shown}); choose a new or empty one"
        )


def _is_student_name(name: str) -> bool:
    kind, _, seed = name.partition("-seed")
    return kind in ("labels", "distilled") and seed.isdigit()


def _student_names(seeds: Sequence[int]) -> list[str]:
    return [f"{kind}-seed{seed}" for seed in seeds for kind in ("labels", "distilled")]


def _finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value
