"""The tutorial's VAE training loop on MNIST, as written, one epoch at a time (the baseline of ``benchmarks.vae``).

The tutorial loads MNIST with ``torchvision.datasets.MNIST(transform=ToTensor())``: each item is a uint8 array
turned into a PIL image and then into a float tensor, one at a time, batched by a shuffling ``DataLoader``.
torchvision is not a dependency of kldiv, so the item path is rebuilt here from PIL and torch exactly as
torchvision's does it; the model, the loss and the loop (with its ``.item()`` calls and its print every 100
steps) are the tutorial's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kldiv.data import load_mnist

batch_size = 128
learning_rate = 1e-3
latent_dim = 20
image_size = 28 * 28


def to_tensor(pic: Image.Image) -> Tensor:
    """torchvision's ``ToTensor`` for a mode-"L" PIL image: bytes -> (1, H, W) float in [0, 1]."""
    arr = torch.from_numpy(np.array(pic, np.uint8, copy=True))
    return arr.view(pic.size[1], pic.size[0], 1).permute(2, 0, 1).contiguous().float().div(255)


class MNIST(Dataset[tuple[Tensor, int]]):
    """torchvision.datasets.MNIST's item path: uint8 array -> PIL image -> ``ToTensor``."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = Image.fromarray(self.images[i].numpy(), mode="L")
        return to_tensor(img), int(self.labels[i])


class VAE(nn.Module):
    def __init__(self, image_size: int = 784, h_dim: int = 400, z_dim: int = 20) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(image_size, h_dim), nn.ReLU(), nn.Linear(h_dim, h_dim), nn.ReLU())
        self.mu = nn.Linear(h_dim, z_dim)
        self.log_var = nn.Linear(h_dim, z_dim)
        self.decoder = nn.Sequential(
            nn.Linear(z_dim, h_dim),
            nn.ReLU(),
            nn.Linear(h_dim, h_dim),
            nn.ReLU(),
            nn.Linear(h_dim, image_size),
            nn.Sigmoid(),
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.log_var(h)

    def reparameterize(self, mu: Tensor, log_var: Tensor) -> Tensor:
        std = torch.exp(0.5 * log_var)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z: Tensor) -> Tensor:
        out: Tensor = self.decoder(z)
        return out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var)
        return self.decode(z), mu, log_var


def kl_divergence_normal(mu: Tensor, log_var: Tensor) -> Tensor:
    return -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp())


class TutorialTrainer:
    """The tutorial's set-up, then its loop body one epoch per :meth:`epoch` call."""

    def __init__(self, data_dir: Path) -> None:
        torch.manual_seed(0)
        data = load_mnist(data_dir)  # the raw uint8 pixels back (exact: they were divided by 255)
        images = (data.train[:, 0] * 255).round().to(torch.uint8)
        self.test_images = (data.test[:, 0] * 255).round().to(torch.uint8)
        self.test_labels = data.test_labels
        self.train_dataset = MNIST(images, data.train_labels)
        self.train_loader = DataLoader(dataset=self.train_dataset, batch_size=batch_size, shuffle=True)
        self.model = VAE()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
        self.log = open(os.devnull, "w")  # noqa: SIM115 - the tutorial prints progress; here nobody reads it
        self.epochs = 0

    def epoch(self) -> dict[str, Any]:
        model, optimizer, train_loader, train_dataset = (
            self.model,
            self.optimizer,
            self.train_loader,
            self.train_dataset,
        )
        start = time.perf_counter()
        total_loss = 0.0
        total_recon_loss = 0.0
        total_kl_loss = 0.0
        for i, (images, _) in enumerate(train_loader):
            images = images.reshape(-1, image_size)
            reconstructed, mu, log_var = model(images)
            reconstruction_loss = F.binary_cross_entropy(reconstructed, images, reduction="sum")
            kl_loss = kl_divergence_normal(mu, log_var)
            loss = reconstruction_loss + kl_loss
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total_loss += loss.item()
            total_recon_loss += reconstruction_loss.item()
            total_kl_loss += kl_loss.item()
            if (i + 1) % 100 == 0:
                print(
                    f"Epoch [{self.epochs + 1}], Step [{i + 1}/{len(train_loader)}], "
                    f"Loss: {loss.item() / len(images):.4f}, "
                    f"Recon Loss: {reconstruction_loss.item() / len(images):.4f}, "
                    f"KL Loss: {kl_loss.item() / len(images):.4f}",
                    file=self.log,
                )
        print(f"Average Loss: {total_loss / len(train_dataset):.4f}", file=self.log)
        self.epochs += 1
        return {"seconds": time.perf_counter() - start, "train_loss": total_loss / len(train_dataset)}

    @torch.no_grad()
    def test_neg_elbo(self) -> float:
        """The tutorial's loss on the test set (one sample of z per image), in nats per image."""
        self.model.eval()
        loader = DataLoader(MNIST(self.test_images, self.test_labels), batch_size=1000)
        total = 0.0
        for images, _ in loader:
            images = images.reshape(-1, image_size)
            reconstructed, mu, log_var = self.model(images)
            total += float(
                F.binary_cross_entropy(reconstructed, images, reduction="sum") + kl_divergence_normal(mu, log_var)
            )
        return total / len(self.test_images)
