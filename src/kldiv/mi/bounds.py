"""Variational lower bounds on the mutual information ``I(X; Y) = KL(P_XY || P_X P_Y)``, each a pure function of a
critic's score matrix.

``scores`` is ``(B, B)`` with ``scores[i, j] = T(x_i, y_j)`` for a batch of joint samples ``(x_i, y_i)``: the
diagonal holds the critic on samples of the joint, the ``B (B - 1)`` off-diagonal entries on samples of the product
of the marginals (the ``y`` of another pair). Notation: ``E_P[T]`` is the mean of the diagonal, ``E_Q[g(T)]`` the
mean of ``g`` over the off-diagonal entries.

==========  ============================================================  ==================================
bound       value                                                         reference
==========  ============================================================  ==================================
``dv``      ``E_P[T] - log E_Q[e^T]``                                     Donsker & Varadhan (1983)
``mine``    ``dv``'s value; the gradient of ``log E_Q[e^T]`` divided by   Belghazi et al. (2018), sec. 3.2
            a moving average of ``E_Q[e^T]`` instead of the batch's
``nwj``     ``E_P[T] - E_Q[e^(T - 1)]``                                   Nguyen, Wainwright & Jordan (2010)
``infonce`` ``log B + mean_i (T_ii - logsumexp_j T_ij)`` (at most log B)  van den Oord et al. (2018)
``smile``   ``E_P[T] - log E_Q[e^clip(T, -tau, tau)]``, with the          Song & Ermon (2020)
            gradient of the Jensen-Shannon bound ``js``
``js``      ``E_P[-softplus(-T)] - E_Q[softplus(T)]``, a lower bound     Nowozin et al. (2016)
            on ``2 JS - log 4`` (the GAN form; used for its gradient)
==========  ============================================================  ==================================

Each estimates a lower bound on ``I`` (for ``js``, on the JS divergence): ``dv`` and ``nwj`` are tight at the
optimal critic (``T* = log p(y|x)/p(y)`` for ``dv``, ``1 + log p(y|x)/p(y)`` for ``nwj``); their variance grows
exponentially with ``I`` (McAllester & Stratos 2020); ``infonce`` cannot exceed ``log B`` whatever the critic. See
Poole et al. (2019), "On variational bounds of mutual information".
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BOUNDS", "MineState", "dv", "infonce", "js", "mine", "nwj", "smile"]


def _check(scores: object) -> Tensor:
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point torch.Tensor, got {getattr(scores, 'dtype', type(scores))}")
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] < 2:
        raise ValueError(f"scores must be a square (B, B) matrix with B >= 2, got shape {tuple(scores.shape)}")
    bad = torch.isnan(scores) | (scores == float("inf"))
    if bool(bad.any()):
        i, j = (int(k) for k in bad.nonzero()[0])
        raise ValueError(f"scores[{i}, {j}] is {float(scores[i, j])}: the critic's output must be a number or -inf")
    return scores


def _off_diagonal(scores: Tensor) -> Tensor:
    """The ``B (B - 1)`` off-diagonal entries, flattened."""
    b = scores.shape[0]
    return scores.flatten()[1:].view(b - 1, b + 1)[:, :-1].reshape(-1)


def _log_mean_exp_off_diagonal(scores: Tensor) -> Tensor:
    """``log E_Q[e^T]`` over the off-diagonal entries (stable)."""
    off = _off_diagonal(scores)
    return torch.logsumexp(off, 0) - math.log(off.numel())


def dv(scores: Tensor) -> Tensor:
    """The Donsker-Varadhan bound ``E_P[T] - log E_Q[e^T]`` (see the module docstring)."""
    s = _check(scores)
    return s.diagonal().mean() - _log_mean_exp_off_diagonal(s)


def nwj(scores: Tensor) -> Tensor:
    """The NWJ bound ``E_P[T] - E_Q[e^(T - 1)]`` (see the module docstring)."""
    s = _check(scores)
    return s.diagonal().mean() - torch.exp(_log_mean_exp_off_diagonal(s) - 1.0)


def infonce(scores: Tensor) -> Tensor:
    """The InfoNCE bound ``log B + mean_i (T_ii - logsumexp_j T_ij)``, at most ``log B`` (see the module
    docstring). Row ``i`` contrasts ``y_i`` with every ``y_j`` of the batch for the same ``x_i``."""
    s = _check(scores)
    return math.log(s.shape[0]) + (s.diagonal() - torch.logsumexp(s, dim=1)).mean()


def js(scores: Tensor) -> Tensor:
    """The f-GAN lower bound ``E_P[-softplus(-T)] - E_Q[softplus(T)] <= 2 JS(P, Q) - log 4``."""
    s = _check(scores)
    return -F.softplus(-s.diagonal()).mean() - F.softplus(_off_diagonal(s)).mean()


def smile(scores: Tensor, tau: float | None = 5.0) -> Tensor:
    """SMILE: the value of ``E_P[T] - log E_Q[e^clip(T, -tau, tau)]`` with the gradient of :func:`js` (no clipping
    when ``tau`` is None). Clipping caps the variance of the partition term at the price of a bias."""
    s = _check(scores)
    if tau is not None and not (isinstance(tau, (int, float)) and not isinstance(tau, bool) and tau > 0):
        raise ValueError(f"tau must be a number > 0 or None, got {tau!r}")
    clipped = s if tau is None else s.clamp(-tau, tau)
    value = s.diagonal().mean() - _log_mean_exp_off_diagonal(clipped)
    gradient_carrier = js(s)
    return gradient_carrier + (value - gradient_carrier).detach()


class MineState(NamedTuple):
    """MINE's moving average of ``E_Q[e^T]``, kept as its logarithm (``None`` before the first batch)."""

    log_average: Tensor | None


def mine(scores: Tensor, state: MineState, *, momentum: float = 0.99) -> tuple[Tensor, MineState]:
    """MINE: the value of :func:`dv`, with the gradient of ``log E_Q[e^T]`` taken as ``grad E_Q[e^T] / a``, where
    ``a`` is the moving average ``a <- momentum a + (1 - momentum) E_Q[e^T]`` updated with this batch (the first
    batch starts it). The batch estimate's gradient ``grad E_Q[e^T] / E_Q[e^T]`` is biased (the ratio of two
    estimates); the average makes the denominator nearly constant. Returns the estimate and the new state."""
    s = _check(scores)
    if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    log_mean = _log_mean_exp_off_diagonal(s)
    batch = log_mean.detach()
    if state.log_average is None or momentum == 0:
        log_average = batch
    else:
        log_average = torch.logaddexp(state.log_average.to(batch) + math.log(momentum), batch + math.log1p(-momentum))
    surrogate = torch.exp(log_mean - log_average)  # value 1 at log_mean == log_average; gradient grad(E e^T) / a
    partition = surrogate + (log_mean - surrogate).detach()
    return s.diagonal().mean() - partition, MineState(log_average)


BOUNDS = ("dv", "mine", "nwj", "infonce", "smile")
"""The MI bounds :func:`kldiv.mi.estimate_mi` trains a critic on."""
