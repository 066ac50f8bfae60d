"""``kldiv.kl`` for distribution objects: kldiv's registry, then torch's, then (when asked) a Monte-Carlo value.

One type per function: ``kldiv.kl(p, q)`` of two distributions is always a tensor with the broadcast batch shape
(a drop-in for ``torch.distributions.kl_divergence``). Estimates with standard errors come from
:func:`kldiv.kl_mc`, bounds for Gaussian mixtures from :func:`kldiv.kl_gaussian_mixture_bounds`.
"""

from __future__ import annotations

import math
from typing import Any, overload

import torch
from torch import Tensor
from torch.distributions import Distribution

from kldiv import discrete
from kldiv._array import ArrayInput, NumpyResult
from kldiv._validate import _first, _fmt, is_validation_enabled
from kldiv.distributions.mc import Estimator, broadcast_pair, kl_mc
from kldiv.distributions.registry import check_pair, lookup, torch_lookup

_BOUNDS_ONLY = (
    "Gaussian mixtures have no closed-form KL: kldiv.kl_gaussian_mixture_bounds(p, q) gives lower and upper bounds"
)


def _parameters_at(name: str, d: Distribution, shape: torch.Size, idx: tuple[int, ...]) -> dict[str, float]:
    """The parameters ``d`` was given (``p.rate``, ...) at batch index ``idx`` of the broadcast ``shape`` (the first
    non-finite entry of an event-shaped parameter, else its first entry)."""
    out = {}
    for k in d.arg_constraints:
        t = vars(d).get(k)
        if not isinstance(t, Tensor):
            continue
        event = t.shape[len(d.batch_shape) :]
        at = t.detach().expand(torch.Size([*shape, *event]))[idx].reshape(-1)
        bad = ~torch.isfinite(at)
        out[f"{name}.{k}"] = float(at[bad][0] if bool(bad.any()) else at[0])
    return out


def _undefined(p: Distribution, q: Distribution, value: Tensor) -> ValueError:
    """The error for a NaN value: the infinite parameters behind it, or the parameters the formula failed at."""
    idx = _first(torch.isnan(value))
    where = f" at batch index {_fmt(idx)}" if idx else ""
    pair = f"KL({type(p).__name__} || {type(q).__name__})"
    shown = {**_parameters_at("p", p, value.shape, idx), **_parameters_at("q", q, value.shape, idx)}
    infinite = ", ".join(f"{k} = {v:g}" for k, v in shown.items() if not math.isfinite(v))
    if infinite:
        return ValueError(
            f"{pair} is undefined{where} for {infinite}: with an infinite parameter a distribution is degenerate or "
            "improper and has no density to compare; pass finite parameters"
        )
    given = ", ".join(f"{k} = {v:g}" for k, v in shown.items())
    return ValueError(
        f"{pair} cannot be evaluated{where} at {given or 'these parameters'}: the formula overflows there; "
        "kldiv.kl_mc(p, q, n) gives a Monte-Carlo estimate"
    )


def kl_divergence(
    p: Distribution,
    q: Distribution,
    *,
    mc_samples: int | None = None,
    estimator: Estimator = "k1",
    seed: int | None = None,
) -> Tensor:
    """KL(p || q) between two ``torch.distributions`` objects: a tensor with the broadcast batch shape.

    Lookup order: kldiv's registry (closed forms, quadrature, series), then torch's registry, then, only when
    asked with ``mc_samples=N``, the Monte-Carlo value ``kl_mc(p, q, N).value`` (differentiable through
    reparameterized samples; :func:`kldiv.kl_mc` also gives its standard error). A pair with none of these
    raises ``NotImplementedError`` naming both types; Gaussian mixtures, for which kldiv has bounds but no value,
    raise it too, pointing to :func:`kldiv.kl_gaussian_mixture_bounds`. With validation on, a value that would be
    NaN raises ``ValueError`` instead: naming the infinite parameters behind it (``Exponential(inf)``,
    ``Gamma(inf, 1)``, ``Laplace(0, inf)``: degenerate or improper distributions), or the parameters at which the
    formula overflows. Distributions built with
    ``validate_args=False`` have their parameters checked against torch's own constraints while kldiv's
    validation is on.
    """
    check_pair(p, q)
    reasons: list[str] = []
    entry = lookup(type(p), type(q))
    ours = None
    if entry is not None and entry.method == "bound":
        reasons.append(_BOUNDS_ONLY)
    elif entry is not None:
        ours = entry.fn
    theirs = torch_lookup(type(p), type(q))
    for fn in (ours, None if theirs is ours else theirs):
        if fn is None:
            continue
        try:
            # torch's formulas assume equal batch shapes (its +inf pairs return p's): expand both to the common one
            value: Tensor = fn(p, q) if fn is ours else fn(*broadcast_pair(p, q))
        except NotImplementedError as exc:  # a registered pair that does not cover these parameters
            reasons.append(str(exc))
            continue
        if is_validation_enabled() and value.numel() and bool(torch.isnan(value).any()):
            raise _undefined(p, q, value)
        return value
    if mc_samples is not None:
        return kl_mc(p, q, mc_samples, estimator=estimator, seed=seed).value
    why = f" ({'; '.join(r for r in reasons if r)})" if any(reasons) else ""
    raise NotImplementedError(
        f"KL({type(p).__name__} || {type(q).__name__}) has no closed form in kldiv or torch.distributions{why}; "
        "kldiv.kl_mc(p, q, n) gives a Monte-Carlo estimate with its standard error, kldiv.kl(p, q, mc_samples=n) "
        "its value as a tensor; or register a formula with kldiv.distributions.register_kl"
    )


@overload
def kl(
    p: Distribution,
    q: Distribution,
    *,
    mc_samples: int | None = None,
    estimator: Estimator = "k1",
    seed: int | None = None,
) -> Tensor: ...
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
def kl(p: Any, q: Any, **options: Any) -> Any:
    """Kullback-Leibler divergence ``KL(P||Q)``.

    Probability vectors (NumPy or torch) go to :func:`kldiv.discrete.kl` (``sum_i p_i log(p_i / q_i)`` along
    ``dim``); two ``torch.distributions`` objects go to :func:`kl_divergence` (a tensor of the batch shape: the
    closed form where one exists, else, with ``mc_samples=N``, a Monte-Carlo value).
    """
    if isinstance(p, Distribution) or isinstance(q, Distribution):
        return kl_divergence(p, q, **options)
    return discrete.kl(p, q, **options)
