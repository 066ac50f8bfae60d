"""`kldiv mle`: a smoke run writes mle.csv (one row per step) and mle.png and prints the table; --model picks the
fits; an --out that holds earlier results is refused unless --overwrite."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from kldiv.cli import app

runner = CliRunner()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_mle_writes_the_csv_and_the_png_and_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "mle"
    result = runner.invoke(app, ["mle", "--steps", "30", "--samples", "500", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for word in ("categorical", "gaussian", "NLL", "KL", "max |gap|", "mle.csv", "mle.png"):
        assert word in result.output
    rows = _rows(out / "mle.csv")
    assert [r["model"] for r in rows] == ["categorical"] * 31 + ["gaussian"] * 31
    assert [int(r["step"]) for r in rows[:31]] == list(range(31))
    for r in rows:
        kl, gap = float(r["kl"]), float(r["gap"])
        assert gap == kl - float(r["nll_minus_entropy"])
        assert np.isfinite(kl)
        assert np.isfinite(float(r["grad_norm"]))
        if r["model"] == "categorical":
            assert abs(gap) < 1e-14
            assert r["nll_se"] == ""
        else:
            assert abs(gap) <= 5 * float(r["nll_se"])
    assert (out / "mle.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_mle_model_option_fits_one_model(tmp_path: Path) -> None:
    result = runner.invoke(app, ["mle", "--model", "gaussian", "--steps", "5", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert {r["model"] for r in _rows(tmp_path / "mle.csv")} == {"gaussian"}


def test_mle_refuses_to_overwrite_its_files_unless_asked(tmp_path: Path) -> None:
    (tmp_path / "mle.csv").write_text("mine")
    (tmp_path / "notes.txt").write_text("also mine")
    result = runner.invoke(app, ["mle", "--steps", "5", "--out", str(tmp_path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: --out:")
    assert "--overwrite" in lines[0]
    assert (tmp_path / "mle.csv").read_text() == "mine"
    assert not (tmp_path / "mle.png").exists()
    result = runner.invoke(app, ["mle", "--steps", "5", "--out", str(tmp_path), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert len(_rows(tmp_path / "mle.csv")) == 12
    assert (tmp_path / "notes.txt").read_text() == "also mine"


def test_mle_runs_into_a_directory_holding_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["mle", "--model", "categorical", "--steps", "3", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"
