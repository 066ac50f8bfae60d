"""The trust-region check and SAC's temperature loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kldiv.rl import categorical_policy_kl, policy_update_with_kl_constraint, sac_temperature_loss

DT = torch.float64


def _policies() -> tuple[nn.Linear, nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    old = nn.Linear(4, 3).double()
    new = nn.Linear(4, 3).double()
    new.load_state_dict(old.state_dict())
    return old, new, torch.randn(32, 4, dtype=DT)


def test_the_check_measures_the_exact_mean_kl() -> None:
    old, new, states = _policies()
    assert policy_update_with_kl_constraint(old, new, states, max_kl=1e-12) == (True, 0.0)
    with torch.no_grad():
        new.weight.add_(0.05)
    check = policy_update_with_kl_constraint(old, new, states, max_kl=0.01)
    with torch.no_grad():
        expected = float(categorical_policy_kl(old(states), new(states)))
    assert check.kl == pytest.approx(expected, rel=1e-15)
    assert check.satisfied == (expected <= 0.01)
    assert not policy_update_with_kl_constraint(old, new, states, max_kl=expected / 2).satisfied
    with pytest.raises(ValueError, match="max_kl"):
        policy_update_with_kl_constraint(old, new, states, max_kl=0.0)


def test_the_check_counts_an_action_the_old_policy_never_takes_as_nothing() -> None:
    # the tutorial's + 1e-10 inside the logs turns 0 * log(0) into 0 * log(1e-10) and is biased elsewhere; exact here
    old_logits = torch.tensor([[0.0, 1.0, -math.inf]], dtype=DT)
    new_logits = torch.tensor([[0.5, 0.2, 3.0]], dtype=DT)
    p, q = torch.softmax(old_logits, -1), torch.softmax(new_logits, -1)
    expected = float((p[0, :2] * (p[0, :2].log() - q[0, :2].log())).sum())
    check = policy_update_with_kl_constraint(
        lambda s: old_logits,
        lambda s: new_logits,
        torch.zeros(1, 1),
        max_kl=1.0,  # type: ignore[arg-type]
    )
    assert check.kl == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize(("entropy_gap", "direction"), [(0.5, -1), (-0.5, 1)])
def test_temperature_moves_the_right_way(entropy_gap: float, direction: int) -> None:
    """Entropy above its target: a gradient step lowers alpha; below: raises it."""
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]], dtype=DT)
    log_pi = probs.log()
    entropy = float(-(probs * log_pi).sum(-1).mean())
    target = entropy - entropy_gap
    log_alpha = torch.zeros(1, dtype=DT, requires_grad=True)
    loss = sac_temperature_loss(log_alpha, log_pi, target, probs=probs)
    (grad,) = torch.autograd.grad(loss, log_alpha)
    assert grad.item() == pytest.approx(entropy - target, rel=1e-13)  # dJ/dlog_alpha = H - target
    stepped = log_alpha.detach() - 0.1 * grad
    assert math.copysign(1, stepped.item()) == direction


def test_sampled_form_and_its_gradient() -> None:
    log_pi = torch.tensor([-1.2, -0.3, -2.0], dtype=DT, requires_grad=True)
    log_alpha = torch.tensor(0.4, dtype=DT, requires_grad=True)
    loss = sac_temperature_loss(log_alpha, log_pi, target_entropy=-1.0)
    g_alpha, g_pi = torch.autograd.grad(loss, (log_alpha, log_pi), allow_unused=True)
    assert g_alpha.item() == pytest.approx(-float((log_pi.detach() - 1.0).mean()), rel=1e-14)
    assert g_pi is None  # the policy gets no gradient from the temperature's loss


def test_actions_of_probability_zero_and_bad_input() -> None:
    probs = torch.tensor([[1.0, 0.0]], dtype=DT)
    log_alpha = torch.zeros(1, dtype=DT, requires_grad=True)
    loss = sac_temperature_loss(log_alpha, probs.log(), -0.5, probs=probs)
    (grad,) = torch.autograd.grad(loss, log_alpha)
    assert grad.item() == pytest.approx(0.0 - (-0.5))
    with pytest.raises(TypeError, match="log_alpha"):
        sac_temperature_loss(torch.zeros(2), torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="sampled actions"):
        sac_temperature_loss(torch.zeros(1), torch.zeros(3, 2), 0.0)
    with pytest.raises(ValueError, match="both be"):
        sac_temperature_loss(torch.zeros(1), torch.zeros(3, 2), 0.0, probs=torch.zeros(3, 3))
