"""Classification on MNIST: kldiv's training of the tutorial's CNN against the tutorial's own loop, epoch by epoch.

Sections (``--part``), each a key of ``benchmarks/results/classification.json`` (a run rewrites only its own):

``cnn``: the tutorial's CNN (batch 64, Adam 1e-3, 5 epochs), each side in a process of its own:

* ``tutorial``: the tutorial's ``train_kl_regularized`` as written (beta 0.1, its ``+ 1e-10`` KL term and its
  ``.item()`` calls) over a shuffling ``DataLoader`` of a ``TensorDataset`` of the same tensors
  (``benchmarks/_tutorial_classification.py``), at torch's default thread count; its epoch is timed around the
  call;
* ``kl-uniform`` and ``none``: ``kldiv.classify.train`` (what ``kldiv classify train`` runs; progress bar on,
  threads chosen by the run layer, figures off), with ``--reg kl-uniform --beta 0.1`` and ``--reg none``, one
  epoch per call: the first call starts the run, each later one resumes it with one more epoch and the in-memory
  dataset. Its epoch is the ``seconds`` of its metrics row: the steps and the epoch's evaluation on the test set
  (which the tutorial's loop does not do); the evaluation is also timed again on its own after the call
  (``evaluation``), and the rest of the call (start-up, resume, checkpoint, final test) is reported as
  ``outside``.

A round is one epoch of every side, in the order tutorial, kl-uniform, none, reversed every other round, so a
drift of the machine's speed slows every side alike. Reported: each side's epoch seconds and each kldiv side's
ratio to the tutorial's epoch of the same round (median and range), the thread counts, and the test accuracy, NLL
and ECE of each side after its last epoch. ``--load`` runs one competing CPU-bound process during the rounds.

``distillation``: one teacher (the tutorial's CNN, plain cross-entropy, 5 epochs on the whole training set), then
for the whole training set and for a stratified tenth of it, 3 seeds of a label-only and a distilled MLP student
(784-100-10, 10.4x fewer parameters; T = 4, alpha = 0.9, 20 epochs), all through ``kldiv.classify.distill``.
Reported per regime: the students' test accuracy (mean and sample std over the seeds), NLL and ECE, the teacher's,
and the distilled student's gain in accuracy in units of two stds: the std of the paired differences (the
students of a seed share their images, initial weights and batch order) and the larger of the two students' own
stds.

A further section is a function of the parsed arguments returning a JSON-able dict, added to ``SECTIONS`` (with
its options added in :func:`main`).

Run: ``.venv/bin/python -m benchmarks.classification [--part cnn|distillation] [--load] [--data-dir DIR]``
(about 15 minutes for each part on a quiet 2-core CPU); ``--quick`` (1 epoch on 5000 training images, 1000
test images) writes ``classification_quick.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import DEFAULT_DATA, machine, mnist_subset, ratio_text, run_sections, spread
from benchmarks._workers import Load, Worker, serve

MODULE = "benchmarks.classification"
BATCH = 64
BETA = 0.1
EPOCHS = 5
QUICK_TRAIN_SIZE = 5000
QUICK_TEST_SIZE = 1000  # the quick epoch's evaluation keeps about its full-size share of the epoch (10k of 60k)
SIDES = ("tutorial", "kl-uniform", "none")
OURS = ("kl-uniform", "none")


def _data(args: argparse.Namespace) -> Any:
    return mnist_subset(args.data_dir, train_size=args.train_size, test_size=args.test_size)


# ------------------------------------------------------------------------------------------------- workers


def tutorial_worker(args: argparse.Namespace) -> None:
    from benchmarks._tutorial_classification import TutorialTrainer

    trainer = TutorialTrainer(_data(args), batch_size=args.batch_size)
    serve(trainer.epoch, trainer.test)


def library_worker(args: argparse.Namespace) -> None:
    from kldiv.classify.objective import evaluate
    from kldiv.classify.train import TrainConfig, TrainResult, train
    from kldiv.runs import RunOptions

    data = _data(args)
    config = TrainConfig(
        dataset="mnist", data_dir=str(args.data_dir), reg=args.reg, beta=BETA, batch_size=args.batch_size, figures=False
    )
    default_threads = torch.get_num_threads()
    results: list[TrainResult] = []

    def epoch() -> dict[str, Any]:
        epochs = len(results) + 1
        options = RunOptions(out=args.out, resume=epochs > 1, progress=True)
        start = time.perf_counter()
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):  # the bar is drawn, not shown
            results.append(train(replace(config, epochs=epochs), options, data=data))
        call = time.perf_counter() - start
        row = results[-1].metrics[-1]
        torch.set_num_threads(int(row["threads"]))  # the epoch's evaluation ran at the count its steps chose
        start = time.perf_counter()
        evaluate(results[-1].model, data.test, data.test_labels, batch_size=config.eval_batch_size)
        evaluation = time.perf_counter() - start
        torch.set_num_threads(default_threads)
        return {
            "seconds": row["seconds"],
            "threads": int(row["threads"]),
            "evaluation": evaluation,
            "outside": call - row["seconds"],
            "eval_accuracy": row["eval_accuracy"],
        }

    def finish() -> dict[str, float]:
        test = results[-1].test
        return {"accuracy": test.accuracy, "nll": test.nll, "ece": test.ece}

    serve(epoch, finish)


# ---------------------------------------------------------------------------------------------- controller


def cnn_rounds(args: argparse.Namespace) -> dict[str, Any]:
    """The interleaved rounds of the ``cnn`` section and each side's test metrics after the last one."""
    common = ["--data-dir", str(args.data_dir), "--batch-size", str(args.batch_size)]
    common += ["--train-size", str(args.train_size), "--test-size", str(args.test_size)]
    rounds: list[dict[str, Any]] = []
    workers: dict[str, Worker] = {}
    load = Load() if args.load else None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            workers["tutorial"] = Worker(MODULE, "tutorial", common)
            for reg in OURS:
                out = str(Path(tmp) / reg)
                workers[reg] = Worker(MODULE, "library", [*common, "--reg", reg, "--out", out])
            threads = {"tutorial_default": torch.get_num_threads()}
            if load is not None:
                load.resume()
            for r in range(args.epochs):
                order = SIDES if r % 2 == 0 else SIDES[::-1]
                row: dict[str, Any] = {"round": r + 1, "order": list(order)}
                for side in order:
                    row[side] = workers[side].ask("epoch")
                row["load_average_1min"] = os.getloadavg()[0]  # what else ran: these machines are shared
                rounds.append(row)
                print(_round_line(row), flush=True)
            if load is not None:
                load.pause()
            test = {side: workers[side].ask("finish") for side in SIDES}
        finally:
            for worker in workers.values():
                worker.close()
            if load is not None:
                load.close()
    return {"rounds": rounds, "test": test, "threads": threads}


def _round_line(row: dict[str, Any]) -> str:
    t = row["tutorial"]["seconds"]
    parts = [f"tutorial {t:.2f} s ({row['tutorial']['threads']} threads)"]
    for side in OURS:
        s = row[side]
        parts.append(f"{side} {s['seconds']:.2f} s ({s['threads']} threads, x{s['seconds'] / t:.2f})")
    return f"round {row['round']}: " + ", ".join(parts) + f"; load average {row['load_average_1min']:.2f}"


def cnn_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range over the rounds of each side's epoch seconds and of each kldiv side's ratio to the
    tutorial's epoch of the same round; the same for the steps alone (the epoch less its evaluation)."""
    tutorial = [r["tutorial"]["seconds"] for r in rounds]
    summary: dict[str, Any] = {
        "tutorial": {"epoch_seconds": spread(tutorial), "threads": sorted({r["tutorial"]["threads"] for r in rounds})}
    }
    for side in OURS:
        seconds = [r[side]["seconds"] for r in rounds]
        steps = [r[side]["seconds"] - r[side]["evaluation"] for r in rounds]
        summary[side] = {
            "epoch_seconds": spread(seconds),
            "over_tutorial": spread([s / t for s, t in zip(seconds, tutorial, strict=True)]),
            "evaluation_seconds": spread([r[side]["evaluation"] for r in rounds]),
            "steps_over_tutorial": spread([s / t for s, t in zip(steps, tutorial, strict=True)]),
            "outside_seconds": spread([r[side]["outside"] for r in rounds]),
            "threads": sorted({r[side]["threads"] for r in rounds}),
        }
    return summary


def cnn_section(args: argparse.Namespace) -> dict[str, Any]:
    start_load = os.getloadavg()
    measured = cnn_rounds(args)
    summary = cnn_summary(measured["rounds"])
    _print_cnn(summary, measured["test"])
    settings = {
        "epochs": args.epochs,
        "train_size": args.train_size or 60_000,
        "test_size": args.test_size or 10_000,
        "batch_size": args.batch_size,
        "beta": BETA,
        "lr": 1e-3,
        "load": args.load,
        "torch_default_threads": measured["threads"]["tutorial_default"],
    }
    return {
        "machine": machine(),
        "load_average_1_5_15": {"start": start_load, "end": os.getloadavg()},
        "settings": settings,
        "summary": summary,
        "test": measured["test"],
        "rounds": measured["rounds"],
    }


def _print_cnn(summary: dict[str, Any], test: dict[str, dict[str, float]]) -> None:
    print("\n| side | epoch s (range) | x tutorial (range) | steps x tutorial | threads | test acc | NLL | ECE |")
    print("|---|---|---|---|---|---|---|---|")
    for side in SIDES:
        s = summary[side]
        e = s["epoch_seconds"]
        vs = ratio_text(s["over_tutorial"]) if "over_tutorial" in s else "1"
        steps = ratio_text(s["steps_over_tutorial"]) if "steps_over_tutorial" in s else "1"
        t = test[side]
        print(
            f"| {side} | {e['median']:.2f} ({e['min']:.2f}-{e['max']:.2f}) | {vs} | {steps} | "
            f"{','.join(map(str, s['threads']))} | {t['accuracy']:.4f} | {t['nll']:.4f} | {t['ece']:.4f} |"
        )


# ---------------------------------------------------------------------------------------------- distillation

TEACHER_EPOCHS = 5
STUDENT_EPOCHS = 20
FRACTIONS = (1.0, 0.1)
SEEDS = (0, 1, 2)


def _regime(summary: dict[str, Any]) -> dict[str, Any]:
    """One regime's numbers, with the accuracy gain measured two ways: against the std of the paired
    differences (the same images, initial weights and batch order for both students of a seed), and against the
    larger of the two students' own stds over the seeds."""
    labels, distilled = summary["labels"]["accuracy"], summary["distilled"]["accuracy"]
    gain = distilled["mean"] - labels["mean"]
    spread_std = max(labels["std"], distilled["std"])
    return {
        **summary,
        "gain": gain,
        "gain_in_paired_std": summary["accuracy_difference"]["in_std"],
        "gain_in_student_std": gain / spread_std if spread_std else None,
    }


def distillation_section(args: argparse.Namespace) -> dict[str, Any]:
    """One teacher CNN on the whole training set, then for each fraction of the training set 3 seeds of a
    label-only and a distilled MLP student (``kldiv.classify.distill``, T = 4, alpha = 0.9)."""
    from kldiv.classify.distill import DistillConfig, distill
    from kldiv.classify.train import TrainConfig, train
    from kldiv.runs import RunOptions

    data = _data(args)
    start_load = os.getloadavg()
    regimes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        teacher_dir = Path(tmp) / "teacher"
        start = time.perf_counter()
        teacher_epochs = 1 if args.quick else TEACHER_EPOCHS
        teacher = TrainConfig(
            dataset="mnist", data_dir=str(args.data_dir), reg="none", epochs=teacher_epochs, figures=False
        )
        train(teacher, RunOptions(out=teacher_dir, progress=True), data=data)
        teacher_seconds = time.perf_counter() - start
        for fraction in FRACTIONS:
            config = DistillConfig(
                dataset="mnist",
                data_dir=str(args.data_dir),
                teacher=str(teacher_dir),
                student_epochs=2 if args.quick else STUDENT_EPOCHS,
                train_fraction=fraction,
                seeds=SEEDS,
                batch_size=args.batch_size,
            )
            start = time.perf_counter()
            result = distill(config, RunOptions(out=Path(tmp) / f"fraction-{fraction:g}", progress=True), data=data)
            regimes[f"{fraction:g}"] = {**_regime(result.summary), "seconds": time.perf_counter() - start}
            _print_regime(fraction, regimes[f"{fraction:g}"])
    return {
        "machine": machine(),
        "load_average_1_5_15": {"start": start_load, "end": os.getloadavg()},
        "settings": {
            "teacher_epochs": teacher_epochs,
            "teacher_seconds": teacher_seconds,
            "student_epochs": 2 if args.quick else STUDENT_EPOCHS,
            "train_size": args.train_size or 60_000,
            "test_size": args.test_size or 10_000,
            "batch_size": args.batch_size,
        },
        "regimes": regimes,
    }


def _print_regime(fraction: float, r: dict[str, Any]) -> None:
    def acc(side: dict[str, Any]) -> str:
        a = side["accuracy"]
        return f"{a['mean']:.4f} ± {a['std']:.4f}"

    print(
        f"fraction {fraction:g} ({r['student']['train_images']} images): teacher {r['teacher']['accuracy']:.4f}, "
        f"labels {acc(r['labels'])}, distilled {acc(r['distilled'])}, gain {r['gain']:+.4f} "
        f"({r['gain_in_paired_std']:+.1f} paired std, {r['gain_in_student_std']:+.1f} student std)"
    )


SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "cnn": cnn_section,
    "distillation": distillation_section,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=[*SECTIONS, "all"], default="all", help="the section(s) to measure")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="MNIST IDX files (default: $KLDIV_DATA)")
    parser.add_argument("--epochs", type=int, help=f"epochs (rounds) of every side (default {EPOCHS}; quick 1)")
    parser.add_argument("--train-size", type=int, help="train on the first N images (default all; quick 5000)")
    parser.add_argument("--test-size", type=int, help="evaluate on the first N test images (default all; quick 1000)")
    parser.add_argument("--batch-size", type=int, default=BATCH)
    parser.add_argument("--quick", action="store_true", help="1 epoch on 5000 images (test 1000), for development")
    parser.add_argument("--load", action="store_true", help="run one competing CPU-bound process during the rounds")
    parser.add_argument("--worker", choices=["tutorial", "library"], help=argparse.SUPPRESS)
    parser.add_argument("--reg", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs is None:
        args.epochs = 1 if args.quick else EPOCHS
    if args.train_size is None:
        args.train_size = QUICK_TRAIN_SIZE if args.quick else 0
    if args.test_size is None:
        args.test_size = QUICK_TEST_SIZE if args.quick else 0
    if args.worker == "tutorial":
        return tutorial_worker(args)
    if args.worker == "library":
        return library_worker(args)
    run_sections("classification_quick" if args.quick else "classification", SECTIONS, args.part, args)
    return None


if __name__ == "__main__":
    main()
