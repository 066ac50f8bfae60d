"""Monte-Carlo KL estimates: unbiased within their standard errors, reproducible, differentiable."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Gamma, MultivariateNormal, Normal, Weibull

import kldiv
from kldiv.distributions import Estimate, kl_mc

F64 = torch.float64


@pytest.mark.parametrize("estimator", ["k1", "k3"])
@pytest.mark.parametrize(
    ("p", "q"),
    [
        (
            Normal(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)),
            Normal(torch.tensor(1.0, dtype=F64), torch.tensor(2.0, dtype=F64)),
        ),
        (
            Gamma(torch.tensor(2.0, dtype=F64), torch.tensor(1.0, dtype=F64)),
            Gamma(torch.tensor(3.0, dtype=F64), torch.tensor(2.0, dtype=F64)),
        ),
        (
            MultivariateNormal(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64)),
            MultivariateNormal(torch.ones(3, dtype=F64), 2 * torch.eye(3, dtype=F64)),
        ),
    ],
)
def test_estimate_is_within_five_standard_errors_of_the_closed_form(p: object, q: object, estimator: str) -> None:
    exact = torch.distributions.kl_divergence(p, q)  # type: ignore[arg-type]
    est = kl_mc(p, q, 200_000, estimator=estimator, seed=0)  # type: ignore[arg-type]
    # (Gamma || Gamma with k1: log p/q is linear in log p, the control variate removes all variance, and only
    # rounding is left, hence the small absolute slack.)
    assert abs(float(est.value) - float(exact)) < 5 * float(est.stderr) + 1e-12 * abs(float(exact))


def test_control_variate_reduces_the_standard_error_when_q_is_far() -> None:
    p = Normal(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64))
    q = Normal(torch.tensor(0.0, dtype=F64), torch.tensor(3.0, dtype=F64))
    with_cv = kl_mc(p, q, 50_000, seed=1)
    x = p.sample((50_000,))
    plain = (p.log_prob(x) - q.log_prob(x)).std() / 50_000**0.5
    assert float(with_cv.stderr) < float(plain)


def test_seed_makes_the_estimate_reproducible_and_leaves_the_global_rng_alone() -> None:
    p, q = Weibull(torch.tensor(1.0), torch.tensor(2.0)), Weibull(torch.tensor(1.5), torch.tensor(2.0))
    torch.manual_seed(123)
    before = torch.rand(())
    torch.manual_seed(123)
    a = kl_mc(p, q, 1000, seed=7)
    after = torch.rand(())
    b = kl_mc(p, q, 1000, seed=7)
    assert float(a.value) == float(b.value)
    assert float(before) == float(after)


def test_gradients_flow_through_reparameterized_samples() -> None:
    loc = torch.tensor(0.3, dtype=F64, requires_grad=True)
    p = Normal(loc, torch.tensor(1.0, dtype=F64))
    q = Normal(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64))
    est = kl_mc(p, q, 100_000, seed=0)
    est.value.backward()
    assert loc.grad is not None
    # d/dloc of loc^2 / 2 is loc
    assert abs(float(loc.grad) - 0.3) < 0.02


def test_interval_and_float() -> None:
    est = Estimate(torch.tensor(1.0), torch.tensor(0.1), 10)
    lo, hi = est.interval()
    assert float(lo) == pytest.approx(1.0 - 0.196)
    assert float(hi) == pytest.approx(1.0 + 0.196)
    assert float(est) == 1.0


@pytest.mark.parametrize("n", [1, 0, -5, 2.5, True])
def test_bad_sample_counts_raise(n: object) -> None:
    p = Normal(torch.tensor(0.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        kl_mc(p, p, n)  # type: ignore[arg-type]


def test_bad_estimator_raises() -> None:
    p = Normal(torch.tensor(0.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="estimator must be 'k1' or 'k3'"):
        kl_mc(p, p, 10, estimator="k2")  # type: ignore[arg-type]


def test_kl_with_mc_samples_falls_back_only_for_missing_pairs() -> None:
    class Lonely(Normal):
        pass

    p = Lonely(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64))
    q = Lonely(torch.tensor(1.0, dtype=F64), torch.tensor(1.0, dtype=F64))
    # Lonely inherits Normal's registered pair, so this is the closed form, not an estimate
    assert isinstance(kldiv.kl(p, q, mc_samples=100), torch.Tensor)


def test_js_mc_agrees_with_quadrature_within_five_standard_errors() -> None:
    import numpy as np
    import scipy.integrate
    import scipy.stats

    from kldiv.distributions.mc import js_mc

    p = Normal(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64))
    q = Normal(torch.tensor(1.0, dtype=F64), torch.tensor(2.0, dtype=F64))

    def integrand(x: float) -> float:
        a, b = scipy.stats.norm.pdf(x), scipy.stats.norm.pdf(x, 1.0, 2.0)
        m = 0.5 * (a + b)
        return float(0.5 * a * np.log(a / m) + 0.5 * b * np.log(b / m))

    exact, _ = scipy.integrate.quad(integrand, -30, 30, epsabs=1e-13)
    est = js_mc(p, q, 200_000, seed=0)
    assert 0 < float(est.value) <= np.log(2)
    assert abs(float(est.value) - exact) < 5 * float(est.stderr)


def test_monte_carlo_broadcasts_q_batch_shape_larger_than_p() -> None:
    p = Normal(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64))
    q = Normal(torch.tensor([0.0, 1.0], dtype=F64), torch.tensor(1.0, dtype=F64))
    est = kldiv.kl_mc(p, q, 50_000, seed=0)
    assert est.value.shape == (2,)
    exact = torch.tensor([0.0, 0.5], dtype=F64)
    assert bool(((est.value - exact).abs() <= 5 * est.stderr + 1e-12).all())


def test_float32_gamma_family_pairs_are_finite() -> None:
    from torch.distributions import Exponential

    p = Gamma(torch.tensor(150.0), torch.tensor(1.0))
    q = Gamma(torch.tensor(150.0), torch.tensor(2.0))
    assert torch.isfinite(kldiv.kl(p, q))
    assert torch.isfinite(kldiv.kl(Gamma(torch.tensor(1e4), torch.tensor(1.0)), Exponential(torch.tensor(1.0))))
    a = torch.tensor(300.0)
    assert torch.isfinite(kldiv.kl(Gamma(a, torch.tensor(1.0)), Gamma(a * 1.001, torch.tensor(1.0))))
