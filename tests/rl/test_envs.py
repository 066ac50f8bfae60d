"""The environment batch: the same steps as gymnasium's own wrappers, time limits reported as truncation, exact
continuation from a saved state, and clear refusals (unknown ids, state a checkpoint cannot hold, bad actions,
gymnasium missing)."""

from __future__ import annotations

import io
import math
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from kldiv.rl.envs import EnvBatch, MissingExtraError
from kldiv.runs import OptionError

gym = pytest.importorskip("gymnasium", reason="the environment batch needs gymnasium (pip install 'kldiv[rl]')")

ENVS = ["CartPole-v1", "Pendulum-v1"]
CART_X_LIMIT, POLE_ANGLE_LIMIT = 2.4, 12 * 2 * math.pi / 360  # CartPole's termination bounds


def _actions(env_id: str, n: int, gen: torch.Generator) -> Tensor:
    """Random actions: CartPole's 0/1, Pendulum's torques in [-2, 2]."""
    if env_id.startswith("CartPole"):
        return torch.randint(0, 2, (n,), generator=gen)
    return 4 * torch.rand(n, 1, generator=gen) - 2


def _record(envs: EnvBatch, steps: int, gen: torch.Generator) -> dict[str, Tensor]:
    """Step ``steps`` times with seeded random actions; every output stacked over the steps."""
    out: dict[str, list[Tensor]] = {k: [] for k in ("obs", "rewards", "terminated", "truncated", "final")}
    for _ in range(steps):
        result = envs.step(_actions(envs.env_id, envs.n_envs, gen))
        out["obs"].append(result.observations)
        out["rewards"].append(result.rewards)
        out["terminated"].append(result.terminated)
        out["truncated"].append(result.truncated)
        out["final"].append(result.final_observations)
    return {k: torch.stack(v) for k, v in out.items()}


# --------------------------------------------------------------------------------- the steps themselves


@pytest.mark.parametrize("env_id", ENVS)
def test_the_batch_steps_each_environment_as_gymnasium_with_its_time_limit_does(env_id: str) -> None:
    n, steps = 2, 260
    envs = EnvBatch(env_id, n, seed=7)
    gen = torch.Generator().manual_seed(1)
    first = envs.observations.clone()
    actions = [_actions(env_id, n, gen) for _ in range(steps)]
    results = [envs.step(a) for a in actions]
    expected = []  # (step index, environment, score, length) of every finished episode
    for i in range(n):
        plain = gym.make(env_id, disable_env_checker=True)  # TimeLimit included
        obs, _ = plain.reset(seed=7 + i)
        assert torch.equal(first[i], torch.as_tensor(obs, dtype=torch.float32))
        score, length = 0.0, 0
        for t, (action, result) in enumerate(zip(actions, results, strict=True)):
            a = int(action[i]) if env_id.startswith("CartPole") else action[i].numpy()
            obs, reward, terminated, truncated, _ = plain.step(a)
            score, length = score + float(reward), length + 1
            assert torch.equal(result.final_observations[i], torch.as_tensor(obs, dtype=torch.float32)), t
            assert float(result.rewards[i]) == pytest.approx(reward, rel=1e-6), t
            assert bool(result.terminated[i]) == terminated, t
            assert bool(result.truncated[i]) == (truncated and not terminated), t
            if terminated or truncated:
                expected.append((t, i, score, length))
                score, length = 0.0, 0
                obs, _ = plain.reset()
            assert torch.equal(result.observations[i], torch.as_tensor(obs, dtype=torch.float32)), t
    assert len(expected) >= 2
    expected.sort()  # the batch logs the episodes by the step they ended, then by environment
    assert [(e.step, e.length) for e in envs.episodes] == [(n * (t + 1), length) for t, _, _, length in expected]
    assert [e.score for e in envs.episodes] == pytest.approx([score for _, _, score, _ in expected], rel=1e-12)
    assert envs.total_steps == n * steps


def test_pendulum_episodes_end_by_the_time_limit_as_truncations_of_200_steps() -> None:
    envs = EnvBatch("Pendulum-v1", 3, seed=0)
    record = _record(envs, 450, torch.Generator().manual_seed(2))
    assert not record["terminated"].any()
    ended = record["truncated"]
    assert ended.nonzero()[:, 0].unique().tolist() == [199, 399]  # steps 200 and 400 of every environment
    assert ended[[199, 399]].all()
    assert [(e.step, e.length) for e in envs.episodes] == [(600, 200)] * 3 + [(1200, 200)] * 3
    rewards = record["rewards"].double()
    for k, e in enumerate(envs.episodes):
        first = 0 if k < 3 else 200
        assert e.score == pytest.approx(float(rewards[first : first + 200, k % 3].sum()), rel=1e-6)
    differs = (record["final"] != record["obs"]).any(-1)
    assert torch.equal(differs, ended)  # the last observation of an episode is reported apart, only there


def test_cartpole_terminations_end_outside_the_bounds_and_restart_near_zero() -> None:
    envs = EnvBatch("CartPole-v1", 4, seed=3)
    record = _record(envs, 200, torch.Generator().manual_seed(4))
    ended = record["terminated"]
    assert ended.sum() >= 10
    assert not record["truncated"].any()  # random play never lasts 500 steps
    final, obs = record["final"][ended], record["obs"][ended]
    assert ((final[:, 0].abs() > CART_X_LIMIT) | (final[:, 2].abs() > POLE_ANGLE_LIMIT)).all()
    assert (obs.abs() <= 0.05).all()  # a reset draws every state variable from U(-0.05, 0.05)
    assert torch.equal((record["final"] != record["obs"]).any(-1), ended)
    assert all(e.score == e.length for e in envs.episodes)  # +1 per step


# ------------------------------------------------------------------------------------------- exact resume


def _round_trip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return loaded


@pytest.mark.parametrize("env_id", ENVS)
def test_a_batch_restored_from_its_state_replays_exactly_across_episode_ends(env_id: str) -> None:
    envs = EnvBatch(env_id, 3, seed=11)
    gen = torch.Generator().manual_seed(5)
    _record(envs, 37, gen)
    state = _round_trip(envs.state_dict())
    action_state = gen.get_state()
    original = _record(envs, 300, gen)
    assert (original["terminated"] | original["truncated"]).sum() >= 3  # the replay crosses episode ends
    restored = EnvBatch(env_id, 3, seed=12345)  # another seed: everything must come from the state
    restored.load_state_dict(state)
    replay = _record(restored, 300, torch.Generator().set_state(action_state))
    for key in original:
        assert torch.equal(replay[key], original[key]), key
    assert restored.episodes == envs.episodes
    assert restored.total_steps == envs.total_steps == 3 * 337
    assert (restored.elapsed, restored.scores) == (envs.elapsed, envs.scores)


def test_load_state_dict_refuses_the_state_of_another_batch() -> None:
    cartpole = EnvBatch("CartPole-v1", 2, seed=0)
    with pytest.raises(ValueError, match=r"state of 2 x 'Pendulum-v1'"):
        cartpole.load_state_dict(EnvBatch("Pendulum-v1", 2, seed=0).state_dict())
    with pytest.raises(ValueError, match=r"state of 3 x 'CartPole-v1'"):
        cartpole.load_state_dict(EnvBatch("CartPole-v1", 3, seed=0).state_dict())
    with pytest.raises(ValueError, match="not the state of an environment batch"):
        cartpole.load_state_dict({"env_id": "CartPole-v1"})
    state = cartpole.state_dict()
    state["elapsed"] = [0]
    with pytest.raises(ValueError, match="wrong lengths"):
        cartpole.load_state_dict(state)


# ------------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("env_id", ["NoSuchEnv-v0", "CartPole", "CartPole-v99", 42, "LunarLander-v3"])
def test_an_environment_that_cannot_be_made_or_checkpointed_is_an_option_error_naming_env(env_id: object) -> None:
    # LunarLander needs Box2D; where Box2D is installed, its Box2D world cannot be checkpointed
    with pytest.raises(OptionError) as info:
        EnvBatch(env_id, 1, seed=0)  # type: ignore[arg-type]
    assert info.value.option == "env"
    assert repr(env_id) in str(info.value)


class _Base(gym.Env):  # type: ignore[misc,name-defined]
    """A one-dimensional environment that ends every episode after one step."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,))
    action_space = gym.spaces.Discrete(2)

    def _observation(self) -> Any:
        return self.np_random.uniform(-1.0, 1.0, size=1).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        return self._observation(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        return self._observation(), 0.0, True, False, {}


class KeepsAnObject(_Base):
    def __init__(self) -> None:
        self.world = object()  # like a physics engine's handle


class DiscreteObservations(_Base):
    observation_space = gym.spaces.Discrete(3)


class ImageObservations(_Base):
    observation_space = gym.spaces.Box(0.0, 1.0, (4, 4))


class MultiDiscreteActions(_Base):
    action_space = gym.spaces.MultiDiscrete([2, 3])


class LearnsLate(_Base):
    """Keeps a number that it first sets in ``step``: the reward is 1 when the action repeats the previous one."""

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        reward = float(getattr(self, "previous", -1) == int(action))
        self.previous = int(action)
        return self._observation(), reward, False, False, {}


@pytest.fixture
def register() -> Iterator[Any]:
    """Register an environment class of this module under a test id (removed afterwards)."""
    ids: list[str] = []

    def add(cls: type) -> str:
        env_id = f"KldivTest/{cls.__name__}-v0"
        gym.register(env_id, entry_point=cls)
        ids.append(env_id)
        return env_id

    yield add
    for env_id in ids:
        del gym.registry[env_id]


def test_an_environment_keeping_state_in_an_object_is_refused_naming_it(register: Any) -> None:
    env_id = register(KeepsAnObject)
    with pytest.raises(OptionError, match=r"world: object") as info:
        EnvBatch(env_id, 2, seed=0)
    assert info.value.option == "env"


@pytest.mark.parametrize(
    ("cls", "shown"),
    [
        (DiscreteObservations, "observations Discrete"),
        (ImageObservations, "observations Box"),
        (MultiDiscreteActions, "actions MultiDiscrete"),
    ],
)
def test_spaces_the_agents_cannot_take_are_refused(register: Any, cls: type, shown: str) -> None:
    with pytest.raises(OptionError, match=shown) as info:
        EnvBatch(register(cls), 1, seed=0)
    assert info.value.option == "env"


def test_an_attribute_first_set_while_stepping_is_part_of_the_state(register: Any) -> None:
    env_id = register(LearnsLate)
    envs = EnvBatch(env_id, 1, seed=0)
    envs.step(torch.tensor([1]))
    restored = EnvBatch(env_id, 1, seed=0)
    restored.load_state_dict(_round_trip(envs.state_dict()))
    assert float(restored.step(torch.tensor([1])).rewards[0]) == float(envs.step(torch.tensor([1])).rewards[0]) == 1.0


def test_without_gymnasium_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> types.ModuleType:
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr("kldiv.rl.envs.importlib", types.SimpleNamespace(import_module=missing))
    with pytest.raises(MissingExtraError, match=r"need gymnasium.*pip install 'kldiv\[rl\]'") as info:
        EnvBatch("CartPole-v1", 1, seed=0)
    assert isinstance(info.value, ImportError)


def test_step_refuses_a_wrong_number_of_action_rows() -> None:
    envs = EnvBatch("CartPole-v1", 3, seed=0)
    with pytest.raises(ValueError, match=r"actions must be \(3,\): one action index per environment, got \(2,\)"):
        envs.step(torch.tensor([0, 1]))
    assert envs.total_steps == 0


def test_step_refuses_box_actions_of_the_wrong_width() -> None:
    envs = EnvBatch("Pendulum-v1", 2, seed=0)  # one torque per environment
    with pytest.raises(ValueError, match="action"):
        envs.step(torch.zeros(2, 3))


def test_step_refuses_discrete_actions_outside_the_action_space() -> None:
    envs = EnvBatch("CartPole-v1", 2, seed=0)  # actions 0 and 1
    with pytest.raises(ValueError, match="action"):
        envs.step(torch.tensor([0, 5]))


def test_a_batch_of_no_environments_is_refused_naming_n_envs() -> None:
    with pytest.raises(ValueError, match="n_envs"):
        EnvBatch("CartPole-v1", 0, seed=0)


def test_box_actions_are_clipped_to_the_action_space() -> None:
    envs = EnvBatch("Pendulum-v1", 1, seed=0)
    (clipped,) = envs.env_actions(torch.tensor([[5.0]]))
    assert clipped.dtype == np.float32
    assert clipped.tolist() == [2.0]
    assert envs.env_actions(torch.tensor([[-0.5]]))[0].tolist() == [-0.5]
