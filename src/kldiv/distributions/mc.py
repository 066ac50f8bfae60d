"""Monte-Carlo estimates of divergences between distributions, with standard errors.

``KL(P||Q) = E_P[log p(x) - log q(x)]``. Samples are reparameterized where the distribution allows it
(``rsample``), so the estimate is differentiable in P's parameters.
Estimators (Schulman 2020, "Approximating KL divergence"): ``k1 = log p/q`` (unbiased) and
``k3 = (r - 1) - log r`` with ``r = q/p`` (unbiased, never negative, lower variance when P and Q are close;
but where ``q/p`` has infinite variance under P, e.g. a heavy-tailed Q such as StudentT(3) against a Normal P,
its standard error is not trustworthy: use ``k1`` there).
With P's closed-form entropy the ``k1`` samples get the control variate ``log p(x) + H(P)`` (mean exactly 0),
with the variance-minimizing coefficient estimated from the same samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from kldiv.distributions.registry import check_pair

Estimator = Literal["k1", "k3"]


@dataclass(frozen=True)
class Estimate:
    """A Monte-Carlo estimate: ``value`` (differentiable where the samples are), its standard error, and n."""

    value: Tensor
    stderr: Tensor
    n: int

    def interval(self, z: float = 1.96) -> tuple[Tensor, Tensor]:
        """The normal-approximation confidence interval ``value -/+ z * stderr`` (z = 1.96: 95%)."""
        return self.value - z * self.stderr, self.value + z * self.stderr

    def __float__(self) -> float:
        return float(self.value)


def draw(p: Distribution, n: int, seed: int | None, *, reparameterized: bool = True) -> Tensor:
    """``n`` samples of ``p`` (reparameterized where possible); a ``seed`` leaves the global RNG untouched."""
    shape = torch.Size((n,))
    use_r = reparameterized and p.has_rsample
    if seed is None:
        return p.rsample(shape) if use_r else p.sample(shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return p.rsample(shape) if use_r else p.sample(shape)


def broadcast_pair(p: Distribution, q: Distribution) -> tuple[Distribution, Distribution]:
    """Check the pair and expand both to the common batch shape (so samples of p fit q)."""
    check_pair(p, q)
    shape = torch.Size(np.broadcast_shapes(tuple(p.batch_shape), tuple(q.batch_shape)))
    return (p if p.batch_shape == shape else p.expand(shape)), (q if q.batch_shape == shape else q.expand(shape))


def _entropy(p: Distribution) -> Tensor | None:
    try:
        return p.entropy()
    except NotImplementedError:
        return None


def _mean_and_stderr(samples: Tensor) -> tuple[Tensor, Tensor]:
    n = samples.shape[0]
    return samples.mean(0), samples.detach().std(0, unbiased=True) / math.sqrt(n)


def _control_variate(k1: Tensor, log_p: Tensor, entropy: Tensor) -> Tensor:
    """``k1 - c (log p + H)`` with ``c = Cov(k1, log p) / Var(log p)`` (the regression estimator)."""
    z = (log_p + entropy).detach()
    zc = z - z.mean(0)
    var = (zc * zc).mean(0)
    cov = ((k1.detach() - k1.detach().mean(0)) * zc).mean(0)
    c = torch.where(var > 0, cov / torch.where(var > 0, var, 1.0), 0.0)
    return k1 - c * (log_p + entropy)


def kl_mc(
    p: Distribution, q: Distribution, n: int, *, estimator: Estimator = "k1", seed: int | None = None
) -> Estimate:
    """Monte-Carlo estimate of ``KL(p || q)`` from ``n`` samples of ``p``, with its standard error.

    ``estimator="k1"`` averages ``log p(x) - log q(x)`` (with P's entropy as a control variate when it has a
    closed form); ``"k3"`` averages ``q/p - 1 - log(q/p)``. ``seed`` makes the draw reproducible without
    touching the global RNG. Reference: Schulman (2020), http://joschu.net/blog/kl-approx.html.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (the standard error needs two samples), got {n!r}")
    if estimator not in ("k1", "k3"):
        raise ValueError(f"estimator must be 'k1' or 'k3', got {estimator!r}")
    p, q = broadcast_pair(p, q)
    x = draw(p, n, seed)
    log_p = p.log_prob(x)
    log_q = q.log_prob(x)
    log_ratio = log_p - log_q
    if estimator == "k3":
        terms = torch.expm1(-log_ratio) + log_ratio
    else:
        entropy = _entropy(p)
        terms = log_ratio if entropy is None else _control_variate(log_ratio, log_p, entropy)
    value, stderr = _mean_and_stderr(terms)
    return Estimate(value, stderr, n)


def js_mc(p: Distribution, q: Distribution, n: int, *, seed: int | None = None) -> Estimate:
    """Monte-Carlo Jensen-Shannon divergence ``JS = 0.5 E_P[log p/m] + 0.5 E_Q[log q/m]``, ``m = (p + q) / 2``.

    ``n`` samples from each of P and Q; the standard error combines the two independent halves. Each term is
    bounded by ``log 2``, so the estimate is well behaved even where KL is infinite.
    Reference: Lin (1991), "Divergence measures based on the Shannon entropy".
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (the standard error needs two samples), got {n!r}")
    p, q = broadcast_pair(p, q)
    halves = []
    for k, (a, b) in enumerate(((p, q), (q, p))):
        x = draw(a, n, None if seed is None else seed + k)
        log_a, log_b = a.log_prob(x), b.log_prob(x)
        log_m = torch.logaddexp(log_a, log_b) - math.log(2.0)
        halves.append(_mean_and_stderr(log_a - log_m))
    value = 0.5 * (halves[0][0] + halves[1][0])
    stderr = 0.5 * torch.sqrt(halves[0][1] ** 2 + halves[1][1] ** 2)
    return Estimate(value, stderr, n)
