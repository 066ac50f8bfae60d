"""What the RL trainers share: advantage estimation, the per-update log a checkpoint holds, the run's CSV files and
its learning-curve figure.

Every trainer runs through :class:`kldiv.runs.TrainingLoop`: an *epoch* there is a fixed number of updates (PPO and
TRPO: a rollout and an update; SAC: an environment step and a gradient step) that ends with a checkpoint and a row of
``metrics.csv``. Finer records are kept beside it, in the checkpoint too, so a resumed run writes the same files:
``updates.csv`` (one row per update: the measured KL, the coefficients, the losses) and ``episodes.csv`` (one row
per finished episode: the environment step at its end, its return and length).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kldiv.rl.agents import Policy
from kldiv.rl.envs import EnvBatch, Episode
from kldiv.runs import Run, csv_bytes
from kldiv.runs import options as check
from kldiv.runs.errors import OptionError

__all__ = [
    "SCORE_EPISODES",
    "RLResult",
    "Rollout",
    "RolloutPlan",
    "UpdateLog",
    "check_options",
    "check_total_steps",
    "collect_rollout",
    "epoch_plan",
    "gae",
    "parse_hidden",
    "steps_to_score",
    "write_logs",
]

SCORE_EPISODES = 20
"""The score of a run at a step: the mean return of the last 20 episodes finished by then."""


def epoch_plan(total_steps: int, epoch_steps: int, steps_per_update: int) -> tuple[int, int]:
    """``(updates per epoch, epochs)``: an epoch is ``epoch_steps`` environment steps rounded up to whole updates
    of ``steps_per_update`` steps, and the run ``total_steps`` rounded up to whole epochs (so a longer run, resumed,
    only adds epochs)."""
    per_epoch = math.ceil(epoch_steps / steps_per_update)
    return per_epoch, math.ceil(total_steps / (per_epoch * steps_per_update))


def check_options(
    config: Any, *, integers: tuple[str, ...] = (), numbers: tuple[str, ...] = (), flags: tuple[str, ...] = ()
) -> None:
    """Check the options every RL configuration has (``env``; ``total_steps``, ``n_envs``, ``epoch_steps`` >= 1;
    ``hidden``, normalized in place; ``seed``; ``figures``), and its ``integers`` (>= 1), ``numbers`` (> 0) and
    boolean ``flags``; :class:`OptionError` naming the first bad one."""
    if not isinstance(config.env, str) or not config.env:
        raise OptionError("env", f"must be a gymnasium environment id, got {config.env!r}")
    for name in ("total_steps", "n_envs", "epoch_steps", *integers):
        check.integer(name, getattr(config, name), low=1)
    for name in numbers:
        check.number(name, getattr(config, name), low=0.0, low_open=True)
    object.__setattr__(config, "hidden", ",".join(map(str, parse_hidden(config.hidden))))
    for name in ("figures", *flags):
        if not isinstance(getattr(config, name), bool):
            raise OptionError(name, "must be True or False")
    check.seed("seed", config.seed)


class RolloutPlan:
    """How an on-policy run (PPO, TRPO) is cut: rollouts of ``n_steps`` steps of ``n_envs`` environments, epochs
    of ``epoch_steps`` environment steps, ``total_steps`` in all (a mixin of their configurations)."""

    total_steps: int
    n_envs: int
    n_steps: int
    epoch_steps: int

    @property
    def batch(self) -> int:
        """Environment steps per update."""
        return self.n_envs * self.n_steps

    @property
    def updates_per_epoch(self) -> int:
        """Updates per epoch (``epoch_steps`` rounded up to whole updates)."""
        return epoch_plan(self.total_steps, self.epoch_steps, self.batch)[0]

    @property
    def epochs(self) -> int:
        """Epochs of the run (``total_steps`` rounded up to whole epochs)."""
        return epoch_plan(self.total_steps, self.epoch_steps, self.batch)[1]


def check_total_steps(run: Run, epochs: int, env_steps_per_epoch: int) -> None:
    """Refuse a resume whose ``total_steps`` is less than the run has trained, naming ``total_steps`` (the run
    layer would name its epochs, which the RL commands do not expose)."""
    state = run.checkpoint.state.get("loop") if run.checkpoint is not None else None
    done = state.get("epoch") if isinstance(state, dict) else None
    if isinstance(done, int) and done > epochs:
        raise OptionError(
            "total_steps",
            f"the run has trained {done * env_steps_per_epoch} environment steps ({done} epochs of "
            f"{env_steps_per_epoch}); give at least that many, or start a new run",
        )


def parse_hidden(text: object) -> tuple[int, ...]:
    """Hidden widths from ``"64,64"``; :class:`OptionError` naming ``hidden``."""
    return check.widths("hidden", text)


def gae(
    rewards: Tensor, values: Tensor, ends: Tensor, next_values: Tensor, *, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimates and returns of a rollout ``(T, N)`` (Schulman et al. 2016, eq. 16):

        delta_t = r_t + gamma (1 - end_t) V(s_{t+1}) - V(s_t)          A_t = delta_t + gamma lam (1 - end_t) A_{t+1}

    ``ends[t]`` marks an episode that ended at step ``t`` (its next state belongs to a new episode: nothing is
    bootstrapped across it; a truncated episode's bootstrap value belongs in its last reward). ``next_values``
    ``(N,)``: the values of the states after the rollout's last step. Returns ``(A, A + V)``.
    """
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(next_values)
    following = next_values
    for t in reversed(range(steps)):
        keep = (~ends[t]).to(rewards.dtype)
        delta = rewards[t] + gamma * keep * following - values[t]
        running = delta + gamma * lam * keep * running
        advantages[t] = running
        following = values[t]
    return advantages, advantages + values


@dataclass(frozen=True)
class Rollout:
    """``n_steps`` steps of every environment, flattened to ``B = n_steps * n_envs`` rows in time-major order:
    observations ``(B, obs_dim)``, actions, their log-probabilities under the acting policy, the advantages and the
    returns (value targets) by :func:`gae`."""

    observations: Tensor
    actions: Tensor
    log_probs: Tensor
    advantages: Tensor
    returns: Tensor


def collect_rollout(
    envs: EnvBatch, policy: Policy, value: nn.Module, n_steps: int, *, gamma: float, lam: float
) -> Rollout:
    """Act ``n_steps`` times in every environment with ``policy`` (sampling), then estimate the advantages by GAE
    with ``value``. A truncated episode (the time limit) bootstraps: its last reward gets ``gamma V(s_last)``."""
    n = envs.n_envs
    obs = torch.empty(n_steps, n, envs.obs_dim)
    actions: list[Tensor] = []
    log_probs, values = torch.empty(n_steps, n), torch.empty(n_steps, n)
    rewards, ends = torch.empty(n_steps, n), torch.empty(n_steps, n, dtype=torch.bool)
    with torch.no_grad():
        for t in range(n_steps):
            obs[t] = envs.observations
            params = policy(obs[t])
            action = policy.sample(params)
            actions.append(action)
            log_probs[t] = policy.log_prob(params, action)
            values[t] = value(obs[t]).squeeze(-1)
            result = envs.step(action)
            rewards[t] = result.rewards
            if bool(result.truncated.any()):
                bootstrap = value(result.final_observations).squeeze(-1)
                rewards[t] += torch.where(result.truncated, gamma * bootstrap, 0.0)
            ends[t] = result.terminated | result.truncated
        next_values = value(envs.observations).squeeze(-1)
    advantages, returns = gae(rewards, values, ends, next_values, gamma=gamma, lam=lam)
    batch = n_steps * n
    return Rollout(
        observations=obs.reshape(batch, -1),
        actions=torch.stack(actions).reshape(batch, *actions[0].shape[1:]),
        log_probs=log_probs.reshape(-1),
        advantages=advantages.reshape(-1),
        returns=returns.reshape(-1),
    )


@dataclass
class RLResult:
    """What a run produced: the policy (SAC: the actor), the per-epoch metrics, the per-update log, the finished
    episodes, and where the files are."""

    policy: nn.Module
    metrics: list[dict[str, float]]
    updates: list[dict[str, float]]
    episodes: list[Episode]
    out_dir: Path

    @property
    def episode_steps(self) -> list[int]:
        """The environment step at the end of each episode."""
        return [e.step for e in self.episodes]

    @property
    def episode_returns(self) -> list[float]:
        """Each episode's return."""
        return [e.score for e in self.episodes]


class UpdateLog:
    """One row of numbers per update (``updates.csv``), stateful so a checkpoint holds it."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def append(self, **values: float) -> None:
        """Add a row."""
        self.rows.append({k: float(v) for k, v in values.items()})

    def state_dict(self) -> dict[str, Any]:
        """The rows as column names and a float64 matrix."""
        columns = list(self.rows[0]) if self.rows else []
        values = torch.tensor([[row[c] for c in columns] for row in self.rows], dtype=torch.float64)
        return {"columns": columns, "values": values.reshape(len(self.rows), len(columns))}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s result."""
        columns, values = state.get("columns"), state.get("values")
        if not (isinstance(columns, list) and isinstance(values, Tensor) and values.dim() == 2):
            raise ValueError("not the state of an update log")
        if values.shape[1] != len(columns):
            raise ValueError(f"an update log with {len(columns)} columns holds {values.shape[1]} values per row")
        self.rows = [dict(zip(columns, row, strict=True)) for row in values.tolist()]


def write_logs(run: Run, envs: EnvBatch, log: UpdateLog) -> None:
    """Write ``updates.csv`` and ``episodes.csv`` into the run directory (atomically)."""
    run.write_bytes("updates.csv", csv_bytes(log.rows))
    episodes = [{"step": e.step, "return": e.score, "length": e.length} for e in envs.episodes]
    run.write_bytes("episodes.csv", csv_bytes(episodes))


def steps_to_score(steps: list[int], scores: list[float], threshold: float, window: int = SCORE_EPISODES) -> int | None:
    """The environment step at which the mean return of the last ``window`` episodes first reached ``threshold``
    (episodes given by their end ``steps`` and ``scores``, in order), or ``None``: a full window is required."""
    for i in range(window - 1, len(scores)):
        if sum(scores[i - window + 1 : i + 1]) / window >= threshold:
            return steps[i]
    return None


def trailing_mean(scores: list[float], window: int = SCORE_EPISODES) -> list[float]:
    """The mean of the last ``window`` values at each position (fewer at the start)."""
    out, total = [], 0.0
    for i, s in enumerate(scores):
        total += s
        if i >= window:
            total -= scores[i - window]
        out.append(total / min(i + 1, window))
    return out
