"""Numerically careful tensor kernels shared by the divergences.

All functions here take validated tensors of one floating dtype and are differentiable with finite gradients
wherever their value is finite (masked branches are fed safe values, never ``0 * inf``).

Gradients through a quotient: differentiating ``log(p / q)`` as written gives ``p / q**2``, which overflows for
``q`` below about 1e-19 in float32 (1e-154 in float64) although ``d/dq log(p/q) = -1/q`` is representable. So
:func:`log_ratio` carries its derivative explicitly, and the divergences of probability vectors state their
gradients in closed form through :func:`with_gradient` (ratios ``p / q`` are formed once, by one division).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor

INF = math.inf

# Taylor coefficients of phi(x) = (x - 1) e^x + 1 = sum_{k>=2} (k - 1) / k! x^k, for k = 2..7.
_PHI = (1 / 2, 1 / 3, 1 / 8, 1 / 30, 1 / 144, 1 / 840)
# Taylor coefficients of psi(y) = e^y - 1 - y = sum_{k>=2} y^k / k!, for k = 2..7.
_PSI = (1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720, 1 / 5040)
# Taylor coefficients of t - log1p(t) = sum_{k>=2} (-1)^k t^k / k, for k = 2..7.
_LOG1P = (1 / 2, -1 / 3, 1 / 4, -1 / 5, 1 / 6, -1 / 7)
_SERIES_BELOW = 1e-3  # |x| below which the series (truncation < 1e-18 relative) replaces the direct form


def _horner_x2(x: Tensor, coeffs: tuple[float, ...]) -> Tensor:
    """``x**2 * (c0 + c1 x + c2 x**2 + ...)`` by Horner's rule."""
    acc = torch.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = acc * x + c
    return acc * x * x


Gradient = Callable[..., tuple[Tensor | None, ...]]
"""``gradient(grad_output, output, *inputs)``: the gradient of each input (None where there is none)."""


class _ExplicitGradient(torch.autograd.Function):
    """``value(*inputs)`` evaluated without a graph and differentiated by ``gradient`` (see :func:`with_gradient`)."""

    @staticmethod
    def forward(value: Callable[..., Tensor], gradient: Gradient, *inputs: Tensor) -> Tensor:
        return value(*inputs)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.gradient = inputs[1]
        ctx.save_for_backward(output, *inputs[2:])

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        output, *inputs = ctx.saved_tensors
        return (None, None, *ctx.gradient(grad_output, output, *inputs))


def with_gradient(value: Callable[..., Tensor], gradient: Gradient, *inputs: Tensor) -> Tensor:
    """``value(*inputs)``, differentiated by the closed form ``gradient(grad_output, output, *inputs)``.

    The value is computed exactly as without gradients (no graph, in-place kernels allowed); the backward pass
    evaluates the analytic derivatives, which avoids overflowing intermediate quotients. ``gradient`` uses
    differentiable operations, so second derivatives work too. Without a tensor that requires grad this is just
    ``value(*inputs)``.
    """
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in inputs)):
        return value(*inputs)
    return cast(Tensor, _ExplicitGradient.apply(value, gradient, *inputs))  # type: ignore[no-untyped-call]


def ratio_minus_one(p: Tensor, q: Tensor) -> Tensor:
    """``p / q - 1`` as ``(p - q) / q``: relatively accurate near ``p = q`` (``p - q`` is exact there, Sterbenz) and
    for subnormal ``q``; -1 where ``p == 0`` (also when ``q == 0``); +inf where ``q == 0 < p``."""
    pos = q > 0
    return torch.where(pos, (p - q) / torch.where(pos, q, 1.0), torch.where(p > 0, INF, -1.0))


def ratio_and_log(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """``(p / q, log(p / q))`` where ``p > 0`` (arbitrary elsewhere), for gradients: one division and one log, and
    ``log p - log q`` where the ratio underflows to a subnormal or overflows (``+inf`` where ``q == 0 < p``).

    ``log(p/q)`` has an absolute error of a few eps (``eps (|log p| + |log q|)`` on the fallback), enough for
    gradients, whose terms are O(1); :func:`log_ratio` is the accurate one for values.
    """
    support = p > 0
    ps, qs = torch.where(support, p, 1.0), torch.where(support, q, 1.0)
    ratio = ps / qs
    x = torch.log(ratio)
    far = ~(ratio >= torch.finfo(p.dtype).tiny) | (ratio == INF)
    if bool(far.any()):
        x = torch.where(far, torch.log(torch.where(far, ps, 1.0)) - torch.log(torch.where(far, qs, 1.0)), x)
    return ratio, x


def _log_ratio_gradient(g: Tensor, x: Tensor, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """``d log(p/q) = dp / p - dq / q`` on the support ``p > 0`` (0 elsewhere, where the value is the constant 0)."""
    support = p > 0
    inside = support & (q > 0)
    gs = torch.where(support, g, 0.0)
    at_zero_q = torch.where(gs > 0, -INF, torch.where(gs < 0, INF, 0.0))  # -g / 0, constants (no 0 * inf)
    grad_q = torch.where(inside, -gs / torch.where(inside, q, 1.0), at_zero_q)
    return gs / torch.where(support, p, 1.0), grad_q


def log_ratio(p: Tensor, q: Tensor) -> Tensor:
    """``log(p / q)`` accurate to a few ulps where ``p > 0``; 0 where ``p == 0``; +inf where ``q == 0 < p``.

    Near 1 it is ``log1p((p - q) / q)`` (``p - q`` is exact there, Sterbenz); elsewhere ``log(p / q)`` unless the
    ratio overflows or is subnormal, then ``log(p) - log(q)``. The gradient is ``(1/p, -1/q)`` on the support,
    never formed through ``p / q**2``.
    """
    return with_gradient(_log_ratio_value, _log_ratio_gradient, p, q)


def _log_ratio_value(p: Tensor, q: Tensor) -> Tensor:
    support = p > 0
    ps = torch.where(support, p, 1.0)
    qs = torch.where(support, q, 1.0)
    r = (ps - qs) / qs
    near = r.abs() <= 0.5
    ratio = ps / qs
    tiny = torch.finfo(p.dtype).tiny
    normal = (ratio >= tiny) & (ratio <= torch.finfo(p.dtype).max) & ~near
    far = ~near & ~normal
    x_near = torch.log1p(torch.where(near, r, 0.0))
    x_normal = torch.log(torch.where(normal, ratio, 1.0))
    x_far = torch.log(torch.where(far, ps, 1.0)) - torch.log(torch.where(far, qs, 1.0))
    return torch.where(near, x_near, torch.where(normal, x_normal, x_far))


def kl_terms_from_log_ratio(x: Tensor, p: Tensor, q: Tensor) -> Tensor:
    """``q * phi(x) = p x - p + q`` (>= 0) for ``x = log(p/q)``, accurate in each term.

    ``phi(x) = (x - 1) e^x + 1`` is evaluated by its series for ``|x| < 1e-3``, as ``x e^x - expm1(x)`` for
    ``|x| < 1`` (relative error ~ eps/|x|) and as ``p (x - 1) + q`` beyond (no cancellation). Where ``x = +inf``
    the term is +inf. ``p`` must be ``q e^x``.
    """
    ax = x.abs()
    small = ax < _SERIES_BELOW
    big = ax >= 1.0
    mid = ~small & ~big
    x_small = torch.where(small, x, 0.0)
    x_mid = torch.where(mid, x, 0.5)
    x_big = torch.where(big, x, 2.0)
    t_small = q * _horner_x2(x_small, _PHI)
    t_mid = q * (x_mid * torch.exp(x_mid) - torch.expm1(x_mid))
    t_big = p * (x_big - 1.0) + q
    return torch.where(small, t_small, torch.where(mid, t_mid, t_big))


def expm1_minus_x(y: Tensor) -> Tensor:
    """``psi(y) = e^y - 1 - y`` (>= 0), by its series for ``|y| < 1e-3``, directly beyond."""
    small = y.abs() < _SERIES_BELOW
    y_small = torch.where(small, y, 0.0)
    y_direct = torch.where(small, 1.0, y)
    return torch.where(small, _horner_x2(y_small, _PSI), torch.expm1(y_direct) - y_direct)


def x_minus_log1p(t: Tensor) -> Tensor:
    """``t - log1p(t)`` (>= 0 for t > -1), by its series for ``|t| < 1e-3``, directly beyond."""
    small = t.abs() < _SERIES_BELOW
    t_small = torch.where(small, t, 0.0)
    t_direct = torch.where(small, 1.0, t)
    return torch.where(small, _horner_x2(t_small, _LOG1P), t_direct - torch.log1p(t_direct))


def accurate_sum(x: Tensor, dim: int) -> Tensor:
    """Sum along ``dim`` with error-free transformations (pairwise TwoSum, Knuth 1969).

    The result is the exact sum rounded once, up to ``O(eps**2 * sum|x|)``: used where the sum cancels, e.g.
    ``sum(p - q)`` of two nearly equal distributions.
    """
    s = x.movedim(dim, -1)
    err = torch.zeros(s.shape[:-1], dtype=s.dtype, device=s.device)
    while s.shape[-1] > 1:
        if s.shape[-1] % 2:
            s = torch.cat([s, torch.zeros_like(s[..., :1])], dim=-1)
        a, b = s[..., 0::2], s[..., 1::2]
        t = a + b
        bv = t - a
        err = err + ((a - (t - bv)) + (b - bv)).sum(-1)
        s = t
    return s[..., 0] + err


def log_softmax(x: Tensor, dim: int) -> Tensor:
    """``log_softmax`` with the normalizer as ``m + log1p(sum_{j != argmax} e^(x_j - m))``.

    Keeps the log-probability of a dominant class relatively accurate (``torch.log_softmax`` rounds
    ``log(1 + tiny)`` to 0), which the entropy of a nearly deterministic distribution needs.
    ``-inf`` entries stay ``-inf``; a row must have a finite maximum.
    """
    idx = x.argmax(dim, keepdim=True)
    z = x - x.gather(dim, idx)
    rest = torch.exp(z).scatter(dim, idx, 0.0).sum(dim, keepdim=True)
    return z - torch.log1p(rest)


def support_log_terms(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``p (log p - log q)`` per entry: 0 where ``log_p = -inf``, +inf where ``log_q = -inf < log_p``."""
    support = log_p > -INF
    lp = torch.where(support, log_p, 0.0)
    lq = torch.where(support, log_q, 0.0)
    violated = lq == -INF
    lq = torch.where(violated, 0.0, lq)
    terms = torch.exp(lp) * (lp - lq)
    return torch.where(support, torch.where(violated, INF, terms), 0.0)


def refine_rows(value: Tensor, need: Tensor, dim: int, kernel: Callable[..., Tensor], *tensors: Tensor) -> Tensor:
    """Replace ``value`` where ``need`` by ``kernel(*rows)`` on those rows only (event dim moved last).

    ``value`` and ``need`` have the batch shape (the event dimension ``dim`` of ``tensors`` removed).
    """
    if not bool(need.any()):
        return value
    moved = [t.movedim(dim, -1) for t in tensors]
    if value.dim() == 0:
        out = kernel(*(m.unsqueeze(0) for m in moved))
        return out[0]
    idx = need.nonzero(as_tuple=True)
    refined = kernel(*(m[idx] for m in moved))
    return value.index_put(idx, refined)
