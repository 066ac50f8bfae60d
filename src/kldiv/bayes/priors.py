"""Weight priors of Bayesian layers, and the KL from a diagonal Gaussian posterior to a prior.

A prior is any object with ``log_prob(w) -> Tensor`` (elementwise log-density of the weights). The KL of a
posterior ``q(w) = N(mu, std^2)`` (independent over the weights) to the prior is exact when the prior is a
:class:`GaussianPrior` (through :func:`kldiv.kl_normal`), and a one-sample Monte Carlo estimate otherwise
(:func:`kl_mc_terms`). Every function returns one KL term per weight; the layers sum them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

import torch
from torch import Tensor

from kldiv._validate import check_scalar
from kldiv.distributions.gaussian import kl_normal

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

__all__ = ["GaussianPrior", "Prior", "ScaleMixturePrior", "kl_mc_terms", "kl_terms"]


@runtime_checkable
class Prior(Protocol):
    """A factorized weight prior: ``log_prob(w)`` is the log-density of each weight, elementwise."""

    def log_prob(self, w: Tensor) -> Tensor: ...


def _normal_log_prob(w: Tensor, sigma: float) -> Tensor:
    """``log N(w; 0, sigma^2) = -w^2 / (2 sigma^2) - log sigma - log(2 pi) / 2``, elementwise."""
    return -0.5 * (w / sigma) ** 2 - (math.log(sigma) + _HALF_LOG_2PI)


@dataclass(frozen=True)
class GaussianPrior:
    """``p(w) = N(0, sigma^2)`` for every weight (the tutorial's prior is ``sigma = 1``)."""

    sigma: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_scalar("sigma", self.sigma, low=0.0, low_open=True))

    def log_prob(self, w: Tensor) -> Tensor:
        """``log N(w; 0, sigma^2)``, elementwise."""
        return _normal_log_prob(w, self.sigma)

    def kl(self, mu: Tensor, std: Tensor) -> Tensor:
        """Exact ``KL(N(mu, std^2) || N(0, sigma^2))`` per weight, through :func:`kldiv.kl_normal`:

        ``KL = log(sigma / std) + (std^2 + mu^2) / (2 sigma^2) - 1/2`` (Kullback 1959; Blundell et al. 2015,
        "Weight Uncertainty in Neural Networks", sec. 3.1). Non-negative, zero exactly when ``mu = 0`` and
        ``std = sigma``.
        """
        return cast(Tensor, kl_normal(mu, std, mu.new_zeros(()), mu.new_full((), self.sigma)))


@dataclass(frozen=True)
class ScaleMixturePrior:
    """``p(w) = pi N(0, sigma1^2) + (1 - pi) N(0, sigma2^2)``, the scale mixture of Blundell et al. (2015), sec. 3.3.

    A wide component (``sigma1``) and a narrow one (``sigma2 << sigma1``) give a heavy-tailed prior that
    concentrates many weights near zero. The defaults are from the grid of that paper: ``pi = 1/2``,
    ``sigma1 = 1`` (``-log sigma1 = 0``), ``sigma2 = e^-6``. There is no closed-form KL to a Gaussian
    posterior; layers estimate it by Monte Carlo (:func:`kl_mc_terms`).
    """

    pi: float = 0.5
    sigma1: float = 1.0
    sigma2: float = math.exp(-6.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pi", check_scalar("pi", self.pi, low=0.0, high=1.0, low_open=True, high_open=True))
        for name in ("sigma1", "sigma2"):
            object.__setattr__(self, name, check_scalar(name, getattr(self, name), low=0.0, low_open=True))

    def log_prob(self, w: Tensor) -> Tensor:
        """``log(pi N(w; 0, sigma1^2) + (1 - pi) N(w; 0, sigma2^2))``, elementwise, by log-sum-exp (no underflow
        of the narrow component's density far in the tails)."""
        wide = _normal_log_prob(w, self.sigma1) + math.log(self.pi)
        narrow = _normal_log_prob(w, self.sigma2) + math.log1p(-self.pi)
        return torch.logaddexp(wide, narrow)


def kl_mc_terms(prior: Prior, mu: Tensor, std: Tensor, eps: Tensor) -> Tensor:
    """One-sample Monte Carlo estimate of ``KL(N(mu, std^2) || p)`` per weight, at ``w = mu + std * eps``:

    ``KL_hat = -H(q) - log p(w) = -log std - (1 + log 2 pi) / 2 - log p(w)``.

    The Gaussian posterior's entropy ``H(q)`` is exact; only the cross-entropy ``-E_q[log p(w)]`` is sampled.
    This is Blundell et al.'s (2015, eq. 2) estimator ``log q(w) - log p(w)`` with its zero-mean part
    ``(eps^2 - 1) / 2`` removed: the same expectation and, for every ``eps``, the same gradient with respect to
    ``mu`` and ``std`` (``log q(mu + std eps) = -eps^2 / 2 - log std - log(2 pi) / 2`` does not depend on ``mu``).
    Unbiased; a single estimate may be negative.
    """
    w = mu + std * eps
    return -torch.log(std) - (0.5 + _HALF_LOG_2PI) - prior.log_prob(w)


def kl_terms(prior: Prior, mu: Tensor, std: Tensor, eps: Tensor | None) -> Tensor:
    """Per-weight ``KL(N(mu, std^2) || prior)``: exact for a :class:`GaussianPrior` (``eps`` unused), otherwise
    :func:`kl_mc_terms` at ``w = mu + std * eps`` (``eps`` required)."""
    if isinstance(prior, GaussianPrior):
        return prior.kl(mu, std)
    if eps is None:
        raise ValueError(f"eps is required: the KL to a {type(prior).__name__} is estimated by Monte Carlo")
    return kl_mc_terms(prior, mu, std, eps)
