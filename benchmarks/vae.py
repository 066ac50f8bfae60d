"""The VAE epoch: the tutorial's training loop against what kldiv users run, epoch by epoch, against the floor.

Every side trains the tutorial's VAE on the real MNIST (MLP 784-400-400-20, Bernoulli decoder, Adam 1e-3, batch
128, continuous pixels) in a process of its own, and the sides take turns one epoch at a time, so a machine whose
speed drifts slows every side alike:

* ``tutorial``: the tutorial's loop as written: torchvision-style MNIST items (PIL image, ``ToTensor``) through a
  shuffling ``DataLoader``, the tutorial's model, loss and ``.item()`` calls (``benchmarks/_tutorial_vae.py``);
* ``command``: ``kldiv vae train`` with its defaults (progress bar on, a checkpoint at each epoch end), one epoch
  per invocation with ``--resume``; its epoch is the ``seconds`` of its metrics row (start-up, data loading and the
  figures written at the end of each invocation are reported apart, as ``startup``);
* ``library``: ``kldiv.vae.train`` called in one long-lived process (progress bar on, a checkpoint at each epoch end);
* ``floor``: the epoch's own work and nothing else, measured on the same machine in the same turn: every matrix
  product of the 469 steps (forward and backward at the model's shapes) and 469 fused Adam steps over the model's
  parameters.

A round is: floor, tutorial, command, library. Then the same rounds while one competing CPU-bound process runs
(``--loaded-pairs``). Reported: per-round ratios (each side's epoch over the tutorial's, and over the floor) with
their median and range, the floor's GEMM rate, and the test -ELBO of each side after its epochs.

Run: ``.venv/bin/python -m benchmarks.vae [--data-dir DIR] [--pairs 6] [--loaded-pairs 6]`` (writes
``benchmarks/results/vae.json``; about 10 minutes quiet, longer loaded). ``--quality`` instead trains with dynamic
binarization for ``--binarized-epochs`` and reports the IWAE-5000 test NLL next to published one-layer VAE
figures (``benchmarks/results/vae_quality.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import DEFAULT_DATA, machine, spread, write_json
from benchmarks._workers import Load, Worker, serve

ROOT = Path(__file__).resolve().parents[1]
MODULE = "benchmarks.vae"
BATCH = 128
PUBLISHED = {
    "Burda et al. 2016, VAE 1 stochastic layer, k=5000 eval (IWAE paper, Table 1)": 86.76,
    "pythae benchmark, VAE, 200 importance samples": 89.78,
}


# ------------------------------------------------------------------------------------------------- workers


def tutorial_worker(data_dir: Path) -> None:
    from benchmarks._tutorial_vae import TutorialTrainer

    trainer = TutorialTrainer(data_dir)
    serve(trainer.epoch, lambda: {"test_neg_elbo": trainer.test_neg_elbo()})


def library_worker(data_dir: Path, out: Path) -> None:
    from kldiv.data import load_mnist
    from kldiv.runs import RunOptions
    from kldiv.vae.train import TrainConfig, train

    data = load_mnist(data_dir)
    config = TrainConfig(dataset="mnist", data_dir=str(data_dir), epochs=1, figures=False)
    state: dict[str, Any] = {"epochs": 0, "result": None}

    def epoch() -> dict[str, Any]:
        state["epochs"] += 1
        options = RunOptions(out=out, resume=state["epochs"] > 1, progress=True)
        start = time.perf_counter()
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):  # the bar is drawn, not shown
            state["result"] = train(replace(config, epochs=state["epochs"]), options, data=data)
        call = time.perf_counter() - start
        seconds = state["result"].metrics[-1]["seconds"]
        return {"seconds": seconds, "startup": call - seconds}

    serve(epoch, lambda: {"test_neg_elbo": -state["result"].test.elbo})


def floor_worker() -> None:
    from benchmarks._vae_floor import EpochFloor

    floor = EpochFloor(batch=BATCH, examples=60_000)
    serve(floor.measure, lambda: {"gflop_per_epoch": floor.gflop})


# ---------------------------------------------------------------------------------------------- controller


class Command:
    """``kldiv vae train`` as users run it, one epoch per invocation (``--resume`` after the first)."""

    def __init__(self, data_dir: Path, out: Path) -> None:
        self.data_dir, self.out, self.epochs, self.test_neg_elbo = data_dir, out, 0, float("nan")

    def epoch(self) -> dict[str, Any]:
        self.epochs += 1
        args = ["--dataset", "mnist", "--data-dir", str(self.data_dir), "--out", str(self.out)]
        args += ["--epochs", str(self.epochs), *(["--resume"] if self.epochs > 1 else [])]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        start = time.perf_counter()
        with tempfile.TemporaryFile("w+") as bar:  # the progress bar is drawn into a file, as into a terminal
            done = subprocess.run(
                [sys.executable, "-m", "kldiv", "vae", "train", *args],
                stdout=subprocess.PIPE,
                stderr=bar,
                text=True,
                env=env,
                check=False,
            )
            if done.returncode:
                bar.seek(0)
                raise RuntimeError(f"kldiv vae train failed: {bar.read()[-2000:]}")
        call = time.perf_counter() - start
        with open(self.out / "metrics.csv") as f:
            seconds = float(list(csv.DictReader(f))[-1]["seconds"])
        match = re.search(r"-ELBO ([0-9.]+) nats", done.stdout)
        self.test_neg_elbo = float(match.group(1)) if match else float("nan")
        return {"seconds": seconds, "startup": call - seconds}


def compare(data_dir: Path, pairs: int, loaded_pairs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        floor = Worker(MODULE, "floor", [])
        tutorial = Worker(MODULE, "tutorial", ["--data-dir", str(data_dir)])
        library = Worker(MODULE, "library", ["--data-dir", str(data_dir), "--out", str(Path(tmp) / "library")])
        command = Command(data_dir, Path(tmp) / "command")
        load = Load()
        rounds: list[dict[str, Any]] = []
        try:
            for i in range(pairs + loaded_pairs):
                loaded = i >= pairs
                if loaded:
                    load.resume()
                row: dict[str, Any] = {"round": i + 1, "loaded": loaded}
                row["floor"] = floor.ask("epoch")
                row["tutorial"] = tutorial.ask("epoch")
                row["command"] = command.epoch()
                row["library"] = library.ask("epoch")
                load.pause()
                rounds.append(row)
                print(_round_line(row), flush=True)
            final = {
                "tutorial": tutorial.ask("finish")["test_neg_elbo"],
                "library": library.ask("finish")["test_neg_elbo"],
                "command": command.test_neg_elbo,
            }
            gflop = floor.ask("finish")["gflop_per_epoch"]
        finally:
            for worker in (floor, tutorial, library):
                worker.close()
            load.close()
    return {"rounds": rounds, "test_neg_elbo": final, "gflop_per_epoch": gflop}


def _floor_seconds(row: dict[str, Any]) -> float:
    return float(row["floor"]["gemm_seconds"] + row["floor"]["adam_seconds"])


def _round_line(row: dict[str, Any]) -> str:
    f = _floor_seconds(row)
    t, c, lib = (row[k]["seconds"] for k in ("tutorial", "command", "library"))
    return (
        f"round {row['round']:2d}{' (loaded)' if row['loaded'] else ''}: floor {f:.2f} s "
        f"(GEMM {row['floor']['gflops']:.0f} GFLOP/s), tutorial {t:.2f} s, command {c:.2f} s, library {lib:.2f} s; "
        f"command/tutorial {c / t:.2f}, command/floor {c / f:.2f}"
    )


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for loaded in (False, True):
        rows = [r for r in result["rounds"] if r["loaded"] == loaded]
        if not rows:
            continue
        summary: dict[str, Any] = {
            "rounds": len(rows),
            "floor_seconds": spread([_floor_seconds(r) for r in rows]),
            "gemm_gflops": spread([r["floor"]["gflops"] for r in rows]),
        }
        for side in ("tutorial", "command", "library"):
            summary[side] = {
                "seconds": spread([r[side]["seconds"] for r in rows]),
                "over_floor": spread([r[side]["seconds"] / _floor_seconds(r) for r in rows]),
            }
            if side != "tutorial":
                summary[side]["over_tutorial"] = spread([r[side]["seconds"] / r["tutorial"]["seconds"] for r in rows])
                summary[side]["startup_seconds"] = spread([r[side]["startup"] for r in rows])
        out["loaded" if loaded else "quiet"] = summary
    return out


def _print_table(summary: dict[str, Any], final: dict[str, float]) -> None:
    for phase, s in summary.items():
        print(
            f"\n{phase}: {s['rounds']} rounds; floor {s['floor_seconds']['median']:.2f} s per epoch "
            f"({s['floor_seconds']['min']:.2f}-{s['floor_seconds']['max']:.2f}); GEMM "
            f"{s['gemm_gflops']['median']:.0f} GFLOP/s"
        )
        print("| side | epoch s (range) | x floor (range) | x tutorial (range) |")
        print("|---|---|---|---|")
        for side in ("tutorial", "command", "library"):
            d = s[side]
            vs = d.get("over_tutorial")
            tut = f"{vs['median']:.2f} ({vs['min']:.2f}-{vs['max']:.2f})" if vs else "1"
            print(
                f"| {side} | {d['seconds']['median']:.2f} ({d['seconds']['min']:.2f}-{d['seconds']['max']:.2f}) | "
                f"{d['over_floor']['median']:.2f} ({d['over_floor']['min']:.2f}-{d['over_floor']['max']:.2f}) | "
                f"{tut} |"
            )
    print("\ntest -ELBO after all rounds: " + ", ".join(f"{k} {v:.2f}" for k, v in final.items()))


# ------------------------------------------------------------------------------------------------ quality


def quality(data_dir: Path, epochs: int, iwae_k: int, iwae_images: int) -> dict[str, Any]:
    """The MLP trained with dynamic binarization; its IWAE-k NLL on one fixed binarization of the test set."""
    from kldiv.data import binarize, load_mnist
    from kldiv.runs import RunOptions
    from kldiv.vae.objective import evaluate, iwae_bound
    from kldiv.vae.train import TrainConfig, train

    data = load_mnist(data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(dataset="mnist", epochs=epochs, binarize=True, figures=False, eval_batch_size=2000)
        result = train(config, RunOptions(out=Path(tmp) / "run", progress=True), data=data)
    test = binarize(data.test, torch.Generator().manual_seed(1))
    x = test[:iwae_images]
    bound = iwae_bound(result.model, x, k=iwae_k, generator=torch.Generator().manual_seed(3), progress=True)
    return {
        "epochs": epochs,
        "test_neg_elbo": -evaluate(result.model, test, generator=torch.Generator().manual_seed(2)).elbo,
        f"iwae_{iwae_k}_nll": -float(bound.mean()),
        "iwae_nll_stderr": float(bound.std() / bound.numel() ** 0.5),
        "iwae_images": int(x.shape[0]),
        "published_nll": PUBLISHED,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="MNIST IDX files (default: $KLDIV_DATA)")
    parser.add_argument("--pairs", type=int, default=6, help="quiet rounds (one epoch of every side each)")
    parser.add_argument("--loaded-pairs", type=int, default=6, help="rounds beside one competing CPU-bound process")
    parser.add_argument("--quality", action="store_true", help="the binarized IWAE-k quality run instead")
    parser.add_argument("--binarized-epochs", type=int, default=50)
    parser.add_argument("--iwae-k", type=int, default=5000)
    parser.add_argument("--iwae-images", type=int, default=10_000)
    parser.add_argument("--worker", choices=["tutorial", "library", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "tutorial":
        return tutorial_worker(args.data_dir)
    if args.worker == "library":
        return library_worker(args.data_dir, args.out)
    if args.worker == "floor":
        return floor_worker()
    if not args.data_dir.is_dir():
        raise SystemExit(f"MNIST not found at {args.data_dir}; pass --data-dir or set KLDIV_DATA")
    if args.quality:
        figures = quality(args.data_dir, args.binarized_epochs, args.iwae_k, args.iwae_images)
        print(json.dumps(figures, indent=2))
        write_json("vae_quality", {"machine": machine(), **figures})
        return None
    result = compare(args.data_dir, args.pairs, args.loaded_pairs)
    summary = analyse(result)
    _print_table(summary, result["test_neg_elbo"])
    path = write_json("vae", {"machine": machine(), "summary": summary, **result})
    print(f"wrote {path}")
    return None


if __name__ == "__main__":
    main()
