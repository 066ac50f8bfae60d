"""Samples with a known mutual information: correlated Gaussians and their cubed variant (Poole et al. 2019; Song &
Ermon 2020), the benchmark of MI estimators.

``x ~ N(0, I_d)`` and ``y = rho x + sqrt(1 - rho^2) e`` with ``e ~ N(0, I_d)``: the ``d`` coordinate pairs are
independent bivariate normals with correlation ``rho``, so ``I(X; Y) = -(d / 2) log(1 - rho^2)``. Choosing
``rho = sqrt(1 - exp(-2 I / d))`` gives the mutual information ``I``. The cubed variant returns ``y^3``: an
invertible map of ``y`` leaves the mutual information unchanged but makes a simple critic's job harder.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["MAX_MI_PER_DIM", "correlated_gaussians", "gaussian_log_density_ratio", "rho_for_mi"]

MAX_MI_PER_DIM = 12.0
"""The largest mutual information per coordinate: the noise ``exp(-12) = 6e-6`` is still 50 float32 ulps of 1."""


def rho_for_mi(mi: float, dim: int) -> float:
    """The per-coordinate correlation ``sqrt(1 - exp(-2 mi / dim))`` of ``dim`` pairs holding ``mi`` nats."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
    if not (isinstance(mi, (int, float)) and not isinstance(mi, bool) and math.isfinite(mi) and mi >= 0):
        raise ValueError(f"mi must be a finite number >= 0 (nats), got {mi!r}")
    if mi / dim > MAX_MI_PER_DIM:
        raise ValueError(
            f"mi / dim = {mi / dim:g} nats per coordinate is more than float32 samples can hold (at most "
            f"{MAX_MI_PER_DIM:g}: the noise exp(-mi / dim) would vanish against x); use a larger dim"
        )
    return math.sqrt(-math.expm1(-2.0 * mi / dim))


def _noise_scale(mi: float, dim: int) -> float:
    """``sqrt(1 - rho^2) = exp(-mi / dim)``, exact where ``rho`` rounds to 1."""
    return math.exp(-mi / dim)


def correlated_gaussians(
    n: int, *, mi: float, dim: int, cubic: bool = False, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``n`` joint samples ``(x, y)``, each ``(n, dim)`` float32, with ``I(X; Y) = mi`` nats (``y`` cubed when
    ``cubic``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    rho = rho_for_mi(mi, dim)
    x = torch.randn(n, dim, generator=generator)
    y = rho * x + _noise_scale(mi, dim) * torch.randn(n, dim, generator=generator)
    return x, y.pow(3) if cubic else y


def gaussian_log_density_ratio(x: Tensor, y: Tensor, *, mi: float) -> Tensor:
    """``log p(y_j | x_i) / p(y_j)`` for every pair ``(B, B)`` of the (uncubed) correlated Gaussians holding ``mi``
    nats: the optimal critic of the DV and InfoNCE bounds (add 1 for NWJ's).

        log p(y|x)/p(y) = sum_k [ -(y_k - rho x_k)^2 / (2 (1 - rho^2)) + y_k^2 / 2 ] - (d / 2) log(1 - rho^2)
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must both be (B, d), got {tuple(x.shape)} and {tuple(y.shape)}")
    dim = x.shape[-1]
    rho = rho_for_mi(mi, dim)
    var = _noise_scale(mi, dim) ** 2
    diff = y.unsqueeze(0) - rho * x.unsqueeze(1)  # (B, B, d): [i, j] = y_j - rho x_i
    return (-diff.square() / (2 * var) + y.square().unsqueeze(0) / 2).sum(-1) + mi
