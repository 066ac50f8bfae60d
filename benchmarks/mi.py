"""Mutual-information bounds on the staircase of Song & Ermon (2020): correlated Gaussians of dimension 20 whose true
MI steps through 2, 4, 6, 8 and 10 nats, 4000 steps per level, batch 64, one separable critic (256-256 MLPs onto 32
features) per bound, Adam 5e-4 (what ``kldiv mi bench`` runs with its defaults).

Per bound and level: the mean of the estimates over the level's second half, its bias against the truth and the
standard deviation of the estimates; the wall seconds of each bound's 20k steps on this machine. The pattern to
compare with (Song & Ermon 2020, fig. 1 and table 1; Poole et al. 2019): InfoNCE saturates at log 64 = 4.16 nats;
DV, MINE and NWJ grow exponentially noisy with the MI; SMILE with tau = 5 has the lowest variance at high MI, at a
small bias.

Run: ``.venv/bin/python -m benchmarks.mi [--part staircase] [--steps-per-level N]`` (about 5 minutes on a quiet
2-core CPU); ``--quick`` (400 steps per level) writes ``mi_quick.json``. Results: ``benchmarks/results/mi.json``
(a run rewrites only the sections it ran) and ``benchmarks/results/mi_staircase.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from benchmarks._common import RESULTS, machine, write_json

BOUNDS = ("dv", "mine", "nwj", "infonce", "smile:5")


def staircase_section(args: argparse.Namespace) -> dict[str, Any]:
    """Each bound's staircase, timed."""
    import torch

    from kldiv.mi.plots import staircase_figure
    from kldiv.mi.staircase import LEVELS, StaircaseResult, staircase
    from kldiv.report import png_bytes

    torch.set_num_threads(1)
    steps = args.steps_per_level or (400 if args.quick else 4000)
    estimates: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    for spec in BOUNDS:
        start = time.perf_counter()
        one = staircase((spec,), steps_per_level=steps, seed=args.seed, progress=True)
        seconds[spec] = time.perf_counter() - start
        estimates[spec] = one.estimates[spec]
        print(json.dumps({"bound": spec, "seconds": seconds[spec]}))
    result = StaircaseResult(LEVELS, steps, 64, estimates)
    name = "mi_quick_staircase.png" if args.quick else "mi_staircase.png"
    (RESULTS / name).write_bytes(png_bytes(staircase_figure(result)))
    return {
        "levels": list(LEVELS),
        "steps_per_level": steps,
        "batch_size": 64,
        "dim": 20,
        "critic": "separable",
        "threads": 1,
        "seconds": seconds,
        "table": {
            spec: [{"true_mi": s.truth, "mean": s.mean, "bias": s.bias, "std": s.std} for s in rows]
            for spec, rows in result.stats().items()
        },
        "figure": name,
    }


SECTIONS = {"staircase": staircase_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=[*SECTIONS, "all"], default="all", help="the section(s) to measure")
    parser.add_argument("--steps-per-level", type=int, help="staircase steps per level (default 4000; quick 400)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--quick", action="store_true", help="a shortened run; writes mi_quick.json")
    args = parser.parse_args()
    name = "mi_quick" if args.quick else "mi"
    path = RESULTS / f"{name}.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results["machine"] = machine()
    for part in SECTIONS if args.part == "all" else [args.part]:
        results[part] = SECTIONS[part](args)
        path = write_json(name, results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
