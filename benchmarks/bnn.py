"""Bayesian MLP on MNIST: gradient variance of the three sampling modes, epoch time, accuracy, calibration, OOD.

The network is the MLP 784-400-400-10 (ReLU) of the training app ``kldiv.bayes.train`` with its defaults:
``kldiv.bayes.BayesianLinear`` layers (softplus scale, initial std 1e-3, prior N(0, 1), means at the
deterministic MLP's initial weights) trained on the negative ELBO per example (``kldiv.bayes.negative_elbo``, KL
weight 1), beside the same MLP of ``torch.nn.Linear`` layers trained on the cross-entropy (the deterministic
baseline); Adam 1e-3, batch 128. Sections (``--part``), each a key of ``benchmarks/results/bnn.json`` (a run
rewrites only its own):

``variance`` (the library's layers and loss, the app not run): on one fixed minibatch (the first 128 training
images) and one network, the variance over ``--draws`` noise draws of the gradient of the loss with respect to
each layer's ``weight_mu`` and ``weight_rho``, averaged over the weights, for each mode (``reparam``, ``local``,
``flipout``), and its ratio to ``reparam``. Two networks: freshly initialized (seed 0) and briefly trained
(``--variance-steps`` Adam steps in ``local`` mode from that initialization). The draws are split into
``GROUPS`` groups; the ratios are reported as median and range over the groups (each group an independent
estimate). Also reported: the distance between the modes' mean gradients, relative to their norm and in
standard errors of that distance (all three estimate the same gradient: about 1 standard error is expected).

``timing``: one epoch of each side in a process of its own, rounds interleaved with the order reversed every
other round, after one untimed warm-up epoch of every side. Sides ``deterministic``, ``reparam``, ``local`` and
``flipout`` run the same training loop (written here from the library's layers and loss; only the layers and
the loss differ); side ``app`` is the training app in ``--mode`` without its baseline, one more epoch per call
(each call resumes the run; it evaluates on one test image, and that evaluation, timed again on its own, is
subtracted). Reported: each side's epoch seconds and its ratio to the deterministic epoch of the same round
(median and range). ``--load`` runs one competing CPU-bound process during the rounds.

``train``: the training app (what ``kldiv bnn train --dataset mnist`` runs; ``--mode``, default ``local``),
``--epochs`` epochs, once per prior of ``--priors`` (default ``gaussian,mixture``: N(0, 1) and the scale
mixture of Blundell et al.), then on the test set: accuracy, NLL, Brier score and ECE (15 bins) of the Monte Carlo
predictive (``--samples`` draws), of the Bayesian network at its posterior means, and of the baseline;
out-of-distribution detection (``kldiv.bayes.train.evaluate_ood``) of the test images against the same images
rotated by 90 degrees and against uniform noise images: the AUROC of the predictive entropy and of the mutual
information of the Bayesian network, and of the baseline's entropy.

Run: ``.venv/bin/python -m benchmarks.bnn [--part variance|timing|train] [--load] [--data-dir DIR]`` (about
15 minutes on a quiet 2-core CPU); ``--quick`` (1 epoch on 5000 training images, 1000 test images, fewer draws)
writes ``bnn_quick.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks._common import DEFAULT_DATA, machine, mnist_subset, ratio_text, run_sections, spread
from benchmarks._workers import Load, Worker, serve
from kldiv.bayes import (
    BayesianLinear,
    bayesianize,
    class_predictive,
    classification_metrics,
    classification_nll,
    kl_loss,
    negative_elbo,
)
from kldiv.bayes.layers import MODES, Mode

MODULE = "benchmarks.bnn"
WIDTHS = (784, 400, 400, 10)
BATCH = 128
LR = 1e-3
EPOCHS = 10
SAMPLES = 20
DRAWS = 500
GROUPS = 10
VARIANCE_STEPS = 500
ROUNDS = 5
QUICK = {"epochs": 1, "train_size": 5000, "test_size": 1000, "samples": 10, "draws": 100, "variance_steps": 100}
SIDES = ("deterministic", *MODES, "app")


def _data(args: argparse.Namespace) -> Any:
    return mnist_subset(args.data_dir, train_size=args.train_size, test_size=args.test_size)


def network(mode: Mode | None) -> nn.Module:
    """The training app's MLP of :data:`WIDTHS` (``kldiv.bayes.train.mlp``), converted to Bayesian layers sampling
    in ``mode`` (means at the MLP's initial weights, as the app does), or left deterministic for None."""
    from kldiv.bayes.train import mlp

    net = mlp(WIDTHS)
    return net if mode is None else bayesianize(net, mode=mode, inplace=True)


def bayesian_layers(model: nn.Module) -> list[BayesianLinear]:
    return [m for m in model.modules() if isinstance(m, BayesianLinear)]


def set_mode(model: nn.Module, mode: Mode) -> None:
    for layer in bayesian_layers(model):
        layer.mode = mode


def loss(model: nn.Module, x: Tensor, y: Tensor, dataset_size: int) -> Tensor:
    """The negative ELBO per example of a Bayesian model (KL weight 1), the cross-entropy of a deterministic one."""
    logits = model(x)
    if not bayesian_layers(model):
        return F.cross_entropy(logits, y)
    return negative_elbo(classification_nll(logits, y), kl_loss(model), dataset_size=dataset_size).loss


class Trainer:
    """A model, its Adam optimizer and a seeded shuffle of the training set; :meth:`epoch` trains one epoch."""

    def __init__(self, mode: Mode | None, images: Tensor, labels: Tensor, *, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = network(mode)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.images, self.labels = images, labels
        self.generator = torch.Generator().manual_seed(seed)
        self.epochs = 0

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(self.images.shape[0], generator=self.generator)
        for start in range(0, order.shape[0], BATCH):
            index = order[start : start + BATCH]
            yield self.images[index], self.labels[index]

    def step(self, x: Tensor, y: Tensor) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        value = loss(self.model, x, y, self.images.shape[0])
        value.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return float(value.detach())

    def epoch(self) -> dict[str, Any]:
        """One epoch of steps: its seconds and the mean of its minibatch losses."""
        start = time.perf_counter()
        losses = [self.step(x, y) for x, y in self.batches()]
        seconds = time.perf_counter() - start
        self.epochs += 1
        return {"seconds": seconds, "loss": sum(losses) / len(losses)}


# ------------------------------------------------------------------------------------------------ variance


def _gradient_moments(
    model: nn.Module, x: Tensor, y: Tensor, dataset_size: int, draws: int
) -> dict[str, dict[str, Tensor]]:
    """Per parameter of interest (``layerK.mu``, ``layerK.rho``): the sums over each group of draws of the
    gradient and of its square, float64, shape ``(GROUPS, *param.shape)``."""
    params = {
        f"layer{k}.{part}": getattr(layer, f"weight_{part}")
        for k, layer in enumerate(bayesian_layers(model), start=1)
        for part in ("mu", "rho")
    }
    sums = {name: torch.zeros(GROUPS, *p.shape, dtype=torch.float64) for name, p in params.items()}
    squares = {name: torch.zeros_like(s) for name, s in sums.items()}
    model.train()
    for d in range(draws):
        model.zero_grad(set_to_none=True)
        loss(model, x, y, dataset_size).backward()  # type: ignore[no-untyped-call]
        g = d % GROUPS
        for name, p in params.items():
            assert p.grad is not None
            grad = p.grad.double()
            sums[name][g] += grad
            squares[name][g] += grad * grad
    return {name: {"sum": sums[name], "square": squares[name]} for name in params}


def _mean_variance(total: Tensor, square: Tensor, n: int) -> float:
    """The sample variance (n - 1 denominator) of each element from its sum and sum of squares, averaged over
    the elements."""
    return float(((square - total * total / n) / (n - 1)).mean())


def _variance_table(model: nn.Module, x: Tensor, y: Tensor, dataset_size: int, draws: int) -> dict[str, Any]:
    per_group = draws // GROUPS
    n = per_group * GROUPS
    moments: dict[Mode, dict[str, dict[str, Tensor]]] = {}
    for mode in MODES:
        set_mode(model, mode)
        torch.manual_seed(1)
        moments[mode] = _gradient_moments(model, x, y, dataset_size, n)
    table: dict[str, Any] = {}
    for name in moments["reparam"]:
        base = moments["reparam"][name]
        base_mean = base["sum"].sum(0) / n
        base_variance = _mean_variance(base["sum"].sum(0), base["square"].sum(0), n)
        base_groups = [_mean_variance(base["sum"][g], base["square"][g], per_group) for g in range(GROUPS)]
        rows: dict[str, Any] = {}
        for mode in MODES:
            m = moments[mode][name]
            variance = _mean_variance(m["sum"].sum(0), m["square"].sum(0), n)
            groups = [_mean_variance(m["sum"][g], m["square"][g], per_group) for g in range(GROUPS)]
            distance = float((m["sum"].sum(0) / n - base_mean).norm())
            # the standard error of that distance: sqrt of the summed variances of the two means' elements
            error = ((variance + base_variance) * base_mean.numel() / n) ** 0.5
            rows[mode] = {
                "variance": variance,
                "over_reparam": spread([a / b for a, b in zip(groups, base_groups, strict=True)]),
                "mean_gradient_norm": float((m["sum"].sum(0) / n).norm()),
                "mean_gradient_distance_to_reparam": distance / float(base_mean.norm()),
                "mean_gradient_distance_in_standard_errors": distance / error,
            }
        table[name] = rows
    return table


def variance_section(args: argparse.Namespace) -> dict[str, Any]:
    from kldiv.data import load_mnist

    data = load_mnist(args.data_dir)
    x, y = data.train[:BATCH], data.train_labels[:BATCH]
    dataset_size = data.train.shape[0]
    start = time.perf_counter()
    trainer = Trainer("local", data.train, data.train_labels, seed=0)
    tables = {"initialized": _variance_table(trainer.model, x, y, dataset_size, args.draws)}
    set_mode(trainer.model, "local")
    batches = iter(())  # type: Iterator[tuple[Tensor, Tensor]]
    for _ in range(args.variance_steps):
        batch = next(batches, None)
        if batch is None:
            batches = trainer.batches()
            batch = next(batches)
        trainer.step(*batch)
    tables["trained"] = _variance_table(trainer.model, x, y, dataset_size, args.draws)
    _print_variance(tables)
    return {
        "machine": machine(),
        "settings": {
            "minibatch": f"the first {BATCH} training images",
            "draws": (args.draws // GROUPS) * GROUPS,
            "groups": GROUPS,
            "trained_steps": args.variance_steps,
            "trained_mode": "local",
            "dataset_size": dataset_size,
            "seconds": time.perf_counter() - start,
        },
        "tables": tables,
    }


def _ratio(r: dict[str, float]) -> str:
    """``0.0123 (0.0101-0.0150)``: median (range), 3 significant digits (the ratios span orders of magnitude)."""
    return f"{r['median']:.3g} ({r['min']:.3g}-{r['max']:.3g})"


def _print_variance(tables: dict[str, Any]) -> None:
    for state, table in tables.items():
        print(f"\n{state}: | parameter | " + " | ".join(f"{m} variance (x reparam)" for m in MODES) + " |")
        for name, rows in table.items():
            cells = [f"{rows[m]['variance']:.3e} ({_ratio(rows[m]['over_reparam'])})" for m in MODES]
            print(f"| {name} | " + " | ".join(cells) + " |")


# -------------------------------------------------------------------------------------------------- timing


def timing_worker(args: argparse.Namespace) -> None:
    data = _data(args)
    if args.worker == "app":
        return app_worker(args, data)
    mode: Mode | None = None if args.worker == "deterministic" else args.worker
    trainer = Trainer(mode, data.train, data.train_labels, seed=0)
    serve(trainer.epoch, lambda: {"threads": torch.get_num_threads()})
    return None


def app_worker(args: argparse.Namespace, data: Any) -> None:
    """The training app without its baseline, one more epoch per call (each call resumes the run), and its
    epoch's evaluation (the Monte Carlo predictive on the test set) timed again on its own."""
    from kldiv.bayes.train import TrainConfig, evaluate_classes, train
    from kldiv.runs import RunOptions

    config = TrainConfig(dataset="mnist", data_dir=str(args.data_dir), mode=args.mode, baseline=False, figures=False)
    default_threads = torch.get_num_threads()
    epochs: list[int] = []

    def epoch() -> dict[str, Any]:
        epochs.append(len(epochs) + 1)
        options = RunOptions(out=args.out, resume=len(epochs) > 1, progress=False)
        result = train(replace(config, epochs=len(epochs)), options, data=data)
        row = result.metrics[-1]
        torch.set_num_threads(int(row["threads"]))  # the epoch's evaluation ran at the count its steps chose
        start = time.perf_counter()
        evaluate_classes(result.model, data.test, data.test_labels, samples=config.samples, n_bins=config.n_bins)
        evaluation = time.perf_counter() - start
        torch.set_num_threads(default_threads)
        return {"seconds": row["seconds"] - evaluation, "epoch_seconds": row["seconds"], "evaluation": evaluation}

    serve(epoch, lambda: {"threads": default_threads})


def timing_section(args: argparse.Namespace) -> dict[str, Any]:
    common = ["--data-dir", str(args.data_dir), "--train-size", str(args.train_size), "--test-size", "1"]
    start_load = os.getloadavg()
    workers: dict[str, Worker] = {}
    rounds: list[dict[str, Any]] = []
    load = Load() if args.load else None
    tmp = tempfile.TemporaryDirectory()
    try:
        for side in SIDES:
            extra = ["--mode", args.mode, "--out", str(Path(tmp.name) / "app")] if side == "app" else []
            workers[side] = Worker(MODULE, side, [*common, *extra])
        for side in SIDES:  # a warm-up epoch of every side, not timed: first-call costs (allocator, kernels)
            workers[side].ask("epoch")
        if load is not None:
            load.resume()
        for r in range(args.rounds):
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            row: dict[str, Any] = {"round": r + 1, "order": list(order)}
            for side in order:
                row[side] = workers[side].ask("epoch")
            row["load_average_1min"] = os.getloadavg()[0]
            rounds.append(row)
            print(
                f"round {r + 1}: "
                + ", ".join(f"{s} {row[s]['seconds']:.2f} s" for s in SIDES)
                + f"; load average {row['load_average_1min']:.2f}",
                flush=True,
            )
        if load is not None:
            load.pause()
        threads = {side: workers[side].ask("finish")["threads"] for side in SIDES}
    finally:
        for worker in workers.values():
            worker.close()
        if load is not None:
            load.close()
        tmp.cleanup()
    base = [r["deterministic"]["seconds"] for r in rounds]
    summary: dict[str, Any] = {}
    for side in SIDES:
        seconds = [r[side]["seconds"] for r in rounds]
        summary[side] = {
            "epoch_seconds": spread(seconds),
            "over_deterministic": spread([s / b for s, b in zip(seconds, base, strict=True)]),
            "threads": threads[side],
        }
        print(
            f"{side}: epoch {summary[side]['epoch_seconds']['median']:.2f} s, "
            f"x deterministic {ratio_text(summary[side]['over_deterministic'])}"
        )
    return {
        "machine": machine(),
        "load_average_1_5_15": {"start": start_load, "end": os.getloadavg()},
        "settings": {
            "rounds": args.rounds,
            "train_size": args.train_size or 60_000,
            "batch_size": BATCH,
            "load": args.load,
        },
        "summary": summary,
        "rounds": rounds,
    }


# --------------------------------------------------------------------------------------------------- train


def _metrics(m: Any) -> dict[str, float]:
    """The figures of a :class:`kldiv.bayes.ClassMetrics`."""
    names = ("accuracy", "nll", "brier", "ece", "predictive_entropy", "mutual_information")
    return {name: float(getattr(m, name)) for name in names}


def train_section(args: argparse.Namespace) -> dict[str, Any]:
    """``kldiv.bayes.train`` (what ``kldiv bnn train`` runs) on MNIST under each prior of ``--priors``, then
    the test metrics and OOD AUROCs of each (the baseline is trained with the first; it is the same network on
    the same batches in every run)."""
    from kldiv.bayes.train import TrainConfig, evaluate_ood, train
    from kldiv.runs import RunOptions

    data = _data(args)
    start_load = os.getloadavg()
    priors: dict[str, Any] = {}
    baseline = None
    for i, prior in enumerate(args.priors.split(",")):
        config = TrainConfig(
            dataset="mnist",
            data_dir=str(args.data_dir),
            mode=args.mode,
            prior=prior,
            epochs=args.epochs,
            samples=args.samples,
            baseline=i == 0,
            figures=False,
        )
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = train(config, RunOptions(out=Path(tmp) / "bnn", progress=False), data=data)
            seconds = time.perf_counter() - start
        if baseline is None:
            assert result.baseline is not None
            assert result.baseline_test is not None
            baseline = (result.baseline, _metrics(result.baseline_test))
        result.model.eval()
        with torch.no_grad():
            means = class_predictive(result.model(data.test).unsqueeze(0))  # the posterior means' prediction
        start = time.perf_counter()
        ood = evaluate_ood(result.model, baseline[0], data.test, samples=args.samples)
        ood_seconds = time.perf_counter() - start
        test = {
            "bnn": _metrics(result.test),
            "bnn_posterior_mean": _metrics(classification_metrics(means, data.test_labels)),
            "baseline": baseline[1],
        }
        print(f"\nprior {prior}:")
        _print_train(test, ood)
        priors[prior] = {
            "settings": {
                **{k: v for k, v in asdict(config).items() if k not in ("data_dir", "figures")},
                "train_seconds": seconds,
                "ood_seconds": ood_seconds,
            },
            "test": test,
            "ood_auroc": ood,
            "epochs": result.metrics,
        }
    return {
        "machine": machine(),
        "load_average_1_5_15": {"start": start_load, "end": os.getloadavg()},
        "settings": {"train_size": args.train_size or 60_000, "test_size": args.test_size or 10_000},
        "priors": priors,
    }


def _print_train(test: dict[str, dict[str, float]], ood: dict[str, dict[str, float]]) -> None:
    print("\n| model | accuracy | NLL | Brier | ECE |\n|---|---|---|---|---|")
    for side, m in test.items():
        print(f"| {side} | {m['accuracy']:.4f} | {m['nll']:.4f} | {m['brier']:.4f} | {m['ece']:.4f} |")
    print("\n| OOD set | " + " | ".join(next(iter(ood.values()))) + " |\n|---|---|---|---|")
    for name, row in ood.items():
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in row.values()) + " |")


SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "variance": variance_section,
    "timing": timing_section,
    "train": train_section,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=[*SECTIONS, "all"], default="all", help="the section(s) to measure")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="MNIST IDX files (default: $KLDIV_DATA)")
    parser.add_argument("--mode", choices=MODES, default="local", help="the sampling mode of the trained network")
    parser.add_argument(
        "--priors", default="gaussian,mixture", help="the trained networks' weight priors, comma-separated"
    )
    parser.add_argument("--epochs", type=int, help=f"training epochs (default {EPOCHS}; quick 1)")
    parser.add_argument("--rounds", type=int, help=f"timed epochs of every side (default {ROUNDS}; quick 2)")
    parser.add_argument("--train-size", type=int, help="train on the first N images (default all; quick 5000)")
    parser.add_argument("--test-size", type=int, help="evaluate on the first N test images (default all; quick 1000)")
    parser.add_argument("--samples", type=int, help=f"draws of the predictive (default {SAMPLES}; quick 10)")
    parser.add_argument("--draws", type=int, help=f"gradient draws per mode (default {DRAWS}; quick 100)")
    parser.add_argument(
        "--variance-steps",
        type=int,
        help=f"training steps before the second variance table (default {VARIANCE_STEPS}; quick 100)",
    )
    parser.add_argument("--quick", action="store_true", help="a small version of every part, for development")
    parser.add_argument("--load", action="store_true", help="run one competing CPU-bound process during the rounds")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    defaults = {
        "epochs": EPOCHS,
        "train_size": 0,
        "test_size": 0,
        "samples": SAMPLES,
        "draws": DRAWS,
        "variance_steps": VARIANCE_STEPS,
        "rounds": ROUNDS,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, QUICK.get(key, 2) if args.quick else value)
    if args.worker is not None:
        return timing_worker(args)
    run_sections("bnn_quick" if args.quick else "bnn", SECTIONS, args.part, args)
    return None


if __name__ == "__main__":
    main()
