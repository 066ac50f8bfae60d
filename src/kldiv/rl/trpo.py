"""Trust region policy optimization (Schulman et al. 2015), top to bottom in one file.

Each update collects ``n_steps`` steps from each of ``n_envs`` environments, estimates advantages by GAE
(normalized over the batch), and takes one natural-gradient step on the surrogate ``L(theta) = E[r A]``,
``r = pi_theta(a|s) / pi_old(a|s)``, under the constraint ``mean_s KL(pi_old(.|s) || pi_theta(.|s)) <= max_kl``:

1. ``g = grad L`` at ``theta_old``;
2. ``x ~ F^-1 g`` by ``cg_iterations`` conjugate-gradient steps, with Fisher-vector products by double backprop of
   the exact mean KL (:mod:`kldiv.rl.trust_region`), damped by ``damping``;
3. the full step ``s = x sqrt(2 max_kl / x^T F x)`` (the quadratic KL model at the boundary);
4. backtracking: ``theta_old + shrink^k s`` for ``k = 0 .. backtracks - 1``, accepting the first whose *measured*
   exact KL is ``<= max_kl`` and whose surrogate improves on ``L(theta_old)``; if none does, the policy stays.

The value network is then fitted by Adam (``value_epochs`` passes of minibatches of ``value_minibatch``). Every
update logs the measured KL of the accepted step, the number of backtracks and whether a step was accepted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from kldiv.rl.agents import Policy, make_policy, value_network
from kldiv.rl.envs import EnvBatch
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
from kldiv.rl.trust_region import conjugate_gradient, fisher_vector_product, flat_grad, trust_region_step
from kldiv.runs import Run, RunOptions, TrainingLoop
from kldiv.runs import load_config as load_run_config
from kldiv.runs import options as check
from kldiv.runs.errors import OptionError

__all__ = ["TRPOConfig", "TrustRegionStep", "load_config", "natural_gradient_step", "train"]

COMMAND = "rl trpo"
FIXED = ("env", "n_envs", "n_steps", "epoch_steps", "hidden", "seed")
VOLATILE = ("figures", "total_steps")


@dataclass(frozen=True)
class TRPOConfig(RolloutPlan):
    """The options of a TRPO run (``kldiv rl trpo --help`` documents each)."""

    env: str = "CartPole-v1"
    total_steps: int = 200_000
    n_envs: int = 4
    n_steps: int = 256
    max_kl: float = 0.01
    damping: float = 0.1
    cg_iterations: int = 10
    backtracks: int = 10
    shrink: float = 0.8
    gamma: float = 0.99
    gae_lambda: float = 0.95
    value_lr: float = 1e-3
    value_epochs: int = 10
    value_minibatch: int = 128
    hidden: str = "64,64"
    epoch_steps: int = 20_000
    seed: int = 0
    figures: bool = True

    def __post_init__(self) -> None:
        check_options(
            self,
            integers=("n_steps", "cg_iterations", "backtracks", "value_epochs", "value_minibatch"),
            numbers=("max_kl", "value_lr"),
        )
        check.number("damping", self.damping, low=0.0)
        check.number("shrink", self.shrink, low=0.0, low_open=True)
        if self.shrink >= 1:
            raise OptionError("shrink", f"must be < 1 (each backtrack shortens the step), got {self.shrink:g}")
        for name in ("gamma", "gae_lambda"):
            check.number(name, getattr(self, name), low=0.0, high=1.0)


@dataclass(frozen=True)
class TrustRegionStep:
    """The outcome of one policy update: whether a step was ``accepted``, its measured mean ``kl`` to the old
    policy, the ``surrogate`` before the step and its ``improvement``, and the number of ``backtracks`` before
    acceptance (all of them, and ``kl`` 0, when none was accepted)."""

    accepted: bool
    kl: float
    surrogate: float
    improvement: float
    backtracks: int


def natural_gradient_step(
    policy: Policy, obs: Tensor, actions: Tensor, old_logps: Tensor, advantages: Tensor, config: TRPOConfig
) -> TrustRegionStep:
    """Steps 1-4 of the module docstring on the batch ``obs``, ``actions`` (with their log-probabilities under the
    policy as it is, ``old_logps``) and ``advantages``; updates ``policy``'s parameters in place."""
    params = list(policy.parameters())
    with torch.no_grad():
        old_params = policy(obs)

    def surrogate() -> Tensor:
        return ((policy.log_prob(policy(obs), actions) - old_logps).exp() * advantages).mean()

    def mean_kl() -> Tensor:
        return policy.kl(old_params, policy(obs)).mean()

    old_surrogate = surrogate()
    before = float(old_surrogate.detach())
    g = flat_grad(old_surrogate, params)
    fvp = fisher_vector_product(mean_kl, params, config.damping)
    full_step = trust_region_step(conjugate_gradient(fvp, g, iterations=config.cg_iterations), fvp, config.max_kl)
    start = parameters_to_vector(params).detach()
    with torch.no_grad():
        for k in range(config.backtracks):
            vector_to_parameters(start + config.shrink**k * full_step, params)
            kl = float(mean_kl())
            improvement = float(surrogate()) - before
            if kl <= config.max_kl and improvement > 0:
                return TrustRegionStep(True, kl, before, improvement, k)
        vector_to_parameters(start, params)
    return TrustRegionStep(False, 0.0, before, 0.0, config.backtracks)


def load_config(run_dir: str | Path) -> TRPOConfig:
    """The configuration the run's last checkpoint was trained with."""
    return load_run_config(run_dir, COMMAND, TRPOConfig)


def train(config: TRPOConfig, options: RunOptions | None = None) -> RLResult:
    """Train (or, with ``options.resume``, continue) a TRPO agent in the run directory ``options.out`` (default
    ``runs/trpo``); see :mod:`kldiv.runs` for the rules of the directory and the guarantees of resume."""
    options = options or RunOptions(out="runs/trpo")
    envs = EnvBatch(config.env, config.n_envs, config.seed)
    torch.manual_seed(config.seed)
    hidden = parse_hidden(config.hidden)
    policy: Policy = make_policy(envs.obs_dim, envs.n_actions, envs.action_dim, hidden)
    value = value_network(envs.obs_dim, hidden)
    nets = nn.ModuleDict({"policy": policy, "value": value})
    value_optimizer = torch.optim.Adam(value.parameters(), lr=config.value_lr, foreach=True)
    log = UpdateLog()
    with Run.open(options, command=COMMAND, config=asdict(config), volatile=VOLATILE, fixed=FIXED) as run:
        check_total_steps(run, config.epochs, config.updates_per_epoch * config.batch)
        loop = TrainingLoop(
            run,
            model=nets,
            epochs=config.epochs,
            optimizers={"value": value_optimizer},
            stateful={"envs": envs, "updates": log},
            steps_per_epoch=config.updates_per_epoch,
            seed=config.seed,
        )
        for _epoch in loop.epochs():
            for _ in loop.steps():
                rollout = collect_rollout(
                    envs, policy, value, config.n_steps, gamma=config.gamma, lam=config.gae_lambda
                )
                obs, actions, old_logps = rollout.observations, rollout.actions, rollout.log_probs
                adv = rollout.advantages
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                step = natural_gradient_step(policy, obs, actions, old_logps, adv, config)
                loop.check_finite(torch.tensor(step.surrogate), name="surrogate", hint="Try a smaller --max-kl.")
                # ------------------------------------------------------- the value network
                value_losses = []
                for _pass in range(config.value_epochs):
                    for index in torch.split(torch.randperm(config.batch), config.value_minibatch):
                        value_loss = 0.5 * (value(obs[index]).squeeze(-1) - rollout.returns[index]).square().mean()
                        loop.check_finite(value_loss, name="value loss", hint="Try a smaller --value-lr.")
                        value_optimizer.zero_grad(set_to_none=True)
                        value_loss.backward()
                        value_optimizer.step()
                        value_losses.append(float(value_loss.detach()))
                with torch.no_grad():
                    entropy = float(policy.entropy(policy(obs)).mean())
                score = envs.recent_score(SCORE_EPISODES)
                log.append(
                    update=loop.step + 1,
                    env_step=envs.total_steps,
                    kl=step.kl,
                    accepted=step.accepted,
                    backtracks=step.backtracks,
                    surrogate_improvement=step.improvement,
                    value_loss=sum(value_losses) / len(value_losses),
                    entropy=entropy,
                    score=score,
                )
                loop.accumulate(1, kl=step.kl, accepted=float(step.accepted), entropy=entropy)
                loop.show(score=score, kl=step.kl)
            epoch_rows = log.rows[-config.updates_per_epoch :]
            loop.end_epoch(
                env_step=envs.total_steps,
                episodes=len(envs.episodes),
                score=envs.recent_score(SCORE_EPISODES),
                kl_max=max(r["kl"] for r in epoch_rows),
            )
            write_logs(run, envs, log)
        loop.close()
        if run.is_main and config.figures:
            from kldiv.rl.plots import write_learning_curves

            title = f"TRPO on {config.env} (seed {config.seed})"
            write_learning_curves(
                run.directory, envs.episodes, log.rows, title=title, kl_limit=config.max_kl, kl_label="max_kl"
            )
    return RLResult(
        policy=policy,
        metrics=loop.metrics,
        updates=log.rows,
        episodes=list(envs.episodes),
        out_dir=run.directory,
    )
