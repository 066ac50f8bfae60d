"""The KL controllers' updates, the exact policy KLs, and the KL-penalized rewards."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from kldiv.rl import (
    AdaptiveKLController,
    FixedKLController,
    categorical_policy_kl,
    gaussian_policy_kl,
    kl_penalized_rewards,
)

DT = torch.float64


@pytest.mark.parametrize("kl", [0.0, 0.05, 0.1, 0.13, 1.0, math.inf])
def test_adaptive_controller_update_equals_its_formula(kl: float) -> None:
    controller = AdaptiveKLController(value=0.2, target=0.1, horizon=10_000)
    error = min(max(kl / 0.1 - 1, -0.2), 0.2)
    assert controller.update(kl, 256) == pytest.approx(0.2 * (1 + error * 256 / 10_000), rel=1e-15)
    assert controller.value == pytest.approx(0.2 * (1 + error * 256 / 10_000), rel=1e-15)


def test_adaptive_controller_converges_towards_its_target_direction() -> None:
    controller = AdaptiveKLController(value=1.0, target=6.0, horizon=100)
    for _ in range(10):
        controller.update(12.0, 10)  # above target: the coefficient grows by 2% each time
    assert controller.value == pytest.approx(1.02**10)
    fixed = FixedKLController(0.05)
    assert fixed.update(3.0, 10) == 0.05


def test_controllers_name_bad_arguments() -> None:
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(value=0.1, target=0.0, horizon=10)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(value=0.1, target=1.0, horizon=-1)
    with pytest.raises(ValueError, match="n_steps"):
        AdaptiveKLController(value=0.1, target=1.0, horizon=10).update(0.5, -1)
    with pytest.raises(ValueError, match="current_kl"):
        FixedKLController(0.1).update(math.nan, 1)
    with pytest.raises(ValueError, match="horizon larger than"):
        AdaptiveKLController(value=0.1, target=1.0, horizon=10).update(0.0, 100)


def test_categorical_policy_kl_is_exact_and_masked() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, dtype=DT, generator=gen), torch.randn(3, 5, dtype=DT, generator=gen)
    a[1, 2] = -math.inf
    p, log_p, log_q = torch.softmax(a, -1), torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    manual = torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)
    torch.testing.assert_close(categorical_policy_kl(a, b, reduction="none"), manual, rtol=1e-13, atol=0)
    mask = torch.tensor([True, False, True])
    assert categorical_policy_kl(a, b, mask=mask).item() == pytest.approx((manual[0] + manual[2]).item() / 2)


def test_gaussian_policy_kl_sums_over_actions() -> None:
    gen = torch.Generator().manual_seed(1)
    mu_p, mu_q = torch.randn(4, 2, dtype=DT, generator=gen), torch.randn(4, 2, dtype=DT, generator=gen)
    s_p, s_q = torch.rand(4, 2, dtype=DT, generator=gen) + 0.1, torch.rand(4, 2, dtype=DT, generator=gen) + 0.1
    expected = kl_divergence(Normal(mu_p, s_p), Normal(mu_q, s_q)).sum(-1)
    torch.testing.assert_close(gaussian_policy_kl(mu_p, s_p, mu_q, s_q, reduction="none"), expected, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="action dimension"):
        gaussian_policy_kl(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.0), torch.tensor(1.0))


def test_kl_penalized_rewards_hand_case() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -0.2, -9.0]], dtype=DT)
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.3, -0.2, 0.0]], dtype=DT)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    rewards = kl_penalized_rewards(torch.tensor([1.0, -2.0], dtype=DT), logprobs, ref, kl_coef=0.1, mask=mask)
    # k1 = log pi - log pi_ref per token; the score on the last unmasked token
    expected = torch.tensor([[-0.05, 0.1, 0.0 + 1.0], [-0.02, 0.0 - 2.0, 0.0]], dtype=DT)
    torch.testing.assert_close(rewards, expected, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="at least one unmasked token"):
        kl_penalized_rewards(torch.zeros(2, dtype=DT), logprobs, ref, kl_coef=0.1, mask=torch.zeros_like(mask))
    with pytest.raises(ValueError, match="scores must be"):
        kl_penalized_rewards(torch.zeros(3, dtype=DT), logprobs, ref, kl_coef=0.1)
    with pytest.raises(ValueError, match="kl_coef"):
        kl_penalized_rewards(torch.zeros(2, dtype=DT), logprobs, ref, kl_coef=-1.0)
