"""Gaussian closed forms: Normal, multivariate Normal in every parameterization, Bernoulli, the VAE KL, the
2-Wasserstein distance, the Renyi divergence, and bounds for Gaussian mixtures.

The pure batched tensor functions come first; the thin functions registered with :func:`register_kl` for
pairs of ``torch.distributions`` objects follow at the end and only unpack parameters.

Conventions: batch dimensions broadcast; a multivariate Gaussian is ``mu`` of shape ``(..., d)`` with one of
``cov`` / ``scale_tril`` / ``precision`` of shape ``(..., d, d)``. No inverse or determinant is ever formed:
every matrix enters through its Cholesky factor and triangular solves. Value checks (sigma > 0, positive
definiteness, probabilities in [0, 1]) follow :func:`kldiv.set_validation`; shape checks always run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Distribution,
    Independent,
    LowRankMultivariateNormal,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from kldiv._array import Inputs, NumpyResult, as_inputs
from kldiv._numerics import INF, expm1_minus_x, kl_terms_from_log_ratio, log_ratio, with_gradient
from kldiv._validate import _first, _fmt, check_scalar, is_validation_enabled
from kldiv.discrete import kl_log
from kldiv.distributions.mc import Estimate, kl_mc
from kldiv.distributions.registry import register_kl

_LOG_2PI = math.log(2 * math.pi)

__all__ = [
    "MixtureKL",
    "kl_bernoulli",
    "kl_bernoulli_from_logits",
    "kl_diag_gaussian_std_normal",
    "kl_gaussian_mixture_bounds",
    "kl_mvn",
    "kl_normal",
    "renyi_gaussian",
    "wasserstein2_gaussian",
]


# ----------------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------------


def _require(name: str, x: Tensor, ok: Tensor, what: str) -> None:
    """Raise ``ValueError`` naming ``name``, the first value where ``ok`` fails and its index (validation on)."""
    bad = ~ok
    if bool(bad.any()):
        idx = _first(bad)
        where = f" at index {_fmt(idx)}" if idx else ""
        raise ValueError(f"{name} must be {what}, got {x[idx].item()!r}{where}")


def _check_positive(name: str, x: Tensor) -> None:
    """``x > 0`` and finite everywhere (only when validation is enabled)."""
    if is_validation_enabled() and x.numel():
        _require(name, x, (x > 0) & (x < INF), "positive and finite")


def _check_finite(name: str, x: Tensor) -> None:
    if is_validation_enabled() and x.numel():
        _require(name, x, torch.isfinite(x), "finite")


def _check_unit_interval(name: str, x: Tensor) -> None:
    if is_validation_enabled() and x.numel():
        _require(name, x, (x >= 0) & (x <= 1), "a probability in [0, 1]")


def _check_matrix(name: str, m: Tensor, d: int, mu_name: str) -> None:
    """Shape check (always): ``m`` is ``(..., d, d)`` for the mean's event size ``d``."""
    if m.dim() < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"{name} must be a batch of square matrices (..., d, d), got shape {tuple(m.shape)}")
    if m.shape[-1] != d:
        raise ValueError(f"{name} is {m.shape[-1]}x{m.shape[-1]} but {mu_name} has event size d={d}")


def _cholesky(name: str, m: Tensor) -> Tensor:
    """Lower Cholesky factor of the symmetric positive definite ``m``; a clear error otherwise.

    With validation off a failed factorization is not reported (its batch entries become NaN).
    """
    L: Tensor
    info: Tensor
    L, info = torch.linalg.cholesky_ex(m)
    if not is_validation_enabled():
        return torch.where((info > 0)[..., None, None], math.nan, L)
    _check_finite(name, m)
    tol = math.sqrt(torch.finfo(m.dtype).eps) * m.detach().abs().amax((-2, -1), keepdim=True)
    asym = (m - m.mT).abs() > tol
    if bool(asym.any()):
        idx = _first(asym)
        i, j = idx[-2:]
        mirror = (*idx[:-2], j, i)
        where = f" of batch index {_fmt(idx[:-2])}" if idx[:-2] else ""
        raise ValueError(
            f"{name} is not symmetric: entries ({i}, {j}) and ({j}, {i}){where} are "
            f"{m[idx].item()!r} and {m[mirror].item()!r}"
        )
    failed = info > 0
    if bool(failed.any()):
        idx = _first(failed)
        where = f"batch index {_fmt(idx)}, " if idx else ""
        raise ValueError(
            f"{name} is not positive definite (Cholesky failed at {where}the leading minor of order {int(info[idx])})"
        )
    return L


def _check_scale_tril(name: str, L: Tensor) -> None:
    if is_validation_enabled():
        _check_finite(name, L)
        diag = L.diagonal(dim1=-2, dim2=-1)
        bad = ~(diag > 0)
        if bool(bad.any()):
            idx = _first(bad)
            raise ValueError(
                f"{name} must be lower triangular with a positive diagonal, got {diag[idx].item()!r} "
                f"on the diagonal at index {_fmt(idx)}"
            )


def _check_mean(name: str, mu: Tensor) -> int:
    if mu.dim() < 1:
        raise ValueError(f"{name} must have an event dimension (..., d), got a scalar")
    _check_finite(name, mu)
    return int(mu.shape[-1])


# ----------------------------------------------------------------------------------------------------------
# Normal
# ----------------------------------------------------------------------------------------------------------


def kl_normal_from_log_ratio(log_scale_ratio: Tensor, z_squared: Tensor) -> Tensor:
    """``(tau^2 - 1 - log tau^2) / 2 + z^2 / 2`` with ``log tau = log(s1/s2)`` and ``z = (m1 - m2) / s2``: the
    Normal KL in units of s2, as ``psi(2 log tau) / 2`` (``psi(y) = e^y - 1 - y``, no cancellation near tau = 1)."""
    return 0.5 * expm1_minus_x(2.0 * log_scale_ratio) + 0.5 * z_squared


def _kl_normal_careful(mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor) -> Tensor:
    """KL(N(mu1, s1^2) || N(mu2, s2^2)) with the series forms everywhere (and point masses for s = 0)."""
    pos = (s1 > 0) & (s2 > 0)
    s1s = torch.where(pos, s1, 1.0)
    s2s = torch.where(pos, s2, 1.0)
    log_r = log_ratio(s1s, s2s)
    z = torch.where(pos, mu1 - mu2, 0.0) / s2s
    value = kl_normal_from_log_ratio(log_r, z * z)
    point_masses_equal = (s1 == 0) & (s2 == 0) & (mu1 == mu2)
    degenerate = torch.where(point_masses_equal, 0.0, INF)
    return torch.where(pos, value, degenerate)


_SMALL_KL = 1e-6
"""Fast-pass values below this are recomputed: the fast form errs by a few eps times ``|r - 1| <= sqrt(2 KL)``,
so a kept value is accurate to about ``eps * sqrt(2 / KL)`` <= 3e-13 relative."""


def _kl_normal_value(mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor) -> Tensor:
    """KL(N(mu1, s1^2) || N(mu2, s2^2)), values only (no validation); point masses (s = 0) as in kl_normal.

    Fast pass: ``0.5 (r^2 - 1) - log r + z^2 / 2 = u - log r + u^2 / 2 + z^2 / 2`` with ``u = r - 1`` and
    ``z = (mu1 - mu2) / s2``; values below ``_SMALL_KL`` or NaN (near-equal distributions; s = 0 or inf) are
    recomputed by the careful kernel on those entries only.
    """
    u = torch.div(s1, s2)
    value = torch.log(u)
    u.sub_(1.0)
    value = torch.sub(u, value, out=value) if value.shape == u.shape else u - value
    value.addcmul_(u, u, value=0.5)
    z = torch.sub(mu1, mu2).div_(s2)
    value = value.addcmul_(z, z, value=0.5) if value.shape == z.shape else value + 0.5 * z * z
    need = ~(value >= _SMALL_KL)
    if value.dim() == 0:
        return _kl_normal_careful(mu1, s1, mu2, s2) if bool(need) else value
    idx = need.nonzero(as_tuple=True)
    if idx[0].numel():
        shape = value.shape
        args = [x.expand(shape)[idx] for x in (mu1, s1, mu2, s2)]
        value = value.index_put_(idx, _kl_normal_careful(*args))
    return value


def _kl_normal_gradient(
    grad: Tensor, _value: Tensor, mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor
) -> tuple[Tensor | None, ...]:
    """The closed-form derivatives of the Normal KL, with ``z = (mu1 - mu2) / s2`` and ``u = (s1 - s2) / s2``
    (exact near ``s1 = s2``, Sterbenz): ``dKL/dmu1 = -dKL/dmu2 = z / s2``, ``dKL/ds1 = (r^2 - 1) / s1 = u (u + 2)
    / s1`` and ``dKL/ds2 = (1 - r^2 - z^2) / s2 = -(u (u + 2) + z^2) / s2``; 0 where a scale is 0 (a point mass,
    whose KL is 0 or +inf). Each is summed to its argument's shape; ``None`` for an argument without gradient."""
    s1s, s2s, g = s1, s2, grad
    if not all(x.numel() == 0 or bool(x.amin() > 0) for x in (s1, s2)):  # a point mass (validation off)
        pos = (s1 > 0) & (s2 > 0)
        s1s, s2s, g = torch.where(pos, s1, 1.0), torch.where(pos, s2, 1.0), torch.where(pos, grad, 0.0)
    z = (mu1 - mu2) / s2s
    u = (s1s - s2s) / s2s
    spread = u * (u + 2.0)
    g_mu1 = g * z / s2s if mu1.requires_grad or mu2.requires_grad else None
    return (
        None if g_mu1 is None or not mu1.requires_grad else g_mu1.sum_to_size(mu1.shape),
        (g * spread / s1s).sum_to_size(s1.shape) if s1.requires_grad else None,
        None if g_mu1 is None or not mu2.requires_grad else (-g_mu1).sum_to_size(mu2.shape),
        (-g * (spread + z * z) / s2s).sum_to_size(s2.shape) if s2.requires_grad else None,
    )


def _kl_normal_kernel(mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor) -> Tensor:
    """KL(N(mu1, s1^2) || N(mu2, s2^2)) without validation (:func:`_kl_normal_value`), differentiated by the
    closed form (:func:`_kl_normal_gradient`)."""
    return with_gradient(_kl_normal_value, _kl_normal_gradient, mu1, s1, mu2, s2)


def _normal_params_ok(mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor) -> bool:
    """One pass per argument and one host synchronization: finite means, positive finite scales."""
    if any(x.numel() == 0 for x in (mu1, s1, mu2, s2)):
        return True
    bounds = [torch.aminmax(x.detach()) for x in (mu1, s1, mu2, s2)]
    lows = torch.stack([bounds[0][0], -bounds[0][1], bounds[2][0], -bounds[2][1]])
    ok = (lows > -INF).all() & (bounds[1][0] > 0) & (bounds[3][0] > 0) & (bounds[1][1] < INF) & (bounds[3][1] < INF)
    return bool(ok)


def kl_normal(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> Tensor | NumpyResult:
    """KL(N(mu1, sigma1^2) || N(mu2, sigma2^2)), batched (arguments broadcast).

    ``KL = 0.5 (r^2 - 1 - 2 log r) + (mu1 - mu2)^2 / (2 sigma2^2)`` with ``r = sigma1 / sigma2``; the first term
    is evaluated as ``0.5 psi(2 log r)`` with ``psi(y) = e^y - 1 - y`` (series for small ``y``) and ``log r`` as
    ``log1p((sigma1 - sigma2) / sigma2)`` near 1, so near-equal distributions keep full relative accuracy
    (the naive form loses ``eps / KL``). Reference: Kullback (1959), *Information Theory and Statistics*; TFP's
    ``_kl_normal_normal`` uses the same expm1 form.

    Edge semantics: with validation on, ``sigma <= 0`` or a non-finite argument raises ``ValueError``. With
    validation off, ``sigma = 0`` is a point mass: KL = 0 for two equal point masses, +inf otherwise (a point
    mass against a density, or a density against a point mass). Never NaN for such inputs.
    """
    io = as_inputs({"mu1": mu1, "sigma1": sigma1, "mu2": mu2, "sigma2": sigma2})
    m1, s1, m2, s2 = io.tensors
    if is_validation_enabled() and not _normal_params_ok(m1, s1, m2, s2):
        _check_finite("mu1", m1)
        _check_finite("mu2", m2)
        _check_positive("sigma1", s1)
        _check_positive("sigma2", s2)
    return io.finish(_kl_normal_kernel(m1, s1, m2, s2))


def kl_diag_gaussian_std_normal(
    mu: Any, log_var: Any, *, per_dimension: bool = False, dim: int = -1
) -> Tensor | NumpyResult:
    """KL(N(mu, diag(exp(log_var))) || N(0, I)), the VAE regularizer, summed over ``dim``.

    ``KL = -0.5 sum(1 + log_var - mu^2 - exp(log_var)) = 0.5 sum(mu^2 + psi(log_var))`` with
    ``psi(y) = e^y - 1 - y = expm1(y) - y`` (series for small ``y``): every term is non-negative and relatively
    accurate near the prior. Reference: Kingma & Welling (2014), "Auto-Encoding Variational Bayes", App. B.
    ``per_dimension=True`` returns the terms without summing.
    """
    io = as_inputs({"mu": mu, "log_var": log_var})
    m, lv = io.tensors
    _check_finite("mu", m)
    if is_validation_enabled() and lv.numel() and bool((torch.isnan(lv) | (lv == INF)).any()):
        idx = _first(torch.isnan(lv) | (lv == INF))
        raise ValueError(f"log_var must not be NaN or +inf, got {lv[idx].item()!r} at index {_fmt(idx)}")
    terms = 0.5 * (m * m + expm1_minus_x(lv))
    if per_dimension:
        return io.finish(terms)
    if terms.dim() == 0:
        raise ValueError("mu and log_var are scalars; pass per_dimension=True or give an event dimension")
    if not -terms.dim() <= dim < terms.dim():
        raise ValueError(f"dim={dim} is out of range for inputs with {terms.dim()} dimension(s)")
    return io.finish(terms.sum(dim))


# ----------------------------------------------------------------------------------------------------------
# Bernoulli
# ----------------------------------------------------------------------------------------------------------


def _kl_bernoulli_probs(p: Tensor, q: Tensor) -> Tensor:
    """Sum over the outcomes of ``q_i phi(x_i)`` (``x_i = log(p_i/q_i)``, non-negative terms), with
    ``x_0 = log1p((q - p)/(1 - q))`` so that the outcome 0 stays accurate even where ``1 - p`` rounds to 1."""
    p, q = torch.broadcast_tensors(p, q)  # type: ignore[no-untyped-call]
    t1 = torch.where(p > 0, kl_terms_from_log_ratio(log_ratio(p, q), p, q), q)
    valid = (p < 1) & (q < 1)
    q0 = torch.where(valid, 1 - q, 1.0)
    x0 = torch.log1p(torch.where(valid, q - p, 0.0) / q0)
    t0 = torch.where(valid, kl_terms_from_log_ratio(x0, 1 - p, q0), INF)
    return t1 + torch.where(p < 1, t0, 1 - q)


def _kl_bernoulli_logits(a: Tensor, b: Tensor) -> Tensor:
    """From logits; infinite logits are handled separately so that gradients stay finite."""
    a, b = torch.broadcast_tensors(a, b)  # type: ignore[no-untyped-call]
    finite = torch.isfinite(a) & torch.isfinite(b)
    af = torch.where(finite, a, 0.0)
    bf = torch.where(finite, b, 0.0)
    zero = torch.zeros_like(af)
    log_p = torch.stack([torch.nn.functional.logsigmoid(af), torch.nn.functional.logsigmoid(-af)], -1)
    log_q = torch.stack([torch.nn.functional.logsigmoid(bf), torch.nn.functional.logsigmoid(-bf)], -1)
    value = kl_log(log_p, log_q, -1, torch.stack([af - bf, zero], -1))
    if bool(finite.all()):
        return value
    # p deterministic (a = +-inf): KL = -log q(x) = softplus(-+b); +inf where q puts no mass on x.
    bs = torch.where(torch.isfinite(b), b, 0.0)
    sign = torch.sign(torch.where(torch.isinf(a), a, 1.0))
    p_point = torch.where(torch.isinf(b), torch.where(b == a, 0.0, INF), torch.nn.functional.softplus(-sign * bs))
    # p not deterministic but q is: +inf.
    return torch.where(finite, value, torch.where(torch.isinf(a), p_point, INF))


def kl_bernoulli(p: Any, q: Any) -> Tensor | NumpyResult:
    """KL(Bern(p) || Bern(q)) = p log(p/q) + (1-p) log((1-p)/(1-q)), batched, exact at 0 and 1.

    ``xlogy`` semantics without clipping: a term with ``p = 0`` (or ``1 - p = 0``) is 0; the KL is +inf
    where ``q in {0, 1}`` and ``p != q``. Computed as a sum of non-negative terms ``p_i x_i - p_i + q_i`` with
    accurate log-ratios ``x_i`` (``log1p((q - p)/(1 - q))`` for the outcome 0), so near-equal ``p, q`` and
    tiny ``p, q`` keep relative accuracy. Gradients are finite wherever the
    value is (the masked term contributes 0, as for ``scipy.special.xlogy``). Reference: Cover & Thomas (2006),
    *Elements of Information Theory*, eq. 2.26.
    """
    io = as_inputs({"p": p, "q": q})
    pt, qt = io.tensors
    _check_unit_interval("p", pt)
    _check_unit_interval("q", qt)
    return io.finish(_kl_bernoulli_probs(pt, qt))


def kl_bernoulli_from_logits(logits_p: Any, logits_q: Any) -> Tensor | NumpyResult:
    """KL(Bern(sigmoid(a)) || Bern(sigmoid(b))) from logits ``a, b``; accurate for extreme logits.

    With ``log p = logsigmoid(a)``: ``KL = sum_x p(x) (log p(x) - log q(x))`` over x in {0, 1}, evaluated with
    the log-ratio ``a - b`` known exactly (no cancellation for nearby logits). Infinite logits are point
    masses: ``a = +inf`` gives ``softplus(-b)`` (= -log q(1)), and gradients stay finite (torch's pair gives NaN).
    NaN logits raise ``ValueError`` when validation is on.
    """
    io = as_inputs({"logits_p": logits_p, "logits_q": logits_q})
    a, b = io.tensors
    if is_validation_enabled():
        for name, t in (("logits_p", a), ("logits_q", b)):
            if t.numel() and bool(torch.isnan(t).any()):
                raise ValueError(f"{name} has NaN at index {_fmt(_first(torch.isnan(t)))}")
    return io.finish(_kl_bernoulli_logits(a, b))


# ----------------------------------------------------------------------------------------------------------
# Multivariate Normal: one representation per parameterization
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Factor:
    """A covariance by its structure.

    ``tril``: Sigma = L L^T (``a`` = L). ``diag``: Sigma = diag(s^2) (``a`` = s). ``precision``: Sigma^{-1} = U U^T
    (``a`` = U, lower). ``lowrank``: Sigma = W W^T + diag(D) (``a`` = W, ``b`` = D, ``c`` = Cholesky factor of the
    capacitance I + W^T D^{-1} W, as torch's ``LowRankMultivariateNormal`` keeps it).
    """

    kind: Literal["tril", "diag", "precision", "lowrank"]
    a: Tensor
    b: Tensor | None = None
    c: Tensor | None = None

    @property
    def batch_shape(self) -> torch.Size:
        return self.a.shape[:-1] if self.kind == "diag" else self.a.shape[:-2]


def _logdet(f: _Factor) -> Tensor:
    """log det Sigma from the factor (no determinant is formed)."""
    if f.kind == "diag":
        return 2.0 * torch.log(f.a).sum(-1)
    log_diag = torch.log(f.a.diagonal(dim1=-2, dim2=-1)).sum(-1)
    if f.kind == "tril":
        return 2.0 * log_diag
    if f.kind == "precision":
        return -2.0 * log_diag
    assert f.b is not None
    assert f.c is not None
    return 2.0 * torch.log(f.c.diagonal(dim1=-2, dim2=-1)).sum(-1) + torch.log(f.b).sum(-1)


def _columns(f: _Factor) -> tuple[Tensor | None, Tensor | None]:
    """Sigma = F F^T + diag(e^2) as ``(F, e)`` (either may be None)."""
    if f.kind == "tril":
        return f.a, None
    if f.kind == "diag":
        return None, f.a
    if f.kind == "lowrank":
        assert f.b is not None
        return f.a, torch.sqrt(f.b)
    eye = torch.eye(f.a.shape[-1], dtype=f.a.dtype, device=f.a.device)
    return torch.linalg.solve_triangular(f.a.mT, eye, upper=True), None  # U^{-T}


def _woodbury_a(f: _Factor) -> Tensor:
    """``A = L_C^{-1} W^T D^{-1}`` (r x d), so that Sigma^{-1} = D^{-1} - A^T A (Woodbury)."""
    assert f.b is not None
    assert f.c is not None
    A: Tensor = torch.linalg.solve_triangular(f.c, (f.a / f.b.unsqueeze(-1)).mT, upper=False)
    return A


def _sq(x: Tensor) -> Tensor:
    """Squared Frobenius norm over the last two dimensions (``sum x^2``: smooth at 0, unlike ``norm^2``)."""
    return (x * x).sum((-2, -1))


def _inv_quad(q: _Factor, F: Tensor | None, e: Tensor | None, delta: Tensor) -> tuple[Tensor, Tensor]:
    """``(tr(Sigma_q^{-1} (F F^T + diag(e^2))), delta^T Sigma_q^{-1} delta)`` by triangular solves only."""
    zero = delta.new_zeros(())
    if q.kind == "tril":
        tr = zero
        if F is not None:
            tr = tr + _sq(torch.linalg.solve_triangular(q.a, F, upper=False))
        if e is not None:
            tr = tr + _sq(torch.linalg.solve_triangular(q.a, torch.diag_embed(e), upper=False))
        z = torch.linalg.solve_triangular(q.a, delta.unsqueeze(-1), upper=False)
        return tr, _sq(z)
    if q.kind == "diag":
        s2 = q.a * q.a
        tr = zero
        if F is not None:
            tr = tr + ((F * F).sum(-1) / s2).sum(-1)
        if e is not None:
            tr = tr + (e * e / s2).sum(-1)
        return tr, (delta * delta / s2).sum(-1)
    if q.kind == "precision":
        Ut = q.a.mT
        tr = zero
        if F is not None:
            tr = tr + _sq(Ut @ F)
        if e is not None:
            tr = tr + _sq(Ut * e.unsqueeze(-2))
        return tr, ((Ut @ delta.unsqueeze(-1)) ** 2).sum((-2, -1))
    assert q.b is not None
    A = _woodbury_a(q)
    D = q.b
    tr = zero
    if F is not None:
        tr = tr + ((F * F).sum(-1) / D).sum(-1) - _sq(A @ F)
    if e is not None:
        tr = tr + (e * e / D).sum(-1) - _sq(A * e.unsqueeze(-2))
    maha = (delta * delta / D).sum(-1) - ((A @ delta.unsqueeze(-1)) ** 2).sum((-2, -1))
    return tr, maha


def _kl_factors(mu1: Tensor, p: _Factor, mu2: Tensor, q: _Factor) -> Tensor:
    """KL(N(mu1, Sigma_p) || N(mu2, Sigma_q)) = 0.5 (tr(Sigma_q^{-1} Sigma_p) + delta^T Sigma_q^{-1} delta - d
    + log det Sigma_q - log det Sigma_p), clamped at 0 (it is >= 0; rounding could make it -1e-16)."""
    F, e = _columns(p)
    delta = mu2 - mu1
    tr, maha = _inv_quad(q, F, e, delta)
    d = delta.shape[-1]
    value = 0.5 * (tr + maha - d) + 0.5 * (_logdet(q) - _logdet(p))
    return value.clamp_min(0.0)


def _side(suffix: str, mu: Tensor, cov: Tensor | None, scale_tril: Tensor | None, precision: Tensor | None) -> _Factor:
    given = [(n, m) for n, m in (("cov", cov), ("scale_tril", scale_tril), ("precision", precision)) if m is not None]
    if len(given) != 1:
        names = ", ".join(n + suffix for n, _ in given) or "none"
        raise ValueError(f"give exactly one of cov{suffix}, scale_tril{suffix}, precision{suffix} (got {names})")
    kind, m = given[0]
    name = kind + suffix
    _check_matrix(name, m, int(mu.shape[-1]), "mu" + suffix)
    if kind == "cov":
        return _Factor("tril", _cholesky(name, m))
    if kind == "precision":
        return _Factor("precision", _cholesky(name, m))
    _check_scale_tril(name, m)
    return _Factor("tril", m.tril())


def _prepare_pair(
    named: dict[str, Any],
) -> tuple[Inputs, Tensor, _Factor, Tensor, _Factor]:
    io = as_inputs({k: v for k, v in named.items() if v is not None})
    t = dict(zip([k for k, v in named.items() if v is not None], io.tensors, strict=True))
    mu1, mu2 = t["mu1"], t["mu2"]
    d1 = _check_mean("mu1", mu1)
    d2 = _check_mean("mu2", mu2)
    if d1 != d2:
        raise ValueError(f"mu1 and mu2 have different event sizes: d={d1} and d={d2}")
    f1 = _side("1", mu1, t.get("cov1"), t.get("scale_tril1"), t.get("precision1"))
    f2 = _side("2", mu2, t.get("cov2"), t.get("scale_tril2"), t.get("precision2"))
    try:
        torch.broadcast_shapes(mu1.shape[:-1], mu2.shape[:-1], f1.batch_shape, f2.batch_shape)  # type: ignore[no-untyped-call]
    except RuntimeError:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in t.items())
        raise ValueError(f"the batch shapes do not broadcast: {shapes}") from None
    return io, mu1, f1, mu2, f2


def kl_mvn(
    mu1: Any,
    cov1: Any,
    mu2: Any,
    cov2: Any,
    *,
    scale_tril1: Any = None,
    precision1: Any = None,
    scale_tril2: Any = None,
    precision2: Any = None,
) -> Tensor | NumpyResult:
    """KL(N(mu1, Sigma1) || N(mu2, Sigma2)) between multivariate Normals, batched.

    With Sigma_i = L_i L_i^T (Cholesky): ``KL = 0.5 (||L2^{-1} L1||_F^2 + ||L2^{-1}(mu2 - mu1)||^2 - d)
    + sum log diag L2 - sum log diag L1``; one triangular solve for both terms, never ``inv`` or ``det``.
    A precision matrix P = U U^T is used through its own Cholesky factor (``Sigma^{-1} = U U^T``: products
    with ``U^T`` instead of solves, ``log det Sigma = -2 sum log diag U``), never inverted.
    Reference: Rasmussen & Williams (2006), *Gaussian Processes for Machine Learning*, App. A.5.

    Each side takes exactly one of ``cov``, ``scale_tril`` (lower triangular, positive diagonal) or
    ``precision`` (pass ``cov=None``). A matrix that is not symmetric positive definite raises ``ValueError``
    naming it and where the Cholesky factorization failed (with validation on).
    """
    io, m1, f1, m2, f2 = _prepare_pair(
        {
            "mu1": mu1, "cov1": cov1, "scale_tril1": scale_tril1, "precision1": precision1,
            "mu2": mu2, "cov2": cov2, "scale_tril2": scale_tril2, "precision2": precision2,
        }
    )  # fmt: skip
    return io.finish(_kl_factors(m1, f1, m2, f2))


def _to_tril(f: _Factor) -> Tensor:
    """A lower-triangular (or any square) factor L with Sigma = L L^T (no factorization for tril/diag)."""
    if f.kind == "tril":
        return f.a
    if f.kind == "diag":
        return torch.diag_embed(f.a)
    F, e = _columns(f)
    assert F is not None
    if e is None:
        return F
    L: Tensor = torch.linalg.cholesky(F @ F.mT + torch.diag_embed(e * e))
    return L


def wasserstein2_gaussian(
    mu1: Any,
    cov1: Any,
    mu2: Any,
    cov2: Any,
    *,
    scale_tril1: Any = None,
    scale_tril2: Any = None,
) -> Tensor | NumpyResult:
    """The 2-Wasserstein distance W2 between N(mu1, Sigma1) and N(mu2, Sigma2) (the distance, not its square).

    ``W2^2 = ||mu1 - mu2||^2 + tr Sigma1 + tr Sigma2 - 2 tr((Sigma2^{1/2} Sigma1 Sigma2^{1/2})^{1/2})``
    (Dowson & Landau 1982; Olkin & Pukelsheim 1982), with the Bures term evaluated without matrix square roots
    as the nuclear norm ``||L2^T L1||_*`` (sum of singular values) for Sigma_i = L_i L_i^T, and W2^2 clamped at 0.
    In 1-D: ``W2^2 = (mu1 - mu2)^2 + (s1 - s2)^2``.

    Known limitation: for Sigma1 close to Sigma2 the covariance part cancels, so its absolute error is about
    ``eps * tr Sigma`` (W2 itself has absolute error about ``sqrt(eps * tr Sigma)``). The gradient of W2 at
    W2 = 0 is undefined (a cone); it is finite elsewhere (``svdvals`` differentiates at repeated values).
    """
    io, m1, f1, m2, f2 = _prepare_pair(
        {"mu1": mu1, "cov1": cov1, "scale_tril1": scale_tril1, "mu2": mu2, "cov2": cov2, "scale_tril2": scale_tril2}
    )
    return io.finish(_w2_factors(m1, f1, m2, f2))


def _w2_factors(m1: Tensor, f1: _Factor, m2: Tensor, f2: _Factor) -> Tensor:
    L1, L2 = _to_tril(f1), _to_tril(f2)
    nuclear = torch.linalg.svdvals(L2.mT @ L1).sum(-1)
    diff = m1 - m2
    w2sq = (diff * diff).sum(-1) + _sq(L1) + _sq(L2) - 2.0 * nuclear
    return torch.sqrt(w2sq.clamp_min(0.0))


def renyi_gaussian(
    mu1: Any,
    cov1: Any,
    mu2: Any,
    cov2: Any,
    alpha: float,
    *,
    scale_tril1: Any = None,
    scale_tril2: Any = None,
) -> Tensor | NumpyResult:
    """Renyi divergence of order ``alpha`` between N(mu1, Sigma1) = p and N(mu2, Sigma2) = q.

    ``D_alpha = alpha/2 (mu1 - mu2)^T Sigma_alpha^{-1} (mu1 - mu2)
    - 1/(2 (alpha - 1)) log(det Sigma_alpha / (det Sigma1^{1-alpha} det Sigma2^alpha))`` with
    ``Sigma_alpha = alpha Sigma2 + (1 - alpha) Sigma1``, by Cholesky factors and triangular solves.
    References: Pardo (2006), *Statistical Inference Based on Divergence Measures*; Gil, Alajaji & Linder (2013),
    Inf. Sci. 249:124.

    ``alpha > 0``. For ``alpha > 1`` the integral diverges unless Sigma_alpha is positive definite; there the
    result is +inf. ``alpha = 1`` returns the KL divergence (the limit); close to 1 the log-det term loses about
    ``eps / |alpha - 1|`` relative accuracy.
    """
    a = check_scalar("alpha", alpha, low=0.0, low_open=True)
    io, m1, f1, m2, f2 = _prepare_pair(
        {"mu1": mu1, "cov1": cov1, "scale_tril1": scale_tril1, "mu2": mu2, "cov2": cov2, "scale_tril2": scale_tril2}
    )
    if a == 1.0:
        return io.finish(_kl_factors(m1, f1, m2, f2))
    L1, L2 = _to_tril(f1), _to_tril(f2)
    S_alpha = a * (L2 @ L2.mT) + (1.0 - a) * (L1 @ L1.mT)
    La, info = torch.linalg.cholesky_ex(S_alpha)
    ok = info == 0
    eye = torch.eye(La.shape[-1], dtype=La.dtype, device=La.device)
    La = torch.where(ok[..., None, None], La, eye)
    delta = (m1 - m2).expand(*La.shape[:-1])
    z = torch.linalg.solve_triangular(La, delta.unsqueeze(-1), upper=False)
    maha = (z * z).sum((-2, -1))
    logdet_a = 2.0 * torch.log(La.diagonal(dim1=-2, dim2=-1)).sum(-1)
    logdet_1 = 2.0 * torch.log(L1.diagonal(dim1=-2, dim2=-1).abs()).sum(-1)
    logdet_2 = 2.0 * torch.log(L2.diagonal(dim1=-2, dim2=-1).abs()).sum(-1)
    value = 0.5 * a * maha - (logdet_a - (1.0 - a) * logdet_1 - a * logdet_2) / (2.0 * (a - 1.0))
    return io.finish(torch.where(ok, value.clamp_min(0.0), INF))


# ----------------------------------------------------------------------------------------------------------
# Gaussian mixtures
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MixtureKL:
    """Bounds and approximations of KL(f || g) between Gaussian mixtures (each a tensor of the batch shape).

    ``lower <= KL <= upper`` are true bounds (Durrieu, Thiran & Kelly 2012; ``lower`` is clamped at 0). They
    can be loose, even for single Gaussians (Jensen slack). ``variational`` and ``product`` are the
    Hershey & Olsen (2007) approximations: often closer to the KL but NOT bounds (either side).
    ``is_bound`` is True: this is not a value (``kldiv.kl`` of two mixtures raises ``NotImplementedError``
    pointing here); ``mc`` holds a Monte-Carlo :class:`Estimate` when one was requested.
    """

    lower: Tensor
    upper: Tensor
    variational: Tensor
    product: Tensor
    mc: Estimate | None = None
    is_bound: bool = True


def _gaussian_components(name: str, mix: MixtureSameFamily) -> tuple[Tensor, Tensor, Tensor]:
    """``(log weights (..., K), means (..., K, d), Cholesky factors (..., K, d, d))`` of a Gaussian mixture."""
    comp = mix.component_distribution
    log_w = torch.log_softmax(mix.mixture_distribution.logits, -1)
    if isinstance(comp, Normal):
        return log_w, comp.loc.unsqueeze(-1), comp.scale[..., None, None]
    if isinstance(comp, MultivariateNormal):
        L = comp._unbroadcasted_scale_tril.expand(*comp.batch_shape, *comp.event_shape, *comp.event_shape)
        return log_w, comp.loc, L
    if isinstance(comp, LowRankMultivariateNormal):
        return log_w, comp.loc, torch.linalg.cholesky(comp.covariance_matrix)
    if isinstance(comp, Independent) and isinstance(comp.base_dist, Normal) and comp.reinterpreted_batch_ndims == 1:
        return log_w, comp.base_dist.loc, torch.diag_embed(comp.base_dist.scale)
    raise NotImplementedError(
        f"{name} is a mixture of {type(comp).__name__}; Gaussian mixture bounds need Normal, MultivariateNormal, "
        "LowRankMultivariateNormal or Independent(Normal, 1) components (kldiv.kl_mc(p, q, n) gives a Monte-Carlo "
        "estimate)"
    )


def _pairwise(mu_a: Tensor, L_a: Tensor, mu_b: Tensor, L_b: Tensor) -> tuple[Tensor, Tensor]:
    """For components a (..., K, .) and b (..., M, .): KL(f_a || g_b) and log int f_a g_b, each (..., K, M).

    ``int f_a g_b = N(mu_a; mu_b, Sigma_a + Sigma_b)`` (product of Gaussians).
    """
    ma, La = mu_a.unsqueeze(-2), L_a.unsqueeze(-3)
    mb, Lb = mu_b.unsqueeze(-3), L_b.unsqueeze(-4)
    kl = _kl_factors(ma, _Factor("tril", La), mb, _Factor("tril", Lb))
    S = La @ La.mT + Lb @ Lb.mT
    Ls = torch.linalg.cholesky(S)
    diff = (ma - mb).expand(*Ls.shape[:-1])
    z = torch.linalg.solve_triangular(Ls, diff.unsqueeze(-1), upper=False)
    d = mu_a.shape[-1]
    log_overlap = -0.5 * (z * z).sum((-2, -1)) - torch.log(Ls.diagonal(dim1=-2, dim2=-1)).sum(-1) - 0.5 * d * _LOG_2PI
    return kl, log_overlap


def kl_gaussian_mixture_bounds(
    p: MixtureSameFamily, q: MixtureSameFamily, *, mc_samples: int | None = None, seed: int | None = None
) -> MixtureKL:
    """Bounds and approximations of KL(f || g) for Gaussian mixtures f = sum_a pi_a f_a, g = sum_b w_b g_b.

    With ``t_ab = int f_a g_b``, ``z_aa' = int f_a f_a'``, ``H_a = H(f_a)`` and ``KL_ab = KL(f_a || g_b)``:

    - lower = sum_a pi_a [log sum_a' pi_a' e^{-KL(f_a||f_a')} - H_a - log sum_b w_b t_ab], clamped at 0;
    - upper = sum_a pi_a [log sum_a' pi_a' z_aa' + H_a - log sum_b w_b e^{-KL_ab}]
      (Durrieu, Thiran & Kelly, ICASSP 2012, doi:10.1109/ICASSP.2012.6289001: Jensen bounds on int f log g);
    - variational = sum_a pi_a log[sum_a' pi_a' e^{-KL(f_a||f_a')} / sum_b w_b e^{-KL_ab}] (not a bound);
    - product = sum_a pi_a log[sum_a' pi_a' z_aa' / sum_b w_b t_ab] (not a bound)
      (Hershey & Olsen, ICASSP 2007, doi:10.1109/ICASSP.2007.366913).

    Every log-sum is a ``logsumexp``. ``mc_samples=N`` adds a Monte-Carlo estimate with its standard error.
    """
    for name, m in (("p", p), ("q", q)):
        if not isinstance(m, MixtureSameFamily):
            raise TypeError(f"{name} must be a MixtureSameFamily, got {type(m).__name__}")
    if p.event_shape != q.event_shape:
        raise ValueError(f"p and q have different event shapes: {tuple(p.event_shape)} and {tuple(q.event_shape)}")
    log_pi, mu_f, L_f = _gaussian_components("p", p)
    log_w, mu_g, L_g = _gaussian_components("q", q)
    d = mu_f.shape[-1]
    kl_ff, log_z = _pairwise(mu_f, L_f, mu_f, L_f)
    kl_fg, log_t = _pairwise(mu_f, L_f, mu_g, L_g)
    entropy = 0.5 * d * (1.0 + _LOG_2PI) + torch.log(L_f.diagonal(dim1=-2, dim2=-1)).sum(-1)
    lse_kl_f = torch.logsumexp(log_pi.unsqueeze(-2) - kl_ff, -1)
    lse_kl_g = torch.logsumexp(log_w.unsqueeze(-2) - kl_fg, -1)
    lse_z = torch.logsumexp(log_pi.unsqueeze(-2) + log_z, -1)
    lse_t = torch.logsumexp(log_w.unsqueeze(-2) + log_t, -1)
    pi = torch.exp(log_pi)

    def average(x: Tensor) -> Tensor:
        return (pi * x).sum(-1)

    estimate = None if mc_samples is None else kl_mc(p, q, mc_samples, seed=seed)
    return MixtureKL(
        lower=average(lse_kl_f - entropy - lse_t).clamp_min(0.0),
        upper=average(lse_z + entropy - lse_kl_g),
        variational=average(lse_kl_f - lse_kl_g),
        product=average(lse_z - lse_t),
        mc=estimate,
    )


# ----------------------------------------------------------------------------------------------------------
# Registered pairs (torch.distributions objects)
# ----------------------------------------------------------------------------------------------------------


def _is_diag_normal(dist: Distribution) -> bool:
    return isinstance(dist, Independent) and isinstance(dist.base_dist, Normal) and dist.reinterpreted_batch_ndims == 1


def _factor_of(dist: Distribution, other: Distribution, side: str) -> tuple[Tensor, _Factor]:
    """Mean and covariance factor of a Gaussian distribution object (no new factorization)."""
    if isinstance(dist, MultivariateNormal):
        return dist.loc, _Factor("tril", dist._unbroadcasted_scale_tril)
    if isinstance(dist, LowRankMultivariateNormal):
        return dist.loc, _Factor(
            "lowrank", dist._unbroadcasted_cov_factor, dist._unbroadcasted_cov_diag, dist._capacitance_tril
        )
    if _is_diag_normal(dist):
        assert isinstance(dist, Independent)
        base = dist.base_dist
        _check_positive(f"{side}.base_dist.scale", base.scale)
        return base.loc, _Factor("diag", base.scale)
    raise NotImplementedError(
        f"KL({type(dist).__name__} || {type(other).__name__}): an Independent distribution pairs with a "
        f"multivariate Normal in closed form only as Independent(Normal, 1); this one has base "
        f"{type(getattr(dist, 'base_dist', dist)).__name__} (kldiv.kl_mc(p, q, n) gives a Monte-Carlo estimate)"
    )


def _kl_gaussian_objects(p: Distribution, q: Distribution) -> Tensor:
    mu1, f1 = _factor_of(p, q, "p")
    mu2, f2 = _factor_of(q, p, "q")
    return _kl_factors(mu1, f1, mu2, f2)


@register_kl(Normal, Normal)
def _kl_normal_normal(p: Normal, q: Normal) -> Tensor:
    """KL(N(mu1, s1^2) || N(mu2, s2^2)) by :func:`kl_normal` (relatively accurate; +inf, not NaN, at s = 0)."""
    checked = p._validate_args and q._validate_args  # torch checked scale > 0 and loc not NaN
    if is_validation_enabled() and not checked and not _normal_params_ok(p.loc, p.scale, q.loc, q.scale):
        _check_finite("p.loc", p.loc)
        _check_finite("q.loc", q.loc)
        _check_positive("p.scale", p.scale)
        _check_positive("q.scale", q.scale)
    return _kl_normal_kernel(p.loc, p.scale, q.loc, q.scale)


@register_kl(Bernoulli, Bernoulli)
def _kl_bernoulli_bernoulli(p: Bernoulli, q: Bernoulli) -> Tensor:
    """KL(Bern || Bern) from logits when both were given by logits (accurate at extreme logits, finite
    gradients at infinite logits), else from probabilities (exact at 0 and 1)."""
    if "logits" in p.__dict__ and "logits" in q.__dict__:
        return _kl_bernoulli_logits(p.logits, q.logits)
    return _kl_bernoulli_probs(p.probs, q.probs)


@register_kl(MultivariateNormal, MultivariateNormal)
def _kl_mvn_mvn(p: MultivariateNormal, q: MultivariateNormal) -> Tensor:
    """Cholesky form of :func:`kl_mvn` on the factors torch already holds (no new factorization; the trace
    and Mahalanobis terms share one triangular solve)."""
    return _kl_gaussian_objects(p, q)


@register_kl(LowRankMultivariateNormal, LowRankMultivariateNormal)
@register_kl(LowRankMultivariateNormal, MultivariateNormal)
@register_kl(MultivariateNormal, LowRankMultivariateNormal)
def _kl_lowrank(p: Distribution, q: Distribution) -> Tensor:
    """Low-rank-plus-diagonal covariances Sigma = W W^T + D through the capacitance C = I + W^T D^{-1} W:
    log det Sigma = log det C + sum log D (determinant lemma), Sigma^{-1} = D^{-1} - A^T A with
    A = L_C^{-1} W^T D^{-1} (Woodbury; Hager 1989, SIAM Rev. 31:221). Cost O(d r^2 + r^3) when q is low-rank."""
    return _kl_gaussian_objects(p, q)


@register_kl(Independent, MultivariateNormal)
@register_kl(MultivariateNormal, Independent)
@register_kl(Independent, LowRankMultivariateNormal)
@register_kl(LowRankMultivariateNormal, Independent)
def _kl_diag_cross(p: Distribution, q: Distribution) -> Tensor:
    """Independent(Normal, 1) (a diagonal covariance) against a full or low-rank multivariate Normal."""
    return _kl_gaussian_objects(p, q)


@register_kl(Independent, Independent)
def _kl_independent_independent(p: Independent[Any], q: Independent[Any]) -> Tensor:
    """Sum of the base KLs over the reinterpreted dimensions (KL of a product is the sum of the KLs); for
    Independent(Normal, 1) pairs that is the diagonal-Gaussian KL, by the accurate :func:`kl_normal` kernel.
    Other bases go through kldiv's lookup (its registry, then torch's)."""
    if p.reinterpreted_batch_ndims != q.reinterpreted_batch_ndims:
        raise NotImplementedError(
            f"KL(Independent || Independent) with reinterpreted_batch_ndims {p.reinterpreted_batch_ndims} and "
            f"{q.reinterpreted_batch_ndims}: the base distributions do not pair up"
        )
    n = p.reinterpreted_batch_ndims
    if isinstance(p.base_dist, Normal) and isinstance(q.base_dist, Normal):
        base = _kl_normal_normal(p.base_dist, q.base_dist)
    else:
        from kldiv.distributions.dispatch import kl_divergence

        base = kl_divergence(p.base_dist, q.base_dist)
    summed: Tensor = base.sum(tuple(range(-n, 0))) if n else base
    return summed


@register_kl(MixtureSameFamily, MixtureSameFamily, method="bound")
def _kl_mixture_mixture(p: MixtureSameFamily, q: MixtureSameFamily) -> MixtureKL:
    """Gaussian mixtures: :func:`kl_gaussian_mixture_bounds` (bounds and approximations, not a value; listed by
    :func:`kldiv.registered_pairs` with ``method="bound"``, never returned by ``kldiv.kl``)."""
    return kl_gaussian_mixture_bounds(p, q)
