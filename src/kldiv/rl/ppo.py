"""Proximal policy optimization (Schulman et al. 2017) with its three KL devices, top to bottom in one file.

Each update collects ``n_steps`` steps from each of ``n_envs`` environments, estimates advantages by GAE, then runs
``update_epochs`` passes of minibatch gradient steps on

    loss = -E[min(r A, clip(r, 1 - eps, 1 + eps) A)] + beta KL(pi_old || pi) + c_v (V - R)^2 / 2 - c_H H(pi)

with ``r = pi(a|s) / pi_old(a|s)``. The KL devices:

- the clipped surrogate (``clip_coef`` eps; 0 turns clipping off and uses ``r A``);
- the KL penalty ``beta KL(pi_old(.|s) || pi(.|s))``, exact per state (:meth:`kldiv.rl.agents.Policy.kl`), with a
  fixed ``beta`` or, given ``kl_target``, :class:`kldiv.rl.AdaptiveKLController` after every update;
- early stopping: before each minibatch's gradient step, the k3 estimate of ``KL(pi_old || pi)`` on that minibatch
  (:func:`kldiv.rl.k3`, Stable-Baselines3's ``approx_kl``) is compared with ``target_kl``; above it, the update
  ends there.

After each update the exact mean ``KL(pi_old || pi_new)`` over the whole rollout is measured and logged. Defaults
are tuned for CartPole-v1 (the RL Baselines3 Zoo's: 8 environments, 32 steps, 20 passes, learning rate 1e-3
annealed to 0) with early stopping at ``target_kl = 0.02``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kldiv.rl.agents import Policy, make_policy, value_network
from kldiv.rl.controllers import AdaptiveKLController, FixedKLController
from kldiv.rl.envs import EnvBatch
from kldiv.rl.estimators import k3
from kldiv.rl.training import (
    SCORE_EPISODES,
    RLResult,
    RolloutPlan,
    UpdateLog,
    check_options,
    check_total_steps,
    collect_rollout,
    parse_hidden,
    write_logs,
)
from kldiv.runs import Run, RunOptions, TrainingLoop
from kldiv.runs import load_config as load_run_config
from kldiv.runs import options as check
from kldiv.runs.errors import OptionError

__all__ = ["PPOConfig", "load_config", "train"]

COMMAND = "rl ppo"
FIXED = ("env", "n_envs", "n_steps", "epoch_steps", "hidden", "seed")
VOLATILE = ("figures",)


@dataclass(frozen=True)
class PPOConfig(RolloutPlan):
    """The options of a PPO run (``kldiv rl ppo --help`` documents each)."""

    env: str = "CartPole-v1"
    total_steps: int = 100_000
    n_envs: int = 8
    n_steps: int = 32
    update_epochs: int = 20
    minibatches: int = 1
    lr: float = 1e-3
    anneal_lr: bool = True
    gamma: float = 0.98
    gae_lambda: float = 0.8
    clip_coef: float = 0.2
    kl_coef: float = 0.0
    kl_target: float | None = None
    kl_horizon: float = 10_000.0
    target_kl: float | None = 0.02
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: str = "64,64"
    epoch_steps: int = 10_000
    seed: int = 0
    figures: bool = True

    def __post_init__(self) -> None:
        check_options(self, integers=("n_steps", "update_epochs", "minibatches"), numbers=("lr",), flags=("anneal_lr",))
        if self.minibatches > self.n_envs * self.n_steps:
            raise OptionError("minibatches", f"must be <= n_envs * n_steps = {self.n_envs * self.n_steps}")
        for name in ("gamma", "gae_lambda"):
            check.number(name, getattr(self, name), low=0.0, high=1.0)
        for name in ("clip_coef", "kl_coef", "ent_coef", "vf_coef", "max_grad_norm"):
            check.number(name, getattr(self, name), low=0.0)
        for name in ("kl_target", "target_kl"):
            if getattr(self, name) is not None:
                check.number(name, getattr(self, name), low=0.0, low_open=True)
        check.number("kl_horizon", self.kl_horizon, low=0.0, low_open=True)
        if self.kl_target is not None and self.kl_coef == 0:
            raise OptionError("kl_target", "adapts the KL penalty's coefficient: give an initial kl_coef > 0 too")
        if self.kl_target is not None and self.kl_horizon * 0.2 < self.n_envs * self.n_steps:
            raise OptionError(
                "kl_horizon",
                f"must be >= 5 * n_envs * n_steps = {5 * self.n_envs * self.n_steps} (one update moves "
                "the coefficient by at most 20% of batch / horizon)",
            )


def load_config(run_dir: str | Path) -> PPOConfig:
    """The configuration the run's last checkpoint was trained with."""
    return load_run_config(run_dir, COMMAND, PPOConfig)


def build_networks(config: PPOConfig, envs: EnvBatch) -> nn.ModuleDict:
    """``{"policy", "value"}``, initialized from the random seed."""
    torch.manual_seed(config.seed)
    hidden = parse_hidden(config.hidden)
    policy = make_policy(envs.obs_dim, envs.n_actions, envs.action_dim, hidden)
    return nn.ModuleDict({"policy": policy, "value": value_network(envs.obs_dim, hidden)})


def train(config: PPOConfig, options: RunOptions | None = None) -> RLResult:
    """Train (or, with ``options.resume``, continue) a PPO agent in the run directory ``options.out`` (default
    ``runs/ppo``); see :mod:`kldiv.runs` for the rules of the directory and the guarantees of resume."""
    options = options or RunOptions(out="runs/ppo")
    envs = EnvBatch(config.env, config.n_envs, config.seed)
    nets = build_networks(config, envs)
    policy: Policy = nets["policy"]  # type: ignore[assignment]
    value = nets["value"]
    optimizer = torch.optim.Adam(nets.parameters(), lr=config.lr, eps=1e-5, foreach=True)
    controller: AdaptiveKLController | FixedKLController
    if config.kl_target is not None:
        controller = AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
    else:
        controller = FixedKLController(config.kl_coef)
    log = UpdateLog()
    total_updates = config.updates_per_epoch * config.epochs
    batch = config.batch
    volatile = VOLATILE if config.anneal_lr else (*VOLATILE, "total_steps")  # the annealing spans the run
    with Run.open(options, command=COMMAND, config=asdict(config), volatile=volatile, fixed=FIXED) as run:
        check_total_steps(run, config.epochs, config.updates_per_epoch * config.batch)
        loop = TrainingLoop(
            run,
            model=nets,
            epochs=config.epochs,
            optimizers={"adam": optimizer},
            stateful={"envs": envs, "updates": log, "controller": _ControllerState(controller)},
            steps_per_epoch=config.updates_per_epoch,
            seed=config.seed,
        )
        for _epoch in loop.epochs():
            for _ in loop.steps():
                if config.anneal_lr:
                    optimizer.param_groups[0]["lr"] = config.lr * (1.0 - loop.step / total_updates)
                rollout = collect_rollout(
                    envs, policy, value, config.n_steps, gamma=config.gamma, lam=config.gae_lambda
                )
                b_obs, b_actions, b_logps = rollout.observations, rollout.actions, rollout.log_probs
                b_adv, b_returns = rollout.advantages, rollout.returns
                # ---------------------------------------------------------------- update
                with torch.no_grad():
                    old_params = policy(b_obs)
                beta = controller.value
                passes, stopped, approx_max = 0, False, 0.0
                sums = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "clip_fraction": 0.0}
                for _pass in range(config.update_epochs):
                    for index in torch.tensor_split(torch.randperm(batch), config.minibatches):
                        params = policy(b_obs[index])
                        log_ratio = policy.log_prob(params, b_actions[index]) - b_logps[index]
                        approx_kl = float(k3(log_ratio.detach()))
                        if config.target_kl is not None and approx_kl > config.target_kl:
                            stopped = True
                            break
                        approx_max = max(approx_max, approx_kl)
                        ratio = log_ratio.exp()
                        adv = b_adv[index]
                        if adv.numel() > 1:
                            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                        surrogate = ratio * adv
                        if config.clip_coef > 0:
                            clipped = ratio.clamp(1 - config.clip_coef, 1 + config.clip_coef) * adv
                            surrogate = torch.minimum(surrogate, clipped)
                        policy_loss = -surrogate.mean()
                        entropy = policy.entropy(params).mean()
                        value_loss = 0.5 * (value(b_obs[index]).squeeze(-1) - b_returns[index]).square().mean()
                        loss = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy
                        if beta > 0:
                            loss = loss + beta * policy.kl(_rows(old_params, index), params).mean()
                        loop.check_finite(loss, hint="Try a smaller --lr.")
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        nn.utils.clip_grad_norm_(nets.parameters(), config.max_grad_norm)
                        optimizer.step()
                        passes += 1
                        sums["policy_loss"] += float(policy_loss.detach())
                        sums["value_loss"] += float(value_loss.detach())
                        sums["entropy"] += float(entropy.detach())
                        sums["clip_fraction"] += float(((ratio.detach() - 1).abs() > config.clip_coef).float().mean())
                    if stopped:
                        break
                with torch.no_grad():
                    kl = float(policy.kl(old_params, policy(b_obs)).mean())
                controller.update(kl, batch)
                means = {k: v / passes if passes else math.nan for k, v in sums.items()}
                score = envs.recent_score(SCORE_EPISODES)
                log.append(
                    update=loop.step + 1,
                    env_step=envs.total_steps,
                    kl=kl,
                    approx_kl_max=approx_max,
                    kl_coef=beta,
                    minibatch_steps=passes,
                    stopped_early=stopped,
                    lr=optimizer.param_groups[0]["lr"],
                    score=score,
                    **means,
                )
                loop.accumulate(1, kl=kl, **{k: v for k, v in means.items() if math.isfinite(v)})
                loop.show(score=score, kl=kl)
            epoch_rows = log.rows[-config.updates_per_epoch :]
            loop.end_epoch(
                env_step=envs.total_steps,
                episodes=len(envs.episodes),
                score=envs.recent_score(SCORE_EPISODES),
                kl_max=max(r["kl"] for r in epoch_rows),
                stopped_early=sum(r["stopped_early"] for r in epoch_rows) / len(epoch_rows),
            )
            write_logs(run, envs, log)
        loop.close()
        if run.is_main and config.figures:
            from kldiv.rl.plots import write_learning_curves

            write_learning_curves(
                run.directory, envs.episodes, log.rows, kl_limit=config.target_kl, title=_title(config)
            )
    return RLResult(
        policy=policy,
        metrics=loop.metrics,
        updates=log.rows,
        episodes=list(envs.episodes),
        out_dir=run.directory,
    )


def _rows(params: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The states ``index`` of a policy's parameters (states are the second dimension of a Gaussian's)."""
    return params[:, index] if params.dim() == 3 else params[index]


def _title(config: PPOConfig) -> str:
    return f"PPO on {config.env} (seed {config.seed})"


class _ControllerState:
    """A KL controller's coefficient as checkpoint state."""

    def __init__(self, controller: AdaptiveKLController | FixedKLController) -> None:
        self.controller = controller

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.controller.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        value = state.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("not the state of a KL controller")
        self.controller.value = float(value)
