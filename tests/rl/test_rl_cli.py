"""`kldiv rl ppo|trpo|sac` end to end: a short run and its files, and the message without gymnasium."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kldiv.cli import app

pytest.importorskip("gymnasium", reason="the RL commands need gymnasium (pip install 'kldiv[rl]')")

runner = CliRunner()
SHORT = {
    "ppo": ["--total-steps", "512", "--n-envs", "2", "--n-steps", "64", "--epoch-steps", "256"],
    "trpo": ["--total-steps", "512", "--n-envs", "2", "--n-steps", "64", "--epoch-steps", "256"],
    "sac": ["--total-steps", "300", "--learning-starts", "200", "--batch-size", "16", "--epoch-steps", "150"],
}


@pytest.mark.parametrize("algorithm", sorted(SHORT))
def test_a_short_run_writes_its_files_and_resumes(tmp_path: Path, algorithm: str) -> None:
    out = tmp_path / "run"
    args = ["rl", algorithm, *SHORT[algorithm], "--hidden", "8", "--no-progress", "--threads", "1", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"Wrote {out}." in result.output
    figure = "temperature.png" if algorithm == "sac" else "kl.png"
    for name in ("run.json", "metrics.csv", "updates.csv", "episodes.csv", "learning_curve.png", figure):
        assert (out / name).is_file(), name
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header and two epochs
    again = runner.invoke(app, ["rl", algorithm, "--no-progress", "--out", str(out)])
    assert again.exit_code == 2
    assert "--resume" in again.output
    longer = runner.invoke(
        app,
        [
            "rl",
            algorithm,
            "--resume",
            "--total-steps",
            "768" if algorithm != "sac" else "450",
            "--no-progress",
            "--out",
            str(out),
        ],
    )
    if algorithm == "ppo":  # the learning rate anneals over the whole run: a longer run is another run
        assert longer.exit_code == 2
        assert "total_steps" in longer.output or "--total-steps" in longer.output
    else:
        assert longer.exit_code == 0, longer.output
        assert len((out / "metrics.csv").read_text().splitlines()) == 4


def test_cartpole_reports_its_reward_threshold(tmp_path: Path) -> None:
    result = runner.invoke(app, ["rl", "ppo", *SHORT["ppo"], "--no-progress", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "reward threshold 475" in result.output


def test_without_gymnasium_one_error_line_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.import_module

    def no_gymnasium(name: str, package: str | None = None) -> object:
        if name == "gymnasium":
            raise ImportError("No module named 'gymnasium'")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", no_gymnasium)
    result = runner.invoke(app, ["rl", "ppo", "--out", str(tmp_path / "run")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert "pip install 'kldiv[rl]'" in lines[0]
    assert not (tmp_path / "run").exists()


def test_target_kl_zero_turns_early_stopping_off(tmp_path: Path) -> None:
    import json

    out = tmp_path / "run"
    args = ["rl", "ppo", *SHORT["ppo"], "--target-kl", "0", "--hidden", "8", "--no-progress", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["config"]["target_kl"] is None
    stopped = [line.split(",") for line in (out / "updates.csv").read_text().splitlines()]
    column = stopped[0].index("stopped_early")
    assert {row[column] for row in stopped[1:]} == {"0.0"}


def test_a_resume_with_fewer_steps_than_trained_names_total_steps(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["rl", "trpo", *SHORT["trpo"], "--hidden", "8", "--no-progress", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["rl", "trpo", "--resume", "--total-steps", "256", "--no-progress", "--out", str(out)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1
    assert lines[0].startswith("error: --total-steps: the run has trained 512 environment steps (2 epochs of 256)")
