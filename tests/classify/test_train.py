"""The classification trainer: every regularizer trains, exact resume (metrics included, also mid-epoch), the NaN
stop, the checks of its options, and the `kldiv classify` commands."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kldiv.classify import train as train_module
from kldiv.classify.model import build_model
from kldiv.classify.objective import REGULARIZERS, LossTerms, predict_logits
from kldiv.classify.train import TrainConfig, load_trained, parse_target, train
from kldiv.data import ImageDataset, load_digits, load_mnist
from kldiv.runs import OptionError, RunError, RunOptions, TrainingDivergedError, load_checkpoint

runner = CliRunner()
REAL_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
SKEWED = "0.19,0.09,0.09,0.09,0.09,0.09,0.09,0.09,0.09,0.09"


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    data = load_digits(val_size=100)
    return replace(data, train=data.train[:400], train_labels=data.train_labels[:400])


def _config(**kw: object) -> TrainConfig:
    base: dict[str, object] = {"dataset": "digits", "epochs": 4, "batch_size": 64, "figures": False, "val_size": 100}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _run(out: Path, **kw: object) -> RunOptions:
    return RunOptions(out=out, progress=False, **kw)  # type: ignore[arg-type]


def _timeless(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "threads")} for r in rows]


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("reg", REGULARIZERS)
def test_every_regularizer_trains_and_reports_its_metrics(tmp_path: Path, digits: ImageDataset, reg: str) -> None:
    target = SKEWED if reg == "kl-target" else None
    result = train(_config(reg=reg, target=target, epochs=3), _run(tmp_path / reg), data=digits)
    rows = result.metrics
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row in rows:
        for key in ("train_loss", "train_ce", "train_reg", "train_accuracy", "eval_accuracy", "eval_nll", "eval_ece"):
            assert key in row, key
            assert torch.isfinite(torch.tensor(row[key])), (key, row)
        # each step's loss is their float32 sum: equal up to float32 rounding
        assert row["train_loss"] == pytest.approx(row["train_ce"] + row["train_reg"], rel=1e-6)
    if reg == "none":
        assert all(r["train_reg"] == 0.0 for r in rows)
    if reg == "confidence":
        assert all(r["train_reg"] < 0 for r in rows)  # minus an entropy
    if reg in ("kl-uniform", "kl-target", "label-smoothing"):
        assert all(r["train_reg"] > 0 for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # it learns
    assert result.test.accuracy > 0.5  # 10 classes: chance is 0.1
    with open(tmp_path / reg / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]


def test_resume_after_two_epochs_is_bit_identical_metrics_included(tmp_path: Path, digits: ImageDataset) -> None:
    straight = train(_config(), _run(tmp_path / "straight"), data=digits)
    train(_config(epochs=2), _run(tmp_path / "split"), data=digits)
    resumed = train(_config(epochs=4), _run(tmp_path / "split", resume=True), data=digits)
    a, b = _params(straight.model), _params(resumed.model)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3, 4]
    assert _timeless(resumed.metrics) == _timeless(straight.metrics)
    for key in ("accuracy", "nll", "brier", "ece"):
        assert getattr(resumed.test, key) == getattr(straight.test, key), key


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        ({"beta": 0.5}, "beta 0.1 -> 0.5"),
        ({"reg": "confidence"}, "reg 'kl-uniform' -> 'confidence'"),
        ({"n_bins": 10}, "n_bins 15 -> 10"),
    ],
)
def test_a_resume_refuses_an_option_that_changes_the_run(
    tmp_path: Path, digits: ImageDataset, change: dict[str, object], shown: str
) -> None:
    train(_config(epochs=1), _run(tmp_path / "run"), data=digits)
    with pytest.raises(RunError, match=re.escape(shown)):
        train(_config(epochs=2, **change), _run(tmp_path / "run", resume=True), data=digits)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"reg": "mixup"}, "reg"),
        ({"reg": "kl-target"}, "target"),
        ({"target": SKEWED}, "target"),
        ({"reg": "kl-target", "target": "0.5,0.5"}, "target"),
        ({"reg": "kl-target", "target": "0.2," + ",".join(["0.1"] * 9)}, "target"),
        ({"reg": "kl-target", "target": "-0.1,0.2" + ",0.1" * 8}, "target"),
        ({"reg": "kl-target", "target": "nan" + ",0.1" * 9}, "target"),
        ({"beta": -0.1}, "beta"),
        ({"beta": float("inf")}, "beta"),
        ({"eps": 1.5}, "eps"),
        ({"lr": 0.0}, "lr"),
        ({"n_bins": 0}, "n_bins"),
        ({"model": "resnet"}, "model"),
        ({"dataset": "cifar"}, "dataset"),
        ({"epochs": 0}, "epochs"),
        ({"figures": "yes"}, "figures"),
    ],
)
def test_a_bad_option_raises_option_error_naming_it(options: dict[str, object], option: str) -> None:
    with pytest.raises(OptionError) as info:
        _config(**options)
    assert info.value.option == option


def test_parse_target_accepts_probabilities_summing_to_one() -> None:
    assert parse_target(SKEWED) == pytest.approx((0.19, *([0.09] * 9)))
    assert sum(parse_target(" 0.1 ," * 9 + "0.1")) == pytest.approx(1.0)


def test_cli_train_then_eval_writes_and_prints_the_test_metrics(tmp_path: Path) -> None:
    from kldiv.cli import app

    out = tmp_path / "run"
    args = ["classify", "train", "--epochs", "1", "--model", "mlp", "--no-progress", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "test: accuracy" in result.output
    assert "ECE" in result.output
    for name in ("run.json", "metrics.csv", "curves.png", "reliability.png"):
        assert (out / name).is_file(), name
    result = runner.invoke(app, ["classify", "eval", str(out), "--n-bins", "10", "--limit", "100"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "eval.json").read_text())
    assert saved["images"] == 100
    assert saved["n_bins"] == 10
    assert len(saved["bins"]["count"]) == 10
    assert sum(saved["bins"]["count"]) == 100
    for key in ("accuracy", "nll", "brier", "ece"):
        assert f"{saved[key]:.4f}" in result.output
    config, model = load_trained(out)
    assert config.model == "mlp"
    assert not model.training


def test_resume_from_a_mid_epoch_checkpoint_is_bit_identical_metrics_included(
    tmp_path: Path, digits: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = train(_config(epochs=3), _run(tmp_path / "straight"), data=digits)
    calls = {"n": 0}
    real_loss = train_module.regularized_loss

    def crashing_loss(*args: object, **kw: object) -> LossTerms:
        calls["n"] += 1
        if calls["n"] == 17:  # epoch 3 (7 steps per epoch), after the checkpoint of step 15
            raise KeyboardInterrupt
        return real_loss(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(train_module, "regularized_loss", crashing_loss)
    with pytest.raises(KeyboardInterrupt):
        train(_config(epochs=3), _run(tmp_path / "crash", checkpoint_steps=5), data=digits)
    monkeypatch.setattr(train_module, "regularized_loss", real_loss)
    state = load_checkpoint(tmp_path / "crash", model=build_model("cnn", (1, 8, 8)))
    loop = state["loop"]
    assert isinstance(loop, dict)
    assert (loop["epoch"], loop["batch"], loop["step"]) == (2, 1, 15)
    resumed = train(_config(epochs=3), _run(tmp_path / "crash", checkpoint_steps=5, resume=True), data=digits)
    a, b = _params(straight.model), _params(resumed.model)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the interrupted epoch's running sums (loss parts, train accuracy) were in the checkpoint
    assert _timeless(resumed.metrics) == _timeless(straight.metrics)


def test_a_nan_loss_stops_training_and_keeps_the_last_checkpoint(
    tmp_path: Path, digits: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real_loss = train_module.regularized_loss

    def nan_loss(*args: object, **kw: object) -> LossTerms:
        calls["n"] += 1
        terms = real_loss(*args, **kw)  # type: ignore[arg-type]
        return replace(terms, total=terms.total * torch.nan) if calls["n"] == 10 else terms

    monkeypatch.setattr(train_module, "regularized_loss", nan_loss)
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at epoch 2, step 9 .*epoch 1 completed, step 7"):
        train(_config(epochs=3), _run(tmp_path / "run"), data=digits)


def test_kl_target_moves_the_average_prediction_towards_the_target(tmp_path: Path, digits: ImageDataset) -> None:
    """With a heavy weight, the test set's average prediction ends nearer the target than without the term."""
    target = torch.tensor(parse_target(SKEWED), dtype=torch.float64)
    gaps = {}
    for reg in ("none", "kl-target"):
        config = _config(reg=reg, target=SKEWED if reg == "kl-target" else None, beta=5.0, epochs=3)
        model = train(config, _run(tmp_path / reg), data=digits).model
        pbar = torch.softmax(predict_logits(model, digits.test).double(), -1).mean(0)
        gaps[reg] = float((target * (target / pbar).log()).sum())
    assert gaps["kl-target"] < gaps["none"] / 2, gaps


def test_the_cnn_trains_on_28x28_mnist(tmp_path: Path) -> None:
    """The tutorial's setting (a subset, one epoch): the CNN's 7*7*64 flatten size and the MNIST path."""
    if not REAL_MNIST.is_dir():
        pytest.skip(f"MNIST not found at {REAL_MNIST}")
    full = load_mnist(REAL_MNIST)
    data = replace(
        full,
        train=full.train[:2000],
        train_labels=full.train_labels[:2000],
        test=full.test[:1000],
        test_labels=full.test_labels[:1000],
    )
    result = train(_config(dataset="mnist", epochs=1, val_size=0), _run(tmp_path / "mnist"), data=data)
    assert result.model.image_shape == (1, 28, 28)
    assert result.test.accuracy > 0.5  # 10 classes: chance is 0.1
