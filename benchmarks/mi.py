"""Mutual-information bounds on the staircase of Song & Ermon (2020): correlated Gaussians of dimension 20 whose true
MI steps through 2, 4, 6, 8 and 10 nats, 4000 steps per level, batch 64, one separable critic (256-256 MLPs onto 32
features) per bound, Adam 5e-4 (what ``kldiv mi bench`` runs with its defaults).

Per bound and level: the mean of the estimates over the level's second half, its bias against the truth and the
standard deviation of the estimates; the wall seconds of each bound's 20k steps on this machine. The pattern to
compare with (Song & Ermon 2020, fig. 1 and table 1; Poole et al. 2019): InfoNCE saturates at log 64 = 4.16 nats;
DV, MINE and NWJ grow exponentially noisy with the MI; SMILE with tau = 5 has the lowest variance at high MI, at a
small bias. The measured table is compared with that pattern in docs/mi.md.

``vib``: the variational information bottleneck on MNIST (``kldiv vib sweep --dataset mnist``: encoder 784-1024-1024
onto a 256-dimensional code, linear decoder, batch 100, Adam ``--vib-lr``, ``--vib-epochs`` epochs) for beta = 1e-4,
1e-3, 1e-2, 1e-1: test accuracy and NLL of the 12-code predictive, the rate (an upper bound on I(Z; X)) and the
seconds per epoch, with the rate/accuracy plot.

Run: ``.venv/bin/python -m benchmarks.mi [--part staircase|vib] [--steps-per-level N]`` (about 15 minutes on a
quiet 2-core CPU); ``--quick`` (400 steps per level; VIB one epoch on 5000 images) writes ``mi_quick.json``.
Results: ``benchmarks/results/mi.json`` (a run rewrites only the sections it ran), ``mi_staircase.png`` and
``mi_vib.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks._common import DEFAULT_DATA, RESULTS, machine, write_json

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


VIB_BETAS = (1e-4, 1e-3, 1e-2, 1e-1)


def vib_section(args: argparse.Namespace) -> dict[str, Any]:
    """The VIB classifier on MNIST for each beta (what ``kldiv vib sweep --dataset mnist`` runs): test accuracy,
    NLL and rate, and the seconds per epoch."""
    import tempfile

    from benchmarks._common import mnist_subset
    from kldiv.report import png_bytes
    from kldiv.runs import RunOptions
    from kldiv.vib.plots import sweep_figure
    from kldiv.vib.train import TrainConfig, train

    if not args.data_dir.is_dir():
        raise SystemExit(f"skipped: MNIST not found at {args.data_dir}; pass --data-dir or set KLDIV_DATA")
    data = mnist_subset(args.data_dir, train_size=5000 if args.quick else 0, test_size=1000 if args.quick else 0)
    epochs = 1 if args.quick else args.vib_epochs
    runs = []
    for beta in VIB_BETAS:
        config = TrainConfig(dataset="mnist", beta=beta, epochs=epochs, lr=args.vib_lr, figures=False)
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = train(config, RunOptions(out=out, progress=True), data=data)
            seconds = time.perf_counter() - start
        t = result.test
        run = {
            "beta": beta,
            "accuracy": t.accuracy,
            "nll": t.nll,
            "rate": t.rate,
            "seconds": seconds,
            "epoch_seconds": [row["seconds"] for row in result.metrics],
        }
        runs.append(run)
        print(json.dumps(run))
    name = "mi_quick_vib.png" if args.quick else "mi_vib.png"
    figure = sweep_figure(VIB_BETAS, [r["rate"] for r in runs], [r["accuracy"] for r in runs])
    (RESULTS / name).write_bytes(png_bytes(figure))
    return {
        "config": {
            "hidden": "1024,1024",
            "z_dim": 256,
            "batch_size": 100,
            "lr": args.vib_lr,
            "epochs": epochs,
            "train_samples": 1,
            "eval_samples": 12,
        },
        "runs": runs,
        "best_accuracy": max(r["accuracy"] for r in runs),
        "figure": name,
    }


SECTIONS = {"staircase": staircase_section, "vib": vib_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=[*SECTIONS, "all"], default="all", help="the section(s) to measure")
    parser.add_argument("--steps-per-level", type=int, help="staircase steps per level (default 4000; quick 400)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="MNIST IDX files (default: $KLDIV_DATA)")
    parser.add_argument("--vib-epochs", type=int, default=10, help="VIB training epochs per beta (default 10)")
    parser.add_argument("--vib-lr", type=float, default=1e-3, help="VIB Adam learning rate (default 1e-3)")
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
