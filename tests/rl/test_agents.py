"""The policies' log-probabilities, entropies and exact KLs against torch.distributions, their samples against their
probabilities, and the networks' initialization."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn
from torch.distributions import Categorical, Independent, Normal, kl_divergence

from kldiv.rl.agents import CategoricalPolicy, GaussianPolicy, make_policy, mlp, value_network

DT = torch.float64


def _moved(policy: nn.Module, seed: int) -> nn.Module:
    """The policy in float64 with its parameters moved off the initialization (logits near 0 would hide errors)."""
    torch.manual_seed(seed)
    policy = policy.double()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p))
    return policy


def _obs(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, dtype=DT, generator=torch.Generator().manual_seed(seed))


def test_categorical_policy_matches_torch_categorical() -> None:
    policy = _moved(CategoricalPolicy(4, 5, (8,)), 0)
    other = _moved(CategoricalPolicy(4, 5, (8,)), 1)
    assert isinstance(policy, CategoricalPolicy)
    obs = _obs(32, 4, 2)
    with torch.no_grad():
        old, new = policy(obs), other(obs)
    assert old.shape == (32, 5)
    actions = torch.arange(32) % 5
    dist, dist_new = Categorical(logits=old), Categorical(logits=new)
    torch.testing.assert_close(policy.log_prob(old, actions), dist.log_prob(actions), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(policy.entropy(old), dist.entropy(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(policy.kl(old, new), kl_divergence(dist, dist_new), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(policy.kl(old, old), torch.zeros(32, dtype=DT), rtol=0, atol=1e-15)
    assert torch.equal(policy.mode(old), old.argmax(-1))
    # float actions (as a rollout may store them) index the same entries
    assert torch.equal(policy.log_prob(old, actions.double()), policy.log_prob(old, actions))


@pytest.mark.parametrize("action_dim", [1, 3])
def test_gaussian_policy_matches_a_diagonal_torch_normal(action_dim: int) -> None:
    policy = _moved(GaussianPolicy(4, action_dim, (8,), log_std=-0.5), 0)
    other = _moved(GaussianPolicy(4, action_dim, (8,)), 1)
    assert isinstance(policy, GaussianPolicy)
    obs = _obs(16, 4, 3)
    with torch.no_grad():
        old, new = policy(obs), other(obs)
    assert old.shape == (2, 16, action_dim)
    torch.testing.assert_close(old[1], policy.log_std.detach().exp().expand(16, action_dim), rtol=0, atol=0)
    dist = Independent(Normal(old[0], old[1]), 1)
    dist_new = Independent(Normal(new[0], new[1]), 1)
    actions = torch.randn(16, action_dim, dtype=DT, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(policy.log_prob(old, actions), dist.log_prob(actions), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(policy.entropy(old), dist.entropy(), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(policy.kl(old, new), kl_divergence(dist, dist_new), rtol=1e-12, atol=1e-13)
    assert torch.equal(policy.mode(old), old[0])


def test_categorical_samples_follow_the_probabilities_chi_square() -> None:
    logits = torch.tensor([[1.0, 0.0, -1.0, 2.0], [0.0, 0.0, 0.0, -3.0]])
    policy = CategoricalPolicy(1, 4, (2,))
    n = 20_000
    torch.manual_seed(5)
    samples = policy.sample(logits.repeat_interleave(n, 0)).reshape(2, n)
    assert samples.dtype == torch.int64
    for row, probs in zip(samples, torch.softmax(logits.double(), -1), strict=True):
        counts = torch.bincount(row, minlength=4).double()
        statistic, p_value = stats.chisquare(counts.numpy(), (n * probs).numpy())
        assert p_value > 1e-4, (counts, n * probs, statistic)  # a correct sampler fails once in 10^4 runs


def test_gaussian_samples_have_the_policy_mean_and_std_within_five_standard_errors() -> None:
    mean, std = torch.tensor([[0.5, -2.0]]), torch.tensor([[0.3, 1.7]])
    n = 40_000
    params = torch.stack((mean.expand(n, 2), std.expand(n, 2)))
    torch.manual_seed(6)
    samples = GaussianPolicy(1, 2, (2,)).sample(params).double()
    se_mean = std.double() / math.sqrt(n)
    assert ((samples.mean(0) - mean.double()).abs() < 5 * se_mean).all(), samples.mean(0)
    se_std = std.double() / math.sqrt(2 * (n - 1))  # the standard error of a normal sample's std
    assert ((samples.std(0) - std.double()).abs() < 5 * se_std).all(), samples.std(0)


def test_mlp_layers_are_orthogonal_with_their_gains_and_zero_biases() -> None:
    torch.manual_seed(0)
    net = mlp((5, 16, 8, 3), out_gain=0.01)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 16), (16, 8), (8, 3)]
    assert sum(isinstance(m, nn.Tanh) for m in net) == 2
    assert isinstance(net[-1], nn.Linear)
    for linear, gain in zip(linears, (math.sqrt(2), math.sqrt(2), 0.01), strict=True):
        w = linear.weight.detach().double()
        small = min(w.shape)
        gram = w @ w.T if w.shape[0] == small else w.T @ w  # the smaller Gram matrix is gain^2 I
        torch.testing.assert_close(gram, gain**2 * torch.eye(small, dtype=DT), rtol=0, atol=1e-5 * gain**2)
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))


def test_make_policy_chooses_by_the_action_space_and_the_value_network_has_one_output() -> None:
    assert isinstance(make_policy(4, 2, 1, (8,)), CategoricalPolicy)
    gaussian = make_policy(3, None, 2, (8,), log_std=-1.0)
    assert isinstance(gaussian, GaussianPolicy)
    assert torch.equal(gaussian.log_std.detach(), torch.full((2,), -1.0))
    assert value_network(3, (8, 8))(torch.zeros(5, 3)).shape == (5, 1)
