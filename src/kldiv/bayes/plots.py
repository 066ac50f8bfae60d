"""Figures of a Bayesian MLP run: training curves, the reliability of the BNN and of its baseline, and the 1-D
regression's predictive bands.

Each function returns a matplotlib Figure (Agg canvas, no pyplot).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure

from kldiv.bayes.predict import ClassMetrics, RegressionPredictive
from kldiv.bayes.toy import PLOT_RANGE, ToyData, toy_function
from kldiv.viz import new_figure

__all__ = ["curves_figure", "reliability_pair_figure", "uncertainty_figure"]


def curves_figure(metrics: Sequence[dict[str, float]]) -> Figure:
    """Per epoch: the loss and its NLL part, the evaluation NLL of the BNN and of the baseline (left axis), and
    the accuracies and ECEs, or the RMSEs (right axis)."""
    fig, ax = new_figure(7.0, 4.0)
    epochs = [row["epoch"] for row in metrics]
    first = metrics[0]
    left = [("train_loss", "train loss (−ELBO / N)"), ("train_nll", "train NLL"), ("eval_nll", "BNN eval NLL")]
    left += [("baseline_nll", "baseline eval NLL")]
    for key, label in left:
        if key in first:
            ax.plot(epochs, [row[key] for row in metrics], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per example")
    right = ax.twinx()
    keys = ("accuracy", "ece") if "eval_accuracy" in first else ("rmse",)
    for i, (who, style) in enumerate((("eval", "--"), ("baseline", ":"))):
        for j, key in enumerate(keys):
            if f"{who}_{key}" in first:
                name = "BNN" if who == "eval" else "baseline"
                right.plot(
                    epochs,
                    [row[f"{who}_{key}"] for row in metrics],
                    ls=style,
                    color=f"C{4 + 2 * j + i}",
                    label=f"{name} {key.upper() if key != 'accuracy' else key} (right)",
                )
    right.set_ylabel("fraction" if "eval_accuracy" in first else "RMSE")
    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = right.get_legend_handles_labels()
    ax.legend(lines + more, labels + more_labels, fontsize=8)
    ax.set_title("training curves")
    return fig


def reliability_pair_figure(bnn: ClassMetrics, baseline: ClassMetrics | None) -> Figure:
    """Accuracy against confidence per occupied bin for the BNN's predictive and the baseline's, with the
    diagonal of perfect calibration."""
    fig, ax = new_figure(4.8, 4.5)
    for name, m, marker in (("BNN", bnn, "o-"), ("baseline", baseline, "s--")):
        if m is None:
            continue
        occupied = m.bins.count.numpy() > 0
        ax.plot(
            m.bins.confidence.numpy()[occupied],
            m.bins.accuracy.numpy()[occupied],
            marker,
            ms=4,
            label=f"{name}: ECE {m.ece:.4f}",
        )
    ax.plot([0, 1], [0, 1], ls=":", color="#555555", label="perfect calibration")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("confidence (largest probability)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("reliability (test set)")
    return fig


def uncertainty_figure(
    data: ToyData, grid: torch.Tensor, predictive: RegressionPredictive, baseline: torch.Tensor | None = None
) -> Figure:
    """The training points, the true function, the predictive mean with its ±2 std band (total: noise and
    weights) and its epistemic ±2 std band (the spread of the draws' means), and the baseline's prediction."""
    fig, ax = new_figure(7.0, 4.2)
    x = grid.squeeze(1).numpy()
    mean = predictive.mean.squeeze(1).numpy()
    total = 2 * predictive.std.squeeze(1).numpy()
    epistemic = 2 * predictive.epistemic.sqrt().squeeze(1).numpy()
    ax.fill_between(x, mean - total, mean + total, color="C0", alpha=0.2, label="±2 std, total")
    ax.fill_between(x, mean - epistemic, mean + epistemic, color="C0", alpha=0.4, label="±2 std, epistemic")
    ax.plot(x, mean, color="C0", label="BNN predictive mean")
    ax.plot(x, toy_function(grid).squeeze(1).numpy(), ls=":", color="black", label="true function")
    if baseline is not None:
        ax.plot(x, baseline.squeeze(1).numpy(), ls="--", color="C3", label="baseline")
    ax.plot(data.train.squeeze(1).numpy(), data.train_targets.squeeze(1).numpy(), ".", color="black", ms=4)
    ax.set_xlim(*PLOT_RANGE)
    ax.set_ylim(-4.0, 4.0)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("predictive uncertainty away from the data")
    return fig
