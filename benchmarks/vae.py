"""Benchmark of issue 5: the seed's VAE on the real MNIST, the tutorial's loop against kldiv's trainer.

Both train the seed's configuration (MLP 784-400-400-20, sigmoid/Bernoulli decoder, Adam 1e-3, batch 128,
continuous pixels, BCE summed over pixels + KL) for 20 epochs in the same run:

(a) the tutorial's loop as written: a per-item ``Dataset`` (torchvision-style: a PIL image per item, converted by
    a ``ToTensor``-style function) and a ``DataLoader``, the KL written inline;
(b) ``kldiv.vae.train`` (in-memory tensors batched by index permutation, kldiv's Gaussian KL, fused Adam, and
    Adam's subnormal state entries zeroed every 16 steps: :func:`kldiv.vae.train.flush_subnormal_state_`).

(a') is (a) with that subnormal flush added: it separates the share of kldiv's gain that comes from it.

Reported: seconds per training epoch (median over epochs), test negative ELBO (nats per image), and for (b) the
IWAE-5000 bound on the test NLL. Then (c): the same MLP trained with dynamic binarization, its IWAE-5000 NLL next
to published one-layer VAE figures. Goal: (b)'s epoch time <= 0.5x (a)'s at equal or better test -ELBO.

Run: ``.venv/bin/python -m benchmarks.vae [--data-dir ../shared/data/mnist] [--binarized-epochs 50]``
(writes ``benchmarks/results/vae.json``; about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from benchmarks._common import machine, write_json
from kldiv.data import binarize, load_mnist
from kldiv.runs import RunOptions, flush_subnormal_state_
from kldiv.vae.objective import evaluate, iwae_bound
from kldiv.vae.train import TrainConfig, train

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
PUBLISHED = {
    "Burda et al. 2016, VAE 1 stochastic layer, k=5000 eval (IWAE paper, Table 1)": 86.76,
    "pythae benchmark, VAE, 200 importance samples": 89.78,
}


# --- (a) the tutorial's loop, as written ----------------------------------------------------------------------


def _to_tensor(pic: Image.Image) -> Tensor:
    """torchvision's ToTensor for a mode-"L" PIL image: bytes -> (1, H, W) float in [0, 1]."""
    arr = torch.from_numpy(np.array(pic, np.uint8, copy=True))
    return arr.view(pic.size[1], pic.size[0], 1).permute(2, 0, 1).contiguous().float().div(255)


class TutorialMNIST(Dataset[tuple[Tensor, int]]):
    """torchvision.datasets.MNIST's item path: uint8 array -> PIL image -> ToTensor, one item at a time."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = Image.fromarray(self.images[i].numpy(), mode="L")
        return _to_tensor(img), int(self.labels[i])


class TutorialVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc2 = nn.Linear(400, 400)
        self.fc_mu = nn.Linear(400, 20)
        self.fc_logvar = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 400)
        self.fc5 = nn.Linear(400, 784)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = F.relu(self.fc2(F.relu(self.fc1(x.view(-1, 784)))))
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc5(F.relu(self.fc4(F.relu(self.fc3(z)))))), mu, logvar


def tutorial_loss(recon: Tensor, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def run_tutorial(data_dir: Path, epochs: int, *, flush_subnormals: bool = False) -> dict[str, Any]:
    torch.manual_seed(0)
    data = load_mnist(
        data_dir
    )  # the raw uint8 pixels back (exact: they were divided by 255), as torchvision holds them
    images, labels = (data.train[:, 0] * 255).round().to(torch.uint8), data.train_labels
    test_images, test_labels = (data.test[:, 0] * 255).round().to(torch.uint8), data.test_labels
    train_loader = DataLoader(TutorialMNIST(images, labels), batch_size=128, shuffle=True)
    test_loader = DataLoader(TutorialMNIST(test_images, test_labels), batch_size=128)
    model = TutorialVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seconds, test_losses, steps = [], [], 0
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for x, _ in train_loader:
            optimizer.zero_grad()
            recon, mu, logvar = model(x)
            loss = tutorial_loss(recon, x, mu, logvar)
            loss.backward()
            optimizer.step()
            steps += 1
            if flush_subnormals and steps % 16 == 0:
                flush_subnormal_state_(optimizer)
        seconds.append(time.perf_counter() - start)
        model.eval()
        total = 0.0
        with torch.no_grad():
            for x, _ in test_loader:
                recon, mu, logvar = model(x)
                total += float(tutorial_loss(recon, x, mu, logvar))
        test_losses.append(total / len(test_images))
        print(f"  tutorial epoch {len(seconds)}: {seconds[-1]:.2f} s, test -ELBO {test_losses[-1]:.2f}", flush=True)
    return {"seconds_per_epoch": seconds, "test_neg_elbo_per_epoch": test_losses}


# --- (b), (c) kldiv ------------------------------------------------------------------------------------------


def run_kldiv(
    data_dir: Path, epochs: int, out: Path, *, binarized: bool, iwae_k: int, iwae_images: int
) -> dict[str, Any]:
    data = load_mnist(data_dir)
    config = TrainConfig(
        dataset="mnist",
        data_dir=str(data_dir),
        epochs=epochs,
        batch_size=128,
        lr=1e-3,
        binarize=binarized,
        figures=False,
        eval_batch_size=2000,
    )
    result = train(config, RunOptions(out=out, overwrite=True, progress=False), data=data)
    for row in result.metrics:
        print(f"  kldiv epoch {int(row['epoch'])}: {row['seconds']:.2f} s, test -ELBO {-row['eval_elbo']:.2f}")
    x = data.test[:iwae_images]
    neg_elbo = -result.test.elbo
    if binarized:  # a binarized model is evaluated on one fixed binarization of the test set
        data = replace(data, test=binarize(data.test, torch.Generator().manual_seed(1)))
        x = data.test[:iwae_images]
        neg_elbo = -evaluate(result.model, data.test, generator=torch.Generator().manual_seed(2)).elbo
    start = time.perf_counter()
    bound = iwae_bound(result.model, x, k=iwae_k, generator=torch.Generator().manual_seed(3), progress=True)
    return {
        "seconds_per_epoch": [row["seconds"] for row in result.metrics],
        "test_neg_elbo_per_epoch": [-row["eval_elbo"] for row in result.metrics],
        "test_neg_elbo": neg_elbo,
        f"iwae_{iwae_k}_nll": -float(bound.mean()),
        "iwae_nll_stderr": float(bound.std() / bound.numel() ** 0.5),
        "iwae_images": int(x.shape[0]),
        "iwae_seconds": time.perf_counter() - start,
        "active_units": result.test.active_units,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--binarized-epochs", type=int, default=50)
    parser.add_argument("--iwae-k", type=int, default=5000)
    parser.add_argument("--iwae-images", type=int, default=10_000, help="first N test images for the IWAE bound")
    args = parser.parse_args()
    if not args.data_dir.is_dir():
        raise SystemExit(f"MNIST not found at {args.data_dir}; pass --data-dir")
    print(f"(a) tutorial loop, {args.epochs} epochs", flush=True)
    tutorial = run_tutorial(args.data_dir, args.epochs)
    print(f"(a') the tutorial loop with kldiv's subnormal flush of Adam's state, {args.epochs} epochs", flush=True)
    tutorial_flushed = run_tutorial(args.data_dir, args.epochs, flush_subnormals=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"(b) kldiv, {args.epochs} epochs", flush=True)
        ours = run_kldiv(
            args.data_dir,
            args.epochs,
            Path(tmp) / "b",
            binarized=False,
            iwae_k=args.iwae_k,
            iwae_images=args.iwae_images,
        )
        print(f"(c) kldiv, dynamic binarization, {args.binarized_epochs} epochs", flush=True)
        binarized = run_kldiv(
            args.data_dir,
            args.binarized_epochs,
            Path(tmp) / "c",
            binarized=True,
            iwae_k=args.iwae_k,
            iwae_images=args.iwae_images,
        )
    t_a = statistics.median(tutorial["seconds_per_epoch"])
    t_b = statistics.median(ours["seconds_per_epoch"])
    ratio = t_b / t_a
    elbo_a = tutorial["test_neg_elbo_per_epoch"][-1]
    elbo_b = ours["test_neg_elbo"]
    met = ratio <= 0.5 and elbo_b <= elbo_a
    print(
        f"epoch time: tutorial {t_a:.2f} s, kldiv {t_b:.2f} s, ratio {ratio:.2f} (goal <= 0.5); test -ELBO after "
        f"{args.epochs} epochs: tutorial {elbo_a:.2f}, kldiv {elbo_b:.2f}; kldiv IWAE-{args.iwae_k} NLL "
        f"{ours[f'iwae_{args.iwae_k}_nll']:.2f}; binarized ({args.binarized_epochs} epochs) IWAE NLL "
        f"{binarized[f'iwae_{args.iwae_k}_nll']:.2f}; goal met: {met}"
    )
    write_json(
        "vae",
        {
            "benchmark": "issue 5: seed VAE on MNIST, tutorial loop vs kldiv.vae.train, same run",
            "goal": "kldiv epoch time <= 0.5x the tutorial loop's, test -ELBO equal or better",
            "machine": machine(),
            "epochs": args.epochs,
            "tutorial": tutorial,
            "tutorial_flush_subnormals": tutorial_flushed,
            "kldiv": ours,
            "kldiv_binarized": {**binarized, "epochs": args.binarized_epochs},
            "median_epoch_seconds": {
                "tutorial": t_a,
                "tutorial_flush_subnormals": statistics.median(tutorial_flushed["seconds_per_epoch"]),
                "kldiv": t_b,
            },
            "time_ratio": ratio,
            "goal_met": met,
            "published_nll": PUBLISHED,
        },
    )


if __name__ == "__main__":
    main()
