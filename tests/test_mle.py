"""kldiv.mle: maximum likelihood as KL minimization. The identity at every step, convergence to the MLE (checked
against independent NumPy/SciPy computations), finite gradients, the laws for random sources and
bad arguments."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import numpy as np
import pytest
import scipy.integrate as si
import scipy.stats as sst
import torch
from hypothesis import HealthCheck, given, settings

import kldiv
from kldiv.mle import (
    CATEGORICAL_LR,
    CategoricalFit,
    GaussianFit,
    MLEConfig,
    categorical_kl_bound,
    categorical_nll,
    empirical_distribution,
    fit_categorical,
    fit_gaussian,
    gaussian_nll_terms,
    run_categorical,
    run_gaussian,
    sample_categorical,
    zipf_probs,
)
from kldiv.runs import TrainingDivergedError

EPS = float(np.finfo(np.float64).eps)
K_SE = 5.0
"""Tolerance of the Gaussian identity in standard errors. At a fixed parameter the gap ``KL - (NLL - H)`` is minus
a sample mean's deviation from its expectation, about N(0, SE^2); the steps are strongly correlated, so the
largest |z| along a path behaves like that of a few independent draws, and P(|Z| > 5) = 6e-7 for each."""

PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def categorical() -> CategoricalFit:
    return run_categorical(MLEConfig())


@pytest.fixture(scope="module")
def gaussian() -> GaussianFit:
    return run_gaussian(MLEConfig())


def _config_samples(config: MLEConfig) -> np.ndarray:
    """The categorical samples that run_categorical draws, for independent recomputation."""
    probs = zipf_probs(config.categories, config.zipf_exponent)
    return sample_categorical(probs, config.samples, generator=torch.Generator().manual_seed(config.seed)).numpy()


def _gaussian_samples(config: MLEConfig) -> np.ndarray:
    g = torch.Generator().manual_seed(config.seed)
    x = config.source_mean + config.source_std * torch.randn(config.samples, generator=g, dtype=torch.float64)
    return x.numpy()


# ---------------------------------------------------------------------------------------------------- sources


def test_zipf_probs_follow_the_power_law_and_sum_to_one() -> None:
    p = zipf_probs(10, 1.0).numpy()
    k = np.arange(1, 11)
    np.testing.assert_allclose(p, (1.0 / k) / np.sum(1.0 / k), rtol=1e-15)
    assert p.sum() == pytest.approx(1.0, abs=4 * EPS)
    np.testing.assert_array_equal(zipf_probs(4, 0.0).numpy(), np.full(4, 0.25))


def test_empirical_distribution_is_the_normalized_bincount() -> None:
    x = torch.tensor([0, 2, 2, 1, 2, 0])
    np.testing.assert_array_equal(empirical_distribution(x, 4).numpy(), np.array([2, 1, 3, 0]) / 6)


def test_samples_follow_the_source_within_standard_errors() -> None:
    p = zipf_probs(10, 1.0)
    n = 200_000
    freq = empirical_distribution(sample_categorical(p, n, generator=torch.Generator().manual_seed(1)), 10).numpy()
    se = np.sqrt(p.numpy() * (1 - p.numpy()) / n)
    assert np.all(np.abs(freq - p.numpy()) <= K_SE * se)


# ---------------------------------------------------------------------------------------------------- categorical


def test_categorical_kl_equals_nll_minus_entropy_at_every_step(categorical: CategoricalFit) -> None:
    t = categorical.trace
    assert len(t.nll) == MLEConfig().steps + 1
    tolerance = 8 * EPS * (t.nll + t.entropy)  # a few roundings of each term of size <= NLL + H
    assert np.all(np.abs(t.gap) <= tolerance), np.abs(t.gap / tolerance).max()


def test_categorical_nll_and_kl_match_an_independent_float64_computation(categorical: CategoricalFit) -> None:
    config = MLEConfig()
    x = _config_samples(config)
    p_n = np.bincount(x, minlength=config.categories) / x.size
    np.testing.assert_array_equal(categorical.empirical.numpy(), p_n)
    assert categorical.trace.entropy == pytest.approx(sst.entropy(p_n), rel=1e-14)
    # step 0 is the uniform model: NLL = log K and KL(P_n || uniform) = log K - H(P_n)
    assert categorical.trace.nll[0] == pytest.approx(math.log(config.categories), rel=1e-15)
    uniform = np.full(config.categories, 1 / config.categories)
    assert categorical.trace.kl[0] == pytest.approx(sst.entropy(p_n, uniform), rel=1e-13)
    # the final NLL, from the final logits, by NumPy
    logits = categorical.logits.numpy()
    log_q = logits - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()
    assert categorical.trace.nll[-1] == pytest.approx(-np.mean(log_q[x]), rel=1e-14)


def test_categorical_nll_and_kl_decrease_to_below_the_descent_bound(categorical: CategoricalFit) -> None:
    t = categorical.trace
    # a step of 1/L on an L-smooth convex function never increases it (up to rounding)
    assert np.all(np.diff(t.nll) <= 4 * EPS * t.nll[1:])
    assert np.all(np.diff(t.kl) <= 8 * EPS * t.nll[1:])
    bound = categorical_kl_bound(categorical, CATEGORICAL_LR)
    assert 0.0 <= t.kl[-1] <= bound
    assert bound < t.kl[0] / 10  # the bound itself says the KL fell by more than 10x


def test_categorical_fit_reaches_the_empirical_frequencies(categorical: CategoricalFit) -> None:
    config = MLEConfig()
    x = _config_samples(config)
    p_n = np.bincount(x, minlength=config.categories) / x.size
    kl_final = categorical.trace.kl[-1]
    # Pinsker: max_i |q_i - p_i| <= 2 TV <= sqrt(2 KL)
    assert np.max(np.abs(categorical.probs.numpy() - p_n)) <= math.sqrt(2 * kl_final) + 4 * EPS


def test_categorical_gradient_is_q_minus_empirical_and_finite() -> None:
    x = torch.tensor([0, 1, 1, 3, 3, 3])
    logits = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(categorical_nll(logits, x), logits)
    expected = torch.softmax(logits.detach(), -1) - empirical_distribution(x, 4)
    torch.testing.assert_close(grad, expected, rtol=0, atol=4 * EPS)
    assert bool(torch.isfinite(grad).all())


def test_gradients_along_both_fits_are_finite(categorical: CategoricalFit, gaussian: GaussianFit) -> None:
    for trace in (categorical.trace, gaussian.trace):
        assert np.all(np.isfinite(trace.grad_norm))
        assert trace.grad_norm[-1] < trace.grad_norm[0]


def test_an_unobserved_category_keeps_the_identity_and_has_no_bound() -> None:
    x = torch.tensor([0, 0, 1, 2, 1, 0])  # category 3 of 4 never drawn: the MLE is at -inf for it
    fit = fit_categorical(x, 4, steps=50)
    assert np.all(np.isfinite(fit.trace.kl))
    assert np.all(np.abs(fit.trace.gap) <= 8 * EPS * (fit.trace.nll + fit.trace.entropy))
    with pytest.raises(ValueError, match="every category observed"):
        categorical_kl_bound(fit, 2.0)


# ---------------------------------------------------------------------------------------------------- Gaussian


def test_gaussian_nll_minus_entropy_tracks_the_population_kl_within_standard_errors(gaussian: GaussianFit) -> None:
    t = gaussian.trace
    assert t.nll_se is not None
    assert np.all(t.nll_se > 0)
    assert np.all(np.abs(t.gap) <= K_SE * t.nll_se), (np.abs(t.gap) / t.nll_se).max()


def test_gaussian_entropy_and_initial_kl_match_quadrature(gaussian: GaussianFit) -> None:
    m, s = gaussian.source_mean, gaussian.source_std
    p = sst.norm(m, s)
    q = sst.norm(0.0, 1.0)  # the initial model
    lo, hi = m - 12 * s, m + 12 * s
    h = si.quad(lambda x: -p.pdf(x) * p.logpdf(x), lo, hi, epsabs=1e-13)[0]
    kl = si.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), lo, hi, epsabs=1e-13)[0]
    assert gaussian.trace.entropy == pytest.approx(h, rel=1e-10)
    assert gaussian.trace.kl[0] == pytest.approx(kl, rel=1e-10)


def test_gaussian_fit_reaches_the_sample_mean_and_biased_std(gaussian: GaussianFit) -> None:
    x = _gaussian_samples(MLEConfig())
    assert gaussian.trace.grad_norm[-1] < 1e-10
    # near the MLE the NLL's Hessian in (mean, log std) is diag(1/s^2, 2): a gradient g puts the iterate within
    # about |g| max(s^2, 1/2) of it
    assert gaussian.mean == pytest.approx(float(np.mean(x)), rel=1e-9)
    assert gaussian.std == pytest.approx(float(np.std(x, ddof=0)), rel=1e-9)
    nll = -np.mean(sst.norm(gaussian.mean, gaussian.std).logpdf(x))
    assert gaussian.trace.nll[-1] == pytest.approx(nll, rel=1e-13)


def test_gaussian_nll_is_the_moment_matched_entropy_plus_kl_exactly(gaussian: GaussianFit) -> None:
    """With N_n = N(mean(x), var_n(x)), -(1/n) sum log q(x_i) = H(N_n) + KL(N_n || q) exactly for a Normal q."""
    x = _gaussian_samples(MLEConfig())
    m_n, s_n = float(np.mean(x)), float(np.std(x))
    h_n = 0.5 * math.log(2 * math.pi * math.e * s_n**2)
    for step, (mu, sd) in ((0, (0.0, 1.0)), (-1, (gaussian.mean, gaussian.std))):
        kl = float(kldiv.kl_normal(m_n, s_n, mu, sd))
        assert gaussian.trace.nll[step] == pytest.approx(h_n + kl, rel=1e-13)


def test_gaussian_divergence_is_an_error_naming_the_step_size() -> None:
    x = torch.randn(100, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3 + 2
    with pytest.raises(TrainingDivergedError, match="lr = 50"):
        fit_gaussian(x, source_mean=2.0, source_std=3.0, lr=50.0)


# ---------------------------------------------------------------------------------------------------- laws


@PROPS
@given(
    weights=st.lists(st.floats(0.01, 1.0), min_size=2, max_size=8),
    n=st.integers(1, 300),
    seed=st.integers(0, 2**31),
    scale=st.floats(0.0, 5.0),
)
def test_nll_minus_empirical_entropy_is_kl_for_random_sources(
    weights: list[float], n: int, seed: int, scale: float
) -> None:
    probs = torch.tensor(weights, dtype=torch.float64)
    probs = probs / probs.sum()
    g = torch.Generator().manual_seed(seed)
    x = sample_categorical(probs, n, generator=g)
    logits = scale * torch.randn(len(weights), dtype=torch.float64, generator=g)
    p_n = empirical_distribution(x, len(weights))
    nll = float(categorical_nll(logits, x))
    kl = float(kldiv.kl_from_log_probs(torch.log(p_n), torch.log_softmax(logits, -1)))
    assert kl == pytest.approx(nll - float(kldiv.entropy(p_n)), rel=0, abs=16 * EPS * (1 + nll))
    fit = fit_categorical(x, len(weights), steps=3, init_logits=logits)
    assert np.all(np.abs(fit.trace.gap) <= 16 * EPS * (1 + fit.trace.nll))


@PROPS
@given(
    values=st.lists(st.floats(-100.0, 100.0), min_size=2, max_size=50),
    mu=st.floats(-10.0, 10.0),
    log_std=st.floats(-2.0, 3.0),
)
def test_gaussian_nll_terms_match_scipy_and_the_moment_identity(values: list[float], mu: float, log_std: float) -> None:
    x = np.array(values)
    f64 = torch.float64
    terms = gaussian_nll_terms(torch.tensor(mu, dtype=f64), torch.tensor(log_std, dtype=f64), torch.tensor(x))
    expected = -sst.norm(mu, math.exp(log_std)).logpdf(x)
    np.testing.assert_allclose(terms.numpy(), expected, rtol=1e-12, atol=1e-12)
    s_n = float(np.std(x))
    if s_n > 1e-3 * (1 + float(np.abs(x).max())):
        h_n = 0.5 * math.log(2 * math.pi * math.e * s_n**2)
        kl = float(kldiv.kl_normal(float(np.mean(x)), s_n, mu, math.exp(log_std)))
        assert float(terms.mean()) == pytest.approx(h_n + kl, rel=1e-9, abs=1e-9)


# ---------------------------------------------------------------------------------------------------- arguments


def _x() -> torch.Tensor:
    return torch.tensor([0.5, 1.5, -0.3], dtype=torch.float64)


BAD_CALLS = [
    (lambda: zipf_probs(1), ValueError, "categories"),
    (lambda: zipf_probs(2.5), ValueError, "categories"),  # type: ignore[arg-type]
    (lambda: zipf_probs(10, -1.0), ValueError, "exponent"),
    (lambda: zipf_probs(10, math.nan), ValueError, "exponent"),
    (lambda: sample_categorical(zipf_probs(3), 0), ValueError, "samples"),
    (lambda: sample_categorical(torch.tensor([0.5, 0.6]), 3), ValueError, "probs"),
    (lambda: sample_categorical(torch.tensor([1.5, -0.5]), 3), ValueError, "probs"),
    (lambda: sample_categorical(torch.tensor([1.0]), 3), ValueError, "probs"),
    (lambda: sample_categorical([0.5, 0.5], 3), TypeError, "probs"),  # type: ignore[arg-type]
    (lambda: empirical_distribution(torch.tensor([0.0, 1.0]), 2), TypeError, "samples"),
    (lambda: empirical_distribution(torch.tensor([0, 3]), 3), ValueError, "index 1"),
    (lambda: empirical_distribution(torch.tensor([-1, 0]), 3), ValueError, "samples"),
    (lambda: empirical_distribution(torch.tensor([], dtype=torch.long), 3), ValueError, "samples"),
    (lambda: fit_categorical(torch.tensor([0, 1]), 1), ValueError, "categories"),
    (lambda: fit_categorical(torch.tensor([0, 1]), 2, steps=0), ValueError, "steps"),
    (lambda: fit_categorical(torch.tensor([0, 1]), 2, lr=0.0), ValueError, "lr"),
    (lambda: fit_categorical(torch.tensor([0, 1]), 2, lr=math.inf), ValueError, "lr"),
    (lambda: fit_categorical(torch.tensor([0, 1]), 2, lr=math.nan), ValueError, "lr"),
    (lambda: fit_categorical(torch.tensor([0, 1]), 2, init_logits=torch.zeros(3)), ValueError, "init_logits"),
    (lambda: fit_gaussian(torch.tensor([1.0]), source_mean=0.0, source_std=1.0), ValueError, "samples"),
    (lambda: fit_gaussian(torch.tensor([1, 2]), source_mean=0.0, source_std=1.0), TypeError, "samples"),
    (lambda: fit_gaussian(torch.tensor([1.0, math.inf]), source_mean=0.0, source_std=1.0), ValueError, "index 1"),
    (lambda: fit_gaussian(_x(), source_mean=0.0, source_std=0.0), ValueError, "source_std"),
    (lambda: fit_gaussian(_x(), source_mean=math.nan, source_std=1.0), ValueError, "source_mean"),
    (lambda: fit_gaussian(_x(), source_mean=0.0, source_std=1.0, steps=-2), ValueError, "steps"),
    (lambda: fit_gaussian(_x(), source_mean=0.0, source_std=1.0, lr=-0.1), ValueError, "lr"),
    (lambda: fit_gaussian(_x(), source_mean=0.0, source_std=1.0, init_std=0.0), ValueError, "init_std"),
    (lambda: MLEConfig(samples=1), ValueError, "samples"),
    (lambda: MLEConfig(steps=0), ValueError, "steps"),
    (lambda: MLEConfig(seed=-1), ValueError, "seed"),
    (lambda: MLEConfig(lr=0.0), ValueError, "lr"),
    (lambda: MLEConfig(categories=1), ValueError, "categories"),
    (lambda: MLEConfig(source_std=-1.0), ValueError, "source_std"),
]


@pytest.mark.parametrize(("call", "error", "name"), BAD_CALLS, ids=[f"{i}-{c[2]}" for i, c in enumerate(BAD_CALLS)])
def test_a_bad_argument_raises_naming_it(call: object, error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=name):
        call()  # type: ignore[operator]
