"""`python -m benchmarks.X --help` and `python -m experiments.X --help` print help and touch no result file."""

from __future__ import annotations

import os
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
def test_help_prints_help_and_runs_nothing(module: str) -> None:
    before = _results()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    assert _results() == before
