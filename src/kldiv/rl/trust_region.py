"""The pieces of TRPO's natural-gradient step (Schulman et al. 2015, "Trust region policy optimization", appendix C).

- :func:`fisher_vector_product`: ``F v`` for the Fisher matrix of the policy at its current parameters, as the
  Hessian-vector product of the mean ``KL(pi_old || pi_theta)`` at ``theta = theta_old`` (double backprop; the
  Fisher matrix is that KL's Hessian there), plus ``damping v``.
- :func:`conjugate_gradient`: solves ``F x = g`` with ``iterations`` matrix-vector products only.
- :func:`trust_region_step`: ``x`` scaled so that the quadratic model of the KL, ``x^T F x / 2``, equals ``max_kl``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["conjugate_gradient", "fisher_vector_product", "flat_grad", "trust_region_step"]


def flat_grad(
    value: Tensor, params: Sequence[nn.Parameter], *, create_graph: bool = False, retain_graph: bool = False
) -> Tensor:
    """The gradient of the scalar ``value`` with respect to ``params``, flattened into one vector."""
    grads = torch.autograd.grad(
        value, params, create_graph=create_graph, retain_graph=retain_graph or create_graph, allow_unused=True
    )
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)]
    )


def fisher_vector_product(
    kl: Callable[[], Tensor], params: Sequence[nn.Parameter], damping: float
) -> Callable[[Tensor], Tensor]:
    """``v -> (H + damping I) v`` with ``H`` the Hessian of ``kl()`` (the mean KL from the fixed old policy to the
    current one, a scalar) in ``params``; the KL's gradient graph is built once and reused for every product."""
    grad = flat_grad(kl(), params, create_graph=True)

    def product(v: Tensor) -> Tensor:
        return flat_grad(grad @ v, params, retain_graph=True) + damping * v

    return product


def conjugate_gradient(
    product: Callable[[Tensor], Tensor], b: Tensor, *, iterations: int = 10, tolerance: float = 1e-10
) -> Tensor:
    """An approximate solution of ``A x = b`` for a symmetric positive-definite ``A`` given by ``product(v) = A v``,
    after at most ``iterations`` conjugate-gradient steps (stopping once the squared residual is below
    ``tolerance``); exact after ``len(b)`` steps in exact arithmetic (Nocedal & Wright, algorithm 5.2)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iterations):
        if float(rr) <= tolerance:
            break
        ap = product(p)
        alpha = rr / (p @ ap)
        x += alpha * p
        r -= alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def trust_region_step(direction: Tensor, product: Callable[[Tensor], Tensor], max_kl: float) -> Tensor:
    """``direction * sqrt(2 max_kl / d^T F d)``: the step along ``direction`` whose quadratic KL model
    ``s^T F s / 2`` is ``max_kl`` (0 when ``d^T F d`` is not positive)."""
    curvature = float(direction @ product(direction))
    if not (curvature > 0 and math.isfinite(curvature)):
        return torch.zeros_like(direction)
    return direction * math.sqrt(2.0 * max_kl / curvature)
