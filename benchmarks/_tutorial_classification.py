"""The tutorial's KL-regularized CNN and its training loop, as written (the baseline of ``benchmarks.classification``).

The tutorial shows the model and the loop but not how its classification data is loaded; here it is the usual
PyTorch way: a shuffling ``DataLoader`` over a ``TensorDataset`` of the very tensors kldiv trains on (float32
images ``(N, 1, 28, 28)`` in [0, 1], int64 labels). The model, its regularizer (with its ``+ 1e-10`` inside the
log), the loop (with its ``.item()`` calls, its ``torch.max(logits.data, 1)`` accuracy and its print every 100
steps) and Adam at 1e-3 are the tutorial's; :meth:`TutorialTrainer.epoch` runs the loop for one epoch.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from kldiv.data import ImageDataset
from kldiv.metrics import accuracy, calibration_bins, negative_log_likelihood

learning_rate = 1e-3
beta = 0.1


class KLRegularizedCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(7 * 7 * 64, 256), nn.ReLU(), nn.Linear(256, num_classes))
        self.target_dist = torch.ones(num_classes) / num_classes

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = x.view(x.size(0), -1)
        logits: Tensor = self.classifier(x)
        return logits

    def kl_regularization_loss(self, logits: Tensor, beta: float = 0.1) -> Tensor:
        probs = F.softmax(logits, dim=1)
        avg_probs = probs.mean(dim=0)
        kl = torch.sum(avg_probs * torch.log(avg_probs * self.target_dist.size(0) + 1e-10))
        return beta * kl


def train_kl_regularized(
    model: KLRegularizedCNN,
    train_loader: DataLoader[tuple[Tensor, ...]],
    optimizer: torch.optim.Optimizer,
    num_epochs: int = 5,
    beta: float = 0.1,
) -> None:
    device = next(model.parameters()).device
    model.train()
    for epoch in range(num_epochs):
        total_loss = 0.0
        total_ce_loss = 0.0
        total_kl_loss = 0.0
        correct = 0
        total = 0
        for i, (images, labels) in enumerate(train_loader):
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            ce_loss = F.cross_entropy(logits, labels)
            kl_loss = model.kl_regularization_loss(logits, beta)
            loss = ce_loss + kl_loss
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total_loss += loss.item()
            total_ce_loss += ce_loss.item()
            total_kl_loss += kl_loss.item()
            _, predicted = torch.max(logits.data, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
            if (i + 1) % 100 == 0:
                print(
                    f"Epoch [{epoch + 1}/{num_epochs}], Step [{i + 1}/{len(train_loader)}], "
                    f"Loss: {loss.item():.4f}, Acc: {100 * correct / total:.2f}%"
                )
        print(
            f"Epoch [{epoch + 1}/{num_epochs}], "
            f"Average Loss: {total_loss / len(train_loader):.4f}, "
            f"CE Loss: {total_ce_loss / len(train_loader):.4f}, "
            f"KL Loss: {total_kl_loss / len(train_loader):.4f}, "
            f"Accuracy: {100 * correct / total:.2f}%"
        )


class TutorialTrainer:
    """The tutorial's set-up over ``data``, then :func:`train_kl_regularized` one epoch per :meth:`epoch` call."""

    def __init__(self, data: ImageDataset, *, batch_size: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.data = data
        self.train_loader = DataLoader(
            TensorDataset(data.train, data.train_labels), batch_size=batch_size, shuffle=True
        )
        self.model = KLRegularizedCNN()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)

    def epoch(self) -> dict[str, Any]:
        """One epoch of the tutorial's loop: its seconds (the call and nothing else) and torch's thread count."""
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # nobody reads its progress here
            start = time.perf_counter()
            train_kl_regularized(self.model, self.train_loader, self.optimizer, num_epochs=1, beta=beta)
            seconds = time.perf_counter() - start
        return {"seconds": seconds, "threads": torch.get_num_threads()}

    @torch.no_grad()
    def test(self) -> dict[str, float]:
        """Accuracy, NLL (nats per image) and ECE (15 bins) on the test set, by :mod:`kldiv.metrics`, as for
        kldiv's side."""
        self.model.eval()
        x = self.data.test
        logits = torch.cat([self.model(x[s : s + 1000]) for s in range(0, x.shape[0], 1000)])
        log_probs = torch.log_softmax(logits.double(), -1)
        labels = self.data.test_labels
        return {
            "accuracy": float(accuracy(log_probs, labels)),
            "nll": float(negative_log_likelihood(log_probs, labels, kind="log_probs")),
            "ece": float(calibration_bins(log_probs.exp(), labels, n_bins=15).ece),
        }
