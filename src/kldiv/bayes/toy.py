"""The 1-D regression toy of ``kldiv bnn train --task regression``: two clusters of inputs and a gap between them.

Inputs are drawn uniformly from ``[-4, -2] U [2, 4]`` (half in each interval) and targets are
``y = sin(x) + x / 4 + noise``, ``noise ~ N(0, NOISE_STD^2)``. A model of the data should be sure of itself on
the two clusters and unsure in the gap and beyond ``|x| > 4``: the predictive's epistemic part (the spread of
the draws' means) is what shows it. The set is generated from a seed, never downloaded.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CLUSTERS", "NOISE_STD", "PLOT_RANGE", "ToyData", "toy_function", "toy_regression"]

CLUSTERS = ((-4.0, -2.0), (2.0, 4.0))
NOISE_STD = 0.1
PLOT_RANGE = (-8.0, 8.0)
TEST_SEED_OFFSET = 1  # the test points come from seed + 1


def toy_function(x: Tensor) -> Tensor:
    """The noiseless target ``f(x) = sin(x) + x / 4``."""
    return torch.sin(x) + x / 4


@dataclass(frozen=True)
class ToyData:
    """Inputs ``(N, 1)`` and targets ``(N, 1)`` (float32) for training and testing."""

    train: Tensor
    train_targets: Tensor
    test: Tensor
    test_targets: Tensor

    def fingerprint(self) -> str:
        """The size and the SHA-256 of the training points, to tell at a resume that they are the same."""
        digest = hashlib.sha256(self.train.contiguous().numpy().tobytes())
        digest.update(self.train_targets.contiguous().numpy().tobytes())
        return f"{self.train.shape[0]} toy points, sha256 {digest.hexdigest()[:16]}"


def _draw(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    halves = (math.ceil(n / 2), n // 2)
    xs = [lo + (hi - lo) * torch.rand(k, 1, generator=generator) for (lo, hi), k in zip(CLUSTERS, halves, strict=True)]
    x = torch.cat(xs)
    return x, toy_function(x) + NOISE_STD * torch.randn(n, 1, generator=generator)


def toy_regression(seed: int, *, n_train: int = 100, n_test: int = 100) -> ToyData:
    """``n_train`` training and ``n_test`` test points of the toy (module docstring), from ``seed`` and
    ``seed + 1``."""
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"{name} must be an int >= 2 (one point per cluster at least), got {n!r}")
    x, y = _draw(n_train, torch.Generator().manual_seed(seed))
    tx, ty = _draw(n_test, torch.Generator().manual_seed(seed + TEST_SEED_OFFSET))
    return ToyData(train=x, train_targets=y, test=tx, test_targets=ty)
