"""The large-vocabulary benchmark's command line: --help prints the usage and runs nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_help_prints_usage_and_writes_nothing() -> None:
    results = ROOT / "benchmarks" / "results" / "large_vocab.json"
    before = results.stat().st_mtime_ns if results.exists() else None
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.large_vocab", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m benchmarks.large_vocab")
    assert "--rounds" in out.stdout
    assert (results.stat().st_mtime_ns if results.exists() else None) == before


def test_benchmark_rejects_an_unknown_case() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.large_vocab", "--cases", "z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2
    assert "unknown cases ['z']" in out.stderr
