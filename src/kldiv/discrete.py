"""KL divergence, entropy, cross-entropy and Jensen-Shannon divergences of discrete distributions.

Each quantity comes as a trio: from probabilities (``kl``), from logits (``kl_from_logits``, with a
``temperature``) and from log-probabilities (``kl_from_log_probs``). The distribution runs along ``dim``; the
other dimensions broadcast. NumPy in gives NumPy float64 out; a tensor in gives a differentiable tensor out.

Semantics (exact, as ``scipy.special.rel_entr``): ``0 log(0/q) = 0`` for any ``q >= 0``; ``p > 0 = q`` gives
+inf. In log space, a ``-inf`` logit of P contributes 0 and a ``-inf`` logit of Q where P > 0 gives +inf.
Gradients are finite wherever the value is finite; the gradient w.r.t. a zero probability is 0. For
probabilities they are evaluated in closed form (``d/dq_i KL = -p_i / q_i`` up to the normalization), never
through ``p / q**2``, so a tiny ``q`` (down to the smallest subnormal) gets its exact gradient; where that
gradient exceeds the dtype's range (``-p/q`` with ``q`` subnormal and ``p`` near 1) it is -inf, never NaN.

Accuracy: a fast pass computes ``sum p log(p/q)``; where it may have lost relative accuracy (a value below
about 3e-3, see ``_KAPPA``) the row is recomputed as ``sum q phi(log(p/q)) + sum(p - q)`` with
non-negative terms ``q phi(x) = p x - p + q`` evaluated without cancellation and ``sum(p - q)`` summed
error-free, so nearly equal distributions (KL ~ 1e-14) keep full relative accuracy in float64.
"""

from __future__ import annotations

import math
from typing import overload

import torch
from torch import Tensor

from kldiv._array import ArrayInput, NumpyResult
from kldiv._numerics import (
    INF,
    accurate_sum,
    kl_terms_from_log_ratio,
    log_ratio,
    log_softmax,
    ratio_and_log,
    ratio_minus_one,
    refine_rows,
    support_log_terms,
    with_gradient,
    x_minus_log1p,
)
from kldiv._validate import check_base, check_scalar, prepare_log, prepare_probs, temper

_KAPPA = 1024.0
"""A fast-pass KL value ``v`` is recomputed accurately when ``(_KAPPA - 1) v < 3``.

The fast pass errs by a few eps times ``1 + sum_i |p_i log(p_i/q_i)|``, and ``sum_i |p_i log(p_i/q_i)| <= KL + 2``
(since ``p log(q/p) <= q - p``), so a kept value is accurate to about ``_KAPPA`` eps relative, and no pass
is spent on estimating the cancellation."""


def _logit_difference(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """``(a - b) / T`` where both are finite (0 elsewhere): differencing first keeps nearby logits exact."""
    finite = torch.isfinite(a) & torch.isfinite(b)
    diff = torch.where(finite, a - b, 0.0)
    return diff if temperature == 1.0 else diff / temperature


def _scale(value: Tensor, base: float | None) -> Tensor:
    return value if base is None else value / math.log(base)


def _needs_refinement(value: Tensor) -> Tensor:
    return ~((_KAPPA - 1.0) * value >= 3.0) | (value == INF)


# ----------------------------------------------------------------------------------------------------------
# Tensor kernels (validated tensors, event dimension d >= 0)
# ----------------------------------------------------------------------------------------------------------


def _rel_entr_sum(p: Tensor, q: Tensor, d: int) -> Tensor:
    """``sum p log(p/q)`` along ``d`` (the fast pass, values only): terms 0 where ``p == 0``, +inf where
    ``q == 0 < p``."""
    # One temporary, in place: for valid input NaN arises only where p == 0 (0 * -inf, 0/0), whose term is 0.
    return torch.nansum(torch.div(p, q).log_().mul_(p), d)


def _normalizer_q_gradient(g: Tensor, p: Tensor, q: Tensor, ratio: Tensor, d: int) -> Tensor:
    """``g d/dq_i [-sum_k p_k log q_k / S_p + log S_q] = g ((S_p - S_q) / (S_p S_q) - (p_i / q_i - 1) / S_p)``:
    the q-gradient of both KL(P||Q) and H(P, Q) for ``g`` with the event dim ``d`` kept, from ``ratio = p / q``
    on the support ``p > 0`` (``p_i / q_i`` is 0 elsewhere)."""
    s_p, s_q = p.sum(d, keepdim=True), q.sum(d, keepdim=True)
    return g * ((s_p - s_q) / (s_p * s_q) - torch.where(p > 0, ratio - 1.0, -1.0) / s_p)


def _kl_probs_rows(p: Tensor, q: Tensor) -> Tensor:
    """Accurate KL of the normalized rows (last dim): ``sum g / S_p - h(t)``.

    ``g = q phi(log(p/q)) = p log(p/q) - p + q >= 0`` per entry, ``t = (S_q - S_p) / S_p`` from the error-free
    ``sum(q - p)`` and ``h(t) = t - log1p(t) >= 0`` (second order in the normalization error): together exactly
    ``KL(p / S_p || q / S_q)``, without cancellation.
    """
    x = log_ratio(p, q)
    g = torch.where(p > 0, kl_terms_from_log_ratio(x, p, q), q).sum(-1)
    s_p = p.sum(-1)
    t = accurate_sum(q - p, -1) / s_p
    return (g / s_p - x_minus_log1p(t)).clamp_min(0.0)


def _kl_probs_value(p: Tensor, q: Tensor, d: int) -> Tensor:
    s_p, s_q = p.sum(d), q.sum(d)
    value = _rel_entr_sum(p, q, d) / s_p + torch.log(s_q / s_p)
    need = _needs_refinement(value)
    return refine_rows(value, need, d, _kl_probs_rows, p, q)


def _kl_probs_gradient(g: Tensor, value: Tensor, p: Tensor, q: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """``d/dp_i = (x_i - A) / S_p`` with ``x_i = log(p_i/q_i)`` and ``A = KL - log(S_q/S_p) = sum p x / S_p``;
    at ``p_i == 0`` the term ``p_i x_i`` is absent (its one-sided derivative is -inf), so ``x_i + 1`` counts as 0.
    The q-gradient is :func:`_normalizer_q_gradient`."""
    g = g.unsqueeze(d)
    s_p, s_q = p.sum(d, keepdim=True), q.sum(d, keepdim=True)
    ratio, x = ratio_and_log(p, q)
    a = value.unsqueeze(d) - torch.log(s_q / s_p)
    return g * (torch.where(p > 0, x, -1.0) - a) / s_p, _normalizer_q_gradient(g, p, q, ratio, d)


def kl_probs(p: Tensor, q: Tensor, d: int) -> Tensor:
    """KL of the distributions ``p / sum(p)`` and ``q / sum(q)`` along ``d`` (no validation).

    The fast pass ``sum p log(p/q) / S_p + log(S_q / S_p)`` is exact arithmetic on the given values when they
    sum to 1; values below about 3e-3 are recomputed by the cancellation-free ``_kl_probs_rows``. Gradients in
    closed form (:func:`_kl_probs_gradient`).
    """
    return with_gradient(
        lambda a, b: _kl_probs_value(a, b, d), lambda g, v, a, b: _kl_probs_gradient(g, v, a, b, d), p, q
    )


def _kl_log_rows(log_p: Tensor, log_q: Tensor, log_ratio_: Tensor) -> Tensor:
    """Accurate KL of ``softmax(log_p)`` and ``softmax(log_q)`` along the last dim, given ``log_ratio_`` equal
    to ``log_p - log_q`` up to a constant (e.g. ``(a - b) / T`` for logits, exact for nearby logits).

    With ``x = log_ratio_ - c`` normalized so that ``sum q e^x = sum q``, KL = ``sum q phi(x)``: non-negative
    terms. ``log_ratio_`` is first shifted to 0 at the mode of Q, and then ``c = log1p(sum q expm1(d) / sum q)``
    is relatively accurate even when it is tiny (nearly one-hot distributions with KL far below eps).
    """
    support = log_p > -INF
    mode = log_q.argmax(-1, keepdim=True)
    d = torch.where(support, log_ratio_, 0.0)
    d = torch.where(support, d - d.gather(-1, mode), 0.0)
    top = torch.where(support, d, -INF).amax(-1, keepdim=True)
    moderate = top <= 0.5 * math.log(torch.finfo(d.dtype).max)  # q * expm1(d) and its sum stay finite
    q = torch.exp(log_q)
    em = torch.where(support, torch.expm1(torch.where(moderate & support, d, 0.0)), -1.0)
    c_moderate = torch.log1p((q * em).sum(-1, keepdim=True) / q.sum(-1, keepdim=True))
    shifted = torch.where(support, log_q + d, -INF)
    c_large = torch.logsumexp(shifted, -1, keepdim=True) - torch.logsumexp(log_q, -1, keepdim=True)
    x = torch.where(support, d - torch.where(moderate, c_moderate, c_large), 0.0)
    p = torch.exp(torch.where(support, log_q + x, 0.0))
    return torch.where(support, kl_terms_from_log_ratio(x, p, q), q).sum(-1)


def kl_log(log_p: Tensor, log_q: Tensor, d: int, log_ratio_: Tensor | None = None) -> Tensor:
    """KL of ``softmax(log_p)`` and ``softmax(log_q)`` along ``d`` (no validation).

    ``log_ratio_`` may give ``log_p - log_q`` up to a constant more accurately, e.g. ``(a - b) / T``.
    """
    value = support_log_terms(log_p, log_q).sum(d)
    need = _needs_refinement(value) & (value < INF)
    ratio = log_p - log_q if log_ratio_ is None else log_ratio_
    return refine_rows(value, need, d, _kl_log_rows, log_p, log_q, ratio)


def _entropy_probs_value(p: Tensor, d: int) -> Tensor:
    support = p > 0
    ps = torch.where(support, p, 1.0)
    s = p.sum(d)
    return torch.where(support, -ps * torch.log(ps), 0.0).sum(d) / s + torch.log(s)


def _entropy_probs_gradient(g: Tensor, value: Tensor, p: Tensor, d: int) -> tuple[Tensor]:
    """``d/dp_i = (-log p_i - (H - log S)) / S``; at ``p_i == 0`` the term is absent, so ``-log p_i`` counts as 1."""
    s = p.sum(d, keepdim=True)
    support = p > 0
    minus_log_p = torch.where(support, -torch.log(torch.where(support, p, 1.0)), 1.0)
    return (g.unsqueeze(d) * (minus_log_p - (value.unsqueeze(d) - torch.log(s))) / s,)


def entropy_probs(p: Tensor, d: int) -> Tensor:
    """H(p / S) = -sum p log p / S + log S along ``d``, ``S = sum p`` (non-negative terms; no validation)."""
    return with_gradient(lambda a: _entropy_probs_value(a, d), lambda g, v, a: _entropy_probs_gradient(g, v, a, d), p)


def entropy_log(log_p: Tensor, d: int) -> Tensor:
    """H(P) from normalized log-probabilities (no validation)."""
    support = log_p > -INF
    lp = torch.where(support, log_p, 0.0)
    return torch.where(support, -torch.exp(lp) * lp, 0.0).sum(d)


def _cross_entropy_probs_value(p: Tensor, q: Tensor, d: int) -> Tensor:
    support = p > 0
    qs = torch.where(support, q, 1.0)
    return torch.where(support, -p * torch.log(qs), 0.0).sum(d) / p.sum(d) + torch.log(q.sum(d))


def _cross_entropy_probs_gradient(g: Tensor, value: Tensor, p: Tensor, q: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """``d/dp_i = (-log q_i - (H - log S_q)) / S_p`` (``-log q_i`` counts as 0 where the term is absent,
    ``p_i == 0``); the q-gradient is :func:`_normalizer_q_gradient`."""
    g = g.unsqueeze(d)
    support = p > 0
    qs = torch.where(support, q, 1.0)
    minus_log_q = torch.where(support, -torch.log(qs), 0.0)
    b = value.unsqueeze(d) - torch.log(q.sum(d, keepdim=True))
    ratio = torch.where(support, p, 1.0) / qs
    return g * (minus_log_q - b) / p.sum(d, keepdim=True), _normalizer_q_gradient(g, p, q, ratio, d)


def cross_entropy_probs(p: Tensor, q: Tensor, d: int) -> Tensor:
    """H(p / S_p, q / S_q) = -sum p log q / S_p + log S_q along ``d``: 0 where ``p == 0``, +inf where
    ``q == 0 < p`` (no validation)."""
    return with_gradient(
        lambda a, b: _cross_entropy_probs_value(a, b, d),
        lambda g, v, a, b: _cross_entropy_probs_gradient(g, v, a, b, d),
        p,
        q,
    )


def cross_entropy_log(log_p: Tensor, log_q: Tensor, d: int) -> Tensor:
    """H(P,Q) from normalized log-probabilities (no validation)."""
    support = log_p > -INF
    violated = support & (log_q == -INF)
    lp = torch.where(support, log_p, 0.0)
    lq = torch.where(support & ~violated, log_q, 0.0)
    return torch.where(violated, INF, torch.where(support, -torch.exp(lp) * lq, 0.0)).sum(d)


def _log_mixture(log_p: Tensor, log_q: Tensor, w: float) -> Tensor:
    """``log(w p + (1 - w) q)`` for ``0 < w < 1`` as ``hi + log1p(w_lo expm1(lo - hi))``.

    Exactly ``log p`` where ``log p == log q``; -inf where both are -inf; finite gradients.
    """
    p_high = log_p >= log_q
    hi = torch.where(p_high, log_p, log_q)
    lo = torch.where(p_high, log_q, log_p)
    w_lo = torch.where(p_high, log_p.new_tensor(1.0 - w), log_p.new_tensor(w))
    empty = hi == -INF
    gap = torch.where(empty, 0.0, lo - torch.where(empty, 0.0, hi))
    return torch.where(empty, -INF, hi + torch.log1p(w_lo * torch.expm1(gap)))


def _js_terms(p: Tensor, q: Tensor, m: Tensor, x_p: Tensor, x_q: Tensor, w: float) -> Tensor:
    """``w m phi(x_p) + (1 - w) m phi(x_q)``: non-negative JS terms, first-order insensitive to rounding of m.

    ``x_p = log(p/m)``, ``x_q = log(q/m)``; ``sum w (p - m) + (1 - w)(q - m) = 0`` exactly for the true M, so
    the terms ``p x - p + m`` sum to the JS divergence with no correction term.
    """
    t_p = torch.where(p > 0, kl_terms_from_log_ratio(x_p, p, m), m)
    t_q = torch.where(q > 0, kl_terms_from_log_ratio(x_q, q, m), m)
    return w * t_p + (1.0 - w) * t_q


def _js_probs_rows(p: Tensor, q: Tensor, w: float) -> Tensor:
    m = q + w * (p - q)
    return _js_terms(p, q, m, log_ratio(p, m), log_ratio(q, m), w).sum(-1)


def _js_probs_value(p: Tensor, q: Tensor, w: float, d: int) -> Tensor:
    m = q + w * (p - q)
    value = w * _rel_entr_sum(p, m, d) + (1.0 - w) * _rel_entr_sum(q, m, d)
    return refine_rows(value, _needs_refinement(value), d, lambda pr, qr: _js_probs_rows(pr, qr, w), p, q)


def _js_probs_gradient(g: Tensor, value: Tensor, p: Tensor, q: Tensor, w: float, d: int) -> tuple[Tensor, Tensor]:
    """``d/dp_i = w log(p_i / m_i)`` and ``d/dq_i = (1 - w) log(q_i / m_i)`` (the terms through M cancel); an
    absent term (``p_i == 0 < q_i``) contributes only through M: ``-w``.

    ``log(p/m) = -log1p((1 - w)(q - p)/p)`` does not form M, whose rounding (e.g. of a subnormal entry) would
    change the ratio; where ``(q - p)/p`` overflows, M is ``(1 - w) q`` to full accuracy and ``log(p) - log(m)``
    is used.
    """
    g = g.unsqueeze(d)
    m = q + w * (p - q)

    def slope(a: Tensor, b: Tensor, c: float) -> Tensor:
        support = a > 0
        r = ratio_minus_one(b, torch.where(support, a, 1.0))
        far = torch.isinf(r)
        near = -torch.log1p(c * torch.where(far, 0.0, r))
        x = torch.where(far, log_ratio(torch.where(far, a, 1.0), torch.where(far, m, 1.0)), near)
        return torch.where(support, x, torch.where(b > 0, -1.0, 0.0))

    return g * w * slope(p, q, 1.0 - w), g * (1.0 - w) * slope(q, p, w)


def js_probs(p: Tensor, q: Tensor, w: float, d: int) -> Tensor:
    """``w KL(P||M) + (1 - w) KL(Q||M)``, ``M = w P + (1 - w) Q`` (no validation). 0 for ``w`` in {0, 1}."""
    if w in (0.0, 1.0):
        return (0.0 * p).sum(d) if w == 1.0 else (0.0 * q).sum(d)
    p, q = p / p.sum(d, keepdim=True), q / q.sum(d, keepdim=True)
    return with_gradient(
        lambda a, b: _js_probs_value(a, b, w, d), lambda g, v, a, b: _js_probs_gradient(g, v, a, b, w, d), p, q
    )


def _js_log_rows(log_p: Tensor, log_q: Tensor, w: float) -> Tensor:
    log_m = _log_mixture(log_p, log_q, w)
    sp, sq = log_p > -INF, log_q > -INF
    x_p = torch.where(sp, log_p - log_m, 0.0)
    x_q = torch.where(sq, log_q - log_m, 0.0)
    return _js_terms(torch.exp(log_p), torch.exp(log_q), torch.exp(log_m), x_p, x_q, w).sum(-1)


def js_log(log_p: Tensor, log_q: Tensor, w: float, d: int) -> Tensor:
    """Jensen-Shannon divergence with weights ``(w, 1 - w)`` from log-probabilities (no validation)."""
    if w in (0.0, 1.0):
        return torch.where(log_p > -INF, 0.0 * log_p, 0.0).sum(d)
    log_m = _log_mixture(log_p, log_q, w)
    value = w * support_log_terms(log_p, log_m).sum(d) + (1.0 - w) * support_log_terms(log_q, log_m).sum(d)
    return refine_rows(value, _needs_refinement(value), d, lambda a, b: _js_log_rows(a, b, w), log_p, log_q)


def _check_weights(weights: tuple[float, float]) -> float:
    if not isinstance(weights, tuple | list) or len(weights) != 2:
        raise ValueError(f"weights must be a pair (w, 1 - w), got {weights!r}")
    w0 = check_scalar("weights[0]", weights[0], low=0.0, high=1.0)
    w1 = check_scalar("weights[1]", weights[1], low=0.0, high=1.0)
    if abs(w0 + w1 - 1.0) > 1e-12:
        raise ValueError(f"weights must sum to 1, got {weights!r} (sum {w0 + w1!r})")
    return w0


def _check_beta(beta: float, normalized: bool) -> float:
    b = check_scalar("beta", beta, low=0.0, high=1.0)
    if b in (0.0, 1.0) and not normalized:
        raise ValueError(
            f"beta={b:g}: the unnormalized generalized JSD is 0 there (M equals {'Q' if b == 0 else 'P'}), while "
            "TRL's GKD loss switches to a KL; pass normalized=True for the continuous limit "
            f"KL({'P||Q' if b == 0 else 'Q||P'}), or call kl directly"
        )
    return b


def _generalized_js(p: Tensor, q: Tensor, beta: float, normalized: bool, d: int, *, log_space: bool) -> Tensor:
    """Generalized JSD of probabilities, or of normalized log-probabilities if ``log_space``."""
    if 0.0 < beta < 1.0:
        value = js_log(p, q, beta, d) if log_space else js_probs(p, q, beta, d)
        return value / (beta * (1.0 - beta)) if normalized else value
    first, second = (p, q) if beta == 0.0 else (q, p)
    return kl_log(first, second, d) if log_space else kl_probs(first, second, d)


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


@overload
def kl(
    p: Tensor,
    q: Tensor,
    *,
    dim: int = -1,
    base: float | None = None,
    normalize: bool = False,
    smoothing: float = 0.0,
) -> Tensor: ...
@overload
def kl(
    p: ArrayInput,
    q: ArrayInput,
    *,
    dim: int = -1,
    base: float | None = None,
    normalize: bool = False,
    smoothing: float = 0.0,
) -> NumpyResult: ...
def kl(
    p: Tensor | ArrayInput,
    q: Tensor | ArrayInput,
    *,
    dim: int = -1,
    base: float | None = None,
    normalize: bool = False,
    smoothing: float = 0.0,
) -> Tensor | NumpyResult:
    """Kullback-Leibler divergence ``KL(P||Q) = sum_i p_i log(p_i / q_i)`` along ``dim``.

    Exact at the edges: ``p_i = 0`` contributes 0, ``q_i = 0 < p_i`` gives +inf. ``base=2`` gives bits.
    ``normalize=True`` divides non-negative weights (or integer counts) by their sum. ``smoothing=eps``
    (opt-in, changes the value) replaces Q by ``(1 - eps) Q + eps / K``.

    Reference: Kullback & Leibler (1951), "On information and sufficiency"; Cover & Thomas (2006), eq. 2.26.
    """
    b = check_base(base)
    eps = check_scalar("smoothing", smoothing, low=0.0, high=1.0, high_open=True)
    (pt, qt), d, io = prepare_probs({"p": p, "q": q}, dim, normalize=normalize)
    if eps:
        qt = (1.0 - eps) * qt + eps / qt.shape[d]
    return io.finish(_scale(kl_probs(pt, qt, d), b))


@overload
def kl_from_logits(
    p_logits: Tensor, q_logits: Tensor, *, dim: int = -1, temperature: float = 1.0, base: float | None = None
) -> Tensor: ...
@overload
def kl_from_logits(
    p_logits: ArrayInput,
    q_logits: ArrayInput,
    *,
    dim: int = -1,
    temperature: float = 1.0,
    base: float | None = None,
) -> NumpyResult: ...
def kl_from_logits(
    p_logits: Tensor | ArrayInput,
    q_logits: Tensor | ArrayInput,
    *,
    dim: int = -1,
    temperature: float = 1.0,
    base: float | None = None,
) -> Tensor | NumpyResult:
    """``KL(softmax(a / T) || softmax(b / T))`` for logits ``a``, ``b`` and temperature ``T`` along ``dim``.

    ``-inf`` logits mask entries exactly: P's ``-inf`` contributes 0, Q's ``-inf`` where P > 0 gives +inf.
    Stable for logits of any magnitude (log-sum-exp; nearby logits are differenced before scaling).
    """
    b = check_base(base)
    (a, bq), d, io = prepare_log({"p_logits": p_logits, "q_logits": q_logits}, dim, log_probs=False)
    ratio = _logit_difference(a, bq, temperature)
    a_t, b_t = temper({"p_logits": a, "q_logits": bq}, temperature)
    return io.finish(_scale(kl_log(log_softmax(a_t, d), log_softmax(b_t, d), d, ratio), b))


@overload
def kl_from_log_probs(log_p: Tensor, log_q: Tensor, *, dim: int = -1, base: float | None = None) -> Tensor: ...
@overload
def kl_from_log_probs(
    log_p: ArrayInput, log_q: ArrayInput, *, dim: int = -1, base: float | None = None
) -> NumpyResult: ...
def kl_from_log_probs(
    log_p: Tensor | ArrayInput, log_q: Tensor | ArrayInput, *, dim: int = -1, base: float | None = None
) -> Tensor | NumpyResult:
    """``KL(P||Q) = sum_i p_i (log p_i - log q_i)`` from normalized log-probabilities along ``dim``.

    The rows are taken as the distributions they represent (renormalized by ``log_softmax``, which changes them
    only by rounding), so this equals :func:`kl_from_logits`; ``-inf`` entries are exact zeros.
    """
    b = check_base(base)
    (lp, lq), d, io = prepare_log({"log_p": log_p, "log_q": log_q}, dim, log_probs=True)
    ratio = _logit_difference(lp, lq, 1.0)
    return io.finish(_scale(kl_log(log_softmax(lp, d), log_softmax(lq, d), d, ratio), b))


@overload
def entropy(p: Tensor, *, dim: int = -1, base: float | None = None, normalize: bool = False) -> Tensor: ...
@overload
def entropy(p: ArrayInput, *, dim: int = -1, base: float | None = None, normalize: bool = False) -> NumpyResult: ...
def entropy(
    p: Tensor | ArrayInput, *, dim: int = -1, base: float | None = None, normalize: bool = False
) -> Tensor | NumpyResult:
    """Shannon entropy ``H(P) = -sum_i p_i log p_i`` along ``dim`` (``0 log 0 = 0``).

    Reference: Shannon (1948); Cover & Thomas (2006), eq. 2.1.
    """
    b = check_base(base)
    (pt,), d, io = prepare_probs({"p": p}, dim, normalize=normalize)
    return io.finish(_scale(entropy_probs(pt, d), b))


@overload
def entropy_from_logits(
    logits: Tensor, *, dim: int = -1, temperature: float = 1.0, base: float | None = None
) -> Tensor: ...
@overload
def entropy_from_logits(
    logits: ArrayInput, *, dim: int = -1, temperature: float = 1.0, base: float | None = None
) -> NumpyResult: ...
def entropy_from_logits(
    logits: Tensor | ArrayInput, *, dim: int = -1, temperature: float = 1.0, base: float | None = None
) -> Tensor | NumpyResult:
    """``H(softmax(logits / T))`` along ``dim``; ``-inf`` logits are zero-probability entries."""
    b = check_base(base)
    (a,), d, io = prepare_log({"logits": logits}, dim, log_probs=False)
    (a,) = temper({"logits": a}, temperature)
    return io.finish(_scale(entropy_log(log_softmax(a, d), d), b))


@overload
def entropy_from_log_probs(log_p: Tensor, *, dim: int = -1, base: float | None = None) -> Tensor: ...
@overload
def entropy_from_log_probs(log_p: ArrayInput, *, dim: int = -1, base: float | None = None) -> NumpyResult: ...
def entropy_from_log_probs(
    log_p: Tensor | ArrayInput, *, dim: int = -1, base: float | None = None
) -> Tensor | NumpyResult:
    """``H(P) = -sum_i p_i log p_i`` from normalized log-probabilities along ``dim``."""
    b = check_base(base)
    (lp,), d, io = prepare_log({"log_p": log_p}, dim, log_probs=True)
    return io.finish(_scale(entropy_log(log_softmax(lp, d), d), b))


@overload
def cross_entropy(
    p: Tensor,
    q: Tensor,
    *,
    dim: int = -1,
    base: float | None = None,
    normalize: bool = False,
    smoothing: float = 0.0,
) -> Tensor: ...
@overload
def cross_entropy(
    p: ArrayInput,
    q: ArrayInput,
    *,
    dim: int = -1,
    base: float | None = None,
    normalize: bool = False,
    smoothing: float = 0.0,
) -> NumpyResult: ...
def cross_entropy(
    p: Tensor | ArrayInput,
    q: Tensor | ArrayInput,
    *,
    dim: int = -1,
    base: float | None = None,
    normalize: bool = False,
    smoothing: float = 0.0,
) -> Tensor | NumpyResult:
    """Cross-entropy ``H(P, Q) = -sum_i p_i log q_i = H(P) + KL(P||Q)`` along ``dim``.

    ``p_i = 0`` contributes 0; ``q_i = 0 < p_i`` gives +inf. ``smoothing`` as in :func:`kl`.
    Reference: Cover & Thomas (2006), section 2.3 and eq. 5.21.
    """
    b = check_base(base)
    eps = check_scalar("smoothing", smoothing, low=0.0, high=1.0, high_open=True)
    (pt, qt), d, io = prepare_probs({"p": p, "q": q}, dim, normalize=normalize)
    if eps:
        qt = (1.0 - eps) * qt + eps / qt.shape[d]
    return io.finish(_scale(cross_entropy_probs(pt, qt, d), b))


@overload
def cross_entropy_from_logits(
    p_logits: Tensor, q_logits: Tensor, *, dim: int = -1, temperature: float = 1.0, base: float | None = None
) -> Tensor: ...
@overload
def cross_entropy_from_logits(
    p_logits: ArrayInput,
    q_logits: ArrayInput,
    *,
    dim: int = -1,
    temperature: float = 1.0,
    base: float | None = None,
) -> NumpyResult: ...
def cross_entropy_from_logits(
    p_logits: Tensor | ArrayInput,
    q_logits: Tensor | ArrayInput,
    *,
    dim: int = -1,
    temperature: float = 1.0,
    base: float | None = None,
) -> Tensor | NumpyResult:
    """``H(softmax(a / T), softmax(b / T))`` along ``dim`` (soft-label cross-entropy)."""
    b = check_base(base)
    (a, bq), d, io = prepare_log({"p_logits": p_logits, "q_logits": q_logits}, dim, log_probs=False)
    a, bq = temper({"p_logits": a, "q_logits": bq}, temperature)
    return io.finish(_scale(cross_entropy_log(log_softmax(a, d), log_softmax(bq, d), d), b))


@overload
def cross_entropy_from_log_probs(
    log_p: Tensor, log_q: Tensor, *, dim: int = -1, base: float | None = None
) -> Tensor: ...
@overload
def cross_entropy_from_log_probs(
    log_p: ArrayInput, log_q: ArrayInput, *, dim: int = -1, base: float | None = None
) -> NumpyResult: ...
def cross_entropy_from_log_probs(
    log_p: Tensor | ArrayInput, log_q: Tensor | ArrayInput, *, dim: int = -1, base: float | None = None
) -> Tensor | NumpyResult:
    """``H(P, Q) = -sum_i p_i log q_i`` from normalized log-probabilities along ``dim``."""
    b = check_base(base)
    (lp, lq), d, io = prepare_log({"log_p": log_p, "log_q": log_q}, dim, log_probs=True)
    return io.finish(_scale(cross_entropy_log(log_softmax(lp, d), log_softmax(lq, d), d), b))


@overload
def js(
    p: Tensor,
    q: Tensor,
    *,
    weights: tuple[float, float] = (0.5, 0.5),
    dim: int = -1,
    base: float | None = None,
    normalize: bool = False,
) -> Tensor: ...
@overload
def js(
    p: ArrayInput,
    q: ArrayInput,
    *,
    weights: tuple[float, float] = (0.5, 0.5),
    dim: int = -1,
    base: float | None = None,
    normalize: bool = False,
) -> NumpyResult: ...
def js(
    p: Tensor | ArrayInput,
    q: Tensor | ArrayInput,
    *,
    weights: tuple[float, float] = (0.5, 0.5),
    dim: int = -1,
    base: float | None = None,
    normalize: bool = False,
) -> Tensor | NumpyResult:
    """Jensen-Shannon divergence ``w KL(P||M) + (1 - w) KL(Q||M)``, ``M = w P + (1 - w) Q``, along ``dim``.

    With equal weights it is symmetric and at most ``log 2`` (1 bit). Reference: Lin (1991), "Divergence
    measures based on the Shannon entropy", eq. 5.1.
    """
    b = check_base(base)
    w = _check_weights(weights)
    (pt, qt), d, io = prepare_probs({"p": p, "q": q}, dim, normalize=normalize)
    return io.finish(_scale(js_probs(pt, qt, w, d), b))


@overload
def js_from_logits(
    p_logits: Tensor,
    q_logits: Tensor,
    *,
    weights: tuple[float, float] = (0.5, 0.5),
    dim: int = -1,
    temperature: float = 1.0,
    base: float | None = None,
) -> Tensor: ...
@overload
def js_from_logits(
    p_logits: ArrayInput,
    q_logits: ArrayInput,
    *,
    weights: tuple[float, float] = (0.5, 0.5),
    dim: int = -1,
    temperature: float = 1.0,
    base: float | None = None,
) -> NumpyResult: ...
def js_from_logits(
    p_logits: Tensor | ArrayInput,
    q_logits: Tensor | ArrayInput,
    *,
    weights: tuple[float, float] = (0.5, 0.5),
    dim: int = -1,
    temperature: float = 1.0,
    base: float | None = None,
) -> Tensor | NumpyResult:
    """Jensen-Shannon divergence of ``softmax(a / T)`` and ``softmax(b / T)`` (see :func:`js`)."""
    b = check_base(base)
    w = _check_weights(weights)
    (a, bq), d, io = prepare_log({"p_logits": p_logits, "q_logits": q_logits}, dim, log_probs=False)
    a, bq = temper({"p_logits": a, "q_logits": bq}, temperature)
    return io.finish(_scale(js_log(log_softmax(a, d), log_softmax(bq, d), w, d), b))


@overload
def js_from_log_probs(
    log_p: Tensor,
    log_q: Tensor,
    *,
    weights: tuple[float, float] = (0.5, 0.5),
    dim: int = -1,
    base: float | None = None,
) -> Tensor: ...
@overload
def js_from_log_probs(
    log_p: ArrayInput,
    log_q: ArrayInput,
    *,
    weights: tuple[float, float] = (0.5, 0.5),
    dim: int = -1,
    base: float | None = None,
) -> NumpyResult: ...
def js_from_log_probs(
    log_p: Tensor | ArrayInput,
    log_q: Tensor | ArrayInput,
    *,
    weights: tuple[float, float] = (0.5, 0.5),
    dim: int = -1,
    base: float | None = None,
) -> Tensor | NumpyResult:
    """Jensen-Shannon divergence from normalized log-probabilities (see :func:`js`)."""
    b = check_base(base)
    w = _check_weights(weights)
    (lp, lq), d, io = prepare_log({"log_p": log_p, "log_q": log_q}, dim, log_probs=True)
    return io.finish(_scale(js_log(log_softmax(lp, d), log_softmax(lq, d), w, d), b))


@overload
def generalized_js(
    p: Tensor,
    q: Tensor,
    *,
    beta: float,
    normalized: bool = False,
    dim: int = -1,
    base: float | None = None,
    normalize: bool = False,
) -> Tensor: ...
@overload
def generalized_js(
    p: ArrayInput,
    q: ArrayInput,
    *,
    beta: float,
    normalized: bool = False,
    dim: int = -1,
    base: float | None = None,
    normalize: bool = False,
) -> NumpyResult: ...
def generalized_js(
    p: Tensor | ArrayInput,
    q: Tensor | ArrayInput,
    *,
    beta: float,
    normalized: bool = False,
    dim: int = -1,
    base: float | None = None,
    normalize: bool = False,
) -> Tensor | NumpyResult:
    """Generalized (skew) Jensen-Shannon divergence of probabilities along ``dim``.

    ``JSD_beta = beta KL(P||M) + (1 - beta) KL(Q||M)`` with ``M = beta P + (1 - beta) Q``: the generalized JSD
    of on-policy distillation (Agarwal et al. 2024, "On-policy distillation of language models", GKD), equal to
    TRL's and Liger's values for ``0 < beta < 1`` with P the teacher and Q the student. At ``beta`` in {0, 1}
    it is 0 (M equals one of the two), so those values raise ``ValueError`` unless ``normalized=True``.

    ``normalized=True`` divides by ``beta (1 - beta)``; its limits are KL(P||Q) at ``beta -> 0`` and KL(Q||P) at
    ``beta -> 1``, reached continuously, and those are the values at ``beta`` in {0, 1}. TRL instead returns the
    KLs at ``beta`` in {0, 1} for its unnormalized loss: a jump by the factor ``1 / beta`` next to small beta.
    """
    b = check_base(base)
    bt = _check_beta(beta, normalized)
    (pt, qt), d, io = prepare_probs({"p": p, "q": q}, dim, normalize=normalize)
    return io.finish(_scale(_generalized_js(pt, qt, bt, normalized, d, log_space=False), b))


@overload
def generalized_js_from_logits(
    p_logits: Tensor,
    q_logits: Tensor,
    *,
    beta: float,
    normalized: bool = False,
    dim: int = -1,
    temperature: float = 1.0,
    base: float | None = None,
) -> Tensor: ...
@overload
def generalized_js_from_logits(
    p_logits: ArrayInput,
    q_logits: ArrayInput,
    *,
    beta: float,
    normalized: bool = False,
    dim: int = -1,
    temperature: float = 1.0,
    base: float | None = None,
) -> NumpyResult: ...
def generalized_js_from_logits(
    p_logits: Tensor | ArrayInput,
    q_logits: Tensor | ArrayInput,
    *,
    beta: float,
    normalized: bool = False,
    dim: int = -1,
    temperature: float = 1.0,
    base: float | None = None,
) -> Tensor | NumpyResult:
    """Generalized JSD of ``softmax(a / T)`` and ``softmax(b / T)`` along ``dim``.

    ``JSD_beta = beta KL(P||M) + (1 - beta) KL(Q||M)`` with ``M = beta P + (1 - beta) Q``: the generalized JSD
    of on-policy distillation (Agarwal et al. 2024, "On-policy distillation of language models", GKD), equal to
    TRL's and Liger's values for ``0 < beta < 1`` with P the teacher and Q the student. At ``beta`` in {0, 1}
    it is 0 (M equals one of the two), so those values raise ``ValueError`` unless ``normalized=True``.

    ``normalized=True`` divides by ``beta (1 - beta)``; its limits are KL(P||Q) at ``beta -> 0`` and KL(Q||P) at
    ``beta -> 1``, reached continuously, and those are the values at ``beta`` in {0, 1}. TRL instead returns the
    KLs at ``beta`` in {0, 1} for its unnormalized loss: a jump by the factor ``1 / beta`` next to small beta.
    """
    b = check_base(base)
    bt = _check_beta(beta, normalized)
    (a, bq), d, io = prepare_log({"p_logits": p_logits, "q_logits": q_logits}, dim, log_probs=False)
    a, bq = temper({"p_logits": a, "q_logits": bq}, temperature)
    lp, lq = log_softmax(a, d), log_softmax(bq, d)
    return io.finish(_scale(_generalized_js(lp, lq, bt, normalized, d, log_space=True), b))


@overload
def generalized_js_from_log_probs(
    log_p: Tensor,
    log_q: Tensor,
    *,
    beta: float,
    normalized: bool = False,
    dim: int = -1,
    base: float | None = None,
) -> Tensor: ...
@overload
def generalized_js_from_log_probs(
    log_p: ArrayInput,
    log_q: ArrayInput,
    *,
    beta: float,
    normalized: bool = False,
    dim: int = -1,
    base: float | None = None,
) -> NumpyResult: ...
def generalized_js_from_log_probs(
    log_p: Tensor | ArrayInput,
    log_q: Tensor | ArrayInput,
    *,
    beta: float,
    normalized: bool = False,
    dim: int = -1,
    base: float | None = None,
) -> Tensor | NumpyResult:
    """Generalized JSD from normalized log-probabilities along ``dim``.

    ``JSD_beta = beta KL(P||M) + (1 - beta) KL(Q||M)`` with ``M = beta P + (1 - beta) Q``: the generalized JSD
    of on-policy distillation (Agarwal et al. 2024, "On-policy distillation of language models", GKD), equal to
    TRL's and Liger's values for ``0 < beta < 1`` with P the teacher and Q the student. At ``beta`` in {0, 1}
    it is 0 (M equals one of the two), so those values raise ``ValueError`` unless ``normalized=True``.

    ``normalized=True`` divides by ``beta (1 - beta)``; its limits are KL(P||Q) at ``beta -> 0`` and KL(Q||P) at
    ``beta -> 1``, reached continuously, and those are the values at ``beta`` in {0, 1}. TRL instead returns the
    KLs at ``beta`` in {0, 1} for its unnormalized loss: a jump by the factor ``1 / beta`` next to small beta.
    """
    b = check_base(base)
    bt = _check_beta(beta, normalized)
    (lp, lq), d, io = prepare_log({"log_p": log_p, "log_q": log_q}, dim, log_probs=True)
    lp, lq = log_softmax(lp, d), log_softmax(lq, d)
    return io.finish(_scale(_generalized_js(lp, lq, bt, normalized, d, log_space=True), b))
