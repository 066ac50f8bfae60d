"""Shared helpers of the benchmarks: interleaved timing with per-round ratios, machine description, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import torch

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA = Path(os.environ.get("KLDIV_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
"""The MNIST IDX files of the benchmarks that train on them: ``$KLDIV_DATA``, else the shared data folder."""

SIMD_FEATURES = ("avx512f", "avx2", "fma")
"""The CPU features that decide which code the kernels run (kldiv's C kernel, torch's own)."""


def cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The CPU's model name (with vendor, family and model number: a virtual machine may name only "AMD EPYC")
    and whether it has each of :data:`SIMD_FEATURES`, from ``cpuinfo`` (Linux).

    Elsewhere, or where the file lacks a field, the model falls back to :func:`platform.processor` (then the
    architecture) and the other fields are None (unknown), so results from different machines can still be told
    apart as far as the platform allows.
    """
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():  # the first processor's fields (a blank line ends its block)
        if not line.strip() and fields:
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = fields.get("flags", fields.get("Features"))  # x86 and ARM spell it differently

    def number(key: str) -> int | None:
        value = fields.get(key, "")
        return int(value) if value.isdigit() else None

    return {
        "cpu_model": fields.get("model name") or platform.processor() or platform.machine(),
        "cpu_vendor": fields.get("vendor_id"),
        "cpu_family": number("cpu family"),
        "cpu_model_number": number("model"),
        "simd": {name: None if flags is None else name in flags.split() for name in SIMD_FEATURES},
    }


def kernel_simd_path() -> str | None:
    """The SIMD path kldiv's C kernel runs (``"avx512f"``, ``"avx2"``, ``"baseline"``), None if it is not built."""
    try:
        from kldiv._kernels import simd_path
    except ImportError:
        return None
    return simd_path()


def machine() -> dict[str, Any]:
    """What the figures were measured on: platform, CPU model and SIMD features, which code the kernels run
    (torch's CPU capability, kldiv's C kernel path), versions and date."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        **cpu(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernel_simd_path": kernel_simd_path(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def interleaved_rounds(
    fns: dict[str, Callable[[], object]], *, rounds: int = 15, min_seconds: float = 0.02
) -> dict[str, list[float]]:
    """Seconds per call of each function in every round, timed in interleaved rounds (A B C A B C ...).

    Each round calls a function enough times to take about ``min_seconds`` so timer resolution does not
    matter; interleaving makes drifts of the machine's speed hit every candidate alike.
    """
    reps: dict[str, int] = {}
    for name, fn in fns.items():
        fn()
        start = time.perf_counter()
        fn()
        once = max(time.perf_counter() - start, 1e-7)
        reps[name] = max(1, int(min_seconds / once))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(reps[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / reps[name])
    return samples


def spread(values: list[float]) -> dict[str, float]:
    """Median, minimum and maximum."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def round_ratios(samples: dict[str, list[float]], numerator: str, denominator: str) -> dict[str, float]:
    """The ratio of two candidates taken within each round: its median and range over the rounds."""
    return spread([a / b for a, b in zip(samples[numerator], samples[denominator], strict=True)])


def ratio_text(ratio: dict[str, float]) -> str:
    """``0.42 (0.38-0.51)``: median (range)."""
    return f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})"


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def mnist_subset(data_dir: Path, *, train_size: int, test_size: int) -> Any:
    """MNIST from ``data_dir`` (:func:`kldiv.data.load_mnist`), its training and test sets cut to their first
    ``train_size`` and ``test_size`` images (0: all)."""
    from dataclasses import replace

    from kldiv.data import load_mnist

    data = load_mnist(data_dir)
    if train_size:
        data = replace(data, train=data.train[:train_size], train_labels=data.train_labels[:train_size])
    if test_size:
        data = replace(data, test=data.test[:test_size], test_labels=data.test_labels[:test_size])
    return data


def run_sections(name: str, sections: dict[str, Callable[[Any], dict[str, Any]]], part: str, args: Any) -> Path:
    """Measure the section ``part`` of ``sections`` (``"all"``: every one) on MNIST at ``args.data_dir`` (a
    SystemExit saying the run is skipped when it is absent), each into its key of ``results/<name>.json``, which
    keeps the keys of the sections not run."""
    if not args.data_dir.is_dir():
        raise SystemExit(f"skipped: MNIST not found at {args.data_dir}; pass --data-dir or set KLDIV_DATA")
    path = RESULTS / f"{name}.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for section in sections if part == "all" else [part]:
        results[section] = sections[section](args)
        path = write_json(name, results)  # after each section, so a later failure keeps the earlier ones
    print(f"wrote {path}")
    return path
