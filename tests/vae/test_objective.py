"""The VAE objective against independent computations.

The main reference is a linear-Gaussian model, p(z) = N(0, I), p(x|z) = N(W z + b, sigma^2 I), where everything
is known in closed form: log p(x) = log N(x; b, W W^T + sigma^2 I), the posterior
p(z|x) = N(S W^T (x - b) / sigma^2, S) with S = (I + W^T W / sigma^2)^-1 (diagonal when W has orthogonal columns),
and the ELBO of any diagonal Gaussian q.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, MultivariateNormal, Normal, kl_divergence

from kldiv.distributions.gaussian import kl_diag_gaussian_std_normal
from kldiv.vae import (
    MLPVAE,
    VAE,
    ELBOTerms,
    active_units,
    elbo_terms,
    evaluate,
    iwae_bound,
    log_likelihood,
    vae_loss,
)

F64 = torch.float64


class LinearGaussianVAE(VAE):
    """Decoder mean W z + b with a fixed sigma; encoder q(z|x) = N(A x + c, diag(exp(log_var)))."""

    def __init__(self, W: Tensor, b: Tensor, sigma: float, A: Tensor, c: Tensor, log_var: Tensor) -> None:
        D, d = W.shape
        super().__init__((1, 2, D // 2), d, "gaussian")
        self.W, self.b = nn.Parameter(W.clone()), nn.Parameter(b.clone())
        self.A, self.c = nn.Parameter(A.clone()), nn.Parameter(c.clone())
        self.enc_log_var = nn.Parameter(log_var.clone())
        self.double()
        assert self.log_sigma is not None
        with torch.no_grad():
            self.log_sigma.fill_(math.log(sigma))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu = x.flatten(-3) @ self.A.T + self.c
        return mu, self.enc_log_var.expand_as(mu)

    def decode(self, z: Tensor) -> Tensor:
        out = z @ self.W.T + self.b
        return out.reshape(*out.shape[:-1], *self.image_shape)


@dataclass
class LinearCase:
    W: Tensor
    b: Tensor
    sigma: float
    x: Tensor
    log_px: Tensor
    exact: LinearGaussianVAE
    wrong: LinearGaussianVAE
    wrong_elbo: Tensor


def _elbo_closed_form(case_W: Tensor, b: Tensor, sigma: float, x: Tensor, m: Tensor, v: Tensor) -> Tensor:
    """ELBO of q = N(m, diag(v)) under the linear-Gaussian model, written out by hand (no kldiv):
    E_q log p(x|z) = -D log sigma - D/2 log 2 pi - (|x - W m - b|^2 + sum_j v_j |W_j|^2) / (2 sigma^2),
    KL(q || N(0, I)) = 0.5 sum_j (m_j^2 + v_j - 1 - log v_j)."""
    D = case_W.shape[0]
    resid = x.flatten(1) - m @ case_W.T - b
    expected_sq = resid.square().sum(-1) + (v * case_W.square().sum(0)).sum(-1)
    expected_ll = -D * math.log(sigma) - 0.5 * D * math.log(2 * math.pi) - expected_sq / (2 * sigma**2)
    kl = 0.5 * (m.square() + v - 1 - torch.log(v)).sum(-1)
    return expected_ll - kl


@pytest.fixture(scope="module")
def linear() -> LinearCase:
    g = torch.Generator().manual_seed(0)
    D, d, sigma = 6, 3, 0.5
    Q, _ = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=F64))
    W = Q * torch.tensor([2.0, 1.0, 0.5], dtype=F64)  # orthogonal columns: a diagonal posterior covariance
    b = torch.randn(D, generator=g, dtype=F64)
    S = torch.linalg.inv(torch.eye(d, dtype=F64) + W.T @ W / sigma**2)
    assert float((S - torch.diag(S.diagonal())).abs().max()) < 1e-14
    A = S @ W.T / sigma**2
    c = -A @ b
    log_var = torch.log(S.diagonal())
    z = torch.randn(4, d, generator=g, dtype=F64)
    x = (z @ W.T + b + sigma * torch.randn(4, D, generator=g, dtype=F64)).reshape(4, 1, 2, 3)
    log_px = MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(D, dtype=F64)).log_prob(x.flatten(1))
    A_wrong, c_wrong, log_var_wrong = 0.7 * A, c + 0.3, log_var + 0.7
    m_wrong = x.flatten(1) @ A_wrong.T + c_wrong
    wrong_elbo = _elbo_closed_form(W, b, sigma, x, m_wrong, torch.exp(log_var_wrong).expand_as(m_wrong))
    return LinearCase(
        W=W,
        b=b,
        sigma=sigma,
        x=x,
        log_px=log_px,
        exact=LinearGaussianVAE(W, b, sigma, A, c, log_var),
        wrong=LinearGaussianVAE(W, b, sigma, A_wrong, c_wrong, log_var_wrong),
        wrong_elbo=wrong_elbo,
    )


def _mean_and_se(values: Tensor) -> tuple[Tensor, Tensor]:
    """Column means and standard errors of a (replicas, images) sample."""
    return values.mean(0), values.std(0) / math.sqrt(values.shape[0])


# ---------------------------------------------------------------------------------------------------------------
# The linear-Gaussian model: ELBO and IWAE against log p(x)
# ---------------------------------------------------------------------------------------------------------------


def test_exact_posterior_makes_every_sample_of_the_elbo_equal_log_px(linear: LinearCase) -> None:
    model, x = linear.exact, linear.x
    eps = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    terms = elbo_terms(model, x, eps=eps)
    mu, log_var = model.encode(x)
    z = mu + torch.exp(0.5 * log_var) * eps
    log_q = Normal(mu, torch.exp(0.5 * log_var)).log_prob(z).sum(-1)
    log_prior = Normal(0.0, 1.0).log_prob(z).sum(-1)
    # log p(x|z) + log p(z) - log q(z|x) = log p(x) for every z when q is the posterior.
    torch.testing.assert_close(-terms.reconstruction + log_prior - log_q, linear.log_px, rtol=0, atol=1e-9)


def test_exact_posterior_elbo_estimate_is_log_px_up_to_monte_carlo_noise(linear: LinearCase) -> None:
    replicas = 4000
    x = linear.x.repeat(replicas, 1, 1, 1)
    with torch.no_grad():
        terms = elbo_terms(linear.exact, x, generator=torch.Generator().manual_seed(2))
    mean, se = _mean_and_se(-(terms.reconstruction + terms.kl).reshape(replicas, 4))
    assert bool(((mean - linear.log_px).abs() < 4 * se).all()), (mean - linear.log_px, se)
    assert float(se.max()) < 0.05  # the check has power


@pytest.mark.parametrize("k", [1, 10, 100])
def test_exact_posterior_makes_iwae_equal_log_px_for_every_k(linear: LinearCase, k: int) -> None:
    bound = iwae_bound(linear.exact, linear.x, k=k, sample_chunk=7, generator=torch.Generator().manual_seed(k))
    torch.testing.assert_close(bound, linear.log_px, rtol=0, atol=1e-9)


def test_wrong_encoder_orders_elbo_below_iwae_k_below_log_px(linear: LinearCase) -> None:
    """E[IWAE_1] = ELBO <= E[IWAE_10] <= E[IWAE_100] <= E[IWAE_1000] <= log p(x), each mean over 1000 independent
    estimates per image; "<=" within 4 standard errors, "<" where the gap is known to be many standard errors."""
    replicas = 1000
    x = linear.x.repeat(replicas, 1, 1, 1)
    log_px, elbo = linear.log_px, linear.wrong_elbo
    assert bool((elbo < log_px - 0.4).all())  # the encoder really is wrong
    with torch.no_grad():
        terms = elbo_terms(linear.wrong, x, generator=torch.Generator().manual_seed(3))
    elbo_mean, elbo_se = _mean_and_se(-(terms.reconstruction + terms.kl).reshape(replicas, 4))
    assert bool(((elbo_mean - elbo).abs() < 4 * elbo_se).all()), (elbo_mean - elbo, elbo_se)

    means, ses, pooled = {}, {}, {}
    for k in (1, 10, 100, 1000):
        gen = torch.Generator().manual_seed(10 + k)
        values = iwae_bound(linear.wrong, x, k=k, batch_size=1000, generator=gen).reshape(replicas, 4)
        means[k], ses[k] = _mean_and_se(values)
        pooled[k] = values.mean(1)  # one average over the 4 images per replica
    # IWAE_1 is the ELBO in expectation.
    assert bool(((means[1] - elbo).abs() < 4 * ses[1]).all()), (means[1] - elbo, ses[1])
    for lo, hi in pairwise((1, 10, 100, 1000)):
        tol = 4 * torch.sqrt(ses[lo] ** 2 + ses[hi] ** 2)
        assert bool((means[hi] > means[lo] - tol).all()), (lo, hi, means[hi] - means[lo], tol)
    for lo, hi in ((1, 10), (10, 100)):
        gap = pooled[hi].mean() - pooled[lo].mean()
        se = math.sqrt(float(pooled[hi].var() + pooled[lo].var()) / replicas)
        assert float(gap) > 5 * se, (lo, hi, float(gap), se)
    assert bool((means[1000] < log_px + 4 * ses[1000]).all())
    assert bool(((means[1000] - log_px).abs() < 4 * ses[1000] + 2e-3).all()), (means[1000] - log_px, ses[1000])


# ---------------------------------------------------------------------------------------------------------------
# The terms
# ---------------------------------------------------------------------------------------------------------------


def test_kl_term_is_kldivs_closed_form_and_torchs_normal_kl() -> None:
    torch.manual_seed(0)
    model = MLPVAE((1, 8, 8), hidden=(32,), z_dim=4).double()
    with torch.no_grad():
        model.log_var.bias.add_(torch.tensor([-3.0, 0.0, 1.0, 2.0], dtype=F64))
    x = torch.rand(6, 1, 8, 8, dtype=F64)
    terms = elbo_terms(model, x, generator=torch.Generator().manual_seed(0))
    mu, log_var = model.encode(x)
    expected = kl_diag_gaussian_std_normal(mu, log_var, per_dimension=True)
    assert isinstance(expected, Tensor)
    torch.testing.assert_close(terms.kl_per_dim, expected, rtol=0, atol=0)
    torch_kl = kl_divergence(Normal(mu, torch.exp(0.5 * log_var)), Normal(0.0, 1.0))
    torch.testing.assert_close(terms.kl_per_dim, torch_kl, rtol=1e-10, atol=1e-12)
    by_hand = 0.5 * (mu.square() + torch.exp(log_var) - 1 - log_var)
    torch.testing.assert_close(terms.kl_per_dim, by_hand, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(terms.kl, by_hand.sum(-1), rtol=1e-10, atol=1e-12)


def test_bernoulli_log_likelihood_is_torchs_bernoulli_log_prob() -> None:
    torch.manual_seed(0)
    model = MLPVAE((1, 3, 4), hidden=(8,), z_dim=2).double()
    x = torch.randint(0, 2, (5, 1, 3, 4)).double()
    logits = 4 * torch.randn(7, 5, 1, 3, 4, dtype=F64)  # 7 samples per image
    ll = log_likelihood(model, x, logits)
    assert ll.shape == (7, 5)
    torch.testing.assert_close(ll, Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum((-3, -2, -1)))
    # Continuous pixels: x log sigmoid(l) + (1 - x) log sigmoid(-l) (the tutorial's BCE).
    xc = torch.rand(5, 1, 3, 4, dtype=F64)
    by_hand = xc * nn.functional.logsigmoid(logits) + (1 - xc) * nn.functional.logsigmoid(-logits)
    torch.testing.assert_close(log_likelihood(model, xc, logits), by_hand.sum((-3, -2, -1)))


def test_gaussian_log_likelihood_is_torchs_normal_log_prob_with_the_learned_sigma() -> None:
    model = MLPVAE((1, 3, 4), hidden=(8,), z_dim=2, likelihood="gaussian").double()
    assert model.log_sigma is not None
    with torch.no_grad():
        model.log_sigma.fill_(-1.3)
    x = torch.rand(5, 1, 3, 4, dtype=F64)
    means = torch.rand(7, 5, 1, 3, 4, dtype=F64)
    ll = log_likelihood(model, x, means)
    expected = Normal(means, math.exp(-1.3)).log_prob(x.expand_as(means)).sum((-3, -2, -1))
    torch.testing.assert_close(ll, expected)
    ll.sum().backward()
    assert model.log_sigma.grad is not None
    assert float(model.log_sigma.grad.abs()) > 0


def test_log_likelihood_rejects_a_decoded_shape_of_another_image_size() -> None:
    model = MLPVAE((1, 3, 4), hidden=(8,), z_dim=2)
    with pytest.raises(ValueError, match=r"decoded must have shape \(\.\.\., 1, 3, 4\) .* got \(5, 1, 4, 3\)"):
        log_likelihood(model, torch.rand(5, 1, 3, 4), torch.rand(5, 1, 4, 3))
    with pytest.raises(ValueError, match=r"x of shape \(5, 1, 3, 4\) does not broadcast"):
        log_likelihood(model, torch.rand(5, 1, 3, 4), torch.rand(2, 6, 1, 3, 4))


def test_elbo_terms_go_through_a_wrapper_holding_the_model_as_module() -> None:
    class Wrapper(nn.Module):  # the shape of DistributedDataParallel
        def __init__(self, module: VAE) -> None:
            super().__init__()
            self.module = module
            self.calls = 0

        def forward(self, *args: object, **kwargs: object) -> object:
            self.calls += 1
            return self.module(*args, **kwargs)

    torch.manual_seed(0)
    model = MLPVAE((1, 4, 4), hidden=(8,), z_dim=2)
    wrapper = Wrapper(model)
    x, eps = torch.rand(3, 1, 4, 4), torch.randn(3, 2)
    direct = elbo_terms(model, x, eps=eps)
    wrapped = elbo_terms(wrapper, x, eps=eps)  # type: ignore[arg-type]
    assert wrapper.calls == 1
    torch.testing.assert_close(wrapped.reconstruction, direct.reconstruction)
    with pytest.raises(TypeError, match=r"model must be a kldiv\.vae\.VAE"):
        elbo_terms(nn.Linear(2, 2), x)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------------------------


def _terms() -> ELBOTerms:
    rec = torch.tensor([1.0, 3.0], dtype=F64, requires_grad=True)
    kl = torch.tensor([[0.2, 2.0], [0.4, 3.0]], dtype=F64, requires_grad=True)
    return ELBOTerms(reconstruction=rec, kl_per_dim=kl)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 4.0])
def test_vae_loss_is_mean_reconstruction_plus_beta_times_mean_kl(beta: float) -> None:
    terms = _terms()  # mean reconstruction 2, mean KL (2.2 + 3.4) / 2 = 2.8
    loss = vae_loss(terms, beta=beta)
    assert float(loss.detach()) == pytest.approx(2.0 + beta * 2.8, rel=1e-14)
    loss.backward()
    assert terms.kl_per_dim.grad is not None
    torch.testing.assert_close(terms.kl_per_dim.grad, torch.full((2, 2), beta / 2, dtype=F64))


def test_free_bits_floors_each_dimensions_batch_mean_kl() -> None:
    pytest.importorskip("kldiv.schedules", reason="kldiv.schedules (free_bits) is written in parallel")
    terms = _terms()  # per-dimension batch means: 0.3 and 2.5
    loss = vae_loss(terms, beta=2.0, free_bits=1.0)
    assert float(loss.detach()) == pytest.approx(2.0 + 2.0 * (1.0 + 2.5), rel=1e-14)
    loss.backward()
    assert terms.kl_per_dim.grad is not None
    # Below the floor a dimension gets no gradient; above it each entry gets beta / batch.
    torch.testing.assert_close(terms.kl_per_dim.grad, torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=F64))
    # A floor below every dimension's mean changes nothing.
    with torch.no_grad():
        assert float(vae_loss(_terms(), beta=2.0, free_bits=0.25)) == pytest.approx(float(vae_loss(_terms(), beta=2.0)))


def test_vae_loss_rejects_negative_weights() -> None:
    with pytest.raises(ValueError, match=r"beta must be in \[0.0, inf\), got -1.0"):
        vae_loss(_terms(), beta=-1.0)
    with pytest.raises(ValueError, match="free_bits must be in"):
        vae_loss(_terms(), free_bits=-0.5)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation, IWAE batching, active units
# ---------------------------------------------------------------------------------------------------------------


def _small_model() -> MLPVAE:
    torch.manual_seed(0)
    return MLPVAE((1, 8, 8), hidden=(32, 16), z_dim=4).double()


def test_iwae_does_not_depend_on_batch_size_or_sample_chunk() -> None:
    model = _small_model()
    x = torch.rand(7, 1, 8, 8, dtype=F64)

    def bound(batch_size: int, sample_chunk: int, seed: int = 5) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        return iwae_bound(model, x, k=37, batch_size=batch_size, sample_chunk=sample_chunk, generator=gen)

    reference = bound(7, 37)
    assert reference.shape == (7,)
    for batch_size, sample_chunk in ((3, 5), (1, 1), (100, 1000), (2, 36)):
        torch.testing.assert_close(bound(batch_size, sample_chunk), reference, rtol=1e-13, atol=1e-12)
    assert not torch.allclose(bound(7, 37, seed=6), reference)  # the generator does drive the noise


def test_iwae_runs_in_eval_mode_without_grad_and_restores_the_mode() -> None:
    model = _small_model()
    model.train()
    bound = iwae_bound(model, torch.rand(3, 1, 8, 8, dtype=F64), k=4, progress=False)
    assert model.training
    assert not bound.requires_grad
    model.eval()
    iwae_bound(model, torch.rand(3, 1, 8, 8, dtype=F64), k=4)
    assert not model.training


def test_evaluate_means_match_elbo_terms_and_kl_does_not_depend_on_batching() -> None:
    model = _small_model()
    model.train()
    x = torch.rand(10, 1, 8, 8, dtype=F64)
    ev = evaluate(model, x, batch_size=10, generator=torch.Generator().manual_seed(4))
    assert model.training
    with torch.no_grad():
        terms = elbo_terms(model, x, generator=torch.Generator().manual_seed(4))
    assert ev.reconstruction == pytest.approx(float(terms.reconstruction.mean()), rel=1e-12)
    assert ev.kl == pytest.approx(float(terms.kl.mean()), rel=1e-12)
    assert ev.kl_per_dim == pytest.approx(terms.kl_per_dim.mean(0).tolist(), rel=1e-12)
    assert ev.elbo == pytest.approx(-(ev.reconstruction + ev.kl), rel=1e-14)
    assert ev.kl == pytest.approx(sum(ev.kl_per_dim), rel=1e-14)
    assert ev.active_units == active_units(model, x)
    batched = evaluate(model, x, batch_size=3, generator=torch.Generator().manual_seed(4))
    assert batched.kl_per_dim == pytest.approx(ev.kl_per_dim, rel=1e-12)  # deterministic part
    assert all(isinstance(v, float) for v in (ev.elbo, ev.reconstruction, ev.kl, *ev.kl_per_dim))


def test_active_units_counts_the_encoder_means_that_vary_over_the_data(linear: LinearCase) -> None:
    """Var_x(mu_u) for x ~ N(0, I): unit 0 has variance 1, unit 1 is constant, unit 2 has 0.05^2 = 0.0025."""
    D = 6
    A = torch.zeros(3, D, dtype=F64)
    A[0, 0] = 1.0
    A[2, 1] = 0.05
    c = torch.tensor([0.5, 2.0, -1.0], dtype=F64)
    model = LinearGaussianVAE(linear.W, linear.b, linear.sigma, A, c, torch.zeros(3, dtype=F64))
    x = torch.randn(4000, 1, 2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert active_units(model, x) == 1  # threshold 1e-2
    assert active_units(model, x, threshold=1e-3) == 2
    assert active_units(model, x, threshold=0.0) == 2  # a constant mean is never active
    assert active_units(model, x, threshold=2.0) == 0
    assert active_units(model, x, threshold=1e-3, batch_size=7) == 2
    assert evaluate(model, x).active_units == 1


def test_active_units_of_an_mlp_whose_mean_head_ignores_some_dimensions() -> None:
    torch.manual_seed(0)
    model = MLPVAE((1, 8, 8), hidden=(32,), z_dim=5)
    with torch.no_grad():
        model.mu.weight.mul_(50.0)
        model.mu.weight[[1, 3]] = 0.0  # units 1 and 3 see nothing of x
    x = torch.rand(500, 1, 8, 8)
    assert active_units(model, x) == 3


def test_evaluation_and_iwae_reject_bad_arguments() -> None:
    model = _small_model()
    x = torch.rand(3, 1, 8, 8, dtype=F64)
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        iwae_bound(model, x, k=0)
    with pytest.raises(TypeError, match=r"k must be an integer >= 1, got float 2\.5"):
        iwae_bound(model, x, k=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sample_chunk must be an integer >= 1, got 0"):
        iwae_bound(model, x, sample_chunk=0)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got -1"):
        evaluate(model, x, batch_size=-1)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        active_units(model, x, batch_size=0)
    with pytest.raises(ValueError, match=r"x must hold at least one image, got shape \(0, 1, 8, 8\)"):
        evaluate(model, x[:0])
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\)"):
        iwae_bound(model, x[0])
    with pytest.raises(ValueError, match=r"\[0, 1\] for the Bernoulli likelihood, got -0.5"):
        active_units(model, x - 0.5 - x)
