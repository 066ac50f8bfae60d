"""`kldiv rl ppo|trpo|sac`: policy optimization under a KL constraint or an entropy temperature, on gymnasium
environments (thin: parse, call :mod:`kldiv.rl.ppo`, :mod:`kldiv.rl.trpo` or :mod:`kldiv.rl.sac`, print)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from kldiv.cli._common import (
    AllowChange,
    CheckpointSteps,
    Out,
    Overwrite,
    Progress,
    Resume,
    Threads,
    console,
    fail,
    resolve_config,
    run_options,
    user_errors,
)
from kldiv.runs import RunOptions

app = typer.Typer(
    help="Reinforcement learning with KL: PPO (clipping, KL penalty, early stopping), TRPO (a KL trust region), "
    "SAC (entropy temperature). Needs gymnasium: pip install 'kldiv[rl]'."
)

Env = Annotated[str, typer.Option(help="A gymnasium environment id (1-D observations; Discrete or Box actions).")]
TotalSteps = Annotated[int, typer.Option(help="Environment steps to train for (rounded up to whole updates).")]
NEnvs = Annotated[int, typer.Option(help="Environments stepped together.")]
Hidden = Annotated[str, typer.Option(help="Hidden widths of every network, comma-separated.")]
EpochSteps = Annotated[
    int,
    typer.Option(help="Environment steps per epoch (rounded up to whole updates); each epoch ends with a checkpoint."),
]
Seed = Annotated[int, typer.Option(help="Random seed (networks, actions, environments).")]
Figures = Annotated[bool, typer.Option(help="Write learning_curve.png and kl.png (temperature.png for SAC).")]
Gamma = Annotated[float, typer.Option(help="Discount factor.")]
GaeLambda = Annotated[float, typer.Option(help="GAE's lambda (bias-variance trade-off of the advantages).")]


def _run(
    ctx: typer.Context,
    values: dict[str, Any],
    build: Callable[..., Any],
    train: Callable[..., Any],
    options: RunOptions,
) -> None:
    from kldiv.rl.envs import MissingExtraError
    from kldiv.rl.training import SCORE_EPISODES, steps_to_score

    config = resolve_config(ctx, values, options, build)
    with user_errors():
        try:
            result = train(config, options)
        except MissingExtraError as e:
            raise fail(str(e)) from None
    episodes = len(result.episode_returns)
    if episodes:
        recent = result.episode_returns[-SCORE_EPISODES:]
        console().print(f"{episodes} episodes; mean return of the last {len(recent)}: {sum(recent) / len(recent):.1f}")
    threshold = _reward_threshold(config.env)
    if threshold is not None:
        reached = steps_to_score(result.episode_steps, result.episode_returns, threshold)
        where = f"first reached at environment step {reached}" if reached is not None else "not reached"
        console().print(f"{config.env}'s reward threshold {threshold:g} (mean of {SCORE_EPISODES} episodes): {where}")
    console().print(f"Wrote {result.out_dir}.")


def _reward_threshold(env_id: str) -> float | None:
    from kldiv.rl.envs import import_gymnasium

    threshold = import_gymnasium().spec(env_id).reward_threshold
    return None if threshold is None else float(threshold)


@app.command("ppo")
def ppo_command(
    ctx: typer.Context,
    env: Env = "CartPole-v1",
    total_steps: TotalSteps = 100_000,
    n_envs: NEnvs = 8,
    n_steps: Annotated[int, typer.Option(help="Steps per environment per update.")] = 32,
    update_epochs: Annotated[int, typer.Option(help="Passes over each rollout.")] = 20,
    minibatches: Annotated[int, typer.Option(help="Minibatches per pass.")] = 1,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    anneal_lr: Annotated[bool, typer.Option(help="Anneal the learning rate linearly to 0.")] = True,
    gamma: Gamma = 0.98,
    gae_lambda: GaeLambda = 0.8,
    clip_coef: Annotated[float, typer.Option(help="Clipping range eps of the ratio (0: no clipping).")] = 0.2,
    kl_coef: Annotated[float, typer.Option(help="Weight beta of the penalty beta KL(pi_old || pi) (0: none).")] = 0.0,
    kl_target: Annotated[
        float | None, typer.Option(help="Adapt --kl-coef after each update to aim the KL at this value.")
    ] = None,
    kl_horizon: Annotated[float, typer.Option(help="Horizon of the adaptive KL coefficient, in steps.")] = 10_000.0,
    target_kl: Annotated[
        float | None,
        typer.Option(help="Stop an update at the first minibatch whose KL estimate (k3) exceeds this (0: never)."),
    ] = 0.02,
    ent_coef: Annotated[float, typer.Option(help="Weight of the entropy bonus.")] = 0.0,
    vf_coef: Annotated[float, typer.Option(help="Weight of the value loss.")] = 0.5,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient norm clipping.")] = 0.5,
    hidden: Hidden = "64,64",
    epoch_steps: EpochSteps = 10_000,
    seed: Seed = 0,
    figures: Figures = True,
    out: Out = Path("runs/ppo"),
    resume: Resume = False,
    overwrite: Overwrite = False,
    allow_change: AllowChange = None,
    checkpoint_steps: CheckpointSteps = 0,
    progress: Progress = True,
    threads: Threads = "auto",
) -> None:
    """Train a PPO agent; writes run.json, metrics.csv, updates.csv, episodes.csv, checkpoints and figures."""
    from kldiv.rl.ppo import PPOConfig, train

    values = {k: v for k, v in locals().items() if k in PPOConfig.__dataclass_fields__}
    if target_kl == 0:
        values["target_kl"] = None
    options = run_options(
        out,
        resume=resume,
        overwrite=overwrite,
        allow_change=allow_change,
        checkpoint_steps=checkpoint_steps,
        progress=progress,
        threads=threads,
    )
    _run(ctx, values, PPOConfig, train, options)


@app.command("trpo")
def trpo_command(
    ctx: typer.Context,
    env: Env = "CartPole-v1",
    total_steps: TotalSteps = 200_000,
    n_envs: NEnvs = 4,
    n_steps: Annotated[int, typer.Option(help="Steps per environment per update.")] = 256,
    max_kl: Annotated[float, typer.Option(help="Trust region: the largest mean KL(pi_old || pi) of a step.")] = 0.01,
    damping: Annotated[float, typer.Option(help="Added to the Fisher matrix's diagonal.")] = 0.1,
    cg_iterations: Annotated[int, typer.Option(help="Conjugate-gradient iterations.")] = 10,
    backtracks: Annotated[int, typer.Option(help="Line-search steps before an update is skipped.")] = 10,
    shrink: Annotated[float, typer.Option(help="Line-search factor per backtrack.")] = 0.8,
    gamma: Gamma = 0.99,
    gae_lambda: GaeLambda = 0.95,
    value_lr: Annotated[float, typer.Option(help="Adam learning rate of the value network.")] = 1e-3,
    value_epochs: Annotated[int, typer.Option(help="Passes of the value network over each rollout.")] = 10,
    value_minibatch: Annotated[int, typer.Option(help="Minibatch size of the value network.")] = 128,
    hidden: Hidden = "64,64",
    epoch_steps: EpochSteps = 20_000,
    seed: Seed = 0,
    figures: Figures = True,
    out: Out = Path("runs/trpo"),
    resume: Resume = False,
    overwrite: Overwrite = False,
    allow_change: AllowChange = None,
    checkpoint_steps: CheckpointSteps = 0,
    progress: Progress = True,
    threads: Threads = "auto",
) -> None:
    """Train a TRPO agent; writes run.json, metrics.csv, updates.csv, episodes.csv, checkpoints and figures."""
    from kldiv.rl.trpo import TRPOConfig, train

    values = {k: v for k, v in locals().items() if k in TRPOConfig.__dataclass_fields__}
    options = run_options(
        out,
        resume=resume,
        overwrite=overwrite,
        allow_change=allow_change,
        checkpoint_steps=checkpoint_steps,
        progress=progress,
        threads=threads,
    )
    _run(ctx, values, TRPOConfig, train, options)


@app.command("sac")
def sac_command(
    ctx: typer.Context,
    env: Env = "Pendulum-v1",
    total_steps: TotalSteps = 20_000,
    n_envs: NEnvs = 1,
    learning_starts: Annotated[int, typer.Option(help="Steps of uniformly random actions before learning.")] = 1000,
    buffer_size: Annotated[int, typer.Option(help="Replay buffer capacity (transitions).")] = 1_000_000,
    batch_size: Annotated[int, typer.Option(help="Minibatch size of each gradient step.")] = 256,
    lr: Annotated[float, typer.Option(help="Adam learning rate of the actor, the critics and the temperature.")] = 1e-3,
    gamma: Gamma = 0.99,
    tau: Annotated[float, typer.Option(help="Polyak rate of the target critics.")] = 0.005,
    alpha: Annotated[float, typer.Option(help="Initial (or, with --no-autotune, fixed) temperature.")] = 1.0,
    autotune: Annotated[bool, typer.Option(help="Learn the temperature toward the target entropy.")] = True,
    target_entropy_scale: Annotated[
        float, typer.Option(help="Discrete actions: target entropy = this x log(number of actions).")
    ] = 0.3,
    hidden: Hidden = "64,64",
    log_interval: Annotated[int, typer.Option(help="Steps per row of updates.csv.")] = 250,
    epoch_steps: EpochSteps = 2_000,
    seed: Seed = 0,
    figures: Figures = True,
    out: Out = Path("runs/sac"),
    resume: Resume = False,
    overwrite: Overwrite = False,
    allow_change: AllowChange = None,
    checkpoint_steps: CheckpointSteps = 0,
    progress: Progress = True,
    threads: Threads = "auto",
) -> None:
    """Train a SAC agent (continuous or discrete actions); writes run.json, metrics.csv, updates.csv, episodes.csv,
    checkpoints and figures."""
    from kldiv.rl.sac import SACConfig, train

    values = {k: v for k, v in locals().items() if k in SACConfig.__dataclass_fields__}
    options = run_options(
        out,
        resume=resume,
        overwrite=overwrite,
        allow_change=allow_change,
        checkpoint_steps=checkpoint_steps,
        progress=progress,
        threads=threads,
    )
    _run(ctx, values, SACConfig, train, options)
