"""Knowledge distillation: the distilled objective against an independent float64 computation, the teacher's
logits, the paired subsets, the students' size, exact resume, the refusal of another teacher, and `kldiv distill`."""

from __future__ import annotations

import json
import shutil
import statistics
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kldiv.classify import train as train_module
from kldiv.classify.distill import DistillConfig
from kldiv.classify.model import KLRegularizedCNN, MLPClassifier, build_model, parameter_count
from kldiv.classify.objective import LossTerms, distilled_loss
from kldiv.classify.train import TrainConfig, load_trained, train, training_subset
from kldiv.data import ImageDataset, load_digits
from kldiv.runs import OptionError, RunError, RunOptions, TrainingLoop, read_run

runner = CliRunner()


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    data = load_digits()
    return replace(data, train=data.train[:400], train_labels=data.train_labels[:400])


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory, digits: ImageDataset) -> dict[str, Path]:
    """Two CNN teachers of one epoch on the digits, from different seeds."""
    root = tmp_path_factory.mktemp("teachers")
    for seed in (0, 1):
        config = TrainConfig(model="cnn", reg="none", epochs=1, seed=seed, figures=False)
        train(config, RunOptions(out=root / f"teacher-{seed}", progress=False), data=digits)
    return {"a": root / "teacher-0", "b": root / "teacher-1"}


def _student(teacher: Path | None, **kw: object) -> TrainConfig:
    base: dict[str, object] = {"model": "mlp", "epochs": 4, "figures": False, "train_fraction": 0.5}
    if teacher is not None:
        base["teacher"] = str(teacher)
    else:
        base["reg"] = "none"
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _run(out: Path, **kw: object) -> RunOptions:
    return RunOptions(out=out, progress=False, **kw)  # type: ignore[arg-type]


def _kl_float64(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> torch.Tensor:
    """``mean_b sum_c p_c (log p_c - log q_c)`` at temperature T, in float64, written out."""
    log_p = torch.log_softmax(teacher.double() / temperature, -1)
    log_q = torch.log_softmax(student.double() / temperature, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


@pytest.mark.parametrize("seed", range(5))
def test_at_unit_temperature_and_alpha_one_the_loss_is_the_forward_kl(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    student, teacher = torch.randn(32, 10, generator=g) * 3, torch.randn(32, 10, generator=g) * 3
    labels = torch.randint(0, 10, (32,), generator=g)
    terms = distilled_loss(student, labels, teacher, alpha=1.0, temperature=1.0)
    expected = _kl_float64(teacher, student, 1.0)
    assert float(terms.total) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
    assert terms.teacher_kl is not None
    assert float(terms.teacher_kl) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(("alpha", "temperature"), [(0.9, 4.0), (0.5, 2.0), (0.0, 3.0), (0.3, 0.5)])
def test_the_loss_is_alpha_t_squared_kl_plus_one_minus_alpha_cross_entropy(alpha: float, temperature: float) -> None:
    g = torch.Generator().manual_seed(7)
    student, teacher = torch.randn(16, 10, generator=g) * 2, torch.randn(16, 10, generator=g) * 2
    labels = torch.randint(0, 10, (16,), generator=g)
    terms = distilled_loss(student, labels, teacher, alpha=alpha, temperature=temperature)
    ce = -torch.log_softmax(student.double(), -1).gather(1, labels[:, None]).mean()
    expected = alpha * temperature**2 * _kl_float64(teacher, student, temperature) + (1 - alpha) * ce
    assert float(terms.total) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
    assert float(terms.cross_entropy) == pytest.approx(float(ce), rel=1e-5)
    assert float(terms.cross_entropy + terms.regularizer) == pytest.approx(float(terms.total), rel=1e-6)


def test_the_teacher_logits_are_exactly_its_eval_mode_outputs(
    tmp_path: Path, digits: ImageDataset, teachers: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[torch.Tensor] = []
    seen: list[torch.Tensor] = []
    real_batches, real_loss = TrainingLoop.batches, train_module.distilled_loss

    def recording_batches(self: TrainingLoop) -> Iterator[torch.Tensor]:
        for index in real_batches(self):
            batches.append(index)
            yield index

    def recording_loss(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor, **kw: float) -> LossTerms:
        seen.append(teacher.clone())
        return real_loss(logits, labels, teacher, **kw)

    monkeypatch.setattr(TrainingLoop, "batches", recording_batches)
    monkeypatch.setattr(train_module, "distilled_loss", recording_loss)
    train(_student(teachers["a"], epochs=2), _run(tmp_path / "student"), data=digits)
    _, teacher = load_trained(teachers["a"])
    images = digits.train[training_subset(digits.train_labels, 0.5, 0)]
    teacher.eval()
    with torch.no_grad():
        expected = teacher(images)  # one batch, as the run's (its eval batch holds every training image)
    assert len(seen) == len(batches) == 2 * 4  # 200 images in batches of 64, two epochs
    for index, got in zip(batches, seen, strict=True):
        assert torch.equal(got, expected[index])


def test_paired_students_share_their_subset_and_other_seeds_draw_another(digits: ImageDataset) -> None:
    labels = digits.train_labels
    first = training_subset(labels, 0.25, 3)
    assert torch.equal(first, training_subset(labels, 0.25, 3))
    assert not torch.equal(first, training_subset(labels, 0.25, 4))
    assert torch.equal(first, first.unique())  # sorted, no repeats
    for c in range(10):  # stratified: each class keeps a quarter of its images, rounded
        n_c = int((labels == c).sum())
        assert int((labels[first] == c).sum()) == max(1, round(0.25 * n_c)), c
    assert torch.equal(training_subset(labels, 1.0, 3), torch.arange(labels.shape[0]))


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8)])
def test_the_default_student_has_about_a_tenth_of_the_teachers_parameters(shape: tuple[int, int, int]) -> None:
    teacher, student = parameter_count(build_model("cnn", shape)), parameter_count(build_model("mlp", shape))
    assert 9.5 <= teacher / student <= 10.5, (teacher, student)
    assert parameter_count(KLRegularizedCNN(shape)) == teacher
    assert parameter_count(MLPClassifier(shape, hidden=(100,))) == (shape[1] * shape[2] + 1) * 100 + 101 * 10


def test_a_distilled_resume_after_two_epochs_is_bit_identical(
    tmp_path: Path, digits: ImageDataset, teachers: dict[str, Path]
) -> None:
    straight = train(_student(teachers["a"]), _run(tmp_path / "straight"), data=digits)
    train(_student(teachers["a"], epochs=2), _run(tmp_path / "split"), data=digits)
    resumed = train(_student(teachers["a"]), _run(tmp_path / "split", resume=True), data=digits)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    timeless = [{k: v for k, v in r.items() if k not in ("seconds", "threads")} for r in resumed.metrics]
    assert timeless == [{k: v for k, v in r.items() if k not in ("seconds", "threads")} for r in straight.metrics]
    assert all(r["train_teacher_kl"] > 0 for r in resumed.metrics)
    assert resumed.test.accuracy == straight.test.accuracy


def test_a_resume_with_another_teacher_is_refused_and_a_moved_one_accepted(
    tmp_path: Path, digits: ImageDataset, teachers: dict[str, Path]
) -> None:
    train(_student(teachers["a"], epochs=1), _run(tmp_path / "run"), data=digits)
    with pytest.raises(RunError, match="would change the teacher"):
        train(_student(teachers["b"], epochs=2), _run(tmp_path / "run", resume=True), data=digits)
    with pytest.raises(RunError, match="would change the teacher"):
        train(_student(None, epochs=2), _run(tmp_path / "run", resume=True), data=digits)
    moved = tmp_path / "moved-teacher"
    shutil.copytree(teachers["a"], moved)
    result = train(_student(moved, epochs=2), _run(tmp_path / "run", resume=True), data=digits)
    assert [r["epoch"] for r in result.metrics] == [1, 2]


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"temperature": 2.0}, "temperature"),
        ({"alpha": 0.5}, "alpha"),
        ({"teacher": "t", "temperature": 0.0}, "temperature"),
        ({"teacher": "t", "temperature": float("nan")}, "temperature"),
        ({"teacher": "t", "alpha": 1.5}, "alpha"),
        ({"teacher": "t", "alpha": -0.1}, "alpha"),
        ({"teacher": "t", "reg": "kl-uniform"}, "reg"),
        ({"teacher": ""}, "teacher"),
        ({"train_fraction": 0.0}, "train_fraction"),
        ({"train_fraction": 1.5}, "train_fraction"),
        ({"hidden": 0, "model": "mlp"}, "hidden"),
        ({"hidden": 100, "model": "cnn"}, "hidden"),
    ],
)
def test_a_bad_distillation_option_raises_option_error_naming_it(options: dict[str, object], option: str) -> None:
    with pytest.raises(OptionError) as info:
        TrainConfig(**options)  # type: ignore[arg-type]
    assert info.value.option == option


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"seeds": ()}, "seeds"),
        ({"seeds": (0, 0)}, "seeds"),
        ({"seeds": (-1,)}, "seeds"),
        ({"teacher_epochs": 0}, "teacher_epochs"),
        ({"student_epochs": 0}, "student_epochs"),
        ({"temperature": -1.0}, "temperature"),
        ({"alpha": 2.0}, "alpha"),
        ({"train_fraction": 0.0}, "train_fraction"),
        ({"hidden": 0}, "hidden"),
        ({"lr": 0.0}, "lr"),
    ],
)
def test_a_bad_experiment_option_raises_option_error_naming_it(options: dict[str, object], option: str) -> None:
    with pytest.raises(OptionError) as info:
        DistillConfig(**options)  # type: ignore[arg-type]
    assert info.value.option == option


def test_a_teacher_of_another_dataset_or_no_run_is_refused(tmp_path: Path, digits: ImageDataset) -> None:
    with pytest.raises(OptionError, match="holds no kldiv run") as info:
        train(_student(tmp_path / "missing"), _run(tmp_path / "run"), data=digits)
    assert info.value.option == "teacher"
    assert not (tmp_path / "run").exists()


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_kldiv_distill_writes_its_summary_and_resume_keeps_finished_runs(tmp_path: Path) -> None:
    from kldiv.cli import app

    out = tmp_path / "distill"
    args = ["distill", "--teacher-epochs", "1", "--student-epochs", "2", "--seeds", "0,1", "--train-fraction", "0.3"]
    args += ["--no-progress", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "distilled − label-only" in result.output
    assert "(ddof=1)" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    for kind in ("labels", "distilled"):
        values = summary[kind]["accuracy"]["values"]
        assert len(values) == 2
        assert summary[kind]["accuracy"]["std"] == pytest.approx(statistics.stdev(values))
        stats = summary[kind]["accuracy"]
        assert f"{stats['mean']:.4f} ± {stats['std']:.4f}" in result.output
    d = [
        a - b
        for a, b in zip(
            summary["distilled"]["accuracy"]["values"], summary["labels"]["accuracy"]["values"], strict=True
        )
    ]
    assert summary["accuracy_difference"]["mean"] == pytest.approx(sum(d) / 2)
    assert f"{summary['accuracy_difference']['mean']:+.4f}" in result.output
    assert summary["student"]["parameters"] == 8710
    assert summary["teacher"]["parameters"] == 87178
    data = {name: read_run(out / name).config["data"] for name in ("labels-seed0", "distilled-seed0", "labels-seed1")}
    assert data["labels-seed0"] == data["distilled-seed0"]  # paired: the same subset
    assert data["labels-seed0"] != data["labels-seed1"]
    subset = training_subset(load_digits().train_labels, 0.3, 0)
    assert data["labels-seed0"].startswith(f"{subset.shape[0]} labelled images")
    assert read_run(out / "teacher").config["data"].startswith("1500 ")  # the teacher sees every image
    # --resume: the finished runs are left alone; a missing one is trained
    before = _files(out)
    shutil.rmtree(out / "distilled-seed1")
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    after = _files(out)
    for name, content in before.items():
        if not name.startswith("distilled-seed1/") and name not in ("summary.json", "accuracy.png"):
            assert after[name] == content, name
    assert (out / "distilled-seed1" / "last.json").is_file()
    again = json.loads((out / "summary.json").read_text())
    for kind in ("labels", "distilled"):  # the same runs again (test accuracies are counts of 297 images)
        assert again[kind]["accuracy"]["values"] == summary[kind]["accuracy"]["values"]


def test_the_tour_section_comes_after_the_vae() -> None:
    from kldiv.report import tour_sections
    from kldiv.tour import import_section_modules

    import_section_modules()
    names = tour_sections.names()
    assert names.index("distill") > names.index("vae")


def test_a_resume_that_would_retrain_the_teacher_of_distilled_students_is_refused_first(
    tmp_path: Path, digits: ImageDataset
) -> None:
    from kldiv.classify.distill import distill

    out = tmp_path / "distill"
    base = {"teacher_epochs": 1, "student_epochs": 2, "train_fraction": 0.3, "seeds": (0,)}
    distill(DistillConfig(**base), _run(out), data=digits)  # type: ignore[arg-type]
    before = _files(out)
    with pytest.raises(RunError, match="has not completed 2 epochs"):
        distill(DistillConfig(**{**base, "teacher_epochs": 2}), _run(out, resume=True), data=digits)  # type: ignore[arg-type]
    assert _files(out) == before  # refused before anything trained
    with pytest.raises(OptionError, match="completed 2 epochs") as info:
        distill(DistillConfig(**{**base, "student_epochs": 1}), _run(out, resume=True), data=digits)  # type: ignore[arg-type]
    assert info.value.option == "student_epochs"
