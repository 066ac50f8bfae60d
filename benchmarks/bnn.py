"""Bayesian MLP on MNIST: gradient variance of the three sampling modes, epoch time, accuracy, calibration, OOD.

The network is an MLP 784-400-400-10 (ReLU) of ``kldiv.bayes.BayesianLinear`` layers (softplus scale, initial
std 1e-3, prior N(0, 1)) trained on the negative ELBO per example (``kldiv.bayes.negative_elbo``, KL weight 1),
or of ``torch.nn.Linear`` layers trained on the cross-entropy (the deterministic baseline); Adam 1e-3, batch 128.
Sections (``--part``), each a key of ``benchmarks/results/bnn.json`` (a run rewrites only its own):

``variance``: on one fixed minibatch (the first 128 training images) and one network, the variance over
``--draws`` noise draws of the gradient of the loss with respect to each layer's ``weight_mu`` and
``weight_rho``, averaged over the weights, for each mode (``reparam``, ``local``, ``flipout``), and its ratio to
``reparam``. Two networks: freshly initialized (seed 0) and briefly trained (``--variance-steps`` Adam steps in
``local`` mode from that initialization). The draws are split into ``GROUPS`` groups; the ratios are reported as
median and range over the groups (each group an independent estimate). Also reported: the distance between the
modes' mean gradients relative to their norm (all three estimate the same gradient).

``timing``: one epoch of each side in a process of its own (``deterministic``, ``local``, ``reparam``,
``flipout``), the same training loop for all (only the layers and the loss differ), rounds interleaved with the
order reversed every other round, after one untimed warm-up epoch of every side. Reported: each side's epoch
seconds and its ratio to the deterministic epoch of the same round (median and range). ``--load`` runs one
competing CPU-bound process during the rounds.

``train``: the Bayesian MLP (``--mode``, default ``local``) and the deterministic one, ``--epochs`` epochs each,
then on the test set: accuracy, NLL, Brier score and ECE (15 bins) of the Monte Carlo predictive
(``--samples`` draws, ``kldiv.bayes.predict_classes``), of the Bayesian network at its posterior means, and of
the baseline; out-of-distribution detection (``kldiv.bayes.ood_auroc``) of the test images against the same
images rotated by 90 degrees and against uniform noise images, scored by the predictive entropy and (Bayesian
network) the mutual information.

Run: ``.venv/bin/python -m benchmarks.bnn [--part variance|timing|train] [--load] [--data-dir DIR]`` (about
10 minutes on a quiet 2-core CPU); ``--quick`` (1 epoch on 5000 training images, 1000 test images, fewer draws)
writes ``bnn_quick.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks._common import DEFAULT_DATA, machine, mnist_subset, ratio_text, run_sections, spread
from benchmarks._workers import Load, Worker, serve
from kldiv.bayes import (
    BayesianLinear,
    ClassPredictive,
    class_predictive,
    classification_metrics,
    classification_nll,
    kl_loss,
    negative_elbo,
    ood_auroc,
    predict_classes,
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
SIDES = ("deterministic", *MODES)


def _data(args: argparse.Namespace) -> Any:
    return mnist_subset(args.data_dir, train_size=args.train_size, test_size=args.test_size)


def mlp(mode: Mode | None) -> nn.Sequential:
    """The MLP of :data:`WIDTHS` with ReLUs: Bayesian layers sampling in ``mode``, or ``nn.Linear`` for None."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (fan_in, fan_out) in enumerate(pairwise(WIDTHS)):
        layers.append(nn.Linear(fan_in, fan_out) if mode is None else BayesianLinear(fan_in, fan_out, mode=mode))
        if i < len(WIDTHS) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


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
        self.model = mlp(mode)
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
    moments: dict[Mode, dict[str, dict[str, Tensor]]] = {}
    for mode in MODES:
        set_mode(model, mode)
        torch.manual_seed(1)
        moments[mode] = _gradient_moments(model, x, y, dataset_size, per_group * GROUPS)
    table: dict[str, Any] = {}
    for name in moments["reparam"]:
        base = moments["reparam"][name]
        base_mean = base["sum"].sum(0) / (per_group * GROUPS)
        rows: dict[str, Any] = {}
        for mode in MODES:
            m = moments[mode][name]
            groups = [_mean_variance(m["sum"][g], m["square"][g], per_group) for g in range(GROUPS)]
            base_groups = [_mean_variance(base["sum"][g], base["square"][g], per_group) for g in range(GROUPS)]
            mean = m["sum"].sum(0) / (per_group * GROUPS)
            rows[mode] = {
                "variance": _mean_variance(m["sum"].sum(0), m["square"].sum(0), per_group * GROUPS),
                "over_reparam": spread([a / b for a, b in zip(groups, base_groups, strict=True)]),
                "mean_gradient_norm": float(mean.norm()),
                "mean_gradient_distance_to_reparam": float((mean - base_mean).norm() / base_mean.norm()),
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
    mode: Mode | None = None if args.worker == "deterministic" else args.worker
    trainer = Trainer(mode, data.train, data.train_labels, seed=0)
    serve(trainer.epoch, lambda: {"threads": torch.get_num_threads()})


def timing_section(args: argparse.Namespace) -> dict[str, Any]:
    common = ["--data-dir", str(args.data_dir), "--train-size", str(args.train_size), "--test-size", "1"]
    start_load = os.getloadavg()
    workers: dict[str, Worker] = {}
    rounds: list[dict[str, Any]] = []
    load = Load() if args.load else None
    try:
        for side in SIDES:
            workers[side] = Worker(MODULE, side, common)
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


def _metrics(predictive: ClassPredictive, labels: Tensor) -> dict[str, float]:
    m = classification_metrics(predictive, labels)
    return {
        "accuracy": m.accuracy,
        "nll": m.nll,
        "brier": m.brier,
        "ece": m.ece,
        "predictive_entropy": m.predictive_entropy,
        "mutual_information": m.mutual_information,
    }


def _ood_sets(test: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """The test images rotated by 90 degrees, and as many images of uniform noise in [0, 1]."""
    noise = torch.rand(test.shape, generator=torch.Generator().manual_seed(seed))
    return {"rotated": torch.rot90(test, 1, dims=(2, 3)), "noise": noise}


def train_section(args: argparse.Namespace) -> dict[str, Any]:
    data = _data(args)
    start_load = os.getloadavg()
    trainers = {
        "bnn": Trainer(args.mode, data.train, data.train_labels, seed=0),
        "baseline": Trainer(None, data.train, data.train_labels, seed=0),
    }
    epochs: list[dict[str, Any]] = []
    for e in range(args.epochs):
        row: dict[str, Any] = {"epoch": e + 1, **{side: t.epoch() for side, t in trainers.items()}}
        epochs.append(row)
        print(
            f"epoch {e + 1}: "
            + ", ".join(f"{s} loss {row[s]['loss']:.4f} ({row[s]['seconds']:.1f} s)" for s in trainers),
            flush=True,
        )
    bnn, baseline = trainers["bnn"].model, trainers["baseline"].model
    inputs = {"test": data.test, **_ood_sets(data.test)}
    start = time.perf_counter()
    bnn.train()  # sample the weights (the network has no dropout or batch norm)
    bnn_pred = {name: predict_classes(bnn, x, args.samples) for name, x in inputs.items()}
    bnn.eval()
    with torch.no_grad():
        mean_pred = class_predictive(bnn(data.test).unsqueeze(0))
        base_pred = {name: class_predictive(baseline(x).unsqueeze(0)) for name, x in inputs.items()}
    evaluation = time.perf_counter() - start
    test = {
        "bnn": _metrics(bnn_pred["test"], data.test_labels),
        "bnn_posterior_mean": _metrics(mean_pred, data.test_labels),
        "baseline": _metrics(base_pred["test"], data.test_labels),
    }
    ood: dict[str, Any] = {}
    for name in ("rotated", "noise"):
        ood[name] = {
            "bnn_entropy": ood_auroc(bnn_pred["test"].predictive_entropy, bnn_pred[name].predictive_entropy),
            "bnn_mutual_information": ood_auroc(bnn_pred["test"].mutual_information, bnn_pred[name].mutual_information),
            "baseline_entropy": ood_auroc(base_pred["test"].predictive_entropy, base_pred[name].predictive_entropy),
        }
    _print_train(test, ood)
    return {
        "machine": machine(),
        "load_average_1_5_15": {"start": start_load, "end": os.getloadavg()},
        "settings": {
            "mode": args.mode,
            "epochs": args.epochs,
            "train_size": args.train_size or 60_000,
            "test_size": args.test_size or 10_000,
            "batch_size": BATCH,
            "lr": LR,
            "samples": args.samples,
            "evaluation_seconds": evaluation,
        },
        "test": test,
        "ood_auroc": ood,
        "epochs": epochs,
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
