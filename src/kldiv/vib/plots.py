"""Figures of VIB runs: a run's training curves, and the rate/accuracy trade-off of a beta sweep. Agg canvas."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

from kldiv.viz import new_figure

__all__ = ["curves_figure", "sweep_figure"]


def curves_figure(metrics: Sequence[dict[str, float]]) -> Figure:
    """Per epoch: the training cross-entropy and the test NLL (left), the test accuracy and the rate (right)."""
    fig, ax = new_figure(7.0, 4.0)
    epochs = [row["epoch"] for row in metrics]
    ax.plot(epochs, [row["train_nll"] for row in metrics], marker="o", ms=3, label="train cross-entropy")
    ax.plot(epochs, [row["test_nll"] for row in metrics], marker="o", ms=3, label="test NLL")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per example")
    right = ax.twinx()
    right.plot(
        epochs, [row["test_rate"] for row in metrics], color="C3", ls="--", label="rate KL(q(z|x) ‖ N(0, I)) (right)"
    )
    right.set_ylabel("rate (nats)")
    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = right.get_legend_handles_labels()
    ax.legend(lines + more, labels + more_labels, fontsize=8)
    ax.set_title("VIB training")
    return fig


def sweep_figure(betas: Sequence[float], rates: Sequence[float], accuracies: Sequence[float]) -> Figure:
    """Test accuracy against the rate, one point per beta (annotated)."""
    fig, ax = new_figure(5.6, 4.0)
    ax.plot(rates, accuracies, marker="o")
    for b, r, a in zip(betas, rates, accuracies, strict=True):
        ax.annotate(f"β = {b:g}", (r, a), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("rate: mean KL(q(z|x) ‖ N(0, I)) on the test set (nats)")
    ax.set_ylabel("test accuracy")
    ax.set_title("The information bottleneck: accuracy against rate")
    return fig
