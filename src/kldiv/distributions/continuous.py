"""Closed-form KL divergences between continuous one-dimensional families, and the Chi distribution.

Every log-density of Gamma, Exponential, Chi2, Weibull, HalfNormal and Chi has the form
``c + (d - 1) log x - (x / a)^r``: the generalized gamma ``GG(a, d, r)`` of Stacy (1962), Ann. Math. Stat.
33:1187. One cancellation-free formula for ``KL(GG || GG)`` (:func:`kl_generalized_gamma`) and two for the
LogNormal crossings therefore cover all 49 ordered pairs among the seven positive families, finite for all
valid parameters. Also here: VonMises, StudentT against Normal (closed form) and Normal against StudentT
(quadrature), and Beta/Dirichlet, whose torch formulas lose digits for large, nearly equal concentrations.

Numerics: Gamma-function ratios are evaluated as ``exp(lgamma - lgamma + m log)``; the Bregman divergence of
``lgamma``, ``lnG(x + h) - lnG(x) - h psi(x)``, which every same-family KL contains, uses its Taylor series in
``h`` when ``|h| < 0.1 x`` (:func:`lgamma_bregman`), so nearly equal distributions keep relative accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.distributions import (
    Beta,
    Cauchy,
    Chi2,
    Dirichlet,
    Distribution,
    Exponential,
    Gamma,
    Gumbel,
    HalfNormal,
    Laplace,
    LogNormal,
    Normal,
    StudentT,
    VonMises,
    Weibull,
    constraints,
)
from torch.distributions.utils import broadcast_all

from kldiv._numerics import expm1_minus_x, log_ratio, refine_rows, x_minus_log1p
from kldiv._validate import is_validation_enabled
from kldiv.distributions.gaussian import kl_normal_from_log_ratio
from kldiv.distributions.registry import register_kl

__all__ = [
    "Chi",
    "kl_beta",
    "kl_dirichlet",
    "kl_gamma",
    "kl_generalized_gamma",
    "kl_lognormal",
    "kl_normal_student_t",
    "kl_student_t_normal",
    "kl_von_mises",
    "kl_weibull",
    "lgamma_bregman",
]

_EULER = 0.57721566490153286061
_LOG_2PI = math.log(2 * math.pi)

# ---------------------------------------------------------------------------------------------------------------
# Scalar kernels
# ---------------------------------------------------------------------------------------------------------------

_BREGMAN_SERIES_BELOW = 0.1  # |h| / x below which the Taylor series may replace the direct lgamma difference
_BREGMAN_DIRECT_LOSS = 1000.0  # the series is used where the direct form would lose more than 3 digits
_BREGMAN_MAX_TERMS = 18  # series terms n = 2..18: truncation < 0.1**17 relative
_BREGMAN_SERIES_MIN_X = 1e-6  # below this polygamma of high order overflows; the direct form is used
_FACTORIALS = tuple(float(math.factorial(n)) for n in range(_BREGMAN_MAX_TERMS + 1))
_BREGMAN_STIRLING_FROM = 1e5  # min(x, x + h) from which the Stirling form is exact to eps (next term ~ x^-4)
# (1 + r) log1p(r) - r = sum_{n>=2} (-1)^n r^n / (n (n - 1)); terms n = 2..18 for |r| < 0.1 (truncation < 1e-17)
_XLOG1P_SERIES = tuple((-1.0) ** n / (n * (n - 1)) for n in range(2, 19))


def _polygamma(n: int, x: Tensor) -> Tensor:
    """``psi^(n)(x)``; for n = 1 as the Hurwitz zeta ``zeta(2, x)``: torch's trigamma is off by up to 5e-10."""
    out: Tensor = torch.special.zeta(2.0, x) if n == 1 else torch.special.polygamma(n, x)
    return out


def _broadcast(*tensors: Tensor) -> tuple[Tensor, ...]:
    return tuple(torch.broadcast_tensors(*tensors))  # type: ignore[no-untyped-call]


def _bregman_series(x_in: Tensor, h_in: Tensor) -> Tensor:
    """``sum_{n=2..N} psi^(n-1)(x) h^n / n!`` for ``|h| < 0.1 x``, N from the largest ``|h|/x`` (at most 18).

    Evaluated in float64 (``psi^(n-1)(x) x^n`` overflows float32 for large x) and returned in the input dtype.
    """
    x, h = x_in.double(), h_in.double()
    r = h / x
    eps = torch.finfo(x_in.dtype).eps
    r_max = float(r.detach().abs().max())
    terms = _BREGMAN_MAX_TERMS if r_max <= 0 else 2 + math.ceil(math.log(eps / 10) / math.log(r_max))
    acc = torch.zeros_like(x)
    for n in range(min(max(terms, 3), _BREGMAN_MAX_TERMS), 1, -1):  # smallest term first
        # psi^(n-1)(x) x^n / n! stays O(1) for small x and O(x) for large x; h^n = (r x)^n.
        acc = acc + _polygamma(n - 1, x) * x.pow(n) / _FACTORIALS[n] * r.pow(n)
    return acc.to(x_in.dtype)


def _one_plus_r_log1p_minus_r(r: Tensor) -> Tensor:
    """``(1 + r) log1p(r) - r`` (>= 0 for r > -1): its series for ``|r| < 0.1``, directly beyond."""
    small = r.abs() < _BREGMAN_SERIES_BELOW
    rs = torch.where(small, r, 0.0)
    rd = torch.where(small, 1.0, r)
    acc = torch.zeros_like(rs)
    for c in reversed(_XLOG1P_SERIES):
        acc = acc * rs + c
    return torch.where(small, acc * rs * rs, (1.0 + rd) * torch.log1p(rd) - rd)


def _bregman_stirling(x: Tensor, h: Tensor) -> Tensor:
    """``lgamma_bregman`` for ``min(x, x + h) >= 1e5`` from Stirling's series ``lnG(x) = (x - 1/2) log x - x +
    log(2 pi)/2 + 1/(12 x) - ...``: with ``r = h / x``, ``x ((1 + r) log1p(r) - r) + (r - log1p(r))/2
    + r^2 / (12 x (1 + r))`` (the next term is ``x^-4`` relative); every term >= 0, no overflow for huge x."""
    r = h / x
    return x * _one_plus_r_log1p_minus_r(r) + 0.5 * x_minus_log1p(r) + r.square() / (12.0 * x * (1.0 + r))


def lgamma_bregman(x: Tensor, h: Tensor, y: Tensor | None = None) -> Tensor:
    """Bregman divergence of ``lgamma``: ``lnG(x + h) - lnG(x) - h psi(x)`` (>= 0), accurate when ``h << x``.

    Direct difference where that is accurate (it loses ``eps (|lnG(x)| + |lnG(x + h)| + |h psi(x)|)`` against a
    value ``~ h^2 psi'(x) / 2``); where it would lose more than 3 digits and ``|h| < 0.1 x``, the Taylor series
    ``sum_{n>=2} psi^(n-1)(x) h^n / n!`` (up to 17 terms, truncation below eps/10), computed only on those
    entries; for ``min(x, x + h) >= 1e5`` Stirling's form (:func:`_bregman_stirling`), which stays finite and
    accurate for concentrations up to the float range (1e20, 1e300). Relative error ~1e-13 in float64. The
    direct form alone loses all digits for ``x = 1e8, h = 1e-6 x`` (torch's Gamma-Gamma KL has this problem).
    Requires ``x > 0`` and ``x + h > 0``; ``y``, when given, is ``x + h`` exactly (``x + h`` rounds, e.g. to 0
    for ``x = 1e20, h = 2 - 1e20``).
    """
    return _lgamma_bregman_and_error(x, h, y)[0]


def _lgamma_bregman_and_error(x: Tensor, h: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`lgamma_bregman` and a bound on its absolute rounding error (``4 eps`` of the terms of the direct
    difference where that is used, ``1e-13`` relative elsewhere)."""
    x, h, y = _broadcast(x, h, x + h if y is None else y)
    large = torch.minimum(x, y) >= _BREGMAN_STIRLING_FROM
    lg_xh, lg_x, psi_x = torch.lgamma(y), torch.lgamma(x), torch.digamma(x)
    direct = lg_xh - lg_x - h * psi_x
    with torch.no_grad():
        magnitude = lg_xh.abs() + lg_x.abs() + (h * psi_x).abs()
        value_bound = h.square() * (1.0 + 0.5 / x) / (2.0 * x)  # <= h^2 psi'(x) / 2 (psi'(x) >= 1/x + 1/(2x^2))
        series = (
            (magnitude > _BREGMAN_DIRECT_LOSS * value_bound)  # direct relative error > 1000 eps
            & (h.abs() < _BREGMAN_SERIES_BELOW * x)
            & (x >= _BREGMAN_SERIES_MIN_X)
            & ~large
        )
        error = torch.where(large | series, 0.0, 4.0 * torch.finfo(x.dtype).eps * magnitude)
    if bool(large.any()):
        xl, hl = torch.where(large, x, _BREGMAN_STIRLING_FROM), torch.where(large, h, 0.0)
        direct = torch.where(large, _bregman_stirling(xl, hl), direct)
    if bool(series.any()):
        direct = direct.masked_scatter(series, _bregman_series(x[series], h[series]))
    return direct, error + 1e-13 * direct.detach().abs()


# delta(z) = lnG(z + 1/2) - lnG(z) - log(z)/2 ~ sum_k A_k z^(1-2k), A_k = (2^(1-2k) - 2) B_2k / (2k (2k-1))
# (Stirling's series with Bernoulli polynomials, DLMF 5.11.8). For z >= 10, 8 terms are exact to 2e-16.
_DELTA_SERIES = (-1 / 8, 1 / 192, -1 / 640, 17 / 14336, -31 / 18432, 691 / 180224, -5461 / 425984, 929569 / 15728640)
_DELTA_SERIES_FROM = 10.0


def _delta_remainder(z: Tensor) -> tuple[Tensor, Tensor]:
    """``(d, d')`` with ``d(z) = lnG(z + 1/2) - lnG(z) - log(z)/2 + 1/(8 z)`` (= O(z^-3)) and its derivative.

    Asymptotic series for ``z >= 10`` (no cancellation); the direct lgamma/digamma differences below.
    """
    large = z >= _DELTA_SERIES_FROM
    zl = torch.where(large, z, _DELTA_SERIES_FROM)
    zs = torch.where(large, 1.0, z)
    inv2 = zl.reciprocal().square()
    value = torch.zeros_like(zl)
    slope = torch.zeros_like(zl)
    for k in range(len(_DELTA_SERIES), 1, -1):
        a = _DELTA_SERIES[k - 1]
        value = value * inv2 + a
        slope = slope * inv2 - (2 * k - 1) * a
    value = value * zl.pow(-3)
    slope = slope * zl.pow(-4)
    direct = torch.lgamma(zs + 0.5) - torch.lgamma(zs) - 0.5 * torch.log(zs) + 0.125 / zs
    direct_slope = torch.digamma(zs + 0.5) - torch.digamma(zs) - 0.5 / zs - 0.125 / zs.square()
    return torch.where(large, value, direct), torch.where(large, slope, direct_slope)


def _log1p_minus_x_plus_half_x2(y: Tensor) -> Tensor:
    """``log1p(y) - y + y^2 / 2`` for ``y >= 0``: the series (terms k = 3..16) below 0.05, direct above."""
    small = y < 0.05
    ys = torch.where(small, y, 0.0)
    yd = torch.where(small, 1.0, y)
    acc = torch.zeros_like(ys)
    for k in range(16, 2, -1):
        acc = acc * ys + (1.0 if k % 2 else -1.0) / k
    return torch.where(small, acc * ys.pow(3), torch.log1p(yd) - yd + 0.5 * yd.square())


def _check_positive(*, allow_zero: bool = False, **named: Tensor | float) -> None:
    """Raise ``ValueError`` naming the first argument with an entry not > 0 (>= 0), when validation is on.

    NaN fails the check too.
    """
    if not is_validation_enabled():
        return
    for name, value in named.items():
        t = torch.as_tensor(value)
        bad = ~(t >= 0) if allow_zero else ~(t > 0)
        if bool(bad.any()):
            expected = ">= 0" if allow_zero else "> 0"
            if t.dim() == 0:
                raise ValueError(f"{name} must be {expected}, got {t.item()!r}")
            idx = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{name} must be {expected}, got {t[idx].item()!r} at index {idx}")


def _recheck(p: Distribution, q: Distribution, named: dict[str, Tensor], *, allow_zero: bool = False) -> None:
    """Check the parameters torch did not (distributions built with ``validate_args=False``)."""
    if not (p._validate_args and q._validate_args):
        _check_positive(allow_zero=allow_zero, **named)


def _tensors(*values: Tensor | float) -> tuple[Tensor, ...]:
    """Tensors of one common floating dtype and device (python floats follow the tensors)."""
    tensors = [v for v in values if isinstance(v, Tensor)]
    dtype = torch.get_default_dtype()
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype) if t.is_floating_point() else dtype
    device = tensors[0].device if tensors else None
    return tuple(torch.as_tensor(v, dtype=dtype, device=device) for v in values)


# ---------------------------------------------------------------------------------------------------------------
# Chi
# ---------------------------------------------------------------------------------------------------------------


_Shape = torch.Size | list[int] | tuple[int, ...]


class Chi(Distribution):
    """Chi distribution: ``X = scale * sqrt(Y)`` with ``Y ~ Chi2(df)`` (torch has none).

    ``log p(x) = (1 - df/2) log 2 - df log(scale) - lnG(df/2) + (df - 1) log x - x^2 / (2 scale^2)`` for x > 0.
    HalfNormal(s) = Chi(1, s), Rayleigh(s) = Chi(2, s), Maxwell(s) = Chi(3, s). Reparameterized sampling goes
    through ``Gamma(df/2, 1)``. Reference: Johnson, Kotz & Balakrishnan, Continuous Univariate Distributions 1
    (2nd ed. 1994), ch. 18.
    """

    arg_constraints = {"df": constraints.positive, "scale": constraints.positive}  # noqa: RUF012
    support = constraints.positive
    has_rsample = True

    def __init__(self, df: Tensor | float, scale: Tensor | float = 1.0, validate_args: bool | None = None) -> None:
        self.df, self.scale = broadcast_all(df, scale)
        super().__init__(self.df.shape, validate_args=validate_args)

    def expand(self, batch_shape: _Shape, _instance: Chi | None = None) -> Chi:
        new: Chi = self._get_checked_instance(Chi, _instance)  # type: ignore[no-untyped-call]
        shape = torch.Size(batch_shape)
        new.df = self.df.expand(shape)
        new.scale = self.scale.expand(shape)
        super(Chi, new).__init__(shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape: _Shape = torch.Size()) -> Tensor:  # noqa: B008
        half_chi2 = Gamma(0.5 * self.df, torch.ones_like(self.df), validate_args=False).rsample(sample_shape)
        return self.scale * torch.sqrt(2.0 * half_chi2)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        half = 0.5 * self.df
        return (
            (1.0 - half) * math.log(2.0)
            - self.df * torch.log(self.scale)
            - torch.lgamma(half)
            + torch.xlogy(self.df - 1.0, value)
            - 0.5 * (value / self.scale).square()
        )

    def entropy(self) -> Tensor:
        """``lnG(df/2) + (df - log 2 - (df - 1) psi(df/2)) / 2 + log(scale)``."""
        half = 0.5 * self.df
        return (
            torch.lgamma(half)
            + 0.5 * (self.df - math.log(2.0) - (self.df - 1.0) * torch.digamma(half))
            + torch.log(self.scale)
        )

    @property
    def mean(self) -> Tensor:
        """``scale sqrt(2) G((df + 1)/2) / G(df/2)``."""
        half = 0.5 * self.df
        return self.scale * math.sqrt(2.0) * torch.exp(torch.lgamma(half + 0.5) - torch.lgamma(half))

    @property
    def mode(self) -> Tensor:
        return self.scale * torch.sqrt(torch.clamp(self.df - 1.0, min=0.0))

    @property
    def variance(self) -> Tensor:
        """``scale^2 (df - mean^2 / scale^2) = -scale^2 df expm1(2 d(df/2))``, ``d = lnG(z+1/2) - lnG(z) - log(z)/2``.

        The second form does not cancel for large ``df`` (the variance tends to ``scale^2 / 2``).
        """
        half = 0.5 * self.df
        remainder, _ = _delta_remainder(half)
        delta = remainder - 0.125 / half
        return -self.scale.square() * self.df * torch.expm1(2.0 * delta)


# ---------------------------------------------------------------------------------------------------------------
# Generalized gamma and LogNormal: all 49 ordered pairs among the positive families
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GenGamma:
    """``GG(a, d, r)`` with ``a = const * base^sign``, ``alpha = d / r`` and power ``r``.

    Keeping the scale as (python constant, tensor, sign) makes ``log(a1 / a2)`` exact for equal constants, e.g.
    for two Gammas given by their rates or two Chis with the common factor sqrt(2).
    """

    const: float
    base: Tensor
    sign: int
    alpha: Tensor
    power: Tensor | float

    def log_scale(self) -> Tensor:
        return math.log(self.const) + self.sign * torch.log(self.base)


@dataclass(frozen=True)
class _LogNormalLaw:
    loc: Tensor
    scale: Tensor


def _log_scale_ratio(p: _GenGamma, q: _GenGamma) -> Tensor:
    """``log(a_p / a_q)``, via ``log1p`` of the relative difference when the bases are nearly equal."""
    const = 0.0 if p.const == q.const else math.log(p.const / q.const)
    if p.sign == q.sign:
        ratio = log_ratio(*_broadcast(p.base, q.base))
        return const + (ratio if p.sign == 1 else -ratio)
    return const + p.sign * (torch.log(p.base) + torch.log(q.base))


def _gengamma_core(
    rho: Tensor, alpha1: Tensor, power1: Tensor | float, alpha2: Tensor, power2: Tensor | float
) -> Tensor:
    """KL(GG || GG) from ``rho = log(a1/a2)``, ``alpha_i = d_i / r_i`` and the powers (see kl_generalized_gamma)."""
    t_minus_1 = torch.as_tensor((power2 - power1) / power1, dtype=rho.dtype, device=rho.device)
    psi1 = torch.digamma(alpha1)
    inner = lgamma_bregman(alpha1 + 1.0, t_minus_1)
    exponent = power2 * rho + t_minus_1 * (psi1 + 1.0 / alpha1) + inner
    return (
        lgamma_bregman(alpha1, alpha2 - alpha1, alpha2)
        + alpha1 * (expm1_minus_x(exponent) + inner)
        + x_minus_log1p(t_minus_1)
        + (alpha1 - alpha2) * (power2 * rho + t_minus_1 * psi1)
    )


def kl_generalized_gamma(
    scale_p: Tensor, shape_p: Tensor, power_p: Tensor, scale_q: Tensor, shape_q: Tensor, power_q: Tensor
) -> Tensor:
    """KL(GG(a1, d1, r1) || GG(a2, d2, r2)) for Stacy's generalized gamma ``r x^(d-1) exp(-(x/a)^r) / (a^d G(d/r))``.

    ``KL = log(r1/r2) + d2 log a2 - d1 log a1 + lnG(d2/r2) - lnG(d1/r1) + (psi(d1/r1)/r1 + log a1)(d1 - d2)
    + (a1/a2)^r2 G((d1 + r2)/r1) / G(d1/r1) - d1/r1`` (Bauckhage 2014, arXiv:1401.6853). Evaluated without
    cancellation as, with ``alpha = d/r``, ``t = r2/r1``, ``rho = log(a1/a2)``, ``B`` = :func:`lgamma_bregman`,
    ``phi(y) = e^y - 1 - y`` and ``E = r2 rho + (t - 1) psi(alpha1 + 1) + B(alpha1 + 1, t - 1)``:
    ``B(alpha1, alpha2 - alpha1) + alpha1 (phi(E) + B(alpha1 + 1, t - 1)) + (t - 1 - log t)
    + (alpha1 - alpha2)(r2 rho + (t - 1) psi(alpha1))``, a sum of terms that each vanish at p = q.
    All parameters must be > 0; the result is finite.
    """
    _check_positive(
        scale_p=scale_p, shape_p=shape_p, power_p=power_p, scale_q=scale_q, shape_q=shape_q, power_q=power_q
    )
    a1, d1, r1, a2, d2, r2 = _tensors(scale_p, shape_p, power_p, scale_q, shape_q, power_q)
    p = _GenGamma(1.0, a1, 1, d1 / r1, r1)
    q = _GenGamma(1.0, a2, 1, d2 / r2, r2)
    return _gengamma_core(_log_scale_ratio(p, q), p.alpha, p.power, q.alpha, q.power)


def kl_gamma(concentration_p: Tensor, rate_p: Tensor, concentration_q: Tensor, rate_q: Tensor) -> Tensor:
    """KL(Gamma(a1, b1) || Gamma(a2, b2)), shape ``a`` and rate ``b``.

    ``KL = (a1 - a2) psi(a1) - lnG(a1) + lnG(a2) + a2 log(b1/b2) + a1 (b2 - b1)/b1`` (Penny 2001, "KL-divergences
    of Normal, Gamma, Dirichlet and Wishart densities"), evaluated as ``B(a1, a2 - a1) + a1 phi(rho)
    + (a1 - a2) rho`` with ``rho = log(b2/b1)``, ``phi(y) = e^y - 1 - y`` and ``B`` = :func:`lgamma_bregman`:
    relative accuracy ~1e-15 also for ``a = 1e8, a2/a1 - 1 = 1e-6`` (torch's form: 4e-3).
    """
    _check_positive(concentration_p=concentration_p, rate_p=rate_p, concentration_q=concentration_q, rate_q=rate_q)
    a1, b1, a2, b2 = _tensors(concentration_p, rate_p, concentration_q, rate_q)
    p = _GenGamma(1.0, b1, -1, a1, 1.0)
    q = _GenGamma(1.0, b2, -1, a2, 1.0)
    return _gengamma_core(_log_scale_ratio(p, q), a1, 1.0, a2, 1.0)


def kl_weibull(scale_p: Tensor, concentration_p: Tensor, scale_q: Tensor, concentration_q: Tensor) -> Tensor:
    """KL(Weibull(l1, k1) || Weibull(l2, k2)), scale ``l`` and shape ``k`` (torch's parameterization).

    ``KL = log(k1/k2) + k2 log l2 - k1 log l1 + (k1 - k2)(log l1 - gamma/k1) + (l1/l2)^k2 G(1 + k2/k1) - 1``
    (Bauckhage 2013, arXiv:1310.3713); Weibull(l, k) = GG(l, k, k), evaluated by :func:`kl_generalized_gamma`.
    """
    _check_positive(scale_p=scale_p, concentration_p=concentration_p, scale_q=scale_q, concentration_q=concentration_q)
    l1, k1, l2, k2 = _tensors(scale_p, concentration_p, scale_q, concentration_q)
    one = torch.ones_like(l1)
    p = _GenGamma(1.0, l1, 1, one, k1)
    q = _GenGamma(1.0, l2, 1, one, k2)
    return _gengamma_core(_log_scale_ratio(p, q), p.alpha, k1, q.alpha, k2)


def kl_lognormal(loc_p: Tensor, scale_p: Tensor, loc_q: Tensor, scale_q: Tensor) -> Tensor:
    """KL(LogNormal(m1, s1) || LogNormal(m2, s2)) = KL(N(m1, s1) || N(m2, s2)) (invariance under exp).

    ``KL = log(s2/s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2``, evaluated as
    ``(expm1(2l) - 2l)/2 + ((m1 - m2)/s2)^2/2`` with ``l = log(s1/s2)``, accurate for nearly equal scales.
    """
    _check_positive(scale_p=scale_p, scale_q=scale_q)
    m1, s1, m2, s2 = _tensors(loc_p, scale_p, loc_q, scale_q)
    return kl_normal_from_log_ratio(log_ratio(*_broadcast(s1, s2)), ((m1 - m2) / s2).square())


def _kl_gengamma_lognormal(p: _GenGamma, q: _LogNormalLaw) -> Tensor:
    """KL(GG || LN(m, s)) = -H(p) + log(s sqrt(2 pi)) + E log x + (Var log x + (E log x - m)^2) / (2 s^2).

    With ``E log x = log a + psi(alpha)/r``, ``Var log x = psi'(alpha)/r^2`` and ``H = log a + lnG(alpha)
    - log r + alpha + (1/r - alpha) psi(alpha)`` (Stacy 1962), ``log a`` cancels from ``E log x - H``.
    """
    alpha, r = p.alpha, p.power
    psi = torch.digamma(alpha)
    mean_log = p.log_scale() + psi / r
    var_log = _polygamma(1, alpha) / (r * r)
    log_r = torch.log(torch.as_tensor(r, dtype=alpha.dtype, device=alpha.device))
    return (
        log_r
        + alpha * psi
        - alpha
        - torch.lgamma(alpha)
        + torch.log(q.scale)
        + 0.5 * _LOG_2PI
        + (var_log + (mean_log - q.loc).square()) / (2.0 * q.scale.square())
    )


def _kl_lognormal_gengamma(p: _LogNormalLaw, q: _GenGamma) -> Tensor:
    """KL(LN(m, s) || GG(a, d, r)) = -H(p) - log r + d log a + lnG(d/r) - (d - 1) E log x + a^-r E[x^r].

    With ``H = m + log(2 pi e s^2)/2``, ``E log x = m`` and ``E[x^r] = exp(r m + r^2 s^2 / 2)``:
    ``-log(2 pi e s^2)/2 - log r + lnG(alpha) - alpha w + exp(w + r^2 s^2 / 2)``, ``w = r (m - log a)``.
    """
    alpha, r = q.alpha, q.power
    w = r * (p.loc - q.log_scale())
    log_r = torch.log(torch.as_tensor(r, dtype=alpha.dtype, device=alpha.device))
    return (
        -0.5 * (_LOG_2PI + 1.0)
        - torch.log(p.scale)
        - log_r
        + torch.lgamma(alpha)
        - alpha * w
        + torch.exp(w + 0.5 * (r * p.scale).square())
    )


_SQRT2 = math.sqrt(2.0)


def _positive_parameters(prefix: str, d: Distribution) -> dict[str, Tensor]:
    """The parameters of ``d`` that must be > 0 (all but LogNormal's loc), named ``p_rate`` etc."""
    return {f"{prefix}_{k}": getattr(d, k) for k in d.arg_constraints if k != "loc"}


def _positive_law(d: Distribution) -> _GenGamma | _LogNormalLaw:
    """The family of ``d`` as a generalized gamma (moment table of JKB 1994) or a LogNormal."""
    if isinstance(d, Gamma):  # also Chi2 = Gamma(df/2, 1/2)
        return _GenGamma(1.0, d.rate, -1, d.concentration, 1.0)
    if isinstance(d, Exponential):
        return _GenGamma(1.0, d.rate, -1, torch.ones_like(d.rate), 1.0)
    if isinstance(d, Weibull):
        return _GenGamma(1.0, d.scale, 1, torch.ones_like(d.scale), d.concentration)
    if isinstance(d, HalfNormal):
        return _GenGamma(_SQRT2, d.scale, 1, torch.full_like(d.scale, 0.5), 2.0)
    if isinstance(d, Chi):
        return _GenGamma(_SQRT2, d.scale, 1, 0.5 * d.df, 2.0)
    if isinstance(d, LogNormal):
        return _LogNormalLaw(d.loc, d.scale)
    raise TypeError(f"{type(d).__name__} is not one of the positive families {_POSITIVE_NAMES}")


def _kl_positive(p: Distribution, q: Distribution) -> Tensor:
    """KL between two of Gamma, Exponential, Chi2, Weibull, HalfNormal, Chi, LogNormal (any order)."""
    _recheck(p, q, {**_positive_parameters("p", p), **_positive_parameters("q", q)})
    lp, lq = _positive_law(p), _positive_law(q)
    if isinstance(lp, _LogNormalLaw) and isinstance(lq, _LogNormalLaw):
        return kl_lognormal(lp.loc, lp.scale, lq.loc, lq.scale)
    if isinstance(lp, _LogNormalLaw):
        assert isinstance(lq, _GenGamma)
        return _kl_lognormal_gengamma(lp, lq)
    if isinstance(lq, _LogNormalLaw):
        return _kl_gengamma_lognormal(lp, lq)
    return _gengamma_core(_log_scale_ratio(lp, lq), lp.alpha, lp.power, lq.alpha, lq.power)


_POSITIVE = (Gamma, Exponential, Chi2, Weibull, HalfNormal, Chi, LogNormal)
_POSITIVE_NAMES = ", ".join(t.__name__ for t in _POSITIVE)

for _p in _POSITIVE:
    for _q in _POSITIVE:
        register_kl(_p, _q)(_kl_positive)


# ---------------------------------------------------------------------------------------------------------------
# VonMises
# ---------------------------------------------------------------------------------------------------------------


def kl_von_mises(loc_p: Tensor, concentration_p: Tensor, loc_q: Tensor, concentration_q: Tensor) -> Tensor:
    """KL(VonMises(m1, k1) || VonMises(m2, k2)) = log(I0(k2)/I0(k1)) + A(k1) (k1 - k2 cos(m1 - m2)).

    ``A = I1/I0 = E[cos(x - m1)]`` (Mardia & Jupp 2000, Directional Statistics, section 3.5; TFP uses the same).
    Evaluated with the scaled Bessel functions ``i0e, i1e`` (accurate to 1e-15; torch's VonMises normalizer is
    not): ``(k2 - k1) + log(i0e(k2)/i0e(k1)) + A (k1 - k2) + 2 A k2 sin^2((m1 - m2)/2)``. Concentrations >= 0;
    for large, nearly equal concentrations the absolute error is ~ eps k.
    """
    _check_positive(allow_zero=True, concentration_p=concentration_p, concentration_q=concentration_q)
    return _von_mises(*_tensors(loc_p, concentration_p, loc_q, concentration_q))


def _von_mises(m1: Tensor, k1: Tensor, m2: Tensor, k2: Tensor) -> Tensor:
    i0_1: Tensor = torch.special.i0e(k1)
    i0_2: Tensor = torch.special.i0e(k2)
    a: Tensor = torch.special.i1e(k1) / i0_1
    half_gap = torch.sin(0.5 * (m1 - m2))
    return (k2 - k1) + log_ratio(*_broadcast(i0_2, i0_1)) + a * (k1 - k2) + 2.0 * a * k2 * half_gap.square()


@register_kl(VonMises, VonMises)
def _kl_von_mises_von_mises(p: VonMises, q: VonMises) -> Tensor:
    _recheck(p, q, {"p_concentration": p.concentration, "q_concentration": q.concentration}, allow_zero=True)
    return _von_mises(*_tensors(p.loc, p.concentration, q.loc, q.concentration))


# ---------------------------------------------------------------------------------------------------------------
# StudentT and Normal
# ---------------------------------------------------------------------------------------------------------------


def kl_student_t_normal(df: Tensor, loc_p: Tensor, scale_p: Tensor, loc_q: Tensor, scale_q: Tensor) -> Tensor:
    """KL(StudentT(nu, m1, s1) || Normal(m2, s2)): closed form for ``nu > 2``, +inf for ``nu <= 2``.

    ``KL = -H_T + log(2 pi s2^2)/2 + (s1^2 nu/(nu - 2) + (m1 - m2)^2) / (2 s2^2)`` with the StudentT entropy
    ``H_T = log s1 + (nu+1)/2 [psi((nu+1)/2) - psi(nu/2)] + log(nu)/2 + lnB(nu/2, 1/2)``
    (Lazo & Rathie 1978, IEEE Trans. IT 24:120). E_T[x^2] is infinite for ``nu <= 2``. Evaluated without the
    O(1/nu) cancellation of large ``nu``, with ``rho = s1/s2``, ``z = nu/2`` and
    ``d(z) = lnG(z + 1/2) - lnG(z) - log(z)/2 + 1/(8z)`` (asymptotic series for z >= 10):
    ``(rho^2 - 1 - log rho^2)/2 + (m1 - m2)^2/(2 s2^2) + (rho^2 - 1)/(nu - 2) + 2/(nu (nu - 2)) - 1/(4 nu^2)
    + d(z) - (nu + 1)/2 d'(z)``.
    """
    _check_positive(df=df, scale_p=scale_p, scale_q=scale_q)
    return _student_t_normal(*_tensors(df, loc_p, scale_p, loc_q, scale_q))


def _student_t_normal(nu: Tensor, m1: Tensor, s1: Tensor, m2: Tensor, s2: Tensor) -> Tensor:
    finite = nu > 2.0
    nus = torch.where(finite, nu, 4.0)
    remainder, slope = _delta_remainder(0.5 * nus)
    log_rho = log_ratio(*_broadcast(s1, s2))
    rho2_minus_1 = torch.expm1(2.0 * log_rho)
    value = (
        kl_normal_from_log_ratio(log_rho, ((m1 - m2) / s2).square())
        + rho2_minus_1 / (nus - 2.0)
        + 2.0 / (nus * (nus - 2.0))
        - 0.25 / nus.square()
        + remainder
        - 0.5 * (nus + 1.0) * slope
    )
    return torch.where(finite, value, math.inf)


# Gauss-Legendre rule per panel, and the panel breakpoints of the Normal-StudentT quadrature (in z ~ N(0, 1)).
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(20)
_Z_LIMIT = 12.0  # P(|z| > 12) = 3.6e-33; the integrands grow at most like z^4 there
_UNIFORM_BREAKS = tuple(float(v) for v in np.arange(-_Z_LIMIT, _Z_LIMIT + 1.0, 2.0))
_GEOMETRIC_BREAKS = 20  # offsets 12 * 4^-k, k = 0..19, around the complex branch points' real part


def _normal_expectation(fns: tuple[_Integrand, ...], center: Tensor, width: Tensor) -> tuple[Tensor, ...]:
    """``E_{z ~ N(0,1)}[f(z)]`` for each ``f``, by composite 20-point Gauss-Legendre on ``[-12, 12]``.

    Panels: uniform breakpoints every 2, plus ``center +- max(width, 12 * 4^-k)``, k = 0..19, graded toward
    ``center``, the real part of the integrands' branch points ``center +- i width`` (a singularity at relative
    distance >= 1 from every panel: geometric convergence, ~1e-16 per panel with 20 nodes). Breakpoints are
    detached; the value and its gradient are both quadratures of the exact integrals.
    """
    dtype, device = center.dtype, center.device
    c = center.detach().unsqueeze(-1)
    w = width.detach().unsqueeze(-1)
    k = torch.arange(_GEOMETRIC_BREAKS, dtype=dtype, device=device)
    offsets = torch.maximum(w, _Z_LIMIT * torch.pow(4.0, -k))
    uniform = torch.tensor(_UNIFORM_BREAKS, dtype=dtype, device=device).expand(*c.shape[:-1], -1)
    breaks = torch.cat([uniform, c - offsets, c + offsets], dim=-1).clamp(-_Z_LIMIT, _Z_LIMIT)
    breaks, _ = torch.sort(breaks, dim=-1)
    lo, hi = breaks[..., :-1, None], breaks[..., 1:, None]
    nodes = torch.as_tensor(_GL_NODES, dtype=dtype, device=device)
    weights = torch.as_tensor(_GL_WEIGHTS, dtype=dtype, device=device)
    half = 0.5 * (hi - lo)
    z = (0.5 * (hi + lo) + half * nodes).flatten(-2)
    wz = (half * weights * torch.exp(-0.5 * (0.5 * (hi + lo) + half * nodes).square())).flatten(-2)
    wz = wz / math.sqrt(2 * math.pi)
    return tuple((wz * f(z)).sum(-1) for f in fns)


class _Integrand:
    """``z -> f(u(z) / nu)`` with ``u = (c + tau z)^2``; parameters carry a trailing axis for the nodes."""

    def __init__(self, fn_name: str, c: Tensor, tau: Tensor, nu: Tensor) -> None:
        self.fn_name, self.c, self.tau, self.nu = fn_name, c[..., None], tau[..., None], nu[..., None]

    def __call__(self, z: Tensor) -> Tensor:
        y = (self.c + self.tau * z).square() / self.nu
        return torch.log1p(y) if self.fn_name == "log1p" else _log1p_minus_x_plus_half_x2(y)


def kl_normal_student_t(loc_p: Tensor, scale_p: Tensor, df: Tensor, loc_q: Tensor, scale_q: Tensor) -> Tensor:
    """KL(Normal(m1, s1) || StudentT(nu, m2, s2)) by one-dimensional quadrature (no closed form exists).

    With ``c = (m1 - m2)/s2``, ``tau = s1/s2``, ``u = (c + tau z)^2``, z ~ N(0, 1) and
    ``d(z) = lnG(z + 1/2) - lnG(z) - log(z)/2``: ``KL = -log tau - 1/2 - d(nu/2) + (nu+1)/2 E[log1p(u/nu)]``.
    For ``nu >= 50`` and ``c^2 + tau^2 <= nu/10`` the O(1/nu) terms are summed exactly instead:
    ``KL = KL(N(c, tau) || N(0, 1)) + b/(4 nu) - E[u^2]/(4 nu^2) - d_r + (nu+1)/2 E[l(u/nu)]``, with
    ``b = (1 - tau^2)(1 + 3 tau^2) + c^2 (2 - c^2 - 6 tau^2)``, ``E[u^2] = c^4 + 6 c^2 tau^2 + 3 tau^4``,
    ``d_r = d(nu/2) + 1/(4 nu)`` and ``l(y) = log1p(y) - y + y^2/2``. The expectation uses composite
    Gauss-Legendre panels graded toward the integrand's branch points ``z = (-c +- i sqrt(nu))/tau``.
    Accuracy (tests, vs mpmath): relative error <= 1e-12 over nu in [0.1, 1e8], tau in [1e-3, 1e3].
    """
    _check_positive(scale_p=scale_p, df=df, scale_q=scale_q)
    return _normal_student_t(*_tensors(loc_p, scale_p, df, loc_q, scale_q))


def _normal_student_t(m1: Tensor, s1: Tensor, nu: Tensor, m2: Tensor, s2: Tensor) -> Tensor:
    m1, s1, nu, m2, s2 = _broadcast(m1, s1, nu, m2, s2)
    c = (m1 - m2) / s2
    log_tau = log_ratio(s1, s2)
    tau = torch.exp(log_tau)
    second = c.square() + tau.square()
    stable = (nu >= 50.0) & (second <= 0.1 * nu)
    e_log1p, e_rest = _normal_expectation(
        (_Integrand("log1p", c, tau, nu), _Integrand("rest", c, tau, nu)), -c / tau, torch.sqrt(nu) / tau
    )
    remainder, _ = _delta_remainder(0.5 * nu)
    direct = -log_tau - 0.5 - (remainder - 0.25 / nu) + 0.5 * (nu + 1.0) * e_log1p
    c2, t2 = c.square(), tau.square()
    b = (-torch.expm1(2.0 * log_tau)) * (1.0 + 3.0 * t2) + c2 * (2.0 - c2 - 6.0 * t2)
    fourth = c2.square() + 6.0 * c2 * t2 + 3.0 * t2.square()
    expanded = (
        kl_normal_from_log_ratio(log_tau, c2)
        + b / (4.0 * nu)
        - fourth / (4.0 * nu.square())
        - remainder
        + 0.5 * (nu + 1.0) * e_rest
    )
    return torch.where(stable, expanded, direct)


@register_kl(StudentT, Normal)
def _kl_student_t_normal(p: StudentT, q: Normal) -> Tensor:
    _recheck(p, q, {"p_df": p.df, "p_scale": p.scale, "q_scale": q.scale})
    return _student_t_normal(*_tensors(p.df, p.loc, p.scale, q.loc, q.scale))


@register_kl(Normal, StudentT, method="quadrature")
def _kl_normal_student_t(p: Normal, q: StudentT) -> Tensor:
    _recheck(p, q, {"p_scale": p.scale, "q_df": q.df, "q_scale": q.scale})
    return _normal_student_t(*_tensors(p.loc, p.scale, q.df, q.loc, q.scale))


# ---------------------------------------------------------------------------------------------------------------
# Beta and Dirichlet (torch's formulas, without the lgamma cancellation)
# ---------------------------------------------------------------------------------------------------------------
# Dirichlet || Dirichlet is not registered: at K = 100, batch 1e5 the Bregman form costs 2-4x torch's (the mask
# and the series on the ~1% of nearly equal entries), and torch's form is accurate to ~1e-9 up to concentrations
# of 1e6. kl_dirichlet is there for nearly equal, large concentrations.


def kl_dirichlet(concentration_p: Tensor, concentration_q: Tensor) -> Tensor:
    """KL(Dirichlet(a) || Dirichlet(b)) along the last dimension.

    ``KL = lnG(a0) - lnG(b0) - sum_i [lnG(a_i) - lnG(b_i)] + sum_i (a_i - b_i)(psi(a_i) - psi(a0))``, ``a0 = sum a``
    (Penny 2001), evaluated as ``sum_i B(a_i, b_i - a_i) - B(a0, sum_i (b_i - a_i))`` with ``B`` =
    :func:`lgamma_bregman`: for large, nearly equal concentrations this keeps ~``eps a0 / K`` relative accuracy
    where the direct form loses ``eps a0 log(a0) / KL``.
    """
    _check_positive(concentration_p=concentration_p, concentration_q=concentration_q)
    return _dirichlet(*_tensors(concentration_p, concentration_q))


def _check_cancellation(value: Tensor, error: Tensor, pair: str, named: dict[str, Tensor]) -> None:
    """``ValueError`` where the rounding error bound exceeds 1e-6 of the value (widely different huge
    concentrations, whose lgamma terms cancel), naming the parameters there."""
    bad = error > 1e-6 * value.abs()
    if not (is_validation_enabled() and bool(bad.any())):
        return
    idx = tuple(int(i) for i in bad.nonzero()[0]) if bad.dim() else ()
    given = ", ".join(
        f"{k} = {float(t.expand(torch.Size([*bad.shape, *t.shape[bad.dim() :]]))[idx].reshape(-1).abs().max()):g}"
        for k, t in named.items()
    )
    where = f" at batch index {idx}" if idx else ""
    raise ValueError(
        f"{pair} cannot be evaluated{where} for {given}: huge concentrations far from the others cancel in the "
        f"log-gamma terms (error bound {float(error[idx]):.2g} against a value of {float(value[idx]):.3g}); "
        "bring the concentrations closer or use kldiv.kl_mc(p, q, n)"
    )


def _dirichlet(a: Tensor, b: Tensor) -> Tensor:
    a, b = _broadcast(a, b)
    h = b - a
    parts, parts_error = _lgamma_bregman_and_error(a, h, b)
    total, total_error = _lgamma_bregman_and_error(a.sum(-1), h.sum(-1), b.sum(-1))
    value = parts.sum(-1) - total
    _check_cancellation(
        value,
        parts_error.sum(-1) + total_error,
        "KL(Dirichlet || Dirichlet)",
        {"p.concentration": a, "q.concentration": b},
    )
    return value


def kl_beta(
    concentration1_p: Tensor, concentration0_p: Tensor, concentration1_q: Tensor, concentration0_q: Tensor
) -> Tensor:
    """KL(Beta(a1, b1) || Beta(a2, b2)) = Dirichlet((a1, b1)) || Dirichlet((a2, b2)).

    ``KL = lnB(a2, b2) - lnB(a1, b1) + (a1 - a2) psi(a1) + (b1 - b2) psi(b1) + (a2 - a1 + b2 - b1) psi(a1 + b1)``,
    evaluated as ``B(a1, a2 - a1) + B(b1, b2 - b1) - B(a1 + b1, a2 - a1 + b2 - b1)`` (see :func:`kl_dirichlet`).
    """
    _check_positive(
        concentration1_p=concentration1_p,
        concentration0_p=concentration0_p,
        concentration1_q=concentration1_q,
        concentration0_q=concentration0_q,
    )
    return _beta(*_tensors(concentration1_p, concentration0_p, concentration1_q, concentration0_q))


def _beta(a1: Tensor, b1: Tensor, a2: Tensor, b2: Tensor) -> Tensor:
    a1, b1, a2, b2 = _broadcast(a1, b1, a2, b2)
    ha, hb = a2 - a1, b2 - b1
    (va, ea), (vb, eb), (vt, et) = (
        _lgamma_bregman_and_error(a1, ha, a2),
        _lgamma_bregman_and_error(b1, hb, b2),
        _lgamma_bregman_and_error(a1 + b1, ha + hb, a2 + b2),
    )
    value = va + vb - vt
    named = {"p.concentration1": a1, "p.concentration0": b1, "q.concentration1": a2, "q.concentration0": b2}
    _check_cancellation(value, ea + eb + et, "KL(Beta || Beta)", named)
    return value


@register_kl(Beta, Beta)
def _kl_beta_beta(p: Beta, q: Beta) -> Tensor:
    names = ("concentration1", "concentration0")
    _recheck(p, q, {f"{s}_{n}": getattr(d, n) for s, d in (("p", p), ("q", q)) for n in names})
    return _beta(*_tensors(p.concentration1, p.concentration0, q.concentration1, q.concentration0))


# ----------------------------------------------------------------------------------------------------------
# Supports that do not nest: a density on the whole real line against one on (0, inf) puts mass where q = 0.
# ----------------------------------------------------------------------------------------------------------


def _infinite(p: Distribution, q: Distribution) -> Tensor:
    """+inf with the broadcast batch shape, in the parameters' dtype and device."""
    params = [v for d in (p, q) for k in d.arg_constraints if isinstance(v := d.__dict__.get(k), Tensor)]
    like = params[0] if params else torch.zeros(())
    shape = torch.Size(np.broadcast_shapes(tuple(p.batch_shape), tuple(q.batch_shape)))
    return torch.full(shape, math.inf, dtype=like.dtype, device=like.device)


for _real in (Normal, Laplace, Gumbel, Cauchy, StudentT):
    for _positive in (Weibull, LogNormal, HalfNormal, Chi):
        register_kl(_real, _positive, method="infinite")(_infinite)


_DIRICHLET_REFINE_BELOW = 1e-3


def _dirichlet_fast(a: Tensor, b: Tensor) -> Tensor:
    """The direct form of :func:`kl_dirichlet` (Penny 2001) with three transcendental passes and in-place
    updates; accurate to ``eps (|lnG| terms) / KL``, so :func:`_kl_dirichlet_dirichlet` recomputes small values."""
    a, b = _broadcast(a, b)
    a0, b0 = a.sum(-1), b.sum(-1)
    total = torch.lgamma(b)
    buf = torch.lgamma(a)
    total.sub_(buf)
    torch.digamma(a, out=buf)
    buf.sub_(torch.digamma(a0).unsqueeze(-1)).mul_(a - b)
    total.add_(buf)
    return torch.lgamma(a0) - torch.lgamma(b0) + total.sum(-1)


@register_kl(Dirichlet, Dirichlet)
def _kl_dirichlet_dirichlet(p: Dirichlet, q: Dirichlet) -> Tensor:
    """Fast pass (in place, no autograd) and, for values below 1e-3 or below 1e8 eps times the lgamma terms
    (huge concentrations), the cancellation-free :func:`kl_dirichlet` on those rows only; with gradients,
    :func:`kl_dirichlet` everywhere."""
    a, b = p.concentration, q.concentration
    _recheck(p, q, {"p.concentration": a, "q.concentration": b})
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return _dirichlet(a, b)
    a, b = _broadcast(a, b)
    value = _dirichlet_fast(a, b)
    # the fast form errs by a few eps times its lgamma terms, about a0 log a0 + b0 log b0 for large concentrations
    a0, b0 = a.sum(-1), b.sum(-1)
    size = a0 * torch.log(a0 + 2.0) + b0 * torch.log(b0 + 2.0)
    need = ~(value >= torch.clamp(1e8 * torch.finfo(a.dtype).eps * size, min=_DIRICHLET_REFINE_BELOW))
    return refine_rows(value, need, a.dim() - 1, _dirichlet, a, b)
