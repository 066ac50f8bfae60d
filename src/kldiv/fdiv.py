"""The f-divergence family and its best-known members: Renyi, total variation, Hellinger, chi^2, Jeffreys.

All take probability vectors along ``dim`` (batch dimensions broadcast), with the edge semantics of
:mod:`kldiv.discrete`: entries with ``p_i = q_i = 0`` contribute nothing, support mismatches give the exact
limits (+inf where the divergence is infinite). Gradients of probabilities are evaluated in closed form (as in
:mod:`kldiv.discrete`): finite and exact for tiny probabilities, down to the smallest subnormals.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, overload

import torch
from torch import Tensor

from kldiv._array import ArrayInput, NumpyResult
from kldiv._numerics import INF, expm1_minus_x, log_ratio, ratio_minus_one, with_gradient
from kldiv._validate import check_base, check_scalar, is_validation_enabled, prepare_probs
from kldiv.discrete import _scale, kl_probs
from kldiv.generators import FGenerator


def _renyi_support(p: Tensor, q: Tensor, s: float) -> tuple[Tensor, Tensor]:
    """The entries that contribute (``p, q > 0`` for ``alpha < 1``, ``p > 0`` otherwise) and ``x = log(p/q)``
    there (0 elsewhere)."""
    support = (p > 0) & (q > 0) if s < 0 else p > 0
    x = torch.where(support, log_ratio(torch.where(support, p, 1.0), torch.where(support, q, 1.0)), 0.0)
    return support, x


def renyi_probs(p: Tensor, q: Tensor, alpha: float, d: int) -> Tensor:
    """Renyi divergence of order ``alpha`` of ``p / sum(p)`` and ``q / sum(q)`` along ``d`` (no validation); see
    :func:`renyi`. Gradients in closed form (:func:`_renyi_gradient`)."""
    if alpha == 1.0:
        return kl_probs(p, q, d)
    if alpha == 0.0:
        p, q = p / p.sum(d, keepdim=True), q / q.sum(d, keepdim=True)
        return 0.0 - torch.log(torch.where((p > 0) & (q > 0), q, 0.0).sum(d))
    return with_gradient(
        lambda a, b: _renyi_value(a, b, alpha, d), lambda g, v, a, b: _renyi_gradient(g, v, a, b, alpha, d), p, q
    )


def _renyi_value(p: Tensor, q: Tensor, alpha: float, d: int) -> Tensor:
    p, q = p / p.sum(d, keepdim=True), q / q.sum(d, keepdim=True)
    s = alpha - 1.0
    support, x = _renyi_support(p, q, s)
    if math.isinf(alpha):
        return torch.where(support, x, -INF).amax(d)
    y = s * x
    log_p = torch.where(support, torch.log(torch.where(support, p, 1.0)), -INF)
    # D_alpha >= 0 for the normalized inputs (Hoelder); the clamps remove only rounding (~1e-16 and below).
    general = (torch.logsumexp(log_p + y, d) / s).clamp_min(0.0)
    # Near alpha = 1: sum p e^(s x) - 1 = s KL + sum p psi(s x), psi(y) = e^y - 1 - y >= 0 (no cancellation).
    complete = ((p > 0) == support).all(d, keepdim=True)
    near = complete & (y.abs().amax(d, keepdim=True) <= 0.5)
    q_near = torch.where(near, q, p)
    y_near = torch.where(near, y, 0.0)
    z = s * kl_probs(p, q_near, d) + (p * expm1_minus_x(y_near)).sum(d)
    z = torch.where(near.squeeze(d), z, 0.0)
    return torch.where(near.squeeze(d), (torch.log1p(z) / s).clamp_min(0.0), general)


def _renyi_gradient(g: Tensor, value: Tensor, p: Tensor, q: Tensor, alpha: float, d: int) -> tuple[Tensor, Tensor]:
    """Gradient of ``D(p / S_p, q / S_q)``; with ``x = log(p/q)`` of the normalized arguments and ``Z = e^(s D)``:
    ``d/dp_i = (alpha/s) expm1(s (x_i - D)) / S_p`` and ``d/dq_i = -expm1(alpha x_i - s D) / S_q`` on the support
    (``(alpha/s) (p_i/q_i)^s / Z`` and ``-(p_i/q_i)^alpha / Z`` less their normalization constants ``alpha/s`` and
    -1, which are exact), ``-(alpha/s) / S_p`` and ``1 / S_q`` outside it. ``alpha = inf`` (``D = max_i x_i``):
    ``w_i / p_i - 1/S_p`` and ``-w_i / q_i + 1/S_q`` with ``w`` splitting 1 among the maximizers. Nothing
    overflows unless the exact gradient does."""
    s_p, s_q = p.sum(d, keepdim=True), q.sum(d, keepdim=True)
    s = alpha - 1.0
    support, x = _renyi_support(p / s_p, q / s_q, s)
    g, v = g.unsqueeze(d), value.unsqueeze(d)
    if math.isinf(alpha):
        top = support & (x == v)
        w = top / top.sum(d, keepdim=True)
        grad_p = torch.where(top, w / torch.where(top, p, 1.0), 0.0) - 1.0 / s_p
        grad_q = 1.0 / s_q - torch.where(top, w / torch.where(top, q, 1.0), 0.0)
        return g * grad_p, g * grad_q
    grad_p = (alpha / s) * torch.where(support, torch.expm1(s * (x - v)), -1.0) / s_p
    grad_q = torch.where(support, -torch.expm1(alpha * x - s * v), 1.0) / s_q
    return g * grad_p, g * grad_q


def _tv(p: Tensor, q: Tensor, d: int) -> Tensor:
    return 0.5 * (p - q).abs().sum(d)


def _sqrt_difference(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(sqrt p - sqrt q, sqrt p, sqrt q)``, the difference as ``(p - q) / (sqrt p + sqrt q)`` (no cancellation)."""
    root_p, root_q = torch.sqrt(p), torch.sqrt(q)
    den = root_p + root_q
    return torch.where(den > 0, (p - q) / torch.where(den > 0, den, 1.0), 0.0), root_p, root_q


def _hellinger_value(p: Tensor, q: Tensor, d: int) -> Tensor:
    """``sqrt(sum u^2 / 2)`` with ``u = sqrt p - sqrt q``, scaled by ``max |u|`` so that ``u^2`` cannot underflow
    (subnormal probabilities) or lose digits."""
    u = _sqrt_difference(p, q)[0].abs()
    top = u.amax(d, keepdim=True)
    scaled = u / torch.where(top > 0, top, 1.0)
    return top.squeeze(d) * torch.sqrt(0.5 * scaled.square().sum(d))


def _hellinger_gradient(g: Tensor, value: Tensor, p: Tensor, q: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """``d/dp_i = (u_i / H) / (4 sqrt p_i)`` and ``d/dq_i = -(u_i / H) / (4 sqrt q_i)`` (``|u_i| / H <= sqrt 2``,
    so nothing overflows unless the gradient does); 0 at a zero probability (its one-sided derivative is
    infinite) and at ``H = 0``, where the distance has no gradient."""
    u, root_p, root_q = _sqrt_difference(p, q)
    h = value.unsqueeze(d)
    v = torch.where(h > 0, u / torch.where(h > 0, h, 1.0), 0.0) * (0.25 * g.unsqueeze(d))
    grad_p = torch.where(p > 0, v / torch.where(p > 0, root_p, 1.0), 0.0)
    grad_q = torch.where(q > 0, -v / torch.where(q > 0, root_q, 1.0), 0.0)
    return grad_p, grad_q


def _hellinger(p: Tensor, q: Tensor, d: int) -> Tensor:
    return with_gradient(
        lambda a, b: _hellinger_value(a, b, d), lambda g, v, a, b: _hellinger_gradient(g, v, a, b, d), p, q
    )


def _chi2_value(p: Tensor, q: Tensor, d: int) -> Tensor:
    pos = q > 0
    terms = (p - q) ** 2 / torch.where(pos, q, 1.0)
    return torch.where(pos, terms, torch.where(p > 0, INF, 0.0)).sum(d)


def _chi2_gradient(g: Tensor, value: Tensor, p: Tensor, q: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """With ``r = p / q``: ``d/dp_i = 2 (r_i - 1)`` and ``d/dq_i = 1 - r_i^2 = -(r_i - 1)(r_i + 1)``."""
    g = g.unsqueeze(d)
    r1 = ratio_minus_one(p, q)
    return g * 2.0 * r1, g * -(r1 * (r1 + 2.0))


def _chi2(p: Tensor, q: Tensor, d: int) -> Tensor:
    """Pearson ``sum (p - q)^2 / q``: +inf where ``q == 0 < p``, 0 where both are 0."""
    return with_gradient(lambda a, b: _chi2_value(a, b, d), lambda g, v, a, b: _chi2_gradient(g, v, a, b, d), p, q)


@overload
def renyi(
    p: Tensor, q: Tensor, alpha: float, *, dim: int = -1, base: float | None = None, normalize: bool = False
) -> Tensor: ...
@overload
def renyi(
    p: ArrayInput,
    q: ArrayInput,
    alpha: float,
    *,
    dim: int = -1,
    base: float | None = None,
    normalize: bool = False,
) -> NumpyResult: ...
def renyi(
    p: Tensor | ArrayInput,
    q: Tensor | ArrayInput,
    alpha: float,
    *,
    dim: int = -1,
    base: float | None = None,
    normalize: bool = False,
) -> Tensor | NumpyResult:
    """Renyi divergence ``D_alpha(P||Q) = log(sum_i p_i^alpha q_i^(1 - alpha)) / (alpha - 1)``, alpha >= 0.

    ``alpha = 1`` is KL(P||Q) and the value is continuous there (computed as
    ``log1p(s KL + sum p psi(s x)) / s`` with ``s = alpha - 1``, ``x = log(p/q)``, ``psi(y) = e^y - 1 - y``);
    ``alpha = 0`` is ``-log Q(p > 0)``;
    ``alpha = inf`` is ``log max_i p_i / q_i``. Non-decreasing in alpha. For ``alpha < 1`` entries with
    ``q_i = 0 < p_i`` contribute nothing (and get zero gradient); for ``alpha > 1`` they give +inf.
    Reference: Renyi (1961); van Erven & Harremoes (2014), "Renyi divergence and Kullback-Leibler divergence".
    """
    b = check_base(base)
    a = check_scalar("alpha", alpha, low=0.0, allow_inf=True)
    (pt, qt), d, io = prepare_probs({"p": p, "q": q}, dim, normalize=normalize)
    return io.finish(_scale(renyi_probs(pt, qt, a, d), b))


@overload
def tv(p: Tensor, q: Tensor, *, dim: int = -1, normalize: bool = False) -> Tensor: ...
@overload
def tv(p: ArrayInput, q: ArrayInput, *, dim: int = -1, normalize: bool = False) -> NumpyResult: ...
def tv(
    p: Tensor | ArrayInput, q: Tensor | ArrayInput, *, dim: int = -1, normalize: bool = False
) -> Tensor | NumpyResult:
    """Total variation distance ``TV(P, Q) = (1/2) sum_i |p_i - q_i|``, in [0, 1].

    Pinsker: ``TV <= sqrt(KL / 2)``.
    Reference: Tsybakov (2009), "Introduction to Nonparametric Estimation", section 2.4.
    """
    (pt, qt), d, io = prepare_probs({"p": p, "q": q}, dim, normalize=normalize)
    return io.finish(_tv(pt, qt, d))


@overload
def hellinger(p: Tensor, q: Tensor, *, dim: int = -1, normalize: bool = False) -> Tensor: ...
@overload
def hellinger(p: ArrayInput, q: ArrayInput, *, dim: int = -1, normalize: bool = False) -> NumpyResult: ...
def hellinger(
    p: Tensor | ArrayInput, q: Tensor | ArrayInput, *, dim: int = -1, normalize: bool = False
) -> Tensor | NumpyResult:
    """Hellinger distance ``H(P, Q) = sqrt((1/2) sum_i (sqrt p_i - sqrt q_i)^2)``, in [0, 1].

    Computed from ``(p - q) / (sqrt p + sqrt q)`` so nearly equal inputs keep their relative accuracy; the
    gradient at ``P = Q`` is 0. Reference: Tsybakov (2009), definition 2.3.
    """
    (pt, qt), d, io = prepare_probs({"p": p, "q": q}, dim, normalize=normalize)
    return io.finish(_hellinger(pt, qt, d))


@overload
def chi2(
    p: Tensor,
    q: Tensor,
    *,
    kind: Literal["pearson", "neyman"] = "pearson",
    dim: int = -1,
    normalize: bool = False,
) -> Tensor: ...
@overload
def chi2(
    p: ArrayInput,
    q: ArrayInput,
    *,
    kind: Literal["pearson", "neyman"] = "pearson",
    dim: int = -1,
    normalize: bool = False,
) -> NumpyResult: ...
def chi2(
    p: Tensor | ArrayInput,
    q: Tensor | ArrayInput,
    *,
    kind: Literal["pearson", "neyman"] = "pearson",
    dim: int = -1,
    normalize: bool = False,
) -> Tensor | NumpyResult:
    """Chi-squared divergence: Pearson ``sum_i (p_i - q_i)^2 / q_i`` or Neyman ``sum_i (p_i - q_i)^2 / p_i``.

    +inf where the denominator is 0 and the numerator is not. ``KL <= log(1 + chi2_pearson)``.
    Reference: Pearson (1900); Neyman (1949); Liese & Vajda (2006).
    """
    if kind not in ("pearson", "neyman"):
        raise ValueError(f"kind must be 'pearson' or 'neyman', got {kind!r}")
    (pt, qt), d, io = prepare_probs({"p": p, "q": q}, dim, normalize=normalize)
    return io.finish(_chi2(pt, qt, d) if kind == "pearson" else _chi2(qt, pt, d))


@overload
def jeffreys(p: Tensor, q: Tensor, *, dim: int = -1, base: float | None = None, normalize: bool = False) -> Tensor: ...
@overload
def jeffreys(
    p: ArrayInput, q: ArrayInput, *, dim: int = -1, base: float | None = None, normalize: bool = False
) -> NumpyResult: ...
def jeffreys(
    p: Tensor | ArrayInput,
    q: Tensor | ArrayInput,
    *,
    dim: int = -1,
    base: float | None = None,
    normalize: bool = False,
) -> Tensor | NumpyResult:
    """Jeffreys divergence ``J(P, Q) = KL(P||Q) + KL(Q||P) = sum_i (p_i - q_i) log(p_i / q_i)``.

    Reference: Jeffreys (1946), "An invariant form for the prior probability in estimation problems".
    """
    b = check_base(base)
    (pt, qt), d, io = prepare_probs({"p": p, "q": q}, dim, normalize=normalize)
    return io.finish(_scale(kl_probs(pt, qt, d) + kl_probs(qt, pt, d), b))


def _as_generator(f: FGenerator | Callable[[Tensor], Tensor], dtype: torch.dtype, device: torch.device) -> FGenerator:
    if isinstance(f, FGenerator):
        return f
    if not callable(f):
        raise TypeError(f"f must be an FGenerator or a callable t -> f(t), got {type(f).__name__}")
    with torch.no_grad():
        zero = f(torch.zeros((), dtype=dtype, device=device))
    if not isinstance(zero, Tensor):
        raise TypeError(f"f must map a tensor of ratios to a tensor, got {type(zero).__name__} from f(0)")
    f0 = float(zero)
    return FGenerator(getattr(f, "__name__", "f"), f, f0, math.nan)


def _check_generator(gen: FGenerator, p: Tensor, q: Tensor) -> None:
    """``f(1) = 0``, tensors out, and the limits a callable lacks are not needed by these inputs."""
    one = gen.f(torch.ones((), dtype=p.dtype, device=p.device))
    if not isinstance(one, Tensor):
        raise TypeError(f"f must map a tensor of ratios to a tensor, got {type(one).__name__} from f(1)")
    if not bool(one.abs() <= 1e-12):
        raise ValueError(f"f(1) must be 0 for an f-divergence, got f(1) = {float(one)!r}; use f(t) - f(1)")
    if math.isnan(gen.f_at_zero) and bool(((p == 0) & (q > 0)).any()):
        raise ValueError("f(0) is NaN but p has zeros where q > 0; pass an FGenerator with f_at_zero")
    if math.isnan(gen.slope_at_infinity) and bool(((p > 0) & (q == 0)).any()):
        raise ValueError(
            "q has zeros where p > 0, which needs lim f(t)/t as t -> inf; pass an FGenerator with "
            "slope_at_infinity (e.g. FGenerator('mine', f, f_at_zero, slope_at_infinity))"
        )


def _f_divergence_value(p: Tensor, q: Tensor, gen: FGenerator, d: int) -> Tensor:
    both = (p > 0) & (q > 0)
    only_q = (p == 0) & (q > 0)
    only_p = (p > 0) & (q == 0)
    t = torch.where(both, p / torch.where(both, q, 1.0), 1.0)
    inner = torch.where(both, q * gen.f(t), 0.0)
    edge_q = torch.where(only_q, q.new_tensor(gen.f_at_zero), 0.0) * q
    edge_p = torch.where(only_p, p.new_tensor(gen.slope_at_infinity), 0.0) * p
    return (inner + edge_q + edge_p).sum(d)


def _f_divergence_gradient(
    g: Tensor, value: Tensor, p: Tensor, q: Tensor, gen: FGenerator, d: int
) -> tuple[Tensor, Tensor]:
    """With ``t = p / q``: ``d/dp_i = f'(t_i)`` and ``d/dq_i = f(t_i) - t_i f'(t_i)`` (``f'`` by autograd at ``t``);
    the edge terms give ``f(0)`` (for q, where ``p_i == 0``) and ``f'(inf)`` (for p, where ``q_i == 0``)."""
    both = (p > 0) & (q > 0)
    create_graph = torch.is_grad_enabled()  # in a backward pass: only when second derivatives are asked for
    with torch.enable_grad():
        t = torch.where(both, p / torch.where(both, q, 1.0), 1.0)
        if not (create_graph and t.requires_grad):
            t = t.detach().requires_grad_()
        f_t = gen.f(t)
        (slope,) = torch.autograd.grad(f_t.sum(), t, create_graph=create_graph)
    if not create_graph:
        f_t, t = f_t.detach(), t.detach()
    g = g.unsqueeze(d)
    edge_q = torch.where((p == 0) & (q > 0), q.new_tensor(gen.f_at_zero), 0.0)
    edge_p = torch.where((p > 0) & (q == 0), p.new_tensor(gen.slope_at_infinity), 0.0)
    grad_p = torch.where(both, slope, edge_p)
    # f(t) - t f'(t), as t (f(t)/t - f'(t)) for t > 1, where f(t) and t f'(t) may overflow although it does not
    perspective = torch.where(t > 1.0, t * (f_t / t - slope), f_t - t * slope)
    grad_q = torch.where(both, perspective, edge_q)
    return g * grad_p, g * grad_q


def f_divergence_probs(p: Tensor, q: Tensor, gen: FGenerator, d: int) -> Tensor:
    """``sum_i q_i f(p_i / q_i)`` with the exact edge terms of ``gen`` (see :func:`f_divergence`).

    Gradients in closed form (:func:`_f_divergence_gradient`).
    """
    return with_gradient(
        lambda a, b: _f_divergence_value(a, b, gen, d),
        lambda g, v, a, b: _f_divergence_gradient(g, v, a, b, gen, d),
        p,
        q,
    )


@overload
def f_divergence(
    p: Tensor,
    q: Tensor,
    f: FGenerator | Callable[[Tensor], Tensor],
    *,
    dim: int = -1,
    normalize: bool = False,
) -> Tensor: ...
@overload
def f_divergence(
    p: ArrayInput,
    q: ArrayInput,
    f: FGenerator | Callable[[Tensor], Tensor],
    *,
    dim: int = -1,
    normalize: bool = False,
) -> NumpyResult: ...
def f_divergence(
    p: Tensor | ArrayInput,
    q: Tensor | ArrayInput,
    f: FGenerator | Callable[[Tensor], Tensor],
    *,
    dim: int = -1,
    normalize: bool = False,
) -> Tensor | NumpyResult:
    """Csiszar f-divergence ``D_f(P||Q) = sum_i q_i f(p_i / q_i)`` for a convex ``f`` with ``f(1) = 0``.

    ``f`` is a named generator from :mod:`kldiv.generators` (which knows its limits ``f(0)`` and
    ``lim f(t)/t``, used for entries where p or q is 0) or a callable on a tensor of ratios ``t > 0``;
    for a callable, ``f(0)`` is evaluated and a zero of q where p > 0 raises (wrap it in an ``FGenerator``
    with ``slope_at_infinity``). Convexity is the caller's promise; ``f(1) = 0`` is checked.
    Reference: Csiszar (1967); Ali & Silvey (1966).
    """
    (pt, qt), d, io = prepare_probs({"p": p, "q": q}, dim, normalize=normalize)
    gen = _as_generator(f, pt.dtype, pt.device)
    if is_validation_enabled():
        _check_generator(gen, pt, qt)
    value = f_divergence_probs(pt, qt, gen, d)
    if is_validation_enabled() and bool(torch.isnan(value).any()):
        raise ValueError(f"f returned NaN for these inputs ({gen.name}); check f on (0, inf)")
    return io.finish(value)
