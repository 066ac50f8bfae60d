"""Exact KL between two policies' action distributions, and KL-penalized rewards for sequence policies.

- :func:`categorical_policy_kl`: ``KL(pi_p(.|s) || pi_q(.|s))`` per state from two policies' logits, through
  :func:`kldiv.kl_from_logits` (exact, ``-inf`` logits allowed), masked and reduced over the states.
- :func:`gaussian_policy_kl`: the same for diagonal-Gaussian policies, ``sum_j KL(N(mu_p, s_p^2) || N(mu_q,
  s_q^2))`` over the action dimensions, through :func:`kldiv.kl_normal`.
- :func:`kl_penalized_rewards`: per-token rewards ``-beta k(log pi_ref(a_t) - log pi(a_t))`` of sampled
  sequences, plus each sequence's score on its last token (Ziegler et al. 2019, eq. 2; Stiennon et al. 2020).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from kldiv._validate import check_scalar
from kldiv.discrete import kl_from_logits
from kldiv.distributions.gaussian import kl_normal
from kldiv.rl.estimators import Reduction, _check, _reduce, estimate_kl

__all__ = ["categorical_policy_kl", "gaussian_policy_kl", "kl_penalized_rewards"]


def _reduce_states(per_state: Tensor, mask: Tensor | None, reduction: Reduction) -> Tensor:
    _, m = _check(per_state, mask)
    return _reduce(per_state, m, reduction)


def categorical_policy_kl(
    p_logits: Tensor, q_logits: Tensor, *, mask: Tensor | None = None, reduction: Reduction = "mean"
) -> Tensor:
    """``KL(softmax(p_logits) || softmax(q_logits))`` per state (actions on the last dimension), exact, masked
    (``mask`` of the states' shape) and reduced as in :mod:`kldiv.rl.estimators`."""
    return _reduce_states(kl_from_logits(p_logits, q_logits, dim=-1), mask, reduction)


def gaussian_policy_kl(
    mu_p: Tensor,
    std_p: Tensor,
    mu_q: Tensor,
    std_q: Tensor,
    *,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """``sum_j KL(N(mu_p_j, std_p_j^2) || N(mu_q_j, std_q_j^2))`` per state over the action dimensions (last),
    exact, masked and reduced as in :mod:`kldiv.rl.estimators`."""
    terms = cast(Tensor, kl_normal(mu_p, std_p, mu_q, std_q))
    if terms.dim() == 0:
        raise ValueError("the policies' parameters are scalars; give them an action dimension (..., A)")
    return _reduce_states(terms.sum(-1), mask, reduction)


def kl_penalized_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    *,
    kl_coef: float,
    mask: Tensor | None = None,
    estimator: str = "k1",
) -> Tensor:
    """Per-token rewards ``(B, T)`` of ``B`` sampled sequences: ``-kl_coef * k(log pi_ref(a_t) - log pi(a_t))``
    on every unmasked token (``k`` one of ``"k1"``, ``"k2"``, ``"k3"``, see :mod:`kldiv.rl.estimators`; summed
    over a sequence it estimates ``kl_coef KL(pi || pi_ref)`` of that sequence), plus ``scores`` ``(B,)`` on each
    sequence's last unmasked token; 0 on masked tokens. ``logprobs`` and ``ref_logprobs`` ``(B, T)`` are the
    log-probabilities of the sampled tokens under the policy and the reference (no gradient is taken)."""
    for name, t in (("scores", scores), ("logprobs", logprobs), ("ref_logprobs", ref_logprobs)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got {getattr(t, 'dtype', type(t))}")
    if logprobs.dim() != 2 or logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs and ref_logprobs must both be (B, T), got {tuple(logprobs.shape)} and "
            f"{tuple(ref_logprobs.shape)}"
        )
    if scores.shape != logprobs.shape[:1]:
        raise ValueError(f"scores must be (B,) = ({logprobs.shape[0]},), one per sequence, got {tuple(scores.shape)}")
    beta = check_scalar("kl_coef", kl_coef, low=0.0)
    keep = torch.ones_like(logprobs, dtype=torch.bool) if mask is None else mask
    if keep.shape != logprobs.shape or keep.dtype != torch.bool:
        raise ValueError(f"mask must be a boolean tensor of shape {tuple(logprobs.shape)}")
    if not bool(keep.any(-1).all()):
        raise ValueError("every sequence needs at least one unmasked token (its score goes on the last one)")
    with torch.no_grad():
        penalty = estimate_kl(ref_logprobs - logprobs, estimator=estimator, mask=keep, reduction="none")
        rewards = -beta * penalty
        positions = torch.arange(logprobs.shape[1], device=logprobs.device).expand_as(keep)
        last = torch.where(keep, positions, -1).amax(-1)
        rewards[torch.arange(logprobs.shape[0], device=logprobs.device), last] += scores
    return rewards
