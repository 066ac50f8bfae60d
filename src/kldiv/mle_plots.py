"""The figure of :mod:`kldiv.mle`: per fitted model, ``KL(P_data || Q_t)`` and ``NLL_t - H`` against the step.

Pure plotting (Agg canvas, no pyplot): render with :func:`kldiv.report.png_bytes`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from kldiv.mle import Trace

__all__ = ["mle_figure"]

_KL_COLOR = "#1f77b4"
_NLL_COLOR = "#ff7f0e"
_GRAY = "#555555"
_PLAIN = FuncFormatter(lambda v, _: "0" if v == 0 else f"{v:.0e}")


def _positive(values: np.ndarray) -> np.ndarray:
    """Values with the non-positive ones as NaN (a gap on a log axis)."""
    return np.where(values > 0, values, np.nan)


def _categorical_panel(ax: Axes, trace: Trace) -> None:
    """Log y: the two curves coincide; their difference sits at float64 rounding."""
    steps = np.arange(len(trace.nll))
    ax.semilogy(steps, _positive(trace.kl), color=_KL_COLOR, lw=2.5, label="KL(Pₙ ‖ Qₜ) (kldiv)")
    ax.semilogy(steps, _positive(trace.nll_minus_entropy), color=_NLL_COLOR, lw=1.2, ls="--", label="NLL − H(Pₙ)")
    ax.semilogy(steps, _positive(np.abs(trace.gap)), color=_GRAY, lw=0.8, ls=":", label="|difference|")
    ax.set_title("categorical (softmax over logits): exact identity")
    ax.set_ylabel("nats (log scale)")


def _gaussian_panel(ax: Axes, trace: Trace) -> None:
    """Symmetric-log y (``NLL - H`` goes below 0 by sampling error), with KL +- 2 standard errors shaded."""
    steps = np.arange(len(trace.nll))
    se = trace.nll_se if trace.nll_se is not None else np.zeros_like(trace.nll)
    ax.fill_between(steps, trace.kl - 2 * se, trace.kl + 2 * se, color=_KL_COLOR, alpha=0.15, label="KL ± 2 SE")
    ax.plot(steps, trace.kl, color=_KL_COLOR, lw=2.5, label="KL(P ‖ Qₜ) (kldiv, closed form)")
    ax.plot(steps, trace.nll_minus_entropy, color=_NLL_COLOR, lw=1.2, ls="--", label="NLL − H(P)")
    ax.axhline(0.0, color=_GRAY, lw=0.6)
    ax.set_yscale("symlog", linthresh=max(float(se[-1]), 1e-12))
    ax.set_title("Gaussian: equal up to sampling error")
    ax.set_ylabel("nats (symmetric log scale)")


def mle_figure(traces: Sequence[Trace]) -> Figure:
    """One panel per trace (categorical or Gaussian): KL and NLL - H falling together."""
    if not traces:
        raise ValueError("traces must hold at least one trace")
    fig = Figure(figsize=(5.2 * len(traces), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(traces), squeeze=False)[0]
    for ax, trace in zip(axes, traces, strict=True):
        if trace.model == "categorical":
            _categorical_panel(ax, trace)
        else:
            _gaussian_panel(ax, trace)
        ax.yaxis.set_major_formatter(_PLAIN)  # plain text ticks: mathtext would triple the rendering time
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("gradient step")
        ax.legend(fontsize=8)
    return fig
