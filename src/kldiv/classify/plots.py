"""Figures of a classification run: training curves and the reliability diagram of the test set.

Each function returns a matplotlib Figure (Agg canvas, no pyplot); :func:`write_figures` writes them as PNGs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from kldiv.classify.objective import Evaluation
from kldiv.metrics import CalibrationBins
from kldiv.report import write_pngs
from kldiv.viz import new_figure

__all__ = ["curves_figure", "reliability_figure", "write_figures"]


def curves_figure(metrics: Sequence[dict[str, float]]) -> Figure:
    """Per epoch: the training loss and its cross-entropy and regularizer parts, the evaluation NLL (left axis),
    and the train and evaluation accuracy and the evaluation ECE (right axis)."""
    fig, ax = new_figure(7.0, 4.0)
    epochs = [row["epoch"] for row in metrics]
    for key, label in (
        ("train_loss", "train loss"),
        ("train_ce", "train cross-entropy"),
        ("train_reg", "train regularizer"),
        ("eval_nll", "eval NLL"),
    ):
        ax.plot(epochs, [row[key] for row in metrics], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    right = ax.twinx()
    for key, label, style, color in (
        ("train_accuracy", "train accuracy (right)", ":", "C4"),
        ("eval_accuracy", "eval accuracy (right)", "--", "C5"),
        ("eval_ece", "eval ECE (right)", "-.", "C6"),
    ):
        right.plot(epochs, [row[key] for row in metrics], ls=style, color=color, label=label)
    right.set_ylabel("fraction")
    right.set_ylim(0.0, 1.0)
    lines = ax.get_legend_handles_labels()
    right_lines = right.get_legend_handles_labels()
    ax.legend(lines[0] + right_lines[0], lines[1] + right_lines[1], fontsize=8)
    ax.set_title("training curves")
    return fig


def reliability_figure(bins: CalibrationBins, *, title: str = "reliability diagram") -> Figure:
    """Accuracy against confidence per bin (empty bins left out), with the diagonal of perfect calibration."""
    fig, ax = new_figure(4.5, 4.5)
    edges = bins.edges.numpy()
    centers = (edges[:-1] + edges[1:]) / 2
    occupied = bins.count.numpy() > 0
    width = float(edges[1] - edges[0])
    ax.bar(centers[occupied], bins.accuracy.numpy()[occupied], width=width * 0.9, label="accuracy", alpha=0.8)
    ax.plot(bins.confidence.numpy()[occupied], bins.accuracy.numpy()[occupied], "o", ms=3, color="black")
    ax.plot([0, 1], [0, 1], ls="--", color="#555555", label="perfect calibration")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("confidence (largest probability)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"{title}: ECE {float(bins.ece):.4f}")
    return fig


def write_figures(metrics: Sequence[dict[str, float]], test: Evaluation, out_dir: Path) -> list[Path]:
    """curves.png (when there are metrics) and reliability.png (the test set's)."""
    figures = {"reliability": reliability_figure(test.bins, title="test set")}
    if metrics:
        figures["curves"] = curves_figure(metrics)
    return write_pngs(figures, out_dir)
