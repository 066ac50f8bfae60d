"""Sample estimators of a KL divergence from log-ratios, per token with masks (Schulman's k1, k2, k3).

For samples ``x ~ q`` and ``log_ratio = log p(x) - log q(x)`` (``r = p(x) / q(x)``), each estimator is a function
of ``log_ratio`` whose mean over the samples estimates ``KL(q || p)``:

==========  ===========================  ===================================================================
``k1``      ``-log r``                   unbiased; high variance; negative for some samples
``k2``      ``(log r)^2 / 2``            biased (exact to second order as p -> q); low variance; >= 0
``k3``      ``(r - 1) - log r``          unbiased (``E_q[r - 1] = 0``); low variance; >= 0
==========  ===========================  ===================================================================

Reference: J. Schulman (2020), "Approximating KL divergence", http://joschu.net/blog/kl-approx.html. In PPO the
samples come from the old policy and ``log_ratio = log pi_new - log pi_old``: ``k3`` of it is Stable-Baselines3's
``approx_kl``, an estimate of ``KL(pi_old || pi_new)``; GRPO penalizes ``k3`` per token with ``log_ratio = log
pi_ref - log pi_theta`` (samples from pi_theta, an estimate of ``KL(pi_theta || pi_ref)``).

**An unbiased value is not an unbiased gradient.** With the samples drawn from ``q_theta`` and held fixed (as in
a policy-gradient step), ``E_q[grad k1] = E_q[grad log q_theta(x)] = 0``: ``k1``'s gradient is zero on average
although ``grad KL(q_theta || p)`` is not. ``k2``'s value is biased, but its gradient
``E_q[-log r grad log q_theta]`` is the score-function form of ``grad KL(q_theta || p)``: unbiased.
``tests/rl/test_estimators.py`` measures both by Monte Carlo against the exact gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor

from kldiv._numerics import INF, expm1_minus_x
from kldiv._validate import is_validation_enabled
from kldiv.losses.options import check_choice

__all__ = ["ESTIMATORS", "Reduction", "estimate_kl", "k1", "k2", "k3"]

Reduction = Literal["none", "mean", "sum", "sequence_mean"]
"""``"none"``: per token (0 where masked out); ``"mean"``: over the unmasked tokens of the whole batch; ``"sum"``;
``"sequence_mean"``: the mean over each sequence's unmasked tokens (last dimension), then over the sequences."""


def _check(log_ratio: object, mask: object) -> tuple[Tensor, Tensor | None]:
    if not isinstance(log_ratio, Tensor):
        raise TypeError(f"log_ratio must be a torch.Tensor, got {type(log_ratio).__name__}")
    if not log_ratio.is_floating_point():
        raise TypeError(f"log_ratio has dtype {log_ratio.dtype}; a floating-point dtype is required")
    if is_validation_enabled() and log_ratio.numel() and bool(torch.isnan(log_ratio).any()):
        raise ValueError("log_ratio holds NaN (log p - log q of a sample must be a number or -inf/+inf)")
    if mask is None:
        return log_ratio, None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean torch.Tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    try:
        torch.broadcast_shapes(mask.shape, log_ratio.shape)  # type: ignore[no-untyped-call]
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast with log_ratio of shape {tuple(log_ratio.shape)}"
        ) from None
    return log_ratio, mask.expand(log_ratio.shape)


def _reduce(values: Tensor, mask: Tensor | None, reduction: Reduction) -> Tensor:
    """Masked-out entries count as absent: 0 with ``"none"``, left out of sums and counts otherwise (a mean of
    no token is 0)."""
    check_choice("reduction", reduction, get_args(Reduction))
    kept = values if mask is None else torch.where(mask, values, 0.0)
    if reduction == "none":
        return kept
    if reduction == "sum":
        return kept.sum()
    if reduction == "mean":
        return kept.sum() / max(values.numel(), 1) if mask is None else kept.sum() / mask.sum().clamp(min=1)
    if values.dim() == 0:
        raise ValueError("reduction 'sequence_mean' needs log_ratio of shape (..., T), tokens last")
    counts = torch.full(values.shape[:-1], values.shape[-1], device=values.device) if mask is None else mask.sum(-1)
    per_sequence = kept.sum(-1) / counts.clamp(min=1)
    return per_sequence.mean() if per_sequence.numel() else per_sequence.sum()


def _masked_ratio(log_ratio: Tensor, mask: Tensor | None) -> Tensor:
    """Masked-out entries replaced by 0 before the estimator, so that they contribute 0 and a finite gradient."""
    return log_ratio if mask is None else torch.where(mask, log_ratio, 0.0)


def k1(log_ratio: Tensor, *, mask: Tensor | None = None, reduction: Reduction = "mean") -> Tensor:
    """``k1 = -log r``, the unbiased, high-variance estimator of ``KL(q || p)`` from ``log_ratio = log p(x) -
    log q(x)`` of samples ``x ~ q`` (see the module docstring; Schulman 2020)."""
    x, m = _check(log_ratio, mask)
    return _reduce(-_masked_ratio(x, m), m, reduction)


def k2(log_ratio: Tensor, *, mask: Tensor | None = None, reduction: Reduction = "mean") -> Tensor:
    """``k2 = (log r)^2 / 2``: biased (``E_q[k2] = KL + O(KL^{3/2})``), low variance, non-negative; its gradient
    with the samples fixed is unbiased for ``grad KL(q_theta || p)`` (Schulman 2020)."""
    x, m = _check(log_ratio, mask)
    y = _masked_ratio(x, m)
    return _reduce(0.5 * y * y, m, reduction)


def k3(log_ratio: Tensor, *, mask: Tensor | None = None, reduction: Reduction = "mean") -> Tensor:
    """``k3 = (r - 1) - log r = e^y - 1 - y`` with ``y = log r``: unbiased, low variance, non-negative
    (evaluated as ``expm1(y) - y`` with a series near 0, so small values keep their relative accuracy; +inf where
    ``y = +inf``). Stable-Baselines3's ``approx_kl`` and GRPO's per-token penalty (Schulman 2020)."""
    x, m = _check(log_ratio, mask)
    y = _masked_ratio(x, m)
    return _reduce(torch.where(y == INF, INF, expm1_minus_x(y)), m, reduction)


ESTIMATORS: dict[str, Callable[..., Tensor]] = {"k1": k1, "k2": k2, "k3": k3}
"""The estimators by name."""


def estimate_kl(
    log_ratio: Tensor, *, estimator: str = "k3", mask: Tensor | None = None, reduction: Reduction = "mean"
) -> Tensor:
    """The estimator named ``estimator`` (``"k1"``, ``"k2"`` or ``"k3"``) of ``log_ratio``."""
    check_choice("estimator", estimator, tuple(ESTIMATORS))
    return ESTIMATORS[estimator](log_ratio, mask=mask, reduction=reduction)
