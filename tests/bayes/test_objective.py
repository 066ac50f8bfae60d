"""The negative ELBO per example: the epoch identity with the full-data negative ELBO (value and gradient, fixed
noise), the KL weight of a schedule, the likelihoods against formulas written out in NumPy, and bad arguments."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from kldiv.bayes.objective import GaussianNoise, classification_nll, gaussian_nll, negative_elbo
from kldiv.schedules import LinearWarmup


class FixedNoiseBayesLinear(nn.Module):
    """A mean-field Gaussian linear layer whose weight draw ``mu + softplus(rho) eps`` uses a fixed ``eps``, so the
    same weights serve every minibatch and the full batch; KL to a standard normal prior by torch."""

    def __init__(self, d_in: int, d_out: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.mu = nn.Parameter(torch.randn(d_in, d_out, generator=g, dtype=torch.float64) * 0.5)
        self.rho = nn.Parameter(torch.full((d_in, d_out), -2.0, dtype=torch.float64))
        self.eps = torch.randn(d_in, d_out, generator=g, dtype=torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.mu + nn.functional.softplus(self.rho) * self.eps
        return x @ weight

    def kl(self) -> Tensor:
        posterior = Normal(self.mu, nn.functional.softplus(self.rho))
        prior = Normal(torch.zeros_like(self.mu), torch.ones_like(self.mu))
        out: Tensor = kl_divergence(posterior, prior).sum()
        return out


def _grads(model: nn.Module, loss: Tensor) -> list[Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters())))


Likelihood = Callable[[Tensor, Tensor], Tensor]


def _classification(out: Tensor, y: Tensor) -> Tensor:
    return classification_nll(out, y)


def _regression(out: Tensor, y: Tensor) -> Tensor:
    return gaussian_nll(out, y, 0.3)


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("batch_sizes", [[4, 4, 4], [5, 5, 2], [12], [1] * 12])
def test_weighted_epoch_of_batch_losses_is_the_negative_elbo_per_example(task: str, batch_sizes: list[int]) -> None:
    n, d, c = 12, 3, 4
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if task == "classification":
        y = torch.randint(0, c, (n,), generator=g)
        likelihood: Likelihood = _classification
    else:
        y = torch.randn(n, c, generator=g, dtype=torch.float64)
        likelihood = _regression
    model = FixedNoiseBayesLinear(d, c, seed=8)
    # the full-data negative ELBO: sum_i NLL_i + KL, written out without negative_elbo
    full = likelihood(model(x), y).sum() + model.kl()
    full_grads = [gr / n for gr in _grads(model, full)]
    epoch_value = torch.zeros((), dtype=torch.float64)
    epoch_grads = [torch.zeros_like(p) for p in model.parameters()]
    start = 0
    for b in batch_sizes:
        rows = slice(start, start + b)
        start += b
        terms = negative_elbo(likelihood(model(x[rows]), y[rows]), model.kl(), dataset_size=n)
        weight = b / n
        epoch_value += weight * terms.loss.detach()
        for acc, gr in zip(epoch_grads, _grads(model, terms.loss), strict=True):
            acc += weight * gr
    assert start == n
    assert float(epoch_value) == pytest.approx(float(full.detach()) / n, rel=1e-13)
    for got, want in zip(epoch_grads, full_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    if len(set(batch_sizes)) == 1:  # equal batches: the plain mean of the batch losses
        losses = []
        for k in range(len(batch_sizes)):
            rows = slice(k * batch_sizes[0], (k + 1) * batch_sizes[0])
            losses.append(negative_elbo(likelihood(model(x[rows]), y[rows]), model.kl(), dataset_size=n).loss)
        assert float(torch.stack(losses).mean().detach()) == pytest.approx(float(full.detach()) / n, rel=1e-13)


def test_blundell_minibatch_weighting_is_a_kl_weight() -> None:
    # F_b = pi_b KL + sum_{i in b} NLL_i equals B * loss with beta = M pi_b (M batches of B examples)
    nll = torch.tensor([0.3, 1.2, 0.7], dtype=torch.float64)
    kl = torch.tensor(5.5, dtype=torch.float64)
    m, b = 4, 3
    pi = [2.0 ** (m - i) / (2.0**m - 1) for i in range(1, m + 1)]
    assert sum(pi) == pytest.approx(1.0, rel=1e-15)
    for pi_b in pi:
        terms = negative_elbo(nll, kl, dataset_size=m * b, kl_weight=m * pi_b)
        assert float(b * terms.loss) == pytest.approx(pi_b * 5.5 + 2.2, rel=1e-14)


def test_schedule_weight_multiplies_the_kl_term() -> None:
    schedule = LinearWarmup(warmup_steps=10)
    nll = torch.tensor([0.5, 1.5], dtype=torch.float64)
    kl = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    for step, beta in [(0, 0.0), (3, 0.3), (10, 1.0), (25, 1.0)]:
        terms = negative_elbo(nll, kl, dataset_size=100, kl_weight=schedule(step))
        assert terms.kl_weight == beta
        assert float(terms.loss.detach()) == pytest.approx(1.0 + beta * 20.0 / 100, rel=1e-15)
        assert float(terms.nll) == 1.0
        assert float(terms.kl.detach()) == 20.0
        (grad,) = torch.autograd.grad(terms.loss, kl)
        assert float(grad) == pytest.approx(beta / 100, rel=1e-15)


def test_classification_nll_against_numpy() -> None:
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(6, 5, generator=g, dtype=torch.float64) * 4
    labels = torch.randint(0, 5, (6,), generator=g)
    z = logits.numpy()
    log_p = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    want = -log_p[np.arange(6), labels.numpy()]
    np.testing.assert_allclose(classification_nll(logits, labels).numpy(), want, rtol=1e-13)


def test_gaussian_nll_against_numpy() -> None:
    g = torch.Generator().manual_seed(10)
    mean = torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = torch.randn(4, 3, generator=g, dtype=torch.float64)
    sigma = 0.4
    want = (0.5 * np.log(2 * np.pi * sigma**2) + (y.numpy() - mean.numpy()) ** 2 / (2 * sigma**2)).sum(1)
    np.testing.assert_allclose(gaussian_nll(mean, y, sigma).numpy(), want, rtol=1e-13)
    np.testing.assert_allclose(GaussianNoise(sigma, dtype=torch.float64)(mean, y).detach().numpy(), want, rtol=1e-13)
    # 1-D means and targets: one output per example
    np.testing.assert_allclose(
        gaussian_nll(mean[:, 0], y[:, 0], sigma).numpy(),
        0.5 * np.log(2 * np.pi * sigma**2) + (y.numpy()[:, 0] - mean.numpy()[:, 0]) ** 2 / (2 * sigma**2),
        rtol=1e-13,
    )


def test_fixed_noise_has_no_parameter_and_learned_noise_has_one() -> None:
    assert list(GaussianNoise(0.5).parameters()) == []
    assert float(GaussianNoise(0.5).std) == pytest.approx(0.5, rel=1e-15)
    learned = GaussianNoise(0.5, learn=True)
    assert [name for name, _ in learned.named_parameters()] == ["log_std"]


def test_learned_noise_is_stationary_at_the_rms_residual() -> None:
    # d/dsigma mean_i NLL_i = 0 at sigma^2 = mean squared residual (the Gaussian maximum-likelihood variance)
    g = torch.Generator().manual_seed(11)
    mean = torch.randn(50, generator=g, dtype=torch.float64)
    y = torch.randn(50, generator=g, dtype=torch.float64)
    rms = float((y - mean).square().mean().sqrt())
    likelihood = GaussianNoise(rms, learn=True, dtype=torch.float64)
    likelihood(mean, y).mean().backward()
    grad = likelihood.log_std.grad
    assert grad is not None
    assert abs(float(grad)) < 1e-13
    off = GaussianNoise(2 * rms, learn=True, dtype=torch.float64)
    off(mean, y).mean().backward()
    assert off.log_std.grad is not None
    assert float(off.log_std.grad) > 0.1


def test_gradients_are_finite_for_confident_logits_and_small_noise() -> None:
    logits = torch.tensor([[300.0, -300.0], [-50.0, 50.0]], dtype=torch.float64, requires_grad=True)
    kl = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    negative_elbo(classification_nll(logits, torch.tensor([1, 0])), kl, dataset_size=10).loss.backward()
    assert logits.grad is not None
    assert bool(torch.isfinite(logits.grad).all())
    noise = GaussianNoise(1e-3, learn=True, dtype=torch.float64)
    mean = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    negative_elbo(noise(mean, torch.tensor([0.5, 1.0], dtype=torch.float64)), kl, dataset_size=10).loss.backward()
    assert mean.grad is not None
    assert bool(torch.isfinite(mean.grad).all())
    assert noise.log_std.grad is not None
    assert math.isfinite(float(noise.log_std.grad))


ONES = torch.ones(3, dtype=torch.float64)
KL = torch.tensor(1.0, dtype=torch.float64)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: negative_elbo(torch.ones(3, 2), KL, dataset_size=10), ValueError, "nll"),
        (lambda: negative_elbo(torch.ones(0), KL, dataset_size=10), ValueError, "nll"),
        (lambda: negative_elbo(ONES, torch.ones(2), dataset_size=10), ValueError, "kl"),
        (lambda: negative_elbo(ONES, 1.0, dataset_size=10), TypeError, "kl"),  # type: ignore[arg-type]
        (lambda: negative_elbo(ONES, KL, dataset_size=2), ValueError, "dataset_size"),
        (lambda: negative_elbo(ONES, KL, dataset_size=10.0), TypeError, "dataset_size"),  # type: ignore[arg-type]
        (lambda: negative_elbo(ONES, KL, dataset_size=10, kl_weight=-0.5), ValueError, "kl_weight"),
        (lambda: negative_elbo(ONES, KL, dataset_size=10, kl_weight=math.nan), ValueError, "kl_weight"),
        (lambda: classification_nll(torch.ones(3), torch.tensor([0, 1, 2])), ValueError, "logits"),
        (lambda: classification_nll(torch.ones(3, 2), torch.tensor([0, 1, 2])), ValueError, "labels holds 2"),
        (lambda: classification_nll(torch.ones(3, 2), torch.tensor([0, 1])), ValueError, "labels"),
        (lambda: classification_nll(torch.ones(3, 2), torch.ones(3)), TypeError, "labels"),
        (lambda: gaussian_nll(ONES, torch.ones(4, dtype=torch.float64), 1.0), ValueError, "targets"),
        (lambda: gaussian_nll(ONES, ONES, 0.0), ValueError, "noise_std"),
        (lambda: gaussian_nll(ONES, ONES, torch.tensor([1.0, -1.0, 1.0])), ValueError, "noise_std.*index \\(1,\\)"),
        (lambda: gaussian_nll(ONES, torch.ones(3, dtype=torch.int64), 1.0), TypeError, "targets"),
        (lambda: GaussianNoise(-1.0), ValueError, "std"),
        (lambda: GaussianNoise(1.0, learn=1), TypeError, "learn"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_name_the_argument(call: object, error: type[Exception], words: str) -> None:
    assert callable(call)
    with pytest.raises(error, match=words):
        call()
