"""The Bayesian MLP trainer: every sampling mode trains beside its baseline, exact resume (the weight noise
included), refusal of changed options, the eval command's eval.json, and the regression toy's predictive bands."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kldiv.bayes.layers import MODES
from kldiv.bayes.predict import ClassMetrics
from kldiv.bayes.toy import CLUSTERS, toy_regression
from kldiv.bayes.train import (
    RegressionMetrics,
    TrainConfig,
    build_networks,
    evaluate_ood,
    load_trained,
    toy_predictive,
    train,
)
from kldiv.data import ImageDataset, load_digits
from kldiv.runs import OptionError, RunError, RunOptions

runner = CliRunner()


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    data = load_digits()
    return replace(data, train=data.train[:300], train_labels=data.train_labels[:300])


def _config(**kw: object) -> TrainConfig:
    base: dict[str, object] = {"hidden": "32,32", "epochs": 4, "batch_size": 32, "lr": 1e-2, "figures": False}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _run(out: Path, **kw: object) -> RunOptions:
    return RunOptions(out=out, progress=False, **kw)  # type: ignore[arg-type]


def _timeless(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "threads")} for r in rows]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_trains_beside_its_baseline_and_reports_both(
    tmp_path: Path, digits: ImageDataset, mode: str
) -> None:
    result = train(_config(mode=mode, epochs=3), _run(tmp_path / mode), data=digits)
    assert [r["epoch"] for r in result.metrics] == [1, 2, 3]
    for row in result.metrics:
        for key in ("train_loss", "train_nll", "train_kl", "beta", "eval_accuracy", "eval_ece", "eval_bald"):
            assert torch.isfinite(torch.tensor(row[key])), (key, row)
        for key in ("baseline_train_nll", "baseline_accuracy", "baseline_nll", "baseline_ece", "baseline_brier"):
            assert key in row, key
        # loss = NLL + KL / N for each step (beta = 1), so also for the epoch means (float32 rounding)
        assert row["train_loss"] == pytest.approx(row["train_nll"] + row["train_kl"] / 300, rel=1e-5)
        assert row["eval_bald"] > 0  # the draws differ: the predictive has an epistemic part
    assert isinstance(result.test, ClassMetrics)
    assert isinstance(result.baseline_test, ClassMetrics)
    assert result.test.accuracy > 0.3  # 10 classes: chance is 0.1
    assert result.baseline_test.accuracy > 0.3


def test_without_a_baseline_only_the_bnn_is_trained(tmp_path: Path, digits: ImageDataset) -> None:
    result = train(_config(baseline=False, epochs=1, prior="mixture"), _run(tmp_path / "run"), data=digits)
    assert result.baseline is None
    assert result.baseline_test is None
    assert not any(k.startswith("baseline") for k in result.metrics[0])


def test_resume_after_two_epochs_is_bit_identical_weight_noise_included(tmp_path: Path, digits: ImageDataset) -> None:
    straight = train(_config(), _run(tmp_path / "straight"), data=digits)
    train(_config(epochs=2), _run(tmp_path / "split"), data=digits)
    resumed = train(_config(epochs=4), _run(tmp_path / "split", resume=True), data=digits)
    for a, b in ((straight.model, resumed.model), (straight.baseline, resumed.baseline)):
        assert a is not None
        assert b is not None
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
    assert _timeless(resumed.metrics) == _timeless(straight.metrics)
    for a_test, b_test in ((straight.test, resumed.test), (straight.baseline_test, resumed.baseline_test)):
        for key in ("accuracy", "nll", "brier", "ece", "mutual_information"):
            assert getattr(a_test, key) == getattr(b_test, key), key


@pytest.mark.parametrize(
    ("change", "shown"),
    [({"beta": 0.5}, "beta 1.0 -> 0.5"), ({"mode": "flipout"}, "mode 'local' -> 'flipout'")],
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
        ({"task": "segment"}, "task"),
        ({"mode": "dropout"}, "mode"),
        ({"prior": "laplace"}, "prior"),
        ({"prior_sigma": 0.0}, "prior_sigma"),
        ({"init_std": -1.0}, "init_std"),
        ({"hidden": "400,x"}, "hidden"),
        ({"hidden": "0"}, "hidden"),
        ({"kl_schedule": "sometimes"}, "kl_schedule"),
        ({"beta": -1.0}, "beta"),
        ({"samples": 0}, "samples"),
        ({"noise_std": 0.1}, "noise_std"),
        ({"task": "regression", "noise_std": 0.0}, "noise_std"),
        ({"task": "regression", "dataset": "mnist"}, "dataset"),
        ({"dataset": "cifar"}, "dataset"),
        ({"baseline": "yes"}, "baseline"),
    ],
)
def test_a_bad_option_raises_option_error_naming_it(options: dict[str, object], option: str) -> None:
    with pytest.raises(OptionError) as info:
        _config(**options)
    assert info.value.option == option


def test_ood_aurocs_are_probabilities_for_every_kind_and_score(tmp_path: Path, digits: ImageDataset) -> None:
    result = train(_config(epochs=4), _run(tmp_path / "run"), data=digits)
    auroc = evaluate_ood(result.model, result.baseline, digits.test, samples=8)
    assert set(auroc) == {"rotate", "noise"}
    for scores in auroc.values():
        assert set(scores) == {"bnn_entropy", "bnn_mutual_information", "baseline_entropy"}
        assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_regression_band_is_wider_far_from_the_data_than_on_it(tmp_path: Path) -> None:
    config = TrainConfig(task="regression", figures=True)
    result = train(config, _run(tmp_path / "toy"))
    assert isinstance(result.test, RegressionMetrics)
    assert (tmp_path / "toy" / "uncertainty.png").is_file()
    assert config.noise_std is not None
    grid, predictive = toy_predictive(result.model, config.noise_std)
    x, epistemic = grid.squeeze(1), predictive.epistemic.sqrt().squeeze(1)
    on = torch.stack([(x >= lo) & (x <= hi) for lo, hi in CLUSTERS]).any(0)
    far = x.abs() >= 7
    assert float(epistemic[far].mean()) > 1.5 * float(epistemic[on].mean())
    # the fit is real: test RMSE well below the targets' spread
    data = toy_regression(config.seed)
    assert result.test.rmse < 0.5 * float(data.test_targets.std())


def test_networks_start_from_the_same_weights() -> None:
    nets = build_networks(_config())
    bnn_means = [p for n, p in nets["bnn"].named_parameters() if n.endswith("_mu")]
    plain = list(nets["baseline"].parameters())
    assert len(bnn_means) == len(plain)
    for a, b in zip(bnn_means, plain, strict=True):
        assert torch.equal(a, b)


def test_cli_train_then_eval_writes_eval_json(tmp_path: Path) -> None:
    from kldiv.cli import app

    out = tmp_path / "run"
    args = ["bnn", "train", "--epochs", "1", "--hidden", "16", "--no-progress", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "BNN test: accuracy" in result.output
    for name in ("run.json", "metrics.csv", "curves.png", "reliability.png"):
        assert (out / name).is_file(), name
    result = runner.invoke(app, ["bnn", "eval", str(out), "--samples", "4", "--ood", "rotate"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "eval.json").read_text())
    assert saved["samples"] == 4
    assert set(saved["ood_auroc"]) == {"rotate"}
    assert all(0.0 <= v <= 1.0 for v in saved["ood_auroc"]["rotate"].values())
    config, _bnn, baseline = load_trained(out)
    assert config.hidden == "16"
    assert baseline is not None


def test_the_tour_section_comes_after_distillation_and_shows_the_wider_band(tmp_path: Path) -> None:
    from kldiv.report import Context, Figure, Table, tour_sections
    from kldiv.tour import import_section_modules

    import_section_modules()
    names = tour_sections.names()
    assert names.index("bnn") > names.index("distill")
    section = dict(tour_sections.items())["bnn"](Context(out_dir=tmp_path))
    (table,) = [b for b in section.blocks if isinstance(b, Table)]
    (figure,) = [b for b in section.blocks if isinstance(b, Figure)]
    assert figure.png.startswith(b"\x89PNG\r\n\x1a\n")
    bnn, baseline = table.rows
    assert float(str(bnn[4])) > float(str(bnn[3]))  # the predictive std far from the data exceeds that on it
    assert float(str(baseline[4])) == float(str(baseline[3]))
