"""The staircase figure: each bound's estimate at every step against the true mutual information."""

from __future__ import annotations

import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kldiv.mi.staircase import StaircaseResult

__all__ = ["staircase_figure"]


def _smoothed(values: list[float], rate: float) -> list[float]:
    """An exponential moving average (for the eye only)."""
    out, current = [], values[0] if values else 0.0
    for v in values:
        current = rate * current + (1 - rate) * v
        out.append(current)
    return out


def staircase_figure(result: StaircaseResult) -> Figure:
    """One panel per bound: the estimate at each step (light), its moving average, the true MI and ``log B``."""
    specs = list(result.estimates)
    columns = min(len(specs), 3)
    rows = math.ceil(len(specs) / columns)
    fig = Figure(figsize=(4.2 * columns, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    n = result.steps_per_level
    truth_x = [x for k in range(len(result.levels)) for x in (k * n, (k + 1) * n)]
    truth_y = [v for level in result.levels for v in (level, level)]
    top = max(result.levels) * 1.5
    for i, spec in enumerate(specs):
        ax = fig.add_subplot(rows, columns, i + 1)
        values = result.estimates[spec]
        steps = range(len(values))
        ax.plot(steps, [min(max(v, -2.0), top) for v in values], lw=0.4, alpha=0.35, color="C0")
        rate = 1.0 - min(0.1, 20.0 / n)  # a memory of about a twentieth of a level
        ax.plot(steps, _smoothed(values, rate), lw=1.2, color="C0", label="estimate (moving average)")
        ax.plot(truth_x, truth_y, color="k", lw=1, label="true MI")
        ax.axhline(math.log(result.batch_size), ls=":", color="C3", lw=1, label=f"log {result.batch_size}")
        ax.set_ylim(-2.0, top)
        ax.set_title(spec)
        ax.set_xlabel("step")
        ax.set_ylabel("nats")
        if i == 0:
            ax.legend(fontsize=7, loc="upper left")
    return fig
