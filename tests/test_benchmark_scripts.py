"""`python -m benchmarks.X --help` and `python -m experiments.X --help` print help and touch no result file."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    f"{folder}.{path.stem}"
    for folder in ("benchmarks", "experiments")
    for path in (ROOT / folder).glob("*.py")
    if not path.name.startswith("_")
)


def _results() -> dict[str, float]:
    files = [*(ROOT / "benchmarks" / "results").glob("*"), *(ROOT / "docs").glob("*")]
    return {str(p): p.stat().st_mtime for p in files}


@pytest.mark.parametrize("module", SCRIPTS)
def test_help_prints_help_and_runs_nothing(
    module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _results()
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit_info:  # in this process: the scripts' imports are already loaded
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
    assert _results() == before


def test_one_script_runs_as_a_program() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    result = subprocess.run(
        [sys.executable, "-m", SCRIPTS[0], "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
