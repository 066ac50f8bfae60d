"""Gradients of every probability-input function at tiny probabilities, down to the smallest subnormals.

The reference is independent of kldiv: each divergence's partial derivatives are written from its definition
and evaluated in 50-digit mpmath on the exact values of the inputs (the derivatives of the normalized functions
go through the normalization ``p / sum(p)`` by the chain rule). The reference formulas themselves are checked
against mpmath finite differences at moderate inputs. Compared: every entry where the partial derivative exists
(a zero probability has a one-sided, often infinite derivative; kldiv's convention there is tested in
tests/test_discrete_gradients.py).

Tolerance: the closed forms evaluate ``log(p/q)`` to a few ulps and ``(p/q)^alpha`` as ``exp(alpha x - s D)``,
which loses ``|alpha x|`` ulps with ``|x| <= 745``; so each entry must agree within ``RTOL`` times the magnitude
of the terms it is made of, plus the smallest normal number. Those terms: the derivative w.r.t. the normalized
entry, the normalization's constant and 1 (the sums of the inputs are rounded to the dtype, an error of one ulp
of 1 in every entry) for the normalized functions; for the generic ``f_divergence``, which evaluates
``f(t) - t f'(t)`` at the rounded ratio ``t = p/q`` as written, also ``|f(t)|``, ``|t f'(t)|`` and the
sensitivity ``t |f''(t)|`` (``t^2 |f''(t)|`` for q) to the rounding of ``t``. ``RTOL`` is 1e-4 for float32
(about 1700 ulps, above 3 * 104 ulps of ``|alpha x|``) and 1e-11 for float64 (about 9e4 ulps, above 3 * 745).
Where the exact derivative exceeds the dtype's range the entry must be the infinity of the right sign, never NaN
(see docs/discrete.md). The generic ``f_divergence`` is compared where ``p/q`` is a normal number (a subnormal
ratio carries its rounding into ``f'``; documented there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hypothesis.strategies as st
import mpmath as mp
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings

import kldiv
from kldiv import generators

mp.mp.dps = 50
# pairs whose value is infinite (disjoint supports, e.g. for jeffreys) are skipped by assume(); for some functions
# that is most random pairs, which is expected: the health check about it would fail a correct test at random
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
RTOL = {torch.float32: 1e-4, torch.float64: 1e-11}
Mp = Any  # an mpmath number
Vec = list[Mp]
Partial = Mp | tuple[Mp, Mp] | None
"""A partial derivative, or (derivative, magnitude of the terms it is made of), or None where there is none."""


# --------------------------------------------------------------------------------------------------------------
# reference: value and partial derivatives of each divergence, from its definition
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """``value(p, q)`` and the partial derivatives ``(dp, dq)`` (None where a derivative does not exist).

    ``normalized``: the function is defined on ``p / sum(p)`` and ``q / sum(q)``; value and partials are then of
    the normalized arguments, and :func:`reference_gradient` applies the chain rule. ``differentiable``: whether
    the function has a gradient at these (normalized) arguments.
    """

    value: Callable[[Vec, Vec], Mp]
    partials: Callable[[Vec, Vec], tuple[list[Partial], list[Partial]]]
    normalized: bool
    differentiable: Callable[[Vec, Vec], bool] = lambda p, q: True


def _kl(p: Vec, q: Vec) -> Mp:
    return mp.fsum(a * mp.log(a / b) if b > 0 else mp.inf for a, b in zip(p, q, strict=True) if a > 0)


def _kl_partials(p: Vec, q: Vec) -> tuple[list[Partial], list[Partial]]:
    dp = [mp.log(a / b) + 1 if a > 0 else None for a, b in zip(p, q, strict=True)]
    dq = [-a / b if b > 0 else None for a, b in zip(p, q, strict=True)]
    return dp, dq


def _cross_entropy(p: Vec, q: Vec) -> Mp:
    return mp.fsum(-a * mp.log(b) if b > 0 else mp.inf for a, b in zip(p, q, strict=True) if a > 0)


def _cross_entropy_partials(p: Vec, q: Vec) -> tuple[list[Partial], list[Partial]]:
    dp = [-mp.log(b) if a > 0 and b > 0 else None for a, b in zip(p, q, strict=True)]
    return dp, _kl_partials(p, q)[1]


def _entropy(p: Vec, q: Vec) -> Mp:
    return mp.fsum(-a * mp.log(a) for a in p if a > 0)


def _entropy_partials(p: Vec, q: Vec) -> tuple[list[Partial], list[Partial]]:
    return [-mp.log(a) - 1 if a > 0 else None for a in p], [None] * len(q)


def _js(w: float) -> Reference:
    def mix(p: Vec, q: Vec) -> Vec:
        return [w * a + (1 - w) * b for a, b in zip(p, q, strict=True)]

    def value(p: Vec, q: Vec) -> Mp:
        m = mix(p, q)
        return w * _kl(p, m) + (1 - w) * _kl(q, m)

    def partials(p: Vec, q: Vec) -> tuple[list[Partial], list[Partial]]:
        m = mix(p, q)
        dp = [w * mp.log(a / c) if a > 0 else None for a, c in zip(p, m, strict=True)]
        dq = [(1 - w) * mp.log(b / c) if b > 0 else None for b, c in zip(q, m, strict=True)]
        return dp, dq

    return Reference(value, partials, normalized=True)


def _with_magnitude(d: Partial) -> tuple[Mp, Mp] | None:
    if d is None or isinstance(d, tuple):
        return d
    return d, abs(d)


def _scaled(ref: Reference, factor: float) -> Reference:
    def scale(d: Partial) -> Partial:
        e = _with_magnitude(d)
        return None if e is None else (factor * e[0], factor * e[1])

    def partials(p: Vec, q: Vec) -> tuple[list[Partial], list[Partial]]:
        dp, dq = ref.partials(p, q)
        return [scale(d) for d in dp], [scale(d) for d in dq]

    return Reference(lambda p, q: factor * ref.value(p, q), partials, ref.normalized)


def _renyi(alpha: float) -> Reference:
    s = alpha - 1

    def support(a: Mp, b: Mp) -> bool:
        return bool(a > 0 and b > 0) if s < 0 else bool(a > 0)

    def z(p: Vec, q: Vec) -> Mp:
        return mp.fsum(a**alpha * b ** (1 - alpha) for a, b in zip(p, q, strict=True) if support(a, b))

    def value(p: Vec, q: Vec) -> Mp:
        if s > 0 and any(a > 0 and b == 0 for a, b in zip(p, q, strict=True)):
            return mp.inf
        return mp.log(z(p, q)) / s

    def partials(p: Vec, q: Vec) -> tuple[list[Partial], list[Partial]]:
        zz = z(p, q)
        dp = [alpha * (a / b) ** s / (s * zz) if support(a, b) and b > 0 else None for a, b in zip(p, q, strict=True)]
        dq = [-((a / b) ** alpha) / zz if b > 0 else None for a, b in zip(p, q, strict=True)]
        return dp, dq

    return Reference(value, partials, normalized=True)


def _renyi_inf_value(p: Vec, q: Vec) -> Mp:
    return max(mp.log(a / b) if b > 0 else mp.inf for a, b in zip(p, q, strict=True) if a > 0)


def _renyi_inf_unique(p: Vec, q: Vec) -> bool:
    """The maximum is differentiable where it is unique (ratios within rounding of each other tie in floats)."""
    ratios = [a / b if a > 0 and b > 0 else mp.mpf(0) for a, b in zip(p, q, strict=True)]
    top = max(ratios)
    return sum(1 for r in ratios if r >= top * (1 - mp.mpf(10) ** -9)) == 1


def _renyi_inf_partials(p: Vec, q: Vec) -> tuple[list[Partial], list[Partial]]:
    ratios = [a / b if a > 0 and b > 0 else mp.mpf(0) for a, b in zip(p, q, strict=True)]
    top = max(ratios)
    dp = [(1 / a if r == top else mp.mpf(0)) if a > 0 else None for a, r in zip(p, ratios, strict=True)]
    dq = [(-1 / b if r == top else mp.mpf(0)) if b > 0 else None for b, r in zip(q, ratios, strict=True)]
    return dp, dq


def _jeffreys_value(p: Vec, q: Vec) -> Mp:
    return _kl(p, q) + _kl(q, p)


def _jeffreys_partials(p: Vec, q: Vec) -> tuple[list[Partial], list[Partial]]:
    dp = [mp.log(a / b) + 1 - b / a if a > 0 and b > 0 else None for a, b in zip(p, q, strict=True)]
    dq = [mp.log(b / a) + 1 - a / b if a > 0 and b > 0 else None for a, b in zip(p, q, strict=True)]
    return dp, dq


def _tv_value(p: Vec, q: Vec) -> Mp:
    return mp.fsum(abs(a - b) for a, b in zip(p, q, strict=True)) / 2


def _tv_partials(p: Vec, q: Vec) -> tuple[list[Partial], list[Partial]]:
    dp = [mp.sign(a - b) / 2 if a != b else None for a, b in zip(p, q, strict=True)]
    return dp, [None if d is None else -d for d in dp]


def _hellinger_value(p: Vec, q: Vec) -> Mp:
    return mp.sqrt(mp.fsum((mp.sqrt(a) - mp.sqrt(b)) ** 2 for a, b in zip(p, q, strict=True)) / 2)


def _hellinger_partials(p: Vec, q: Vec) -> tuple[list[Partial], list[Partial]]:
    h = _hellinger_value(p, q)
    dp = [(1 - mp.sqrt(b / a)) / (4 * h) if a > 0 else None for a, b in zip(p, q, strict=True)]
    dq = [(1 - mp.sqrt(a / b)) / (4 * h) if b > 0 else None for a, b in zip(p, q, strict=True)]
    return dp, dq


def _pearson_value(p: Vec, q: Vec) -> Mp:
    return mp.fsum((a - b) ** 2 / b if b > 0 else (mp.inf if a > 0 else 0) for a, b in zip(p, q, strict=True))


def _pearson_partials(p: Vec, q: Vec) -> tuple[list[Partial], list[Partial]]:
    dp = [2 * (a - b) / b if b > 0 else None for a, b in zip(p, q, strict=True)]
    dq = [1 - (a / b) ** 2 if b > 0 else None for a, b in zip(p, q, strict=True)]
    return dp, dq


def _neyman() -> Reference:
    def partials(p: Vec, q: Vec) -> tuple[list[Partial], list[Partial]]:
        dq, dp = _pearson_partials(q, p)
        return dp, dq

    return Reference(lambda p, q: _pearson_value(q, p), partials, normalized=False)


def _f_divergence(
    f: Callable[[Mp], Mp],
    df: Callable[[Mp], Mp],
    d2f: Callable[[Mp], Mp],
    f_at_zero: float,
    slope_at_infinity: float,
) -> Reference:
    def value(p: Vec, q: Vec) -> Mp:
        terms = []
        for a, b in zip(p, q, strict=True):
            if a > 0 and b > 0:
                terms.append(b * f(a / b))
            elif b > 0:
                terms.append(b * f_at_zero)
            elif a > 0:
                terms.append(a * slope_at_infinity)
        return mp.fsum(terms)

    def partials(p: Vec, q: Vec) -> tuple[list[Partial], list[Partial]]:
        dp: list[Partial] = []
        dq: list[Partial] = []
        for a, b in zip(p, q, strict=True):
            if a > 0 and b > 0:
                t = a / b
                slope, curvature = df(t), abs(d2f(t))
                dp.append((slope, abs(slope) + t * curvature))
                dq.append((f(t) - t * slope, abs(f(t)) + abs(t * slope) + t * t * curvature))
            else:
                dp.append(mp.mpf(slope_at_infinity) if b == 0 and a > 0 else None)
                dq.append(mp.mpf(f_at_zero) if a == 0 and b > 0 else None)
        return dp, dq

    return Reference(value, partials, normalized=False)


KL = Reference(_kl, _kl_partials, normalized=True)
CASES: dict[str, tuple[Callable[..., Any], Reference]] = {
    "kl": (lambda p, q: kldiv.kl(p, q), KL),
    "kl_bits": (lambda p, q: kldiv.kl(p, q, base=2), _scaled(KL, 1 / math.log(2))),
    "cross_entropy": (
        lambda p, q: kldiv.cross_entropy(p, q),
        Reference(_cross_entropy, _cross_entropy_partials, normalized=True),
    ),
    "entropy": (lambda p, q: kldiv.entropy(p), Reference(_entropy, _entropy_partials, normalized=True)),
    "js": (lambda p, q: kldiv.js(p, q), _js(0.5)),
    "js_weighted": (lambda p, q: kldiv.js(p, q, weights=(0.2, 0.8)), _js(0.2)),
    "generalized_js": (lambda p, q: kldiv.generalized_js(p, q, beta=0.3), _js(0.3)),
    "generalized_js_normalized": (
        lambda p, q: kldiv.generalized_js(p, q, beta=0.3, normalized=True),
        _scaled(_js(0.3), 1 / (0.3 * 0.7)),
    ),
    "generalized_js_normalized_beta0": (lambda p, q: kldiv.generalized_js(p, q, beta=0.0, normalized=True), KL),
    "renyi_half": (lambda p, q: kldiv.renyi(p, q, 0.5), _renyi(0.5)),
    "renyi_near_one": (lambda p, q: kldiv.renyi(p, q, 1.0 + 1e-3), _renyi(1.0 + 1e-3)),
    "renyi_1": (lambda p, q: kldiv.renyi(p, q, 1.0), KL),
    "renyi_2": (lambda p, q: kldiv.renyi(p, q, 2.0), _renyi(2.0)),
    "renyi_3": (lambda p, q: kldiv.renyi(p, q, 3.0), _renyi(3.0)),
    "renyi_inf": (
        lambda p, q: kldiv.renyi(p, q, math.inf),
        Reference(_renyi_inf_value, _renyi_inf_partials, True, _renyi_inf_unique),
    ),
    "jeffreys": (lambda p, q: kldiv.jeffreys(p, q), Reference(_jeffreys_value, _jeffreys_partials, normalized=True)),
    "tv": (lambda p, q: kldiv.tv(p, q), Reference(_tv_value, _tv_partials, normalized=False)),
    "hellinger": (  # no gradient at P = Q (a cone)
        lambda p, q: kldiv.hellinger(p, q),
        Reference(_hellinger_value, _hellinger_partials, False, lambda p, q: _hellinger_value(p, q) > 0),
    ),
    "chi2_pearson": (lambda p, q: kldiv.chi2(p, q), Reference(_pearson_value, _pearson_partials, False)),
    "chi2_neyman": (lambda p, q: kldiv.chi2(p, q, kind="neyman"), _neyman()),
    "f_div_kl_forward": (
        lambda p, q: kldiv.f_divergence(p, q, generators.kl_forward),
        _f_divergence(lambda t: t * mp.log(t), lambda t: mp.log(t) + 1, lambda t: 1 / t, 0.0, math.inf),
    ),
    "f_div_squared_hellinger": (
        lambda p, q: kldiv.f_divergence(p, q, generators.squared_hellinger),
        _f_divergence(
            lambda t: (mp.sqrt(t) - 1) ** 2 / 2, lambda t: (1 - 1 / mp.sqrt(t)) / 2, lambda t: t**-1.5 / 4, 0.5, 0.5
        ),
    ),
    "f_div_pearson": (
        lambda p, q: kldiv.f_divergence(p, q, generators.pearson),
        _f_divergence(lambda t: (t - 1) ** 2, lambda t: 2 * (t - 1), lambda t: mp.mpf(2), 1.0, math.inf),
    ),
    "f_div_callable": (
        lambda p, q: kldiv.f_divergence(p, q, lambda t: (t - 1) ** 2 / (1 + t)),
        _f_divergence(
            lambda t: (t - 1) ** 2 / (1 + t),
            lambda t: (t - 1) * (t + 3) / (1 + t) ** 2,
            lambda t: 8 / (1 + t) ** 3,
            1.0,
            1.0,
        ),
    ),
}


def reference_value(ref: Reference, p: Vec, q: Vec) -> Mp:
    if not ref.normalized:
        return ref.value(p, q)
    s_p, s_q = mp.fsum(p), mp.fsum(q)
    return ref.value([a / s_p for a in p], [b / s_q for b in q])


def reference_gradient(ref: Reference, p: Vec, q: Vec) -> tuple[list[tuple[Mp, Mp] | None], ...]:
    """Per argument, ``(derivative, magnitude of its terms)`` for each entry (None where none exists)."""
    if not ref.normalized:
        dp, dq = ref.partials(p, q)
        return [_with_magnitude(d) for d in dp], [_with_magnitude(d) for d in dq]
    s_p, s_q = mp.fsum(p), mp.fsum(q)
    ph, qh = [a / s_p for a in p], [b / s_q for b in q]
    dp, dq = ref.partials(ph, qh)
    out = []
    for parts, x, s in ((dp, ph, s_p), (dq, qh, s_q)):
        # d/dx_j f(x / S) = (a_j - c) / S with c = sum_k a_k x_k / S; entries with x_k = 0 do not enter c
        given = [_with_magnitude(a) for a in parts]
        c = mp.fsum(a[0] * xk for a, xk in zip(given, x, strict=True) if xk > 0 and a is not None)
        c_size = mp.fsum(a[1] * xk for a, xk in zip(given, x, strict=True) if xk > 0 and a is not None)
        out.append([None if a is None else ((a[0] - c) / s, (a[1] + c_size + 1) / s) for a in given])
    return out[0], out[1]


# --------------------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------------------
@st.composite
def tiny_pairs(draw: st.DrawFn, dtype: torch.dtype, generic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Probability vectors in ``dtype`` whose entries are normal, tiny, subnormal (down to the smallest) or 0.

    ``generic``: only normal and tiny entries (for the generic f-divergence, whose ratios must stay normal).
    """
    info = torch.finfo(dtype)
    smallest = info.tiny * info.eps  # the smallest subnormal: 1.4e-45 (float32), 4.9e-324 (float64)
    k = draw(st.integers(2, 6))

    def vector() -> torch.Tensor:
        entries = []
        for _ in range(k):
            kind = draw(st.sampled_from(["normal", "tiny"] if generic else ["normal", "tiny", "subnormal", "zero"]))
            if kind == "normal":
                entries.append(draw(st.floats(0.01, 1.0)))
            elif kind == "tiny":  # two decades above the smallest normal: normalized ratios stay normal
                entries.append(10.0 ** draw(st.floats(math.log10(info.tiny) + (2.0 if generic else 0.0), -8.0)))
            elif kind == "subnormal":
                entries.append(draw(st.integers(1, 2**20)) * smallest)
            else:
                entries.append(0.0)
        entries[draw(st.integers(0, k - 1))] = draw(st.floats(0.01, 1.0))  # a normal entry carries the mass
        total = math.fsum(entries)
        return torch.tensor([e / total for e in entries], dtype=dtype)

    return vector(), vector()


def _mp(t: torch.Tensor) -> Vec:
    return [mp.mpf(float(v)) for v in t.tolist()]


def check_gradient_entries(name: str, got: torch.Tensor, expected: list[tuple[Mp, Mp] | None]) -> None:
    info = torch.finfo(got.dtype)
    rtol = RTOL[got.dtype]
    for j, (g, e) in enumerate(zip(got.tolist(), expected, strict=True)):
        assert not math.isnan(g), f"{name}[{j}] is NaN"
        if e is None:
            assert not math.isnan(g)
            continue
        exact, magnitude = e
        if abs(exact) > info.max * (1 + rtol):
            assert g == math.copysign(math.inf, float(exact)), f"{name}[{j}] = {g}, exact {mp.nstr(exact, 8)}"
            continue
        if math.isinf(g):
            assert abs(exact) > info.max * (1 - rtol), f"{name}[{j}] = {g}, exact {mp.nstr(exact, 8)}"
            continue
        tol = rtol * float(magnitude) + info.tiny
        assert abs(g - exact) <= tol, f"{name}[{j}] = {g!r}, exact {mp.nstr(exact, 17)} (tolerance {tol:.3g})"


def _run_case(name: str, dtype: torch.dtype, pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    fn, ref = CASES[name]
    p, q = (t.clone().requires_grad_() for t in pair)
    if name.startswith("f_div"):  # the generic form evaluates f at the rounded ratio p/q: it must be normal
        ratio = pair[0] / pair[1]
        assert bool(((ratio >= torch.finfo(dtype).tiny) & (ratio <= torch.finfo(dtype).max)).all())
    p_mp, q_mp = _mp(p.detach()), _mp(q.detach())
    assume(mp.isfinite(reference_value(ref, p_mp, q_mp)))
    if ref.normalized:
        assume(ref.differentiable([a / mp.fsum(p_mp) for a in p_mp], [b / mp.fsum(q_mp) for b in q_mp]))
    else:
        assume(ref.differentiable(p_mp, q_mp))
    grad_p, grad_q = reference_gradient(ref, p_mp, q_mp)
    out = fn(p, q)
    assume(bool(torch.isfinite(out)))  # e.g. f_divergence of a ratio p/q beyond the dtype's range: see its docs
    out.backward()
    for arg, tensor, expected in (("p", p, grad_p), ("q", q, grad_q)):
        if tensor.grad is None:
            assert all(e is None or e[0] == 0 for e in expected), f"{name}: no gradient w.r.t. {arg}"
            continue
        check_gradient_entries(f"{name} d/d{arg}", tensor.grad, expected)


# --------------------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@SETTINGS
@given(data=st.data())
def test_gradients_exact_at_tiny_probabilities(name: str, dtype: torch.dtype, data: st.DataObject) -> None:
    _run_case(name, dtype, data.draw(tiny_pairs(dtype, generic=name.startswith("f_div"))))


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_partials_agree_with_finite_differences(name: str) -> None:
    # The hand-written reference derivatives against mpmath central differences of the reference values.
    _, ref = CASES[name]
    p = [mp.mpf(v) for v in (0.1, 0.25, 0.4, 0.25)]
    q = [mp.mpf(v) for v in (0.3, 0.2, 0.15, 0.35)]
    grad_p, grad_q = reference_gradient(ref, p, q)
    for which, expected in ((0, grad_p), (1, grad_q)):
        for j, e in enumerate(expected):
            if e is None:
                continue

            def f(x: Mp, j: int = j, which: int = which) -> Mp:
                args = [list(p), list(q)]
                args[which][j] = x
                return reference_value(ref, *args)

            numeric = mp.diff(f, [p, q][which][j])
            assert abs(numeric - e[0]) <= mp.mpf(10) ** -30 * (1 + abs(e[0])), (name, which, j, numeric, e[0])


def test_kl_through_softmax_of_a_far_logit_has_the_gradient_of_kl_from_logits() -> None:
    z = torch.tensor([0.0, 50.0], requires_grad=True)
    value = kldiv.kl(torch.tensor([1.0, 0.0]), torch.softmax(z, -1))
    value.backward()
    assert value.item() == pytest.approx(50.0, rel=1e-6)
    assert z.grad is not None
    torch.testing.assert_close(z.grad, torch.tensor([-1.0, 1.0]))


def test_kl_gradient_at_float32_q_of_1e_minus_20() -> None:
    q = torch.tensor([1e-20, 1.0], requires_grad=True)
    kldiv.kl(torch.tensor([1.0, 0.0]), q).backward()
    assert q.grad is not None
    torch.testing.assert_close(q.grad, torch.tensor([-1e20, 1.0]), rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("alpha", [0.5, 2.0, math.inf])
def test_renyi_gradient_finite_at_float32_q_of_1e_minus_20(alpha: float) -> None:
    p = torch.tensor([0.5, 0.5], requires_grad=True)
    q = torch.tensor([1e-20, 1.0], requires_grad=True)
    kldiv.renyi(p, q, alpha).backward()
    assert p.grad is not None
    assert q.grad is not None
    assert torch.isfinite(p.grad).all()
    assert torch.isfinite(q.grad).all()


def test_gradient_beyond_the_dtype_range_is_minus_inf_not_nan() -> None:
    # docs/discrete.md: d/dq_0 KL = -p_0 / q_0 = -7e44 exceeds float32's range; it is -inf, the rest is exact.
    smallest = torch.finfo(torch.float32).tiny * torch.finfo(torch.float32).eps
    q = torch.tensor([smallest, 1.0], requires_grad=True)
    p = torch.tensor([1.0, 0.0], requires_grad=True)
    value = kldiv.kl(p, q)
    assert value.item() == pytest.approx(-math.log(smallest), rel=1e-6)
    value.backward()
    assert q.grad is not None
    assert p.grad is not None
    assert q.grad[0] == -math.inf
    assert q.grad[1] == 1.0
    assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", sorted(CASES))
def test_second_derivatives_of_the_closed_form_gradients(name: str) -> None:
    # the backward passes are differentiable: gradgradcheck through a softmax (float64)
    fn, _ = CASES[name]
    g = torch.Generator().manual_seed(7)
    theta = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    phi = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = fn(torch.softmax(a, -1), torch.softmax(b, -1))
        return out

    assert torch.autograd.gradgradcheck(f, (theta, phi))
