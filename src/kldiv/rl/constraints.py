"""Trust-region checks and the entropy temperature of maximum-entropy RL.

- :func:`policy_update_with_kl_constraint`: whether an updated categorical policy stays within ``max_kl`` of the
  old one on a batch of states, by the exact mean ``KL(pi_old(.|s) || pi_new(.|s))`` (the tutorial's check,
  without its ``+ 1e-10`` inside the logs, which biases the KL and hides actions of probability 0).
- :func:`sac_temperature_loss`: the loss whose gradient adapts SAC's temperature ``alpha = exp(log_alpha)`` so
  that the policy's entropy approaches ``target_entropy`` (Haarnoja et al. 2018, "Soft actor-critic algorithms
  and applications", eq. 18), for sampled actions or, with ``probs``, for a discrete policy's exact expectation
  (Christodoulou 2019, "Soft actor-critic for discrete action settings", eq. 11).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from kldiv._validate import check_scalar
from kldiv.rl.policies import categorical_policy_kl

__all__ = ["KLCheck", "policy_update_with_kl_constraint", "sac_temperature_loss"]


class KLCheck(NamedTuple):
    """``satisfied`` when the mean KL ``kl`` over the states is ``<= max_kl``."""

    satisfied: bool
    kl: float


def policy_update_with_kl_constraint(
    old_policy: nn.Module, new_policy: nn.Module, states: Tensor, max_kl: float = 0.01, *, mask: Tensor | None = None
) -> KLCheck:
    """Whether ``new_policy`` is within ``max_kl`` (``> 0``) of ``old_policy`` on ``states``: the mean over the
    states (those of ``mask``) of ``KL(pi_old(.|s) || pi_new(.|s))``, exact from the two policies' logits
    (both evaluated without gradients). ``max_kl`` is the trust region's radius in TRPO (Schulman et al. 2015)."""
    bound = check_scalar("max_kl", max_kl, low=0.0, low_open=True)
    with torch.no_grad():
        kl = float(categorical_policy_kl(old_policy(states), new_policy(states), mask=mask))
    return KLCheck(kl <= bound, kl)


def sac_temperature_loss(
    log_alpha: Tensor, log_pi: Tensor, target_entropy: float, *, probs: Tensor | None = None
) -> Tensor:
    """``-log_alpha * E[log pi(a|s) + target_entropy]`` with the expectation held constant, averaged over states.

    ``log_pi``: the log-probabilities of actions sampled from the policy ``(B,)``, or, with ``probs``, of every
    action ``(B, A)`` (a discrete policy: the expectation ``sum_a pi(a|s) (log pi(a|s) + target_entropy)`` is
    taken exactly). Its gradient in ``log_alpha`` is ``H - target_entropy`` (``H`` the policy's entropy,
    estimated): gradient descent lowers ``alpha`` when the entropy is above its target and raises it below. It is
    the loss Stable-Baselines3 and CleanRL minimize. The tutorial's ``alpha * mean(entropy - target)`` moves
    ``alpha`` the same way but steps ``alpha`` itself, which can cross 0, and its entropy is not detached: the
    same loss also pushes the policy's entropy down, against the entropy bonus of the policy loss."""
    if not isinstance(log_alpha, Tensor) or log_alpha.numel() != 1:
        raise TypeError("log_alpha must be a one-element torch.Tensor (the learned log-temperature)")
    target = check_scalar("target_entropy", target_entropy)
    if probs is None:
        if log_pi.dim() != 1:
            raise ValueError(f"log_pi of sampled actions must be (B,), got {tuple(log_pi.shape)}")
        expected = log_pi.detach() + target
    else:
        if probs.shape != log_pi.shape or probs.dim() != 2:
            raise ValueError(
                f"probs and log_pi must both be (B, A), got {tuple(probs.shape)} and {tuple(log_pi.shape)}"
            )
        lp = torch.where(probs > 0, log_pi, 0.0)  # an action of probability 0 contributes nothing
        expected = (probs * (lp + target)).sum(-1).detach()
    return -(log_alpha.reshape(()) * expected).mean()
