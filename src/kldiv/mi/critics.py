"""Critics ``T(x, y)`` that score every pair of a batch, ``(B, B)`` with ``[i, j] = T(x_i, y_j)``.

- :class:`SeparableCritic`: ``T(x, y) = g(x) . h(y)`` with two MLPs; all ``B^2`` scores from ``2B`` network
  evaluations.
- :class:`ConcatCritic`: ``T(x, y) = f([x, y])`` with one MLP on the concatenation; ``B^2`` evaluations, more
  expressive.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

__all__ = ["ConcatCritic", "SeparableCritic", "mlp"]


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    """``Linear, ReLU, ..., Linear`` through ``sizes``."""
    layers: list[nn.Module] = []
    pairs = list(itertools.pairwise(sizes))
    for i, (a, b) in enumerate(pairs):
        layers.append(nn.Linear(a, b))
        if i < len(pairs) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class SeparableCritic(nn.Module):
    """``T(x, y) = g(x) . h(y)``, ``g`` and ``h`` MLPs with ``hidden`` widths onto ``embedding`` features."""

    def __init__(self, x_dim: int, y_dim: int, hidden: tuple[int, ...] = (256, 256), embedding: int = 32) -> None:
        super().__init__()
        self.g = mlp((x_dim, *hidden, embedding))
        self.h = mlp((y_dim, *hidden, embedding))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """The scores ``(B, B)``."""
        out: Tensor = self.g(x) @ self.h(y).T
        return out


class ConcatCritic(nn.Module):
    """``T(x, y) = f([x, y])``, ``f`` an MLP with ``hidden`` widths."""

    def __init__(self, x_dim: int, y_dim: int, hidden: tuple[int, ...] = (256, 256)) -> None:
        super().__init__()
        self.f = mlp((x_dim + y_dim, *hidden, 1))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """The scores ``(B, B)``: ``f`` on all ``B^2`` pairs ``[x_i, y_j]``."""
        b = x.shape[0]
        pairs = torch.cat((x.unsqueeze(1).expand(b, b, -1), y.unsqueeze(0).expand(b, b, -1)), dim=-1)
        out: Tensor = self.f(pairs).squeeze(-1)
        return out
