"""Soft actor-critic with automatic temperature (Haarnoja et al. 2018), for continuous actions and, in the discrete
variant of Christodoulou (2019), for discrete ones; top to bottom in one file.

SAC maximizes ``E[sum_t r_t + alpha H(pi(.|s_t))]``. Every environment step (after ``learning_starts`` steps of
uniformly random actions) takes one gradient step of each part on a minibatch from the replay buffer:

- critics: two Q networks regress on ``y = r + gamma (1 - terminal) (min_j Q'_j(s', a') - alpha log pi(a'|s'))``,
  ``a' ~ pi(.|s')``, with target networks ``Q'`` following by Polyak averaging (rate ``tau``);
- actor: minimizes ``E_s E_{a~pi}[alpha log pi(a|s) - min_j Q_j(s, a)]``;
- temperature: minimizes :func:`kldiv.rl.sac_temperature_loss`, ``-log_alpha E[log pi(a|s) + H_target]`` (the
  loss of the paper's eq. 18, which Stable-Baselines3 and CleanRL minimize; the tutorial's version steps ``alpha``
  itself and does not detach the entropy).

Continuous actions: ``a = tanh(u)`` scaled to the action box, ``u ~ N(mu(s), sigma(s)^2)``; ``log pi(a|s) = log
N(u) - sum log(scale (1 - tanh(u)^2))`` with ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))`` (exact, no
epsilon); ``H_target = -action_dim``. Discrete actions: the expectations over actions are exact sums
(``Q`` outputs one value per action); ``H_target = target_entropy_scale * log(n_actions)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kldiv.discrete import entropy_from_logits
from kldiv.rl.agents import mlp
from kldiv.rl.constraints import sac_temperature_loss
from kldiv.rl.envs import EnvBatch
from kldiv.rl.training import (
    RLResult,
    UpdateLog,
    check_options,
    check_total_steps,
    epoch_plan,
    parse_hidden,
    write_logs,
)
from kldiv.runs import Run, RunOptions, TrainingLoop
from kldiv.runs import load_config as load_run_config
from kldiv.runs import options as check
from kldiv.runs.errors import OptionError

__all__ = ["ReplayBuffer", "SACConfig", "SquashedGaussianActor", "load_config", "train"]

COMMAND = "rl sac"
FIXED = ("env", "n_envs", "epoch_steps", "hidden", "buffer_size", "seed")
VOLATILE = ("figures", "total_steps")
LOG_STD_RANGE = (-5.0, 2.0)


@dataclass(frozen=True)
class SACConfig:
    """The options of a SAC run (``kldiv rl sac --help`` documents each)."""

    env: str = "Pendulum-v1"
    total_steps: int = 20_000
    n_envs: int = 1
    learning_starts: int = 1000
    buffer_size: int = 1_000_000
    batch_size: int = 256
    lr: float = 1e-3
    gamma: float = 0.99
    tau: float = 0.005
    alpha: float = 1.0
    autotune: bool = True
    target_entropy_scale: float = 0.3
    hidden: str = "64,64"
    log_interval: int = 250
    epoch_steps: int = 2_000
    seed: int = 0
    figures: bool = True

    def __post_init__(self) -> None:
        check_options(
            self,
            integers=("buffer_size", "batch_size", "log_interval"),
            numbers=("lr", "alpha"),
            flags=("autotune",),
        )
        check.integer("learning_starts", self.learning_starts, low=0)
        check.number("gamma", self.gamma, low=0.0, high=1.0)
        check.number("tau", self.tau, low=0.0, high=1.0, low_open=True)
        check.number("target_entropy_scale", self.target_entropy_scale, low=0.0, high=1.0)

    @property
    def steps_per_epoch(self) -> int:
        """Loop steps (one environment step of each environment and one gradient step) per epoch: ``epoch_steps``
        rounded up to whole steps of every environment."""
        return epoch_plan(self.total_steps, self.epoch_steps, self.n_envs)[0]

    @property
    def epochs(self) -> int:
        """Epochs of the run (``total_steps`` rounded up to whole epochs)."""
        return epoch_plan(self.total_steps, self.epoch_steps, self.n_envs)[1]


def load_config(run_dir: str | Path) -> SACConfig:
    """The configuration the run's last checkpoint was trained with."""
    return load_run_config(run_dir, COMMAND, SACConfig)


# ------------------------------------------------------------------------------------------------- networks


class SquashedGaussianActor(nn.Module):
    """``a = bias + scale tanh(u)``, ``u ~ N(mu(s), sigma(s)^2)`` with ``log sigma`` squashed into
    :data:`LOG_STD_RANGE`; :meth:`sample` returns actions and their exact log-densities."""

    scale: Tensor
    bias: Tensor

    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple[int, ...], low: Tensor, high: Tensor) -> None:
        super().__init__()
        self.net = mlp((obs_dim, *hidden, 2 * action_dim), activation=nn.ReLU)
        self.register_buffer("scale", (high - low) / 2)
        self.register_buffer("bias", (high + low) / 2)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """The mean and the std of ``u``."""
        out: Tensor = self.net(obs)
        mean, raw = out.chunk(2, dim=-1)
        lo, hi = LOG_STD_RANGE
        return mean, (lo + (hi - lo) * (torch.tanh(raw) + 1) / 2).exp()

    def sample(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Actions ``(B, action_dim)`` and ``log pi(a|s)`` ``(B,)`` (reparameterized: differentiable)."""
        mean, std = self(obs)
        u = mean + std * torch.randn_like(mean)
        log_normal = -0.5 * ((u - mean) / std).square() - std.log() - 0.5 * math.log(2 * math.pi)
        log_jacobian = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u)) + self.scale.log()
        return self.bias + self.scale * torch.tanh(u), (log_normal - log_jacobian).sum(-1)


class TwinQ(nn.Module):
    """Two independent Q networks: ``(s, a) -> (2, B)`` for continuous actions, ``s -> (2, B, A)`` for discrete."""

    def __init__(self, in_dim: int, out_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.q1 = mlp((in_dim, *hidden, out_dim), activation=nn.ReLU)
        self.q2 = mlp((in_dim, *hidden, out_dim), activation=nn.ReLU)

    def forward(self, x: Tensor) -> Tensor:
        """Both networks' outputs, stacked (the last dimension squeezed for a single output)."""
        out = torch.stack((self.q1(x), self.q2(x)))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# ---------------------------------------------------------------------------------------------- replay buffer


class ReplayBuffer:
    """A ring buffer of transitions ``(s, a, r, s', terminal)``, sampled uniformly (torch's global generator);
    stateful, so a checkpoint holds its contents."""

    def __init__(self, capacity: int, obs_dim: int, action_shape: tuple[int, ...], action_dtype: torch.dtype) -> None:
        self.capacity = capacity
        self.obs = torch.zeros(capacity, obs_dim)
        self.next_obs = torch.zeros(capacity, obs_dim)
        self.actions = torch.zeros(capacity, *action_shape, dtype=action_dtype)
        self.rewards = torch.zeros(capacity)
        self.terminals = torch.zeros(capacity)
        self.size = self.position = 0

    def add(self, obs: Tensor, actions: Tensor, rewards: Tensor, next_obs: Tensor, terminals: Tensor) -> None:
        """Add a batch of transitions (one per environment)."""
        for i in range(obs.shape[0]):
            j = self.position
            self.obs[j], self.actions[j], self.rewards[j] = obs[i], actions[i], rewards[i]
            self.next_obs[j], self.terminals[j] = next_obs[i], terminals[i]
            self.position = (j + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``batch_size`` transitions drawn with replacement."""
        index = torch.randint(self.size, (batch_size,))
        return self.obs[index], self.actions[index], self.rewards[index], self.next_obs[index], self.terminals[index]

    def state_dict(self) -> dict[str, Any]:
        """The stored transitions (only the filled part) and the write position."""
        n = self.size
        return {
            "obs": self.obs[:n].clone(),
            "next_obs": self.next_obs[:n].clone(),
            "actions": self.actions[:n].clone(),
            "rewards": self.rewards[:n].clone(),
            "terminals": self.terminals[:n].clone(),
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s result (``ValueError`` for one of another shape)."""
        parts = {k: state.get(k) for k in ("obs", "next_obs", "actions", "rewards", "terminals")}
        position = state.get("position")
        n = parts["rewards"].shape[0] if isinstance(parts["rewards"], Tensor) else -1
        valid = 0 <= n <= self.capacity and isinstance(position, int) and 0 <= position < max(self.capacity, 1)
        for name, value in parts.items():
            own = getattr(self, name)
            valid = (
                valid and isinstance(value, Tensor) and value.shape == (n, *own.shape[1:]) and value.dtype == own.dtype
            )
        if not valid:
            raise ValueError("not the state of a replay buffer of this capacity and these shapes")
        for name, value in parts.items():
            getattr(self, name)[:n] = value
        self.size, self.position = n, int(position)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------ train


def train(config: SACConfig, options: RunOptions | None = None) -> RLResult:
    """Train (or, with ``options.resume``, continue) a SAC agent in the run directory ``options.out`` (default
    ``runs/sac``); see :mod:`kldiv.runs` for the rules of the directory and the guarantees of resume."""
    options = options or RunOptions(out="runs/sac")
    envs = EnvBatch(config.env, config.n_envs, config.seed)
    discrete = envs.n_actions is not None
    if not discrete:
        assert envs.action_low is not None
        assert envs.action_high is not None
        if not bool(torch.isfinite(envs.action_low).all() and torch.isfinite(envs.action_high).all()):
            raise OptionError("env", f"{config.env!r} has an unbounded action box; SAC squashes into a bounded one")
    torch.manual_seed(config.seed)
    hidden = parse_hidden(config.hidden)
    obs_dim, n_actions = envs.obs_dim, envs.n_actions or 0
    actor: nn.Module
    gaussian: SquashedGaussianActor | None = None
    if discrete:
        actor = mlp((obs_dim, *hidden, n_actions), activation=nn.ReLU)
        critic = TwinQ(obs_dim, n_actions, hidden)
        target_entropy = config.target_entropy_scale * math.log(n_actions)
    else:
        assert envs.action_low is not None
        assert envs.action_high is not None
        actor = gaussian = SquashedGaussianActor(obs_dim, envs.action_dim, hidden, envs.action_low, envs.action_high)
        critic = TwinQ(obs_dim + envs.action_dim, 1, hidden)
        target_entropy = -float(envs.action_dim)
    target = TwinQ(obs_dim, n_actions, hidden) if discrete else TwinQ(obs_dim + envs.action_dim, 1, hidden)
    target.load_state_dict(critic.state_dict())
    target.requires_grad_(False)
    critic_params: list[Tensor] = list(critic.parameters())
    target_params: list[Tensor] = list(target.parameters())
    log_alpha = nn.Parameter(torch.tensor(math.log(config.alpha)))
    nets = nn.ModuleDict({"actor": actor, "critic": critic, "target": target})
    nets.register_parameter("log_alpha", log_alpha)
    optimizers = {
        "actor": torch.optim.Adam(actor.parameters(), lr=config.lr, foreach=True),
        "critic": torch.optim.Adam(critic.parameters(), lr=config.lr, foreach=True),
        "alpha": torch.optim.Adam([log_alpha], lr=config.lr),
    }
    action_shape = () if discrete else (envs.action_dim,)
    buffer = ReplayBuffer(config.buffer_size, obs_dim, action_shape, torch.int64 if discrete else torch.float32)
    log = UpdateLog()
    window: dict[str, float] = {}

    def add(**values: float) -> None:
        for k, v in values.items():
            window[k] = window.get(k, 0.0) + v

    with Run.open(options, command=COMMAND, config=asdict(config), volatile=VOLATILE, fixed=FIXED) as run:
        check_total_steps(run, config.epochs, config.steps_per_epoch * config.n_envs)
        loop = TrainingLoop(
            run,
            model=nets,
            epochs=config.epochs,
            optimizers=optimizers,
            stateful={"envs": envs, "buffer": buffer, "updates": log},
            steps_per_epoch=config.steps_per_epoch,
            seed=config.seed,
        )
        for _epoch in loop.epochs():
            for _ in loop.steps():
                # ---------------------------------------------------------------- act
                obs = envs.observations
                with torch.no_grad():
                    if envs.total_steps < config.learning_starts:
                        actions = _uniform_actions(envs)
                    elif discrete:
                        actions = torch.multinomial(torch.softmax(actor(obs), -1), 1).squeeze(-1)
                    else:
                        assert gaussian is not None
                        actions = gaussian.sample(obs)[0]
                result = envs.step(actions)
                buffer.add(obs, actions, result.rewards, result.final_observations, result.terminated.float())
                if envs.total_steps < config.learning_starts:
                    continue
                # ---------------------------------------------------------------- update
                alpha = log_alpha.detach().exp()
                s, a, r, s2, done = buffer.sample(config.batch_size)
                with torch.no_grad():
                    if discrete:
                        logits2 = actor(s2)
                        p2, logp2 = torch.softmax(logits2, -1), torch.log_softmax(logits2, -1)
                        v2 = (p2 * (target(s2).amin(0) - alpha * logp2)).sum(-1)
                    else:
                        assert gaussian is not None
                        a2, logp2 = gaussian.sample(s2)
                        v2 = target(torch.cat((s2, a2), -1)).amin(0) - alpha * logp2
                    y = r + config.gamma * (1.0 - done) * v2
                q = (
                    critic(s).gather(-1, a.view(1, -1, 1).expand(2, -1, 1)).squeeze(-1)
                    if discrete
                    else critic(torch.cat((s, a), -1))
                )
                critic_loss = 0.5 * (q - y).square().mean(-1).sum()
                loop.check_finite(critic_loss, name="critic loss", hint="Try a smaller --lr.")
                optimizers["critic"].zero_grad(set_to_none=True)
                critic_loss.backward()
                optimizers["critic"].step()

                if discrete:
                    logits = actor(s)
                    p, logp = torch.softmax(logits, -1), torch.log_softmax(logits, -1)
                    with torch.no_grad():
                        q_min = critic(s).amin(0)
                    actor_loss = (p * (alpha * logp - q_min)).sum(-1).mean()
                    alpha_loss = sac_temperature_loss(log_alpha, logp, target_entropy, probs=p)
                    entropy = float(entropy_from_logits(logits.detach(), dim=-1).mean())
                else:
                    assert gaussian is not None
                    a_new, logp = gaussian.sample(s)
                    for p in critic_params:
                        p.requires_grad_(False)
                    actor_loss = (alpha * logp - critic(torch.cat((s, a_new), -1)).amin(0)).mean()
                    for p in critic_params:
                        p.requires_grad_(True)
                    alpha_loss = sac_temperature_loss(log_alpha, logp, target_entropy)
                    entropy = float(-logp.detach().mean())
                optimizers["actor"].zero_grad(set_to_none=True)
                actor_loss.backward()
                optimizers["actor"].step()
                if config.autotune:
                    optimizers["alpha"].zero_grad(set_to_none=True)
                    alpha_loss.backward()  # type: ignore[no-untyped-call]
                    optimizers["alpha"].step()
                with torch.no_grad():
                    torch._foreach_lerp_(target_params, critic_params, config.tau)
                add(
                    count=1,
                    critic_loss=float(critic_loss.detach()),
                    actor_loss=float(actor_loss.detach()),
                    entropy=entropy,
                )
                if loop.step % config.log_interval == config.log_interval - 1:
                    count = window.pop("count")
                    log.append(
                        update=loop.step + 1,
                        env_step=envs.total_steps,
                        alpha=float(log_alpha.detach().exp()),
                        target_entropy=target_entropy,
                        score=envs.recent_score(),
                        **{k: v / count for k, v in window.items()},
                    )
                    window.clear()
                loop.accumulate(1, critic_loss=critic_loss.detach(), entropy=entropy)
                loop.show(score=envs.recent_score(), alpha=float(log_alpha.detach().exp()))
            loop.end_epoch(
                env_step=envs.total_steps,
                episodes=len(envs.episodes),
                score=envs.recent_score(),
                alpha=float(log_alpha.detach().exp()),
            )
            write_logs(run, envs, log)
        loop.close()
        if run.is_main and config.figures:
            from kldiv.rl.plots import write_learning_curves

            title = f"SAC on {config.env} (seed {config.seed})"
            write_learning_curves(run.directory, envs.episodes, log.rows, title=title)
    return RLResult(
        policy=actor,
        metrics=loop.metrics,
        updates=log.rows,
        episodes=list(envs.episodes),
        out_dir=run.directory,
    )


def _uniform_actions(envs: EnvBatch) -> Tensor:
    """Uniformly random actions for every environment (torch's global generator)."""
    if envs.n_actions is not None:
        return torch.randint(envs.n_actions, (envs.n_envs,))
    assert envs.action_low is not None
    assert envs.action_high is not None
    u = torch.rand(envs.n_envs, envs.action_dim)
    return envs.action_low + (envs.action_high - envs.action_low) * u
