"""Batches of gymnasium environments stepped in one process: automatic reset, episode returns, and a state a
checkpoint can hold, so that a run resumed in the middle of its episodes continues them exactly.

Each environment is ``gymnasium.make(env_id).unwrapped`` (the time limit is applied here, from the environment's
registered ``max_episode_steps``) seeded ``seed + i`` at its first reset. An episode that ends, by termination or
by the time limit, is reset in the same step: :meth:`EnvBatch.step` returns the first observation of the next
episode and, separately, the last observation of the one that ended (needed to bootstrap a truncated episode's
value). The classic-control tasks are pure Python and cost microseconds per step, so they are stepped in a loop
in this process: gymnasium's subprocess vector environments would add inter-process traffic to every step.

The state (:meth:`EnvBatch.state_dict`) holds each environment's attributes that are arrays, numbers, strings or
``None``, its random generator's state and the episode counters, in types that ``torch.load(weights_only=True)``
restores. An environment that keeps state in other objects (Box2D worlds, MuJoCo data) is refused when the batch
is made, since a resumed run could not continue it.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kldiv.runs.errors import OptionError

__all__ = ["EnvBatch", "Episode", "MissingExtraError", "StepResult", "import_gymnasium"]

INSTALL_HINT = "pip install 'kldiv[rl]'"


class MissingExtraError(ImportError):
    """An optional dependency of kldiv is not installed (the message says which extra installs it)."""


def import_gymnasium() -> ModuleType:
    """The ``gymnasium`` module, or :class:`MissingExtraError` saying how to install it."""
    try:
        return importlib.import_module("gymnasium")
    except ImportError:
        raise MissingExtraError(
            f"the reinforcement-learning commands need gymnasium, which is not installed: {INSTALL_HINT}"
        ) from None


@dataclass(frozen=True)
class Episode:
    """A finished episode: its undiscounted ``score`` (return), ``length`` in steps, and ``step``, the total number of
    environment steps of the batch (all environments) when it ended."""

    step: int
    score: float
    length: int


@dataclass(frozen=True)
class StepResult:
    """One step of every environment: ``observations`` ``(N, obs_dim)`` to act on next (the first of a new episode
    where one ended), ``rewards``, ``terminated`` and ``truncated`` ``(N,)``, and ``final_observations``: the last
    observation of each episode that ended (the same as ``observations`` where none did)."""

    observations: Tensor
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    final_observations: Tensor


_PLAIN = (type(None), bool, int, float, str)


def _encode(value: object) -> object:
    """``value`` in types ``torch.load(weights_only=True)`` restores, tagged so :func:`_decode` rebuilds it
    exactly; ``NotImplemented`` when it cannot be."""
    if isinstance(value, _PLAIN):
        return {"plain": value}
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return {"array": torch.from_numpy(value.copy())}
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return {"scalar": torch.from_numpy(np.asarray(value).copy())}
    if isinstance(value, (tuple, list)):
        items = [_encode(v) for v in value]
        if any(i is NotImplemented for i in items):
            return NotImplemented
        return {"tuple" if isinstance(value, tuple) else "list": items}
    return NotImplemented


def _decode(encoded: object) -> object:
    if not (isinstance(encoded, dict) and len(encoded) == 1):
        raise ValueError(f"not an encoded attribute: {encoded!r}")
    ((kind, value),) = encoded.items()
    if kind == "plain" and isinstance(value, _PLAIN):
        return value
    if kind == "array" and isinstance(value, Tensor):
        return value.numpy().copy()
    if kind == "scalar" and isinstance(value, Tensor):
        return value.numpy()[()]
    if kind in ("tuple", "list") and isinstance(value, list):
        items = [_decode(v) for v in value]
        return tuple(items) if kind == "tuple" else items
    raise ValueError(f"not an encoded attribute: {encoded!r}")


def _is_static(value: object, gym: ModuleType) -> bool:
    """Attributes that never change while stepping: spaces, the spec, the random generator (saved apart)."""
    return isinstance(value, (gym.Space, gym.envs.registration.EnvSpec, np.random.Generator))


class EnvBatch:
    """``n_envs`` copies of the gymnasium environment ``env_id``, stepped together (see the module docstring).

    Raises :class:`OptionError` naming ``env`` for an unknown environment, one whose observations are not a 1-D
    box, one whose actions are neither discrete nor a box, or one whose state cannot be checkpointed;
    :class:`MissingExtraError` without gymnasium.
    """

    def __init__(self, env_id: str, n_envs: int, seed: int) -> None:
        gym = import_gymnasium()
        if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
            raise OptionError("n_envs", f"must be an integer >= 1, got {n_envs!r}")
        if not isinstance(env_id, str):
            raise OptionError("env", f"must be a gymnasium environment id such as 'CartPole-v1', got {env_id!r}")
        try:
            spec = gym.spec(env_id)
            envs = [gym.make(env_id, disable_env_checker=True).unwrapped for _ in range(n_envs)]
        except gym.error.Error as e:
            raise OptionError("env", f"{env_id!r}: {e}") from None
        except ImportError as e:  # an environment whose own extra is missing (box2d, mujoco)
            raise OptionError("env", f"{env_id!r} needs a package that is not installed ({e})") from None
        first = envs[0]
        obs_space, action_space = first.observation_space, first.action_space
        if not (isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1):
            raise OptionError("env", f"{env_id!r} has observations {obs_space}; the agents take a 1-D Box")
        if isinstance(action_space, gym.spaces.Discrete):
            self.n_actions: int | None = int(action_space.n)
            self.action_dim = 1
            self.action_low = self.action_high = None
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            self.n_actions = None
            self.action_dim = int(action_space.shape[0])
            self.action_low = torch.as_tensor(action_space.low, dtype=torch.float32)
            self.action_high = torch.as_tensor(action_space.high, dtype=torch.float32)
        else:
            raise OptionError("env", f"{env_id!r} has actions {action_space}; the agents take Discrete or a 1-D Box")
        self.env_id = env_id
        self.obs_dim = int(obs_space.shape[0])
        self.max_episode_steps: int | None = spec.max_episode_steps
        self.reward_threshold: float | None = spec.reward_threshold
        self.envs = envs
        self.seed = seed
        self._gym = gym
        self._observations = torch.stack([self._tensor(env.reset(seed=seed + i)[0]) for i, env in enumerate(envs)])
        refused = self._encoded_attributes(first)[1]
        if refused:
            raise OptionError("env", self._unsaveable(refused))
        self.elapsed = [0] * n_envs
        self.scores = [0.0] * n_envs
        self.total_steps = 0
        self.episodes: list[Episode] = []

    @property
    def n_envs(self) -> int:
        """The number of environments."""
        return len(self.envs)

    @property
    def discrete(self) -> bool:
        """Whether the actions are discrete."""
        return self.n_actions is not None

    @property
    def observations(self) -> Tensor:
        """The observations to act on ``(N, obs_dim)`` (float32; :meth:`step` never changes this tensor)."""
        return self._observations

    def _tensor(self, obs: Any) -> Tensor:
        return torch.as_tensor(np.asarray(obs, dtype=np.float32))

    def _encoded_attributes(self, env: Any) -> tuple[dict[str, object], list[str]]:
        """The environment's attributes as :func:`_encode` stores them (the static ones left out), and the
        descriptions of those it cannot store."""
        encoded, refused = {}, []
        for name, value in vars(env).items():
            if name == "_np_random" or _is_static(value, self._gym):
                continue
            item = _encode(value)
            if item is NotImplemented:
                refused.append(f"{name}: {type(value).__name__}")
            else:
                encoded[name] = item
        return encoded, refused

    def _unsaveable(self, refused: list[str]) -> str:
        return (
            f"{self.env_id!r} keeps its state in objects a checkpoint cannot hold ({', '.join(refused)}); the RL "
            "commands train on environments whose state is arrays and numbers, such as the classic-control tasks "
            "(CartPole-v1, Acrobot-v1, MountainCar-v0, Pendulum-v1)"
        )

    def env_actions(self, actions: Tensor) -> list[Any]:
        """Each environment's action as it takes it: ints, or float32 arrays clipped to the box (``ValueError`` for
        actions of the wrong shape or outside the discrete range)."""
        n = self.n_envs
        if self.n_actions is not None:
            if actions.shape != (n,):
                raise ValueError(
                    f"actions must be ({n},): one action index per environment, got {tuple(actions.shape)}"
                )
            values = [int(a) for a in actions.tolist()]
            bad = next((i for i, a in enumerate(values) if not 0 <= a < self.n_actions), None)
            if bad is not None:
                raise ValueError(
                    f"actions[{bad}] is {values[bad]}; {self.env_id} takes actions 0 .. {self.n_actions - 1}"
                )
            return values
        if actions.shape != (n, self.action_dim):
            raise ValueError(
                f"actions must be ({n}, {self.action_dim}): one action vector per environment, got "
                f"{tuple(actions.shape)}"
            )
        assert self.action_low is not None
        assert self.action_high is not None
        return list(torch.clamp(actions, self.action_low, self.action_high).numpy().astype(np.float32))

    def step(self, actions: Tensor) -> StepResult:
        """Step every environment with its row of ``actions`` (``(N,)`` ints or ``(N, action_dim)`` floats, on the
        CPU); episodes that end are recorded in :attr:`episodes` and reset."""
        n = self.n_envs
        env_actions = self.env_actions(actions)
        rewards = np.empty(n, dtype=np.float32)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        final = np.empty((n, self.obs_dim), dtype=np.float32)
        following = np.empty((n, self.obs_dim), dtype=np.float32)  # new arrays: observations handed out stay
        self.total_steps += n
        limit = self.max_episode_steps
        for i, (env, action) in enumerate(zip(self.envs, env_actions, strict=True)):
            obs, reward, term, trunc, _ = env.step(action)
            self.elapsed[i] += 1
            self.scores[i] += float(reward)
            rewards[i] = reward
            final[i] = obs
            if term or trunc or (limit is not None and self.elapsed[i] >= limit):
                terminated[i], truncated[i] = bool(term), not term
                self.episodes.append(Episode(self.total_steps, self.scores[i], self.elapsed[i]))
                self.elapsed[i], self.scores[i] = 0, 0.0
                obs, _ = env.reset()
            following[i] = obs
        self._observations = torch.from_numpy(following)
        return StepResult(
            torch.from_numpy(following.copy()),
            torch.from_numpy(rewards),
            torch.from_numpy(terminated),
            torch.from_numpy(truncated),
            torch.from_numpy(final),
        )

    def recent_score(self, episodes: int = 20) -> float:
        """The mean return of the last ``episodes`` finished episodes (NaN before the first)."""
        recent = self.episodes[-episodes:]
        return sum(e.score for e in recent) / len(recent) if recent else math.nan

    # ------------------------------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (see the module docstring); ``ValueError`` if an environment has
        come to hold an object a checkpoint cannot store."""
        envs = []
        for env in self.envs:
            attributes, refused = self._encoded_attributes(env)
            if refused:
                raise ValueError(self._unsaveable(refused))
            envs.append({"attributes": attributes, "rng": env.np_random.bit_generator.state})
        return {
            "env_id": self.env_id,
            "observations": self._observations.clone(),
            "envs": envs,
            "elapsed": list(self.elapsed),
            "scores": list(self.scores),
            "total_steps": self.total_steps,
            "episodes": {
                "step": torch.tensor([e.step for e in self.episodes], dtype=torch.int64),
                "score": torch.tensor([e.score for e in self.episodes], dtype=torch.float64),
                "length": torch.tensor([e.length for e in self.episodes], dtype=torch.int64),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s result (checked first: ``ValueError`` for a state of another batch)."""
        n = self.n_envs
        try:
            if state["env_id"] != self.env_id or len(state["envs"]) != n:
                raise ValueError(f"it is the state of {len(state['envs'])} x {state['env_id']!r}")
            observations = state["observations"]
            if not (isinstance(observations, Tensor) and observations.shape == self._observations.shape):
                raise ValueError("its observations have another shape")
            decoded = [{k: _decode(v) for k, v in e["attributes"].items()} for e in state["envs"]]
            episodes = state["episodes"]
            steps, scores, lengths = (episodes[k].tolist() for k in ("step", "score", "length"))
            elapsed, running = [int(v) for v in state["elapsed"]], [float(v) for v in state["scores"]]
            total = int(state["total_steps"])
            if len(elapsed) != n or len(running) != n or not len(steps) == len(scores) == len(lengths):
                raise ValueError("its counters have the wrong lengths")
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not the state of an environment batch ({type(e).__name__}: {e})") from None
        for env, attributes, saved in zip(self.envs, decoded, state["envs"], strict=True):
            for name, value in attributes.items():
                setattr(env, name, value)
            env.np_random.bit_generator.state = saved["rng"]
        self._observations = observations.clone()
        self.elapsed, self.scores, self.total_steps = elapsed, running, total
        self.episodes = [Episode(int(s), float(r), int(k)) for s, r, k in zip(steps, scores, lengths, strict=True)]
