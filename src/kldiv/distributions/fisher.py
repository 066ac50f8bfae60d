"""Fisher information of a parametric family by automatic differentiation.

``I(theta) = E_x[grad log p_theta(x) grad log p_theta(x)^T] = Hessian_theta' KL(p_theta || p_theta')`` at
``theta' = theta``: KL is locally ``0.5 dtheta^T I(theta) dtheta + O(|dtheta|^3)`` (Amari & Nagaoka 2000,
"Methods of Information Geometry", section 2.2; Cover & Thomas 2006, section 11.10).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.distributions import Distribution

from kldiv.distributions.dispatch import kl_divergence
from kldiv.distributions.mc import draw

MakeDistribution = Callable[[Tensor], Distribution]


@dataclass(frozen=True)
class FisherInformation:
    """The Fisher information matrix, how it was computed, and (for Monte Carlo) its standard errors."""

    matrix: Tensor
    method: Literal["exact", "mc"]
    stderr: Tensor | None = None


def _check_theta(theta: Tensor) -> Tensor:
    if not isinstance(theta, Tensor) or theta.dim() != 1 or not theta.is_floating_point():
        raise ValueError(f"theta must be a 1-D floating-point tensor of parameters, got {theta!r}")
    if not bool(torch.isfinite(theta).all()):
        raise ValueError(f"theta must be finite, got {theta.tolist()}")
    return theta.detach()


def _exact(make_dist: MakeDistribution, theta: Tensor) -> Tensor:
    reference = make_dist(theta)

    def kl_to(other: Tensor) -> Tensor:
        return kl_divergence(reference, make_dist(other)).sum()

    hessian: Tensor = torch.autograd.functional.hessian(kl_to, theta)  # type: ignore[no-untyped-call]
    return 0.5 * (hessian + hessian.T)


def _monte_carlo(make_dist: MakeDistribution, theta: Tensor, n: int, seed: int | None) -> tuple[Tensor, Tensor]:
    x = draw(make_dist(theta), n, seed, reparameterized=False)

    def log_probs(t: Tensor) -> Tensor:
        lp = make_dist(t).log_prob(x)
        return lp.reshape(n, -1).sum(-1)

    jacobian = torch.autograd.functional.jacobian
    scores: Tensor = jacobian(log_probs, theta, vectorize=True, strategy="forward-mode")  # type: ignore[no-untyped-call]
    outer = scores[:, :, None] * scores[:, None, :]
    return outer.mean(0), outer.std(0) / math.sqrt(n)


def fisher_information(
    make_dist: MakeDistribution,
    theta: Tensor,
    *,
    method: Literal["auto", "exact", "mc"] = "auto",
    mc_samples: int = 100_000,
    seed: int | None = None,
) -> FisherInformation:
    """Fisher information ``I(theta)`` of the family ``theta -> make_dist(theta)`` at the 1-D tensor ``theta``.

    ``method="exact"`` takes the Hessian of the closed-form ``KL(p_theta || p_theta')`` at ``theta' = theta``
    (an exact expectation); ``"mc"`` averages outer products of the score over ``mc_samples`` draws and reports
    standard errors; ``"auto"`` uses the exact form where the pair has one and Monte Carlo otherwise.
    """
    t = _check_theta(theta)
    if method not in ("auto", "exact", "mc"):
        raise ValueError(f"method must be 'auto', 'exact' or 'mc', got {method!r}")
    if method != "mc":
        try:
            return FisherInformation(_exact(make_dist, t), "exact")
        except NotImplementedError:
            if method == "exact":
                raise
    matrix, stderr = _monte_carlo(make_dist, t, mc_samples, seed)
    return FisherInformation(matrix, "mc", stderr)


def fisher_check(make_dist: MakeDistribution, theta: Tensor, dtheta: Tensor) -> tuple[Tensor, Tensor]:
    """``(KL(p_theta || p_theta+dtheta), 0.5 dtheta^T I(theta) dtheta)``: equal up to ``O(|dtheta|^3)``."""
    t = _check_theta(theta)
    kl_value = kl_divergence(make_dist(t), make_dist(t + dtheta))
    info = fisher_information(make_dist, t, method="exact").matrix
    return kl_value.sum(), 0.5 * dtheta @ info @ dtheta
