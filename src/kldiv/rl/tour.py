"""The tour's RL section: the bias and spread of the k1, k2, k3 estimators of a KL (Schulman's table), and a short
PPO run on CartPole-v1 with the KL of every update against ``target_kl``."""

from __future__ import annotations

import torch

from kldiv.report import Block, Cell, Context, Figure, Section, Table, png_bytes, register_section
from kldiv.rl.estimators import ESTIMATORS
from kldiv.runs import RunOptions

SAMPLES = 1_000_000
MEANS = (0.1, 1.0)
"""``p = N(mu, 1)`` for each ``mu``, ``q = N(0, 1)``: ``KL(q || p) = mu^2 / 2``."""
PPO_STEPS = 20_480
QUICK_PPO_STEPS = 4096


def estimator_table(samples: int = SAMPLES, seed: int = 0) -> Table:
    """Each estimator's bias and standard deviation, relative to the true KL, over ``samples`` draws of ``q``."""
    x = torch.randn(samples, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    rows: list[list[Cell]] = []
    for name, estimator in ESTIMATORS.items():
        row: list[Cell] = [name]
        for mu in MEANS:
            true_kl = mu * mu / 2
            values = estimator(mu * x - true_kl, reduction="none")  # log p(x) - log q(x) = mu x - mu^2 / 2
            row += [f"{(values.mean().item() - true_kl) / true_kl:+.3f}", f"{values.std().item() / true_kl:.2f}"]
        rows.append(row)
    header = ["estimator"]
    for mu in MEANS:
        header += [f"bias / KL (μ = {mu:g})", f"std / KL (μ = {mu:g})"]
    return Table(
        header=header,
        rows=rows,
        title=f"KL(q ‖ p) from {samples:,} samples of q = N(0, 1), p = N(μ, 1): the true KL is μ² / 2",
        summary_columns=["estimator", "std / KL (μ = 0.1)", "bias / KL (μ = 1)", "std / KL (μ = 1)"],
    )


def ppo_blocks(ctx: Context) -> list[Block]:
    """A short PPO run (``kldiv rl ppo --total-steps 20480``): a sentence, the KL-per-update figure and the learning
    curve; a sentence saying how to install gymnasium when it is missing."""
    from kldiv.rl.envs import MissingExtraError
    from kldiv.rl.plots import kl_figure, learning_curve_figure
    from kldiv.rl.ppo import PPOConfig, train

    steps = QUICK_PPO_STEPS if ctx.quick else PPO_STEPS
    config = PPOConfig(total_steps=steps, seed=ctx.seed, figures=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small networks: one thread is faster, and immune to a busy machine
    try:
        result = train(config, RunOptions(out=ctx.out_dir / "ppo", overwrite=True, progress=False))
    except MissingExtraError as e:
        return [f"The PPO run is skipped: {e}."]
    finally:
        torch.set_num_threads(threads)
    assert config.target_kl is not None
    kls = [row["kl"] for row in result.updates]
    stopped = sum(row["stopped_early"] for row in result.updates)
    above = sum(k > config.target_kl for k in kls)
    recent = result.episode_returns[-20:]
    text = (
        f"`kldiv rl ppo --total-steps {steps}`: PPO on CartPole-v1 with the clipped objective and early stopping "
        f"at `target_kl = {config.target_kl:g}`: before each minibatch step the k3 estimate of KL(π_old ‖ π) on that "
        f"minibatch is compared with the target, and the update ends when it is above. {stopped:g} of the "
        f"{len(kls)} updates ended early. After each update the exact mean KL over the whole rollout is measured: "
        f"median {sorted(kls)[len(kls) // 2]:.4f}, largest {max(kls):.4f} ({above} updates above the target: the "
        f"step taken just before stopping can overshoot it). Mean return of the last 20 of "
        f"{len(result.episode_returns)} episodes: {sum(recent) / len(recent):.1f} (500 is the most an episode "
        "can score)."
    )
    return [
        text,
        Figure(
            "rl-ppo-kl",
            png_bytes(kl_figure(result.updates, config.target_kl, "target_kl")),
            "The KL of every PPO update, measured after it, against the early-stopping target.",
        ),
        Figure(
            "rl-ppo-returns",
            png_bytes(learning_curve_figure(result.episodes, f"PPO on CartPole-v1, {steps} steps")),
            "Episode returns during training and the mean of the last 20.",
        ),
    ]


@register_section("rl", order=60)
def rl_section(ctx: Context) -> Section:
    """Schulman's k1/k2/k3 table, measured, and a short PPO run."""
    return Section(
        title="KL in reinforcement learning: estimating a KL from samples, and keeping updates small",
        blocks=[
            "Policy-gradient code measures the KL between the policy that collected a batch and the updated one "
            "from the batch's log-ratios `log p(x) - log q(x)` alone (`kldiv.rl.k1`, `k2`, `k3`). `k1 = -log r` is "
            "unbiased but noisy, `k2 = (log r)² / 2` is quiet but biased, `k3 = (r - 1) - log r` is unbiased, quiet "
            "and never negative: the estimate Stable-Baselines3 reports as `approx_kl`. For a penalty trained by "
            "gradient descent the ranking differs: with the samples held fixed, `k1`'s gradient averages to zero and "
            "`k2`'s is the exact gradient on average.",
            estimator_table(),
            *ppo_blocks(ctx),
        ],
    )
