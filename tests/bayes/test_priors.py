"""Weight priors and the KL from a diagonal Gaussian posterior to them, against independent computations:
closed form against Monte Carlo, Monte Carlo against mpmath quadrature of the 1-D KL, properties by hypothesis."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from kldiv.bayes import GaussianPrior, ScaleMixturePrior, kl_mc_terms, kl_terms

F64 = torch.float64
Z_MAX = 4.0
"""Largest accepted |z-score| of a Monte Carlo mean against its reference."""

MUS = torch.tensor([0.0, 0.3, -1.2, 0.02, 2.0], dtype=F64)
STDS = torch.tensor([1.0, 0.05, 0.4, 0.003, 1.5], dtype=F64)


def _mc_mean_and_se(prior: object, n: int = 40_000) -> tuple[Tensor, Tensor]:
    eps = torch.randn(n, len(MUS), dtype=F64)
    terms = kl_mc_terms(prior, MUS, STDS, eps)  # type: ignore[arg-type]
    return terms.mean(0), terms.std(0) / math.sqrt(n)


def test_gaussian_closed_form_matches_monte_carlo() -> None:
    torch.manual_seed(0)
    prior = GaussianPrior(0.7)
    mean, se = _mc_mean_and_se(prior)
    exact = prior.kl(MUS, STDS)
    assert ((mean - exact) / se).abs().max() < Z_MAX


def _mixture_kl_quadrature(prior: ScaleMixturePrior, mu: float, std: float) -> float:
    """KL(N(mu, std^2) || prior) = integral of q(w) (log q(w) - log p(w)) dw, by mpmath at 20 digits, split at
    mu +- k std and at the narrow component's scale so that both peaks are resolved."""
    with mpmath.workdps(20):  # local: other test modules set their own precision
        return _mixture_kl_quadrature_at_precision(prior, mu, std)


def _mixture_kl_quadrature_at_precision(prior: ScaleMixturePrior, mu: float, std: float) -> float:
    mu_, s = mpmath.mpf(mu), mpmath.mpf(std)

    def log_normal(w: mpmath.mpf, sigma: mpmath.mpf, m: mpmath.mpf | int = 0) -> mpmath.mpf:
        return -((w - m) ** 2) / (2 * sigma**2) - mpmath.log(sigma) - mpmath.log(2 * mpmath.pi) / 2

    def integrand(w: mpmath.mpf) -> mpmath.mpf:
        log_q = log_normal(w, s, mu_)
        log_p = mpmath.log(
            prior.pi * mpmath.exp(log_normal(w, mpmath.mpf(prior.sigma1)))
            + (1 - prior.pi) * mpmath.exp(log_normal(w, mpmath.mpf(prior.sigma2)))
        )
        return mpmath.exp(log_q) * (log_q - log_p)

    points = sorted({float(mu + k * std) for k in (-12, -4, -1, 0, 1, 4, 12)} | {-prior.sigma2, 0.0, prior.sigma2})
    return float(mpmath.quad(integrand, [-mpmath.inf, *points, mpmath.inf]))


def test_mixture_monte_carlo_matches_quadrature() -> None:
    torch.manual_seed(1)
    prior = ScaleMixturePrior(0.25, 1.0, 0.05)
    mean, se = _mc_mean_and_se(prior)
    pairs = zip(MUS.tolist(), STDS.tolist(), strict=True)
    reference = torch.tensor([_mixture_kl_quadrature(prior, m, s) for m, s in pairs], dtype=F64)
    assert ((mean - reference) / se).abs().max() < Z_MAX


def test_mixture_log_prob_matches_direct_formula_and_stays_finite() -> None:
    prior = ScaleMixturePrior(0.3, 2.0, 0.01)
    w = torch.tensor([0.0, 0.004, -0.5, 3.0], dtype=F64)
    direct = torch.log(
        0.3 * torch.exp(-(w**2) / 8) / (2.0 * math.sqrt(2 * math.pi))
        + 0.7 * torch.exp(-(w**2) / 2e-4) / (0.01 * math.sqrt(2 * math.pi))
    )
    torch.testing.assert_close(prior.log_prob(w), direct, rtol=1e-12, atol=0)
    far = prior.log_prob(torch.tensor([1e3], dtype=torch.float32))
    assert torch.isfinite(far).all()


def test_mc_terms_have_the_gradient_of_log_q_minus_log_p() -> None:
    """The exact-entropy estimator and log q(w) - log p(w) at w = mu + std eps differ by a constant in mu, std."""
    torch.manual_seed(2)
    prior = ScaleMixturePrior()
    mu = torch.randn(6, dtype=F64, requires_grad=True)
    std = torch.rand(6, dtype=F64).add(0.1).requires_grad_()
    eps = torch.randn(6, dtype=F64)
    ours = torch.autograd.grad(kl_mc_terms(prior, mu, std, eps).sum(), (mu, std))
    w = mu + std * eps
    naive = torch.distributions.Normal(mu, std).log_prob(w) - prior.log_prob(w)
    for a, b in zip(ours, torch.autograd.grad(naive.sum(), (mu, std)), strict=True):
        torch.testing.assert_close(a, b)


@settings(max_examples=60, deadline=None)
@given(mu=st.floats(-5, 5), std=st.floats(1e-3, 5), sigma=st.floats(1e-2, 5))
def test_gaussian_kl_is_nonnegative_and_zero_iff_prior(mu: float, std: float, sigma: float) -> None:
    prior = GaussianPrior(sigma)
    value = float(prior.kl(torch.tensor(mu, dtype=F64), torch.tensor(std, dtype=F64)))
    assert value >= 0
    if abs(mu) > 1e-100 or std != sigma:  # (mu / sigma)^2 of a smaller mu underflows in float64
        assert value > 0
    assert float(prior.kl(torch.tensor(0.0, dtype=F64), torch.tensor(sigma, dtype=F64))) == 0.0


def test_kl_terms_dispatch() -> None:
    mu, std = MUS, STDS
    assert torch.equal(kl_terms(GaussianPrior(), mu, std, None), GaussianPrior().kl(mu, std))
    eps = torch.randn_like(mu)
    assert torch.equal(kl_terms(ScaleMixturePrior(), mu, std, eps), kl_mc_terms(ScaleMixturePrior(), mu, std, eps))
    with pytest.raises(ValueError, match="eps is required"):
        kl_terms(ScaleMixturePrior(), mu, std, None)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: GaussianPrior(0.0), ValueError, r"sigma must be in \(0.0, inf\), got 0.0"),
        (lambda: GaussianPrior("1"), TypeError, "sigma must be a real number, got str"),
        (lambda: ScaleMixturePrior(pi=1.0), ValueError, r"pi must be in \(0.0, 1.0\), got 1.0"),
        (lambda: ScaleMixturePrior(sigma1=-1.0), ValueError, "sigma1 must be in"),
        (lambda: ScaleMixturePrior(sigma2=math.nan), ValueError, "sigma2 must be a number"),
    ],
)
def test_bad_prior_arguments_are_named(make: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()  # type: ignore[operator]
