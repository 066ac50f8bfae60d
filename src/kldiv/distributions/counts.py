"""KL divergences between count distributions: Poisson, Geometric, Binomial, NegativeBinomial, Multinomial,
Bernoulli, Categorical and OneHotCategorical, same-family and cross pairs.

Pure batched tensor functions (``kl_poisson``, ``kl_binomial``, ...) hold the formulas; the registered pair
functions at the bottom only read the parameters of the ``torch.distributions`` objects.

Semantics throughout (as ``scipy.special.xlogy``): ``0 log 0 = 0``; KL is +inf exactly when P gives mass to a
point where Q has none (a support violation), including at degenerate parameters (rate 0, probs 0 or 1). Values
are never NaN for valid parameters, and gradients are finite wherever the value is finite: masked branches are
fed safe values, never ``0 * inf``. The gradient with respect to a parameter at a degenerate value (rate 0,
probs 0) is the one of the masked expression, as in the discrete core (0 for a zero probability).

Torch parameterizations: ``Geometric(probs=p)`` has ``P(k) = (1 - p)^k p`` on ``{0, 1, ...}``;
``NegativeBinomial(total_count=r, probs=p)`` has ``P(k) = Gamma(k + r) / (Gamma(r) k!) p^k (1 - p)^r``.

Series. Poisson||Geometric, Geometric||Poisson and NegativeBinomial pairs with different total counts have no
closed form (they need ``E[log K!]`` or ``E[log Gamma(K + r)]``). They are summed over a window of the support
whose neglected tails are bounded by ``_TRUNCATION`` (absolute), proved per element: past the window the
weights decay at least geometrically, ``w(k + 1) <= rho w(k)``, and the summand is at most ``a + b k + c k^2``,
so the tail is at most ``w(m) [a S0 + b (m S0 + S1) + c (m^2 S0 + 2 m S1 + S2)]`` with ``S_j = sum_i i^j rho^i``
(see :func:`_tail_bound`). The cost is the window length: ``O(lambda)`` Poisson terms (``O(sqrt(lambda))``
with the lower cut), ``O(log(1/tol) / p)`` Geometric terms.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Binomial,
    Categorical,
    Geometric,
    Multinomial,
    NegativeBinomial,
    OneHotCategorical,
    Poisson,
)

from kldiv import discrete
from kldiv._numerics import INF, kl_terms_from_log_ratio, log_ratio
from kldiv.distributions.gaussian import _kl_bernoulli_probs
from kldiv.distributions.registry import register_kl

_TRUNCATION = 1e-18
"""Certified absolute bound on each neglected tail of a series (below float64 resolution of any KL >= 1e-2)."""
_CHUNK = 8192
"""Support points summed per step of a series (bounds the memory at batch size x ``_CHUNK``)."""
MAX_TERMS = 10_000_000
"""Most support points a sum may take; parameters that need more raise ``ValueError`` naming the argument."""


def _too_many_terms(name: str, value: float, terms: float) -> ValueError:
    return ValueError(
        f"{name} = {value:g} needs a sum over about {terms:.3g} support points, more than kldiv's limit of "
        f"{MAX_TERMS:.0e}: this pair has no closed form at these parameters (kldiv.kl_mc gives a Monte-Carlo estimate)"
    )


# ----------------------------------------------------------------------------------------------------------
# Safe elementary pieces
# ----------------------------------------------------------------------------------------------------------


def _xlogy(x: Tensor, y: Tensor) -> Tensor:
    """``x log y`` with ``0 log y = 0`` for any ``y >= 0`` and ``-inf`` where ``y = 0 < x``; finite gradients."""
    pos = y > 0
    ys = torch.where(pos, y, 1.0)
    return torch.where(pos, x * torch.log(ys), torch.where(x == 0, 0.0, -INF))


def _xlog1my(x: Tensor, y: Tensor) -> Tensor:
    """``x log(1 - y)`` (``log1p``) with ``0 log 0 = 0`` and ``-inf`` where ``y = 1`` and ``x > 0``."""
    below = y < 1
    ys = torch.where(below, y, 0.0)
    return torch.where(below, x * torch.log1p(-ys), torch.where(x == 0, 0.0, -INF))


def _log1mexp(a: Tensor) -> Tensor:
    """``log(1 - e^a)`` for ``a < 0`` (Maechler 2012: ``log(-expm1(a))`` above ``-log 2``, else ``log1p(-e^a)``)."""
    near = a > -math.log(2.0)
    a_near = torch.where(near, a, -1.0)
    a_far = torch.where(near, -1.0, a)
    return torch.where(near, torch.log(-torch.expm1(a_near)), torch.log1p(-torch.exp(a_far)))


def _broadcast(*tensors: Tensor) -> tuple[Tensor, ...]:
    out: tuple[Tensor, ...] = torch.broadcast_tensors(*tensors)  # type: ignore[no-untyped-call]
    return out


def _bernoulli_pair(p: Tensor) -> Tensor:
    return torch.stack([p, 1.0 - p], dim=-1)


def _entropy_bernoulli(p: Tensor) -> Tensor:
    """``-p log p - (1 - p) log(1 - p)`` through the discrete core."""
    return discrete.entropy_probs(_bernoulli_pair(p), -1)


def _divide_or_inf(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else +inf (the limit for the degenerate parameters that reach here)."""
    pos = den > 0
    return torch.where(pos, num / torch.where(pos, den, 1.0), INF)


# ----------------------------------------------------------------------------------------------------------
# Log-pmfs on a grid ``k`` (the last dimension); parameters carry a trailing singleton dimension
# ----------------------------------------------------------------------------------------------------------


def _poisson_log_pmf(k: Tensor, rate: Tensor) -> Tensor:
    return _xlogy(k, rate) - rate - torch.lgamma(k + 1.0)


def _geometric_log_pmf(k: Tensor, probs: Tensor) -> Tensor:
    return torch.log(probs) + _xlog1my(k, probs)


def _binomial_log_pmf(k: Tensor, total_count: Tensor, probs: Tensor) -> Tensor:
    """``log C(n, k) + k log p + (n - k) log(1 - p)``; ``-inf`` for ``k > n``."""
    inside = k <= total_count
    ks = torch.where(inside, k, 0.0)
    log_comb = torch.lgamma(total_count + 1.0) - torch.lgamma(ks + 1.0) - torch.lgamma(total_count - ks + 1.0)
    value = log_comb + _xlogy(ks, probs) + _xlog1my(total_count - ks, probs)
    return torch.where(inside, value, -INF)


def _negative_binomial_log_pmf(k: Tensor, total_count: Tensor, probs: Tensor) -> Tensor:
    log_comb = torch.lgamma(k + total_count) - torch.lgamma(total_count) - torch.lgamma(k + 1.0)
    return log_comb + _xlogy(k, probs) + _xlog1my(total_count, probs)


def _kl_finite_support(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(P||Q) for P supported on the grid (last dimension) and Q's log-pmf on the same grid.

    Q's mass off the grid, where P has none, is lumped into one extra bin ``log(1 - sum_k q_k)``; lumping points
    where ``p = 0`` leaves the KL unchanged, and the discrete core then sees two normalized distributions
    (``-inf`` entries exact, full relative accuracy, finite gradients).
    """
    lse = torch.logsumexp(log_q, dim=-1, keepdim=True)
    has_tail = lse < 0  # rounding may put a tail-free Q at or above 0
    tail = torch.where(has_tail, _log1mexp(torch.where(has_tail, lse, -1.0)), -INF)
    lp = torch.cat([log_p, torch.full_like(tail, -INF)], dim=-1)
    lq = torch.cat([log_q, tail], dim=-1)
    return discrete.kl_log(lp, lq, -1)


def _grid(upper: Tensor, like: Tensor, name: str) -> Tensor:
    """``0, 1, ..., max(upper)`` as a float tensor (``name``: the argument ``upper`` comes from)."""
    top = float(upper.max().item()) if upper.numel() else 0.0
    if not top < MAX_TERMS:
        raise _too_many_terms(name, top, top + 1)
    return torch.arange(int(top) + 1, dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------------------------------------
# Certified truncation of series
# ----------------------------------------------------------------------------------------------------------


def _tail_bound(log_w: Tensor, rho: Tensor, m: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Upper bound on ``sum_{k >= m} w(k) f(k)`` given ``w(k + 1) <= rho w(k)`` for ``k >= m`` (``rho < 1``) and
    ``0 <= f(k) <= a + b k + c k^2``: ``w(m) sum_i rho^i f(m + i)`` with ``S0 = 1/(1 - rho)``,
    ``S1 = rho/(1 - rho)^2``, ``S2 = rho (1 + rho)/(1 - rho)^3``. +inf where ``rho >= 1``.
    """
    ok = rho < 1
    r = torch.where(ok, rho, 0.0)
    s0 = 1.0 / (1.0 - r)
    s1 = r * s0 * s0
    s2 = r * (1.0 + r) * s0 * s0 * s0
    poly = a * s0 + b * (m * s0 + s1) + c * (m * m * s0 + 2.0 * m * s1 + s2)
    return torch.where(ok, torch.exp(log_w) * poly, INF)


def _upper_cutoff(start: Tensor, bound_past: Callable[[Tensor], Tensor], name: str, value: float) -> int:
    """The largest ``J`` over the batch such that ``bound_past(J + 1) <= _TRUNCATION``, by doubling from ``start``;
    ``ValueError`` naming the argument (``name = value``) where ``J`` would exceed :data:`MAX_TERMS`."""
    last = start.ceil().clamp(min=0.0)
    while True:
        if last.numel() and not float(last.max()) < MAX_TERMS:
            raise _too_many_terms(name, value, float(last.max()))
        bad = ~(bound_past(last + 1.0) <= _TRUNCATION)
        if not bool(bad.any()):
            return int(last.max().item()) if last.numel() else 0
        last = torch.where(bad, 2.0 * last + 16.0, last)


def _window_sum(term: Callable[[Tensor], Tensor], low: int, high: int, like: Tensor) -> Tensor:
    """``sum_{k = low}^{high} term(k)``; ``term`` maps a 1-D grid to per-point values in its last dimension."""
    total = torch.zeros((), dtype=like.dtype, device=like.device)
    for start in range(low, high + 1, _CHUNK):
        k = torch.arange(start, min(start + _CHUNK, high + 1), dtype=like.dtype, device=like.device)
        total = total + term(k).sum(-1)
    return total


def _poisson_entropy(rate: Tensor) -> Tensor:
    """``H(Poisson(lambda)) = -sum_k P(k) log P(k)`` by certified truncated summation (0 at ``lambda = 0``).

    Window ``[L, J]`` around the mean. Bounds: ``|log P(k)| <= lambda + k |log lambda| + k^2`` (``log k! <= k^2``);
    upper tail ``P(k + 1)/P(k) = lambda/(k + 1)``; lower tail ``P(k - 1)/P(k) = k / lambda <= (L - 1)/lambda``
    for ``k < L``, so it is at most ``P(L - 1) f(L - 1) / (1 - (L - 1)/lambda)``.
    """
    zero = rate == 0
    lam = torch.where(zero, 1.0, rate).detach()
    with torch.no_grad():
        a, b, c = lam, lam.log().abs(), torch.ones_like(lam)

        def upper(m: Tensor) -> Tensor:
            return _tail_bound(_poisson_log_pmf(m, lam), lam / (m + 1.0), m, a, b, c)

        high = _upper_cutoff(lam + 10.0 * lam.sqrt() + 30.0, upper, "p.rate", float(lam.max()))
        lower = (lam - 10.0 * lam.sqrt() - 30.0).floor().clamp(min=0.0)
        for _ in range(200):
            m = (lower - 1.0).clamp(min=0.0)
            f_max = a + b * m + c * m * m
            rho = m / lam
            bound = torch.exp(_poisson_log_pmf(m, lam)) * f_max / (1.0 - rho).clamp(min=1e-300)
            bad = (lower > 0) & ~((rho < 1) & (bound <= _TRUNCATION))
            if not bool(bad.any()):
                break
            lower = torch.where(bad, (lower / 2.0).floor(), lower)
        low = int(lower.min().item()) if lower.numel() else 0
    safe = torch.where(zero, 1.0, rate).unsqueeze(-1)

    def term(k: Tensor) -> Tensor:
        log_p = _poisson_log_pmf(k, safe)  # finite: rate > 0
        return -torch.exp(log_p) * log_p

    h = _window_sum(term, low, high, rate)
    return torch.where(zero, 0.0, h)


# ----------------------------------------------------------------------------------------------------------
# Formulas (batched tensor functions; parameters broadcast)
# ----------------------------------------------------------------------------------------------------------


def kl_poisson(rate_p: Tensor, rate_q: Tensor) -> Tensor:
    """KL(Poisson(lambda1) || Poisson(lambda2)) = lambda1 log(lambda1/lambda2) - lambda1 + lambda2.

    Evaluated as ``lambda2 phi(log(lambda1/lambda2))``, ``phi(x) = (x - 1) e^x + 1 >= 0``, accurate in relative
    terms for nearly equal rates. ``lambda1 = 0`` gives ``lambda2`` (torch gives NaN); ``lambda2 = 0 < lambda1``
    gives +inf. Reference: the Poisson log-likelihood ratio, e.g. Cover & Thomas (2006), eq. 2.26.
    """
    lam1, lam2 = _broadcast(rate_p, rate_q)
    support = lam1 > 0
    finite = support & (lam2 > 0)
    l1 = torch.where(finite, lam1, 1.0)
    l2 = torch.where(finite, lam2, 1.0)
    value = kl_terms_from_log_ratio(log_ratio(l1, l2), l1, l2)
    return torch.where(finite, value, torch.where(support, INF, lam2))


def kl_geometric(probs_p: Tensor, probs_q: Tensor) -> Tensor:
    """KL(Geometric(p1) || Geometric(p2)) = log(p1/p2) + ((1 - p1)/p1) log((1 - p1)/(1 - p2)).

    Written as ``KL(Bernoulli(p1) || Bernoulli(p2)) / p1`` (each Geometric trial is a Bernoulli, and there are
    ``1/p1`` of them on average), which is never negative and exact at ``p = 1``: ``p1 = 1`` gives
    ``-log p2``; ``p2 = 1 > p1`` gives +inf.
    """
    p1, p2 = _broadcast(probs_p, probs_q)
    return _divide_or_inf(_kl_bernoulli_probs(p1, p2), p1)


def kl_negative_binomial(total_count_p: Tensor, probs_p: Tensor, total_count_q: Tensor, probs_q: Tensor) -> Tensor:
    """KL(NB(r1, p1) || NB(r2, p2)) for torch's ``P(k) = Gamma(k + r)/(Gamma(r) k!) p^k (1 - p)^r``.

    Equal ``r``: ``r log((1 - p1)/(1 - p2)) + (r p1/(1 - p1)) log(p1/p2) = r KL(Bern(p1)||Bern(p2)) / (1 - p1)``
    (closed form). Different ``r`` (same support ``{0, 1, ...}``): ``E_P[g(K)] + r1 log(1 - p1) - r2 log(1 - p2)
    + E[K] log(p1/p2)`` with ``g(k) = log Gamma(k+r1)/Gamma(r1) - log Gamma(k+r2)/Gamma(r2)`` and
    ``E[K] = r1 p1/(1 - p1)``; ``E_P[g(K)]`` is summed with a certified truncation (``|g(k)| <= |r1 - r2| (1 + k)
    / min(r1, r2)``, ``P(k+1)/P(k) = p1 (k + r1)/(k + 1)``). ``p1 = 0`` gives ``-r2 log(1 - p2)``; ``p2 = 0 < p1``
    gives +inf.
    """
    r1, p1, r2, p2 = _broadcast(total_count_p, probs_p, total_count_q, probs_q)
    same = r1 == r2
    closed = _divide_or_inf(r1 * _kl_bernoulli_probs(p1, p2), 1.0 - p1)
    if torch.is_grad_enabled() and total_count_q.requires_grad:
        same = torch.zeros_like(same)  # the closed form has no derivative in q's r: use the series everywhere
    if bool(same.all()):
        return closed
    violated = (p2 == 0) & (p1 > 0)
    ok = ~violated
    p1s = torch.where(ok, p1, 0.5)
    p2s = torch.where(ok, p2, 0.5)
    with torch.no_grad():
        r1d, p1d = r1.detach(), p1s.detach()
        rmin = torch.minimum(r1, r2).detach()
        a = (r1 - r2).detach().abs() / rmin
        zero = torch.zeros_like(a)

        def upper(m: Tensor) -> Tensor:
            rho = p1d * torch.clamp((m + r1d) / (m + 1.0), min=1.0)
            return _tail_bound(_negative_binomial_log_pmf(m, r1d, p1d), rho, m, a, a, zero)

        mean = r1d * p1d / (1.0 - p1d)
        mean_name = "p's mean total_count * probs / (1 - probs)"
        high = _upper_cutoff(mean + 10.0 * (mean / (1.0 - p1d)).sqrt() + 30.0, upper, mean_name, float(mean.max()))
    r1e, p1e, r2e = r1.unsqueeze(-1), p1s.unsqueeze(-1), r2.unsqueeze(-1)

    def term(k: Tensor) -> Tensor:
        g = (torch.lgamma(k + r1e) - torch.lgamma(r1e)) - (torch.lgamma(k + r2e) - torch.lgamma(r2e))
        return torch.exp(_negative_binomial_log_pmf(k, r1e, p1e)) * g

    expect_g = _window_sum(term, 0, high, p1)
    mean_k = r1 * p1s / (1.0 - p1s)
    linear = _xlogy(mean_k, p1s) - _xlogy(mean_k, p2s)
    series = expect_g + _xlog1my(r1, p1s) - _xlog1my(r2, p2s) + linear
    return torch.where(same, closed, torch.where(violated, INF, series))


def kl_binomial(total_count_p: Tensor, probs_p: Tensor, total_count_q: Tensor, probs_q: Tensor) -> Tensor:
    """KL(Binomial(n1, p1) || Binomial(n2, p2)) for any total counts.

    Equal ``n``: ``n KL(Bern(p1) || Bern(p2))`` (closed form, as torch). Otherwise the exact finite sum
    ``sum_{k=0}^{n1} P(k) log(P(k)/Q(k))`` over P's support (Q's mass above ``n1`` lumped into one bin, see
    :func:`_kl_finite_support`), batched with per-element ``n`` by masking up to the largest ``n1``.
    +inf exactly where P's support is not inside Q's: ``n1 > n2`` unless ``p1 = 0``; ``p2`` in {0, 1} with a
    different point mass. torch raises ``NotImplementedError`` for ``n1 < n2``, which is finite.
    """
    n1, p1, n2, p2 = _broadcast(total_count_p, probs_p, total_count_q, probs_q)
    if bool((n1 == n2).all()):
        return torch.where(n1 > 0, n1 * _kl_bernoulli_probs(p1, p2), 0.0)
    k = _grid(n1, p1, "p.total_count")
    log_p = _binomial_log_pmf(k, n1.unsqueeze(-1), p1.unsqueeze(-1))
    log_q = _binomial_log_pmf(k, n2.unsqueeze(-1), p2.unsqueeze(-1))
    return _kl_finite_support(log_p, log_q)


def kl_binomial_poisson(total_count: Tensor, probs: Tensor, rate: Tensor) -> Tensor:
    """KL(Binomial(n, p) || Poisson(lambda)) = sum_{k=0}^{n} b(k) log(b(k) / Pois(k; lambda)), a finite sum.

    Equals ``log n! - E[log (n-K)!] + n [p log p + (1-p) log(1-p)] - n p log lambda + lambda``; ``n = 1`` is
    Bernoulli||Poisson. +inf where ``lambda = 0`` and P has mass above 0.
    """
    n, p, lam = _broadcast(total_count, probs, rate)
    k = _grid(n, p, "p.total_count")
    log_p = _binomial_log_pmf(k, n.unsqueeze(-1), p.unsqueeze(-1))
    return _kl_finite_support(log_p, _poisson_log_pmf(k, lam.unsqueeze(-1)))


def kl_binomial_geometric(total_count: Tensor, probs: Tensor, probs_q: Tensor) -> Tensor:
    """KL(Binomial(n, p) || Geometric(q)) = -H(Binomial(n, p)) - log q - n p log(1 - q), as the exact finite sum
    ``sum_{k=0}^{n} b(k) log(b(k) / ((1 - q)^k q))``. +inf where ``q = 1`` and P has mass above 0.
    """
    n, p, pq = _broadcast(total_count, probs, probs_q)
    k = _grid(n, p, "p.total_count")
    log_p = _binomial_log_pmf(k, n.unsqueeze(-1), p.unsqueeze(-1))
    return _kl_finite_support(log_p, _geometric_log_pmf(k, pq.unsqueeze(-1)))


def kl_poisson_geometric(rate: Tensor, probs_q: Tensor) -> Tensor:
    """KL(Poisson(lambda) || Geometric(q)) = -H(Poisson(lambda)) - log q - lambda log(1 - q)   (series).

    ``H(Poisson)`` (equivalently ``E[log K!]``) has no closed form; it is summed with a certified truncation
    (:func:`_poisson_entropy`, tail below ``_TRUNCATION``). ``lambda = 0`` gives ``-log q``; ``q = 1`` gives +inf
    where ``lambda > 0``.
    """
    lam, q = _broadcast(rate, probs_q)
    return -_poisson_entropy(lam) - torch.log(q) - _xlog1my(lam, q)


def kl_geometric_poisson(probs: Tensor, rate_q: Tensor) -> Tensor:
    """KL(Geometric(p) || Poisson(lambda)) = -H(Geo(p)) - ((1 - p)/p) log lambda + lambda + E[log K!]   (series).

    ``H(Geo(p)) = H(Bern(p))/p``; ``E[log K!] = sum_{j >= 2} log j P(K >= j) = sum_{j >= 2} log j (1 - p)^j``
    (summation by parts), truncated at ``J`` with the certified tail ``(1 - p)^(J+1) [log(J+1)/p +
    (1 - p)/((J+1) p^2)]`` below ``_TRUNCATION`` (``log(m + i) <= log m + i/m``); ``O(log(1/tol)/p)`` terms.
    ``lambda = 0 < 1 - p`` gives +inf; ``p = 1`` gives ``lambda``.
    """
    p, lam = _broadcast(probs, rate_q)
    s = 1.0 - p
    live = s > 0
    s_safe = torch.where(live, s, 0.5)
    with torch.no_grad():
        sd = s_safe.detach()
        log_s = torch.log(sd)

        def upper(m: Tensor) -> Tensor:
            return _tail_bound(m * log_s, sd, m, m.log() - 1.0, 1.0 / m, torch.zeros_like(m))

        high = _upper_cutoff(math.log(_TRUNCATION) / log_s + 2.0, upper, "p.probs", float(probs.min()))
    log_se = torch.log1p(-torch.where(live, p, 0.5)).unsqueeze(-1)
    series = _window_sum(lambda j: torch.exp(j * log_se) * torch.log(j), 2, max(high, 2), p)
    e_log_factorial = torch.where(live, series, 0.0)
    entropy = _divide_or_inf(_entropy_bernoulli(p), p)
    return -entropy - _xlogy(s / p, lam) + lam + e_log_factorial


def kl_multinomial(total_count_p: int, logits_p: Tensor, total_count_q: int, logits_q: Tensor) -> Tensor:
    """KL(Multinomial(n, P) || Multinomial(n, Q)) = n KL(P || Q) (chain rule over the n independent draws).

    ``logits`` are log-probabilities up to a constant (``-inf`` for exact zeros) and go to
    :func:`kldiv.kl_from_logits`. Different total counts: +inf, the supports (``sum x = n``) are disjoint.
    """
    value = discrete.kl_from_logits(logits_p, logits_q)
    if total_count_p != total_count_q:
        return torch.full_like(value, INF)
    return value * total_count_p if total_count_p > 0 else torch.zeros_like(value)


# ----------------------------------------------------------------------------------------------------------
# Registered pairs (read the parameters; the formulas are above)
# ----------------------------------------------------------------------------------------------------------


def _categorical_logits(d: Categorical) -> Tensor:
    """Exact log-probabilities of a Categorical: its logits, or ``log probs`` with exact ``-inf`` at zeros.

    torch's ``logits`` of a probs-parameterized Categorical clamp zeros to ``log(eps)``, so they are not used.
    """
    own = vars(d)
    if "probs" in own and d._param is own["probs"]:
        probs: Tensor = own["probs"]
        pos = probs > 0
        return torch.where(pos, torch.log(torch.where(pos, probs, 1.0)), -INF)
    logits: Tensor = d.logits
    return logits


def _count(d: Binomial | NegativeBinomial, like: Tensor) -> Tensor:
    return torch.as_tensor(d.total_count, dtype=like.dtype, device=like.device)


@register_kl(Poisson, Poisson)
def _kl_poisson_poisson(p: Poisson, q: Poisson) -> Tensor:
    return kl_poisson(p.rate, q.rate)


@register_kl(Geometric, Geometric)
def _kl_geometric_geometric(p: Geometric, q: Geometric) -> Tensor:
    return kl_geometric(p.probs, q.probs)


@register_kl(Binomial, Binomial)
def _kl_binomial_binomial(p: Binomial, q: Binomial) -> Tensor:
    return kl_binomial(_count(p, p.probs), p.probs, _count(q, q.probs), q.probs)


@register_kl(NegativeBinomial, NegativeBinomial, method="series")
def _kl_negative_binomial_negative_binomial(p: NegativeBinomial, q: NegativeBinomial) -> Tensor:
    return kl_negative_binomial(_count(p, p.probs), p.probs, _count(q, q.probs), q.probs)


@register_kl(Multinomial, Multinomial)
def _kl_multinomial_multinomial(p: Multinomial, q: Multinomial) -> Tensor:
    return kl_multinomial(
        p.total_count, _categorical_logits(p._categorical), q.total_count, _categorical_logits(q._categorical)
    )


def _kl_categorical(p: Categorical, q: Categorical) -> Tensor:
    """KL through :func:`kldiv.kl_from_logits` (exact at ``-inf`` logits and zero probs, finite gradients)."""
    value: Tensor = discrete.kl_from_logits(_categorical_logits(p), _categorical_logits(q))
    return value


@register_kl(Categorical, Categorical)
def _kl_categorical_categorical(p: Categorical, q: Categorical) -> Tensor:
    return _kl_categorical(p, q)


@register_kl(OneHotCategorical, OneHotCategorical)
def _kl_onehotcategorical_onehotcategorical(p: OneHotCategorical, q: OneHotCategorical) -> Tensor:
    return _kl_categorical(p._categorical, q._categorical)


@register_kl(Poisson, Geometric, method="series")
def _kl_poisson_geometric(p: Poisson, q: Geometric) -> Tensor:
    return kl_poisson_geometric(p.rate, q.probs)


@register_kl(Geometric, Poisson, method="series")
def _kl_geometric_poisson(p: Geometric, q: Poisson) -> Tensor:
    return kl_geometric_poisson(p.probs, q.rate)


@register_kl(Binomial, Poisson)
def _kl_binomial_poisson(p: Binomial, q: Poisson) -> Tensor:
    return kl_binomial_poisson(_count(p, p.probs), p.probs, q.rate)


@register_kl(Bernoulli, Poisson)
def _kl_bernoulli_poisson(p: Bernoulli, q: Poisson) -> Tensor:
    return kl_binomial_poisson(torch.ones_like(p.probs), p.probs, q.rate)


@register_kl(Binomial, Geometric)
def _kl_binomial_geometric(p: Binomial, q: Geometric) -> Tensor:
    return kl_binomial_geometric(_count(p, p.probs), p.probs, q.probs)


@register_kl(Poisson, Binomial, method="infinite")
def _kl_poisson_binomial(p: Poisson, q: Binomial) -> Tensor:
    """+inf (Poisson's support is unbounded), except the point mass ``rate = 0``: ``-n log(1 - q)``."""
    rate, n, probs = _broadcast(p.rate, _count(q, q.probs), q.probs)
    return torch.where(rate == 0, -_xlog1my(n, probs), INF)


@register_kl(Poisson, Bernoulli, method="infinite")
def _kl_poisson_bernoulli(p: Poisson, q: Bernoulli) -> Tensor:
    """+inf, except the point mass ``rate = 0``: ``-log(1 - q)``."""
    rate, probs = _broadcast(p.rate, q.probs)
    return torch.where(rate == 0, -_xlog1my(torch.ones_like(probs), probs), INF)


@register_kl(Geometric, Binomial, method="infinite")
def _kl_geometric_binomial(p: Geometric, q: Binomial) -> Tensor:
    """+inf (unbounded support), except the point mass ``probs = 1``: ``-n log(1 - q)``."""
    probs_p, n, probs = _broadcast(p.probs, _count(q, q.probs), q.probs)
    return torch.where(probs_p == 1, -_xlog1my(n, probs), INF)
