"""What the RL trainers share: GAE against its definition, the rollout's bootstrapping of truncated episodes, the
score helpers, the update log's state and the hidden-width option."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from kldiv.rl.agents import CategoricalPolicy
from kldiv.rl.training import (
    UpdateLog,
    collect_rollout,
    epoch_plan,
    gae,
    parse_hidden,
    steps_to_score,
    trailing_mean,
)
from kldiv.runs import OptionError

DT = torch.float64
FAST = settings(max_examples=60, deadline=None)


def _naive_gae(rewards: Tensor, values: Tensor, ends: Tensor, next_values: Tensor, gamma: float, lam: float) -> Tensor:
    """``A_t = sum_l (gamma lam)^l delta_{t+l}``, the sum stopping after the step where the episode ends, with
    ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)`` and no ``V(s_{t+1})`` after an episode's last step."""
    steps, n = rewards.shape
    out = torch.zeros_like(rewards)
    for i in range(n):
        for t in range(steps):
            total = 0.0
            for k in range(t, steps):
                following = 0.0 if ends[k, i] else (values[k + 1, i] if k + 1 < steps else next_values[i])
                delta = rewards[k, i] + gamma * following - values[k, i]
                total += (gamma * lam) ** (k - t) * delta
                if ends[k, i]:
                    break
            out[t, i] = total
    return out


@FAST
@given(
    steps=st.integers(1, 9),
    n=st.integers(1, 4),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
    end_rate=st.sampled_from([0.0, 0.2, 0.6, 1.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_gae_equals_the_sum_of_discounted_td_errors_within_each_episode(
    steps: int, n: int, gamma: float, lam: float, end_rate: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    rewards, values = torch.randn(steps, n, dtype=DT, generator=gen), torch.randn(steps, n, dtype=DT, generator=gen)
    next_values = torch.randn(n, dtype=DT, generator=gen)
    ends = torch.rand(steps, n, dtype=DT, generator=gen) < end_rate
    advantages, returns = gae(rewards, values, ends, next_values, gamma=gamma, lam=lam)
    expected = _naive_gae(rewards, values, ends, next_values, gamma, lam)
    torch.testing.assert_close(advantages, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(returns, advantages + values, rtol=0, atol=0)


@pytest.mark.parametrize(("steps", "n"), [(1, 1), (7, 3), (32, 2)])
def test_gae_with_gamma_and_lambda_one_is_the_reward_to_go_minus_the_value(steps: int, n: int) -> None:
    gen = torch.Generator().manual_seed(steps)
    rewards, values = torch.randn(steps, n, dtype=DT, generator=gen), torch.randn(steps, n, dtype=DT, generator=gen)
    next_values = torch.randn(n, dtype=DT, generator=gen)
    ends = torch.zeros(steps, n, dtype=torch.bool)
    advantages, returns = gae(rewards, values, ends, next_values, gamma=1.0, lam=1.0)
    to_go = rewards.flip(0).cumsum(0).flip(0) + next_values  # the rollout's end bootstraps with V(s_T)
    torch.testing.assert_close(advantages, to_go - values, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(returns, to_go, rtol=1e-12, atol=1e-12)


def test_gae_with_lambda_zero_is_the_one_step_td_error() -> None:
    gen = torch.Generator().manual_seed(3)
    rewards, values = torch.randn(6, 2, dtype=DT, generator=gen), torch.randn(6, 2, dtype=DT, generator=gen)
    next_values = torch.randn(2, dtype=DT, generator=gen)
    ends = torch.tensor([[False, True], [True, False], [False, False], [False, True], [True, True], [False, False]])
    advantages, _ = gae(rewards, values, ends, next_values, gamma=0.9, lam=0.0)
    following = torch.cat([values[1:], next_values[None]])
    expected = rewards + 0.9 * torch.where(ends, 0.0, following) - values
    torch.testing.assert_close(advantages, expected, rtol=1e-14, atol=1e-14)


# ------------------------------------------------------------------------------------------- the rollout


@pytest.fixture
def staircase() -> Iterator[str]:
    """A registered environment with a known episode pattern: the observation is the step count ``t`` within the
    episode and the reward ``t``; even-numbered episodes terminate at ``t = 2``, odd ones run into the time limit
    of 3 steps."""
    gym = pytest.importorskip("gymnasium", reason="the rollout needs gymnasium (pip install 'kldiv[rl]')")

    class Staircase(gym.Env):  # type: ignore[misc,name-defined]
        observation_space = gym.spaces.Box(-math.inf, math.inf, (1,))
        action_space = gym.spaces.Discrete(2)

        def __init__(self) -> None:
            self.t = 0
            self.episode = -1

        def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict[str, Any]]:
            super().reset(seed=seed)
            self.t, self.episode = 0, self.episode + 1
            return [0.0], {}

        def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
            self.t += 1
            return [float(self.t)], float(self.t), self.episode % 2 == 0 and self.t == 2, False, {}

    env_id = "KldivTest/Staircase-v0"
    gym.register(env_id, entry_point=Staircase, max_episode_steps=3)
    yield env_id
    del gym.registry[env_id]


class _Affine(nn.Module):
    """``V(s) = 10 + s``: a value function whose bootstrap terms are easy to tell apart."""

    def forward(self, obs: Tensor) -> Tensor:
        return 10.0 + obs


def test_the_rollout_bootstraps_truncated_episodes_and_the_rollout_end_but_not_terminations(staircase: str) -> None:
    from kldiv.rl.envs import EnvBatch

    envs = EnvBatch(staircase, 2, seed=0)
    torch.manual_seed(0)
    gamma = 0.9
    rollout = collect_rollout(envs, CategoricalPolicy(1, 2, (4,)), _Affine(), 9, gamma=gamma, lam=1.0)
    # episodes of each environment: t = 1, 2 (terminated), t = 1, 2, 3 (truncated, V(3) = 13 bootstraps),
    # t = 1, 2 (terminated), t = 1, 2 (the rollout ends; the next state is t = 2, V = 12)
    rewards = [1, 2, 1, 2, 3, 1, 2, 1, 2]
    tails = {1: 0.0, 4: 13.0, 6: 0.0, 8: 12.0}  # the value after each episode's last step in the rollout
    expected, running = [0.0] * 9, 0.0
    for t in reversed(range(9)):
        running = rewards[t] + gamma * tails.get(t, running)
        expected[t] = running
    returns = rollout.returns.reshape(9, 2)
    for i in range(2):
        torch.testing.assert_close(returns[:, i], torch.tensor(expected), rtol=1e-6, atol=1e-5)
    observations = rollout.observations.reshape(9, 2)
    assert observations[:, 0].tolist() == [0, 1, 0, 1, 2, 0, 1, 0, 1]
    torch.testing.assert_close(rollout.advantages, rollout.returns - (10.0 + rollout.observations[:, 0]))
    assert [(e.score, e.length) for e in envs.episodes[:2]] == [(3.0, 2), (3.0, 2)]
    assert [(e.score, e.length) for e in envs.episodes[2:4]] == [(6.0, 3), (6.0, 3)]
    assert [e.step for e in envs.episodes] == [4, 4, 10, 10, 14, 14]  # both environments count
    assert rollout.actions.shape == rollout.log_probs.shape == (18,)


# ------------------------------------------------------------------------------------------ score helpers


@FAST
@given(scores=st.lists(st.floats(-100, 100), max_size=40), window=st.integers(1, 8))
def test_trailing_mean_is_the_mean_of_the_last_window_values(scores: list[float], window: int) -> None:
    means = trailing_mean(scores, window)
    assert len(means) == len(scores)
    for i, m in enumerate(means):
        last = scores[max(0, i - window + 1) : i + 1]
        assert m == pytest.approx(sum(last) / len(last), abs=1e-9)


@FAST
@given(
    scores=st.lists(st.integers(0, 10), max_size=30),
    window=st.integers(1, 5),
    threshold=st.integers(0, 10),
)
def test_steps_to_score_is_the_first_full_window_at_the_threshold(
    scores: list[int], window: int, threshold: int
) -> None:
    steps = [10 * (i + 1) for i in range(len(scores))]
    found = steps_to_score(steps, [float(s) for s in scores], float(threshold), window)
    hits = [
        steps[i] for i in range(window - 1, len(scores)) if sum(scores[i - window + 1 : i + 1]) >= threshold * window
    ]
    assert found == (hits[0] if hits else None)


def test_steps_to_score_hand_case() -> None:
    assert steps_to_score([5, 9, 12], [10.0, 30.0, 30.0], 20.0, window=2) == 9
    assert steps_to_score([5, 9, 12], [10.0, 20.0, 30.0], 40.0, window=2) is None
    assert steps_to_score([5], [100.0], 1.0, window=2) is None  # a full window is required


# ------------------------------------------------------------------------------------------ state, options


def test_epoch_plan_hand_cases() -> None:
    assert epoch_plan(1000, 300, 200) == (2, 3)  # 300 steps -> 2 updates of 200; 1000 steps -> 3 epochs of 400
    assert epoch_plan(256, 256, 256) == (1, 1)
    assert epoch_plan(1, 10_000, 256) == (40, 1)


@FAST
@given(total=st.integers(1, 10**6), epoch_steps=st.integers(1, 10**5), per_update=st.integers(1, 4096))
def test_epoch_plan_covers_the_run_with_whole_epochs_of_whole_updates(
    total: int, epoch_steps: int, per_update: int
) -> None:
    per_epoch, epochs = epoch_plan(total, epoch_steps, per_update)
    assert (per_epoch - 1) * per_update < epoch_steps <= per_epoch * per_update
    assert (epochs - 1) * per_epoch * per_update < total <= epochs * per_epoch * per_update
    assert epoch_plan(2 * total, epoch_steps, per_update)[0] == per_epoch  # a longer run only adds epochs


def test_update_log_round_trips_through_its_state_and_refuses_a_malformed_one() -> None:
    log = UpdateLog()
    assert log.state_dict()["values"].shape == (0, 0)
    log.append(update=1, kl=0.25, stopped=True)
    log.append(update=2, kl=math.nan, stopped=False)
    restored = UpdateLog()
    restored.load_state_dict(log.state_dict())
    assert restored.rows[0] == {"update": 1.0, "kl": 0.25, "stopped": 1.0}
    assert restored.rows[1]["update"] == 2.0
    assert math.isnan(restored.rows[1]["kl"])
    empty = UpdateLog()
    empty.load_state_dict(UpdateLog().state_dict())
    assert empty.rows == []
    with pytest.raises(ValueError, match="2 columns holds 3 values"):
        restored.load_state_dict({"columns": ["a", "b"], "values": torch.zeros(1, 3, dtype=DT)})
    with pytest.raises(ValueError, match="not the state of an update log"):
        restored.load_state_dict({"columns": "a", "values": torch.zeros(1, 1)})


@pytest.mark.parametrize(("text", "widths"), [("64,64", (64, 64)), (" 8 ", (8,)), ("3, 5,7", (3, 5, 7))])
def test_parse_hidden_reads_widths(text: str, widths: tuple[int, ...]) -> None:
    assert parse_hidden(text) == widths


@pytest.mark.parametrize("text", ["a,b", "", "64,,64", "6.5", 64, None, "0", "8,-1"])
def test_parse_hidden_refuses_anything_else_naming_hidden(text: object) -> None:
    with pytest.raises(OptionError) as info:
        parse_hidden(text)
    assert info.value.option == "hidden"
