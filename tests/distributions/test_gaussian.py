"""Gaussian closed forms against independent computations: quadrature, dense formulas, mpmath, Monte Carlo."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import mpmath
import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats
from scipy.special import logsumexp
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    Laplace,
    LowRankMultivariateNormal,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)
from torch.distributions import kl_divergence as torch_kl

import kldiv
from kldiv.distributions import gaussian as G
from kldiv.distributions.dispatch import kl_divergence

F64 = torch.float64


@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    yield
    torch.set_default_dtype(previous)


def t(x: object) -> torch.Tensor:
    return torch.as_tensor(x, dtype=F64)


def rand_spd(gen: torch.Generator, d: int, batch: tuple[int, ...] = ()) -> torch.Tensor:
    A = torch.randn(*batch, d, d, generator=gen)
    return A @ A.mT / d + 0.3 * torch.eye(d)


def dense_kl(mu1: np.ndarray, S1: np.ndarray, mu2: np.ndarray, S2: np.ndarray) -> float:
    """The textbook formula with inv and slogdet (a different computation from the Cholesky one)."""
    inv2 = np.linalg.inv(S2)
    diff = mu2 - mu1
    d = len(mu1)
    return 0.5 * (np.trace(inv2 @ S1) + diff @ inv2 @ diff - d + np.linalg.slogdet(S2)[1] - np.linalg.slogdet(S1)[1])


def quad_kl_1d(logp: Callable[[float], float], logq: Callable[[float], float], lo: float, hi: float) -> float:
    value, _ = integrate.quad(lambda x: math.exp(logp(x)) * (logp(x) - logq(x)), lo, hi, limit=400, epsabs=1e-13)
    return float(value)


# ----------------------------------------------------------------------------------------------------------
# Normal
# ----------------------------------------------------------------------------------------------------------


def test_kl_normal_matches_quadrature() -> None:
    rng = np.random.default_rng(0)
    for _ in range(6):
        m1, m2 = rng.normal(size=2)
        s1, s2 = rng.uniform(0.3, 3.0, size=2)
        ref = quad_kl_1d(
            lambda x, m1=m1, s1=s1: stats.norm.logpdf(x, m1, s1),
            lambda x, m2=m2, s2=s2: stats.norm.logpdf(x, m2, s2),
            m1 - 40 * s1,
            m1 + 40 * s1,
        )
        got = float(G.kl_normal(t(m1), t(s1), t(m2), t(s2)))
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-13)
        assert float(torch_kl(Normal(t(m1), t(s1)), Normal(t(m2), t(s2)))) == pytest.approx(ref, rel=1e-9)


def _mp_kl_normal(m1: float, s1: float, m2: float, s2: float) -> float:
    with mpmath.workdps(60):
        r = mpmath.mpf(s1) / mpmath.mpf(s2)
        value = (r**2 - 1 - 2 * mpmath.log(r)) / 2 + (mpmath.mpf(m1) - mpmath.mpf(m2)) ** 2 / (2 * mpmath.mpf(s2) ** 2)
        return float(value)


@pytest.mark.parametrize("eps", [1e-3, 1e-6, 1e-9, 1e-12, -1e-8])
def test_kl_normal_near_equal_keeps_relative_accuracy(eps: float) -> None:
    s1, s2 = 1.0 + eps, 1.0
    ref = _mp_kl_normal(0.0, s1, 0.0, s2)
    got = float(G.kl_normal(t(0.0), t(s1), t(0.0), t(s2)))
    assert got == pytest.approx(ref, rel=1e-13)
    got_pair = float(kl_divergence(Normal(t(0.3), t(s1)), Normal(t(0.3), t(s2))))
    assert got_pair == pytest.approx(ref, rel=1e-13)


@settings(max_examples=60, deadline=None)
@given(
    m1=st.floats(-5, 5),
    m2=st.floats(-5, 5),
    s1=st.floats(1e-3, 1e3),
    log_rel=st.floats(-14, 1),
)
def test_kl_normal_relative_accuracy_vs_mpmath(m1: float, m2: float, s1: float, log_rel: float) -> None:
    s2 = s1 * (1 + 10**log_rel)
    ref = _mp_kl_normal(m1, s1, m2, s2)
    got = float(G.kl_normal(t(m1), t(s1), t(m2), t(s2)))
    assert got >= 0
    assert got == pytest.approx(ref, rel=1e-12, abs=1e-300)


def test_kl_normal_is_zero_iff_equal_and_broadcasts() -> None:
    mu = t([[0.0], [1.0]])
    out = G.kl_normal(mu, t([1.0, 2.0, 3.0]), t(0.0), t(1.0))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 3)
    assert float(out[0, 0]) == 0.0
    assert bool((out.flatten()[1:] > 0).all())


def test_kl_normal_numpy_in_numpy_out() -> None:
    out = G.kl_normal(np.array([0.0, 1.0]), 1.0, 1.0, 2.0)
    assert isinstance(out, np.ndarray)
    assert out[1] == pytest.approx(math.log(2) + 1 / 8 - 0.5)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_kl_normal_bad_sigma_raises_naming_argument(bad: float) -> None:
    with pytest.raises(ValueError, match="sigma2"):
        G.kl_normal(t(0.0), t(1.0), t(0.0), t([1.0, bad]))
    with pytest.raises(ValueError, match="sigma1"):
        G.kl_normal(t(0.0), t(bad), t(0.0), t(1.0))


def test_kl_normal_point_masses_with_validation_off() -> None:
    """sigma = 0 is a point mass: 0 for equal point masses, +inf otherwise; torch gives NaN."""
    with kldiv.validation(False):
        out = G.kl_normal(
            t([0.0, 0.0, 0.0, 0.0]), t([1.0, 0.0, 0.0, 0.0]), t([0.0, 0.0, 0.0, 1.0]), t([0.0, 1.0, 0.0, 0.0])
        )
        assert out.tolist() == [math.inf, math.inf, 0.0, math.inf]
        p = Normal(t(0.0), t(1.0), validate_args=False)
        q = Normal(t(0.0), t(0.0), validate_args=False)
        assert math.isnan(float(torch_kl(p, q)))
        assert float(kl_divergence(p, q)) == math.inf
    with pytest.raises(ValueError, match=r"q: Normal parameter scale violates its constraint"):
        kl_divergence(p, q)


def test_kl_normal_gradcheck() -> None:
    args = (t([0.3, -1.0]), t([0.7, 2.0]), t([1.0, 0.5]), t([1.3, 0.9]))
    args = tuple(a.clone().requires_grad_() for a in args)
    assert torch.autograd.gradcheck(lambda *a: G.kl_normal(*a), args)
    near = (t(0.0), t(1.0 + 1e-5), t(0.0), t(1.0))
    near = tuple(a.clone().requires_grad_() for a in near)
    assert torch.autograd.gradcheck(lambda *a: G.kl_normal(*a), near)


def test_kl_normal_second_derivatives_and_broadcast_arguments() -> None:
    # a prior's scalar parameters broadcast against a posterior's vector, as in a Bayesian layer
    mu1, s1 = t([0.3, -1.0, 0.0]).requires_grad_(), t([0.7, 2.0, 1.0]).requires_grad_()
    mu2, s2 = t(0.2).requires_grad_(), t(1.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: G.kl_normal(*a), (mu1, s1, mu2, s2))
    assert torch.autograd.gradgradcheck(lambda *a: G.kl_normal(*a), (mu1, s1, mu2, s2))
    # only the posterior's parameters take gradients: the others get none
    (g_mu, g_s) = torch.autograd.grad(G.kl_normal(mu1, s1, t(0.0), t(1.0)).sum(), (mu1, s1))
    torch.testing.assert_close(g_mu, mu1.detach(), rtol=1e-15, atol=0)  # z / s2 with s2 = 1
    torch.testing.assert_close(g_s, s1.detach() - 1 / s1.detach(), rtol=1e-14, atol=1e-16)


def test_kl_normal_gradient_is_relatively_accurate_near_equal_scales() -> None:
    for delta in (1e-6, -1e-9, 1e-12):
        s1 = t(1.0 + delta).requires_grad_()
        s2 = t(1.0 - 1e-7).requires_grad_()
        g1, g2 = torch.autograd.grad(G.kl_normal(t(0.0), s1, t(0.0), s2), (s1, s2))
        with mpmath.workdps(40):
            a, b = mpmath.mpf(s1.item()), mpmath.mpf(s2.item())
            r2 = (a / b) ** 2
            assert float(g1) == pytest.approx(float((r2 - 1) / a), rel=1e-9)
            assert float(g2) == pytest.approx(float((1 - r2) / b), rel=1e-9)


def test_kl_normal_gradient_at_point_masses_with_validation_off_is_zero() -> None:
    mu1, s1 = t([0.0, 0.0, 1.0]).requires_grad_(), t([0.0, 1.0, 0.5]).requires_grad_()
    with kldiv.validation(False):
        value = G.kl_normal(mu1, s1, t([0.0, 0.0, 0.0]), t([1.0, 0.0, 1.0]))
        g_mu, g_s = torch.autograd.grad(value.clamp(max=1e300).sum(), (mu1, s1))
    assert value.tolist()[:2] == [math.inf, math.inf]
    assert g_mu.tolist()[:2] == [0.0, 0.0]
    assert g_s.tolist()[:2] == [0.0, 0.0]
    assert g_mu[2].item() == pytest.approx(1.0)
    assert g_s[2].item() == pytest.approx(0.5 - 2.0)


# ----------------------------------------------------------------------------------------------------------
# VAE form
# ----------------------------------------------------------------------------------------------------------


def test_kl_diag_gaussian_std_normal_matches_formula_and_kl_normal() -> None:
    gen = torch.Generator().manual_seed(1)
    mu, log_var = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)
    naive = -0.5 * (1 + log_var - mu**2 - log_var.exp()).sum(-1)
    got = G.kl_diag_gaussian_std_normal(mu, log_var)
    torch.testing.assert_close(got, naive, rtol=1e-12, atol=1e-12)
    per = G.kl_diag_gaussian_std_normal(mu, log_var, per_dimension=True)
    torch.testing.assert_close(per, G.kl_normal(mu, (0.5 * log_var).exp(), t(0.0), t(1.0)), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(G.kl_diag_gaussian_std_normal(mu, log_var, dim=0), per.sum(0))


def test_kl_diag_gaussian_std_normal_near_prior_is_relatively_accurate() -> None:
    lv = t([1e-9, -1e-7])
    got = G.kl_diag_gaussian_std_normal(t([0.0, 0.0]), lv, per_dimension=True)
    expected = [0.5 * (x**2 / 2 + x**3 / 6) for x in lv.tolist()]
    for g, e in zip(got.tolist(), expected, strict=True):
        assert g == pytest.approx(e, rel=1e-12)


def test_kl_diag_gaussian_std_normal_gradcheck_and_bad_input() -> None:
    mu, lv = t([0.2, -0.4]).requires_grad_(), t([0.3, -2.0]).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: G.kl_diag_gaussian_std_normal(a, b), (mu, lv))
    with pytest.raises(ValueError, match="log_var"):
        G.kl_diag_gaussian_std_normal(t([0.0]), t([math.nan]))


# ----------------------------------------------------------------------------------------------------------
# Bernoulli
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "q", "expected"),
    [
        (0.0, 0.3, -math.log(0.7)),
        (1.0, 0.3, -math.log(0.3)),
        (0.3, 0.0, math.inf),
        (0.3, 1.0, math.inf),
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 0.0),
        (0.0, 1.0, math.inf),
        (0.3, 0.7, 0.3 * math.log(3 / 7) + 0.7 * math.log(7 / 3)),
    ],
)
def test_kl_bernoulli_semantics_table(p: float, q: float, expected: float) -> None:
    assert float(G.kl_bernoulli(t(p), t(q))) == pytest.approx(expected, rel=1e-14)
    assert float(kl_divergence(Bernoulli(probs=t(p)), Bernoulli(probs=t(q)))) == pytest.approx(expected, rel=1e-14)


@settings(max_examples=60, deadline=None)
@given(p=st.floats(0, 1), q=st.floats(1e-300, 1 - 1e-16))
def test_kl_bernoulli_vs_mpmath(p: float, q: float) -> None:
    with mpmath.workdps(50):
        P, Q = mpmath.mpf(p), mpmath.mpf(q)
        # log1p keeps the outcome-0 term (about q - p) even where 1 - p is 1 to 50 digits
        ref = (P * mpmath.log(P / Q) if p > 0 else 0) + ((1 - P) * mpmath.log1p((Q - P) / (1 - Q)) if p < 1 else 0)
    assert float(G.kl_bernoulli(t(p), t(q))) == pytest.approx(float(ref), rel=1e-11, abs=1e-300)


def test_kl_bernoulli_from_logits_accurate_at_extreme_logits() -> None:
    a, b = 40.0, 41.0
    with mpmath.workdps(60):
        A, B = mpmath.mpf(a), mpmath.mpf(b)
        p, q = 1 / (1 + mpmath.exp(-A)), 1 / (1 + mpmath.exp(-B))
        ref = float(p * mpmath.log(p / q) + (1 - p) * mpmath.log((1 - p) / (1 - q)))
    assert float(G.kl_bernoulli_from_logits(t(a), t(b))) == pytest.approx(ref, rel=1e-12)
    pair = kl_divergence(Bernoulli(logits=t(a)), Bernoulli(logits=t(b)))
    assert float(pair) == pytest.approx(ref, rel=1e-12)


def test_gradient_finite_at_infinite_logit() -> None:
    """torch's Bernoulli pair gives a NaN gradient at logits = +-inf; kldiv's limit is finite."""
    a = t([math.inf, -math.inf, 0.5]).requires_grad_()
    b = t([0.3, 0.0, -0.2]).requires_grad_()
    value = kl_divergence(Bernoulli(logits=a), Bernoulli(logits=b))
    torch.testing.assert_close(value[:2], t([math.log1p(math.exp(-0.3)), math.log(2.0)]))
    value.sum().backward()
    assert a.grad is not None
    assert b.grad is not None
    assert bool(torch.isfinite(a.grad).all())
    assert bool(torch.isfinite(b.grad).all())
    torch.testing.assert_close(b.grad[:2], t([-1 / (1 + math.exp(0.3)), 0.5]))


def test_kl_bernoulli_gradcheck() -> None:
    p, q = t([0.2, 0.7, 0.5]).requires_grad_(), t([0.4, 0.1, 0.5 + 1e-6]).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: G.kl_bernoulli(a, b), (p, q))
    a, b = t([1.0, -3.0, 30.0]).requires_grad_(), t([-0.5, 2.0, 31.0]).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: G.kl_bernoulli_from_logits(x, y), (a, b))


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_kl_bernoulli_bad_probability_raises(bad: float) -> None:
    with pytest.raises(ValueError, match=r"q must be a probability in \[0, 1\]"):
        G.kl_bernoulli(t([0.5, 0.5]), t([0.5, bad]))


# ----------------------------------------------------------------------------------------------------------
# Multivariate Normal: every parameterization
# ----------------------------------------------------------------------------------------------------------


def _mvn_setup(seed: int, d: int = 4, batch: tuple[int, ...] = (3,)) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    S1, S2 = rand_spd(gen, d, batch), rand_spd(gen, d, batch)
    return {
        "mu1": torch.randn(*batch, d, generator=gen),
        "mu2": torch.randn(*batch, d, generator=gen),
        "S1": S1,
        "S2": S2,
        "W1": torch.randn(*batch, d, 2, generator=gen),
        "D1": torch.rand(*batch, d, generator=gen) + 0.2,
        "W2": torch.randn(*batch, d, 3, generator=gen),
        "D2": torch.rand(*batch, d, generator=gen) + 0.2,
        "s1": torch.rand(*batch, d, generator=gen) + 0.3,
        "s2": torch.rand(*batch, d, generator=gen) + 0.3,
    }


def _kwargs(kind: str, S: torch.Tensor, side: str) -> dict[str, torch.Tensor | None]:
    if kind == "cov":
        return {f"cov{side}": S}
    if kind == "scale_tril":
        return {f"cov{side}": None, f"scale_tril{side}": torch.linalg.cholesky(S)}
    return {f"cov{side}": None, f"precision{side}": torch.linalg.inv(S)}


KINDS = ["cov", "scale_tril", "precision"]


@pytest.mark.parametrize("kind1", KINDS)
@pytest.mark.parametrize("kind2", KINDS)
def test_kl_mvn_every_parameterization_equals_dense(kind1: str, kind2: str) -> None:
    s = _mvn_setup(2)
    kw = {**_kwargs(kind1, s["S1"], "1"), **_kwargs(kind2, s["S2"], "2")}
    cov1, cov2 = kw.pop("cov1"), kw.pop("cov2")
    got = G.kl_mvn(s["mu1"], cov1, s["mu2"], cov2, **kw)
    assert isinstance(got, torch.Tensor)
    for i in range(3):
        ref = dense_kl(s["mu1"][i].numpy(), s["S1"][i].numpy(), s["mu2"][i].numpy(), s["S2"][i].numpy())
        assert float(got[i]) == pytest.approx(ref, rel=1e-11)


def _gaussians(s: dict[str, torch.Tensor], side: str) -> dict[str, tuple[object, np.ndarray]]:
    """Every distribution object for one side, with its dense covariance."""
    mu, S, W, D, sd = s["mu" + side], s["S" + side], s["W" + side], s["D" + side], s["s" + side]
    return {
        "mvn_cov": (MultivariateNormal(mu, covariance_matrix=S), S.numpy()),
        "mvn_prec": (MultivariateNormal(mu, precision_matrix=torch.linalg.inv(S)), S.numpy()),
        "mvn_tril": (MultivariateNormal(mu, scale_tril=torch.linalg.cholesky(S)), S.numpy()),
        "lowrank": (LowRankMultivariateNormal(mu, W, D), (W @ W.mT + torch.diag_embed(D)).numpy()),
        "diag": (Independent(Normal(mu, sd), 1), torch.diag_embed(sd**2).numpy()),
    }


OBJECT_KINDS = ["mvn_cov", "mvn_prec", "mvn_tril", "lowrank", "diag"]


@pytest.mark.parametrize("kind_p", OBJECT_KINDS)
@pytest.mark.parametrize("kind_q", OBJECT_KINDS)
def test_every_gaussian_object_pair_equals_dense(kind_p: str, kind_q: str) -> None:
    s = _mvn_setup(3)
    p, Sp = _gaussians(s, "1")[kind_p]
    q, Sq = _gaussians(s, "2")[kind_q]
    got = kl_divergence(p, q)  # type: ignore[arg-type]
    assert got.shape == (3,)
    for i in range(3):
        ref = dense_kl(s["mu1"][i].numpy(), Sp[i], s["mu2"][i].numpy(), Sq[i])
        assert float(got[i]) == pytest.approx(ref, rel=1e-11)


def test_gaussian_object_pairs_broadcast_batch_shapes() -> None:
    s = _mvn_setup(4, batch=(3,))
    p = MultivariateNormal(s["mu1"][:1], s["S1"][:1])
    q = LowRankMultivariateNormal(s["mu2"].unsqueeze(1), s["W2"].unsqueeze(1), s["D2"].unsqueeze(1))
    got = kl_divergence(p, q)
    assert got.shape == (3, 1)
    ref = torch_kl(p, q)
    torch.testing.assert_close(got, ref, rtol=1e-11, atol=1e-12)


def test_torch_gaussian_pairs_reverified_against_dense() -> None:
    """torch's own MVN, LowRank and cross formulas agree with the dense inv/slogdet formula."""
    s = _mvn_setup(5)
    for kp in ("mvn_cov", "lowrank"):
        for kq in ("mvn_cov", "lowrank"):
            p, Sp = _gaussians(s, "1")[kp]
            q, Sq = _gaussians(s, "2")[kq]
            got = torch_kl(p, q)  # type: ignore[arg-type]
            for i in range(3):
                ref = dense_kl(s["mu1"][i].numpy(), Sp[i], s["mu2"][i].numpy(), Sq[i])
                assert float(got[i]) == pytest.approx(ref, rel=1e-10)


def test_kl_mvn_2d_matches_dblquad() -> None:
    gen = torch.Generator().manual_seed(6)
    mu1, mu2 = torch.randn(2, generator=gen), torch.randn(2, generator=gen)
    S1, S2 = rand_spd(gen, 2), rand_spd(gen, 2)
    p = stats.multivariate_normal(mu1.numpy(), S1.numpy())
    q = stats.multivariate_normal(mu2.numpy(), S2.numpy())

    def f(y: float, x: float) -> float:
        lp = p.logpdf([x, y])
        return float(math.exp(lp) * (lp - q.logpdf([x, y])))

    r = 12 * math.sqrt(float(S1.diagonal().max()))
    ref, _ = integrate.dblquad(
        f, float(mu1[0]) - r, float(mu1[0]) + r, float(mu1[1]) - r, float(mu1[1]) + r, epsabs=1e-11
    )
    assert float(G.kl_mvn(mu1, S1, mu2, S2)) == pytest.approx(ref, rel=1e-8)


def _mc_check(p: object, q: object, value: float, n: int = 1_000_000, seed: int = 0) -> None:
    torch.manual_seed(seed)
    x = p.sample((n,))  # type: ignore[attr-defined]
    terms = p.log_prob(x) - q.log_prob(x)  # type: ignore[attr-defined]
    mean, se = float(terms.mean()), float(terms.std()) / math.sqrt(n)
    assert abs(mean - value) < 5 * se, (mean, value, se)


def test_kl_mvn_higher_dimension_matches_monte_carlo() -> None:
    s = _mvn_setup(7, d=6, batch=())
    p = MultivariateNormal(s["mu1"], s["S1"])
    q = MultivariateNormal(s["mu2"], s["S2"])
    _mc_check(p, q, float(G.kl_mvn(s["mu1"], s["S1"], s["mu2"], s["S2"])))
    lp = LowRankMultivariateNormal(s["mu1"], s["W1"], s["D1"])
    iq = Independent(Normal(s["mu2"], s["s2"]), 1)
    _mc_check(lp, iq, float(kl_divergence(lp, iq)), seed=1)


def test_kl_mvn_ill_conditioned_matches_mpmath() -> None:
    """Covariances with condition number 1e8: agreement with a 50-digit mpmath reference to 1e-8 relative."""
    d = 5
    rng = np.random.default_rng(8)
    Q1, _ = np.linalg.qr(rng.normal(size=(d, d)))
    Q2, _ = np.linalg.qr(rng.normal(size=(d, d)))
    S1 = Q1 @ np.diag(np.logspace(0, -8, d)) @ Q1.T
    S2 = Q2 @ np.diag(np.logspace(0, -8, d)) @ Q2.T
    S1, S2 = (S1 + S1.T) / 2, (S2 + S2.T) / 2
    S2 = S2 + 1e-3 * S1  # keep the KL moderate while cond(S2) stays ~1e5..1e8
    mu1, mu2 = rng.normal(size=d) * 1e-3, rng.normal(size=d) * 1e-3
    assert np.linalg.cond(S1) > 1e7
    with mpmath.workdps(50):
        A1, A2 = mpmath.matrix(S1.tolist()), mpmath.matrix(S2.tolist())
        inv2 = A2**-1
        diff = mpmath.matrix((mu2 - mu1).tolist())
        tr = sum((inv2 * A1)[i, i] for i in range(d))
        maha = (diff.T * inv2 * diff)[0, 0]
        ref = float((tr + maha - d + mpmath.log(mpmath.det(A2)) - mpmath.log(mpmath.det(A1))) / 2)
    got = float(G.kl_mvn(t(mu1), t(S1), t(mu2), t(S2)))
    assert got == pytest.approx(ref, rel=1e-8)
    got_obj = float(kl_divergence(MultivariateNormal(t(mu1), t(S1)), MultivariateNormal(t(mu2), t(S2))))
    assert got_obj == pytest.approx(ref, rel=1e-8)


def test_kl_mvn_gradcheck_every_parameterization() -> None:
    s = _mvn_setup(9, d=3, batch=())
    mu1, mu2 = s["mu1"].requires_grad_(), s["mu2"].requires_grad_()
    S1, S2 = s["S1"].requires_grad_(), s["S2"].requires_grad_()

    def sym(S: torch.Tensor) -> torch.Tensor:
        return (S + S.mT) / 2

    assert torch.autograd.gradcheck(lambda a, A, b, B: G.kl_mvn(a, sym(A), b, sym(B)), (mu1, S1, mu2, S2))
    L1, L2 = torch.linalg.cholesky(s["S1"]).requires_grad_(), torch.linalg.cholesky(s["S2"]).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, A, b, B: G.kl_mvn(a, None, b, None, scale_tril1=A, precision2=B @ B.mT), (mu1, L1, mu2, L2)
    )
    assert torch.autograd.gradcheck(
        lambda a, A, b, B: G.kl_mvn(a, None, b, None, precision1=A @ A.mT, scale_tril2=B), (mu1, L1, mu2, L2)
    )


@pytest.mark.parametrize("kind_p", ["lowrank", "diag", "mvn_tril"])
@pytest.mark.parametrize("kind_q", ["lowrank", "diag", "mvn_tril"])
def test_gaussian_object_pairs_gradcheck(kind_p: str, kind_q: str) -> None:
    s = _mvn_setup(10, d=3, batch=())

    def make(kind: str, side: str, mu: torch.Tensor, A: torch.Tensor, v: torch.Tensor) -> object:
        if kind == "lowrank":
            return LowRankMultivariateNormal(mu, A[:, :2], v)
        if kind == "diag":
            return Independent(Normal(mu, v), 1)
        return MultivariateNormal(mu, scale_tril=A.tril() + torch.diag_embed(v))

    inputs = []
    for side in "12":
        inputs += [
            s["mu" + side],
            0.3 * torch.randn(3, 3, generator=torch.Generator().manual_seed(int(side))),
            s["s" + side],
        ]
    inputs = [x.clone().requires_grad_() for x in inputs]

    def f(
        m1: torch.Tensor, A1: torch.Tensor, v1: torch.Tensor, m2: torch.Tensor, A2: torch.Tensor, v2: torch.Tensor
    ) -> torch.Tensor:
        return kl_divergence(make(kind_p, "1", m1, A1, v1), make(kind_q, "2", m2, A2, v2))  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(f, tuple(inputs))


def test_full_mvn_pair_uses_no_new_factorization(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _mvn_setup(11)
    p, q = MultivariateNormal(s["mu1"], s["S1"]), MultivariateNormal(s["mu2"], precision_matrix=s["S2"])
    calls = []
    original = torch.linalg.cholesky_ex

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.linalg, "cholesky_ex", counting)
    monkeypatch.setattr(torch.linalg, "cholesky", lambda *a, **k: pytest.fail("refactorized"))
    kl_divergence(p, q)
    assert calls == []


# ----------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------


def test_non_pd_covariance_error_names_matrix_and_where() -> None:
    s = _mvn_setup(12)
    bad = s["S2"].clone()
    bad[1] = -bad[1]
    with pytest.raises(ValueError, match=r"cov2 is not positive definite \(Cholesky failed at batch index \(1,\)"):
        G.kl_mvn(s["mu1"], s["S1"], s["mu2"], bad)
    with pytest.raises(ValueError, match="precision1 is not positive definite"):
        G.kl_mvn(s["mu1"], None, s["mu2"], s["S2"], precision1=-s["S1"])
    asym = s["S1"].clone()
    asym[0, 0, 1] += 1.0
    with pytest.raises(ValueError, match="cov1 is not symmetric"):
        G.kl_mvn(s["mu1"], asym, s["mu2"], s["S2"])
    tril = torch.linalg.cholesky(s["S1"])
    tril[2, 1, 1] = -1.0
    with pytest.raises(ValueError, match="scale_tril1 must be lower triangular with a positive diagonal"):
        G.kl_mvn(s["mu1"], None, s["mu2"], s["S2"], scale_tril1=tril)


def test_kl_mvn_shape_errors() -> None:
    s = _mvn_setup(13)
    with pytest.raises(ValueError, match="cov2 is 3x3 but mu2 has event size d=4"):
        G.kl_mvn(s["mu1"], s["S1"], s["mu2"], s["S2"][..., :3, :3])
    with pytest.raises(ValueError, match="mu1 and mu2 have different event sizes"):
        G.kl_mvn(s["mu1"][..., :3], s["S1"][..., :3, :3], s["mu2"], s["S2"])
    with pytest.raises(ValueError, match="do not broadcast"):
        G.kl_mvn(s["mu1"][:2], s["S1"][:2], s["mu2"], s["S2"])
    with pytest.raises(ValueError, match="exactly one of cov1, scale_tril1, precision1"):
        G.kl_mvn(s["mu1"], s["S1"], s["mu2"], s["S2"], scale_tril1=s["S1"])
    with pytest.raises(ValueError, match="square"):
        G.kl_mvn(s["mu1"], s["S1"][..., :2], s["mu2"], s["S2"])
    with pytest.raises(ValueError, match="mu1 must be finite"):
        G.kl_mvn(s["mu1"] * math.nan, s["S1"], s["mu2"], s["S2"])


def test_different_event_shapes_raise() -> None:
    s = _mvn_setup(14)
    p = MultivariateNormal(s["mu1"], s["S1"])
    q = MultivariateNormal(s["mu2"][..., :3], s["S2"][..., :3, :3])
    with pytest.raises(ValueError, match="different event shapes"):
        kl_divergence(p, q)


def test_independent_with_non_normal_base_against_mvn_names_the_base() -> None:
    s = _mvn_setup(15)
    p = Independent(Laplace(s["mu1"], s["s1"]), 1)
    with pytest.raises(NotImplementedError, match="Laplace"):
        kl_divergence(p, MultivariateNormal(s["mu2"], s["S2"]))


def test_independent_independent_sums_base_kl_for_other_families() -> None:
    s = _mvn_setup(16)
    p, q = Independent(Laplace(s["mu1"], s["s1"]), 1), Independent(Laplace(s["mu2"], s["s2"]), 1)
    torch.testing.assert_close(kl_divergence(p, q), torch_kl(p, q))


# ----------------------------------------------------------------------------------------------------------
# 2-Wasserstein
# ----------------------------------------------------------------------------------------------------------


def test_w2_one_dimensional_closed_form() -> None:
    gen = torch.Generator().manual_seed(17)
    m1, m2 = torch.randn(5, 1, generator=gen), torch.randn(5, 1, generator=gen)
    s1, s2 = torch.rand(5, 1, generator=gen) + 0.1, torch.rand(5, 1, generator=gen) + 0.1
    got = G.wasserstein2_gaussian(m1, torch.diag_embed(s1**2), m2, torch.diag_embed(s2**2))
    expected = ((m1 - m2) ** 2 + (s1 - s2) ** 2).sqrt().squeeze(-1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_w2_matches_sqrtm_formula() -> None:
    s = _mvn_setup(18, d=5, batch=(2,))
    got = G.wasserstein2_gaussian(s["mu1"], s["S1"], s["mu2"], None, scale_tril2=torch.linalg.cholesky(s["S2"]))
    for i in range(2):
        S1, S2 = s["S1"][i].numpy(), s["S2"][i].numpy()
        r2 = scipy.linalg.sqrtm(S2)
        cross = np.real(scipy.linalg.sqrtm(r2 @ S1 @ r2))
        w2sq = (
            np.sum((s["mu1"][i].numpy() - s["mu2"][i].numpy()) ** 2) + np.trace(S1) + np.trace(S2) - 2 * np.trace(cross)
        )
        assert float(got[i]) == pytest.approx(math.sqrt(w2sq), rel=1e-10)


def test_w2_identical_is_zero_and_gradcheck() -> None:
    s = _mvn_setup(19, d=3, batch=())
    assert float(G.wasserstein2_gaussian(s["mu1"], s["S1"], s["mu1"], s["S1"])) < 1e-6
    args = tuple(x.clone().requires_grad_() for x in (s["mu1"], s["S1"], s["mu2"], s["S2"]))
    assert torch.autograd.gradcheck(
        lambda a, A, b, B: G.wasserstein2_gaussian(a, (A + A.mT) / 2, b, (B + B.mT) / 2), args
    )


# ----------------------------------------------------------------------------------------------------------
# Renyi
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.3, 0.5, 2.0])
def test_renyi_1d_matches_quadrature(alpha: float) -> None:
    rng = np.random.default_rng(20)
    for _ in range(3):
        m1, m2 = rng.normal(size=2)
        s1, s2 = rng.uniform(0.5, 1.5, size=2)
        if alpha > 1:
            s1 = min(s1, s2)  # Sigma_alpha positive definite
        integrand = lambda x, m1=m1, s1=s1, m2=m2, s2=s2: math.exp(  # noqa: E731
            alpha * stats.norm.logpdf(x, m1, s1) + (1 - alpha) * stats.norm.logpdf(x, m2, s2)
        )
        val, _ = integrate.quad(integrand, -60, 60, points=[m1, m2], limit=400, epsabs=0, epsrel=1e-13)
        ref = math.log(val) / (alpha - 1)
        got = float(G.renyi_gaussian(t([m1]), t([[s1**2]]), t([m2]), t([[s2**2]]), alpha))
        assert got == pytest.approx(ref, rel=1e-9)


def test_renyi_multivariate_infinite_and_limit() -> None:
    assert float(G.renyi_gaussian(t([0.0]), t([[4.0]]), t([0.0]), t([[1.0]]), 3.0)) == math.inf
    s = _mvn_setup(21)
    kl = G.kl_mvn(s["mu1"], s["S1"], s["mu2"], s["S2"])
    torch.testing.assert_close(G.renyi_gaussian(s["mu1"], s["S1"], s["mu2"], s["S2"], 1.0), kl)
    near = G.renyi_gaussian(s["mu1"], s["S1"], s["mu2"], s["S2"], 1.0 + 1e-6)
    torch.testing.assert_close(near, kl, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="alpha"):
        G.renyi_gaussian(s["mu1"], s["S1"], s["mu2"], s["S2"], 0.0)


def test_renyi_gradcheck() -> None:
    s = _mvn_setup(22, d=2, batch=())
    args = tuple(x.clone().requires_grad_() for x in (s["mu1"], s["S1"], s["mu2"], s["S2"]))
    assert torch.autograd.gradcheck(
        lambda a, A, b, B: G.renyi_gaussian(a, (A + A.mT) / 2, b, (B + B.mT) / 2, 0.5), args
    )


# ----------------------------------------------------------------------------------------------------------
# Gaussian mixtures
# ----------------------------------------------------------------------------------------------------------


def _random_mixture_1d(rng: np.random.Generator) -> tuple[MixtureSameFamily, np.ndarray, np.ndarray, np.ndarray]:
    k = int(rng.integers(1, 4))
    logits, mu, sd = rng.normal(size=k), rng.normal(size=k) * 2, rng.uniform(0.3, 2.0, size=k)
    mix = MixtureSameFamily(Categorical(logits=t(logits)), Normal(t(mu), t(sd)))
    w = np.exp(logits - logsumexp(logits))
    return mix, w, mu, sd


def test_mixture_bounds_bracket_quadrature() -> None:
    rng = np.random.default_rng(23)
    for _ in range(15):
        p, wp, mp, sp = _random_mixture_1d(rng)
        q, wq, mq, sq = _random_mixture_1d(rng)

        def logf(x: float, w: np.ndarray = wp, m: np.ndarray = mp, s: np.ndarray = sp) -> float:
            return float(logsumexp(np.log(w) + stats.norm.logpdf(x, m, s)))

        def logg(x: float, w: np.ndarray = wq, m: np.ndarray = mq, s: np.ndarray = sq) -> float:
            return float(logsumexp(np.log(w) + stats.norm.logpdf(x, m, s)))

        ref = quad_kl_1d(logf, logg, -40, 40)
        out = G.kl_gaussian_mixture_bounds(p, q)
        assert isinstance(out, G.MixtureKL)
        assert out.is_bound
        assert float(out.lower) <= ref + 1e-9
        assert float(out.upper) >= ref - 1e-9
        assert float(out.lower) >= 0


def test_mixture_of_single_gaussians_variational_is_exact() -> None:
    s = _mvn_setup(24, d=2, batch=(1,))
    p = MixtureSameFamily(Categorical(logits=t([0.0])), MultivariateNormal(s["mu1"], s["S1"]))
    q = MixtureSameFamily(Categorical(logits=t([0.0])), Independent(Normal(s["mu2"], s["s2"]), 1))
    out = G.kl_gaussian_mixture_bounds(p, q)
    ref = G.kl_mvn(s["mu1"][0], s["S1"][0], s["mu2"][0], torch.diag(s["s2"][0] ** 2))
    torch.testing.assert_close(out.variational, ref)
    assert float(out.lower) <= float(ref) <= float(out.upper)


def test_mixture_bounds_multivariate_bracket_mc() -> None:
    gen = torch.Generator().manual_seed(25)
    d = 3
    p = MixtureSameFamily(
        Categorical(logits=torch.randn(3, generator=gen)),
        MultivariateNormal(torch.randn(3, d, generator=gen), rand_spd(gen, d, (3,))),
    )
    q = MixtureSameFamily(
        Categorical(logits=torch.randn(2, generator=gen)),
        LowRankMultivariateNormal(
            torch.randn(2, d, generator=gen), torch.randn(2, d, 1, generator=gen), torch.rand(2, d, generator=gen) + 0.2
        ),
    )
    out = G.kl_gaussian_mixture_bounds(p, q, mc_samples=200_000, seed=0)
    assert out.mc is not None
    value, se = float(out.mc.value), float(out.mc.stderr)
    assert float(out.lower) <= value + 5 * se
    assert float(out.upper) >= value - 5 * se


def test_mixture_bounds_gradcheck_and_non_gaussian_error() -> None:
    def f(logits: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = MixtureSameFamily(Categorical(logits=logits), Normal(mu, sd))
        q = MixtureSameFamily(Categorical(logits=t([0.1, -0.3])), Normal(t([0.5, -1.0]), t([1.0, 0.7])))
        out = G.kl_gaussian_mixture_bounds(p, q)
        return out.lower, out.upper, out.variational, out.product

    args = (t([0.2, -0.1]).requires_grad_(), t([0.0, 1.0]).requires_grad_(), t([0.8, 1.2]).requires_grad_())
    assert torch.autograd.gradcheck(f, args)
    lap = MixtureSameFamily(Categorical(logits=t([0.0])), Laplace(t([0.0]), t([1.0])))
    with pytest.raises(NotImplementedError, match="Laplace"):
        G.kl_gaussian_mixture_bounds(lap, lap)
    with pytest.raises(NotImplementedError, match=r"KL\(MixtureSameFamily \|\| MixtureSameFamily\)"):
        kl_divergence(lap, lap)
