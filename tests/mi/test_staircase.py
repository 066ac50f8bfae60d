"""The staircase experiment and `kldiv mi bench`: bound names, per-level statistics, files, errors."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kldiv.cli import app
from kldiv.mi.staircase import parse_bound, staircase

runner = CliRunner()


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [("dv", ("dv", None)), ("smile", ("smile", 5.0)), ("smile:1", ("smile", 1.0)), ("smile:inf", ("smile", None))],
)
def test_bound_names(spec: str, parsed: tuple[str, float | None]) -> None:
    assert parse_bound(spec) == parsed


@pytest.mark.parametrize("spec", ["tuba", "dv:3", "smile:0", "smile:x", "smile:-1"])
def test_bad_bound_names(spec: str) -> None:
    with pytest.raises(ValueError, match=r"smile|bound"):
        parse_bound(spec)


def test_the_statistics_are_those_of_each_levels_second_half() -> None:
    result = staircase(("infonce", "smile:5"), levels=(1.0, 3.0), dim=2, steps_per_level=20, batch_size=16)
    assert set(result.estimates) == {"infonce", "smile:5"}
    for spec, rows in result.stats().items():
        values = result.estimates[spec]
        assert len(values) == 40
        for k, row in enumerate(rows):
            tail = values[20 * k + 10 : 20 * (k + 1)]
            assert row.truth == (1.0, 3.0)[k]
            assert row.mean == pytest.approx(statistics.fmean(tail))
            assert row.bias == pytest.approx(row.mean - row.truth)
            assert row.std == pytest.approx(statistics.stdev(tail))


def test_each_level_lasts_steps_per_level_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    from kldiv.mi import staircase as module

    levels: list[float] = []
    real = module.correlated_gaussians

    def recording(n: int, *, mi: float, dim: int, cubic: bool = False, generator: object = None) -> object:
        levels.append(mi)
        return real(n, mi=mi, dim=dim, cubic=cubic, generator=generator)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "correlated_gaussians", recording)
    staircase(("infonce",), levels=(1.0, 2.0, 0.5), dim=2, steps_per_level=4, batch_size=8)
    assert levels == [1.0] * 4 + [2.0] * 4 + [0.5] * 4


def test_the_same_seed_gives_the_same_estimates() -> None:
    a = staircase(("dv",), levels=(1.0,), dim=2, steps_per_level=10, batch_size=8, seed=3)
    b = staircase(("dv",), levels=(1.0,), dim=2, steps_per_level=10, batch_size=8, seed=3)
    assert a.estimates == b.estimates


def test_the_command_writes_its_files_and_keeps_them(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = ["mi", "bench", "--bounds", "nwj,smile:inf", "--levels", "1,2", "--dim", "2", "--steps-per-level", "6"]
    args += ["--batch-size", "8", "--no-progress", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("staircase.csv", "table.csv", "staircase.json", "staircase.png"):
        assert (out / name).is_file(), name
    with (out / "table.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(row["bound"], float(row["true_mi"])) for row in table] == [
        ("nwj", 1.0),
        ("nwj", 2.0),
        ("smile:inf", 1.0),
        ("smile:inf", 2.0),
    ]
    again = runner.invoke(app, args)
    assert again.exit_code == 2
    assert "--overwrite" in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
