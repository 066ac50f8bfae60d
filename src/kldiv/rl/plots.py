"""Learning curves of an RL run: the episodes' returns and, per update, the measured KL against its limit (PPO,
TRPO) or SAC's temperature. Figures on the Agg canvas (no pyplot)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from kldiv.report import write_pngs
from kldiv.rl.envs import Episode
from kldiv.rl.training import SCORE_EPISODES, trailing_mean
from kldiv.viz import new_figure

__all__ = ["kl_figure", "learning_curve_figure", "write_learning_curves"]


def learning_curve_figure(episodes: Sequence[Episode], title: str) -> Figure:
    """Each episode's return at the environment step it ended, and the mean of the last 20."""
    fig, ax = new_figure(6.4, 3.6)
    steps = [e.step for e in episodes]
    scores = [e.score for e in episodes]
    ax.plot(steps, scores, ".", ms=2, alpha=0.35, color="C0", label="episode return")
    ax.plot(steps, trailing_mean(scores), color="C0", label=f"mean of the last {SCORE_EPISODES}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def kl_figure(updates: Sequence[dict[str, float]], limit: float | None, limit_label: str) -> Figure:
    """Per update: the exact mean KL(pi_old || pi_new) measured after it (and, when logged, the largest minibatch
    estimate that PPO's early stopping compared), against the limit."""
    fig, ax = new_figure(6.4, 3.2)
    steps = [r["env_step"] for r in updates]
    ax.plot(steps, [r["kl"] for r in updates], lw=1, color="C1", label="KL(old || new), exact, per update")
    if updates and "approx_kl_max" in updates[0]:
        ax.plot(
            steps,
            [r["approx_kl_max"] for r in updates],
            lw=0.8,
            color="C2",
            alpha=0.7,
            label="largest k3 estimate of a minibatch stepped on",
        )
    if limit is not None:
        ax.axhline(limit, ls="--", color="k", lw=1, label=limit_label)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("KL (nats)")
    ax.legend(fontsize=8)
    return fig


def temperature_figure(updates: Sequence[dict[str, float]]) -> Figure:
    """SAC's temperature alpha and the policy's entropy against its target, per logged update."""
    fig, ax = new_figure(6.4, 3.2)
    steps = [r["env_step"] for r in updates]
    ax.plot(steps, [r["alpha"] for r in updates], color="C3", label="alpha")
    ax.set_yscale("log")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("alpha")
    right = ax.twinx()
    right.plot(steps, [r["entropy"] for r in updates], color="C4", lw=0.8, label="policy entropy (right)")
    if updates:
        right.axhline(updates[0]["target_entropy"], ls="--", color="C4", lw=1, label="target entropy (right)")
    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = right.get_legend_handles_labels()
    ax.legend(lines + more, labels + more_labels, fontsize=8)
    return fig


def write_learning_curves(
    out_dir: Path,
    episodes: Sequence[Episode],
    updates: Sequence[dict[str, float]],
    *,
    title: str,
    kl_limit: float | None = None,
    kl_label: str = "target_kl",
) -> list[Path]:
    """``learning_curve.png`` and ``kl.png`` (PPO, TRPO) or ``temperature.png`` (SAC) in ``out_dir``."""
    figures = {"learning_curve": learning_curve_figure(episodes, title)}
    if updates and "alpha" in updates[0]:
        figures["temperature"] = temperature_figure(updates)
    elif updates:
        figures["kl"] = kl_figure(updates, kl_limit, kl_label)
    return write_pngs(figures, out_dir)
