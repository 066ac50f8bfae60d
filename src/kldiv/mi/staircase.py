"""The staircase experiment of Poole et al. (2019) and Song & Ermon (2020): one critic per bound trained while the
true mutual information of correlated Gaussians steps up (2, 4, 6, 8, 10 nats by default, ``steps_per_level``
steps each, dimension 20, batch 64), recording the bound's value at every step.

Per bound and level the estimates of the level's second half (the critic has adapted by then) give the bias (their
mean minus the truth) and the standard deviation: the known pattern is that DV, MINE and NWJ grow exponentially
noisy as the mutual information rises, InfoNCE saturates at ``log(batch)`` (4.16 nats at 64), and SMILE with
``tau = 5`` keeps the variance low at a small bias.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from kldiv.mi.bounds import BOUNDS
from kldiv.mi.estimate import estimate_mi, make_critic
from kldiv.mi.gaussians import correlated_gaussians

__all__ = ["LEVELS", "LevelStats", "StaircaseResult", "parse_bound", "staircase"]

LEVELS = (2.0, 4.0, 6.0, 8.0, 10.0)


def parse_bound(spec: str) -> tuple[str, float | None]:
    """``"smile:5"`` -> ``("smile", 5.0)``, ``"smile:inf"`` -> ``("smile", None)`` (no clipping), ``"dv"`` ->
    ``("dv", None)``; ``ValueError`` for anything else. A plain ``"smile"`` clips at 5."""
    name, _, tau_text = spec.partition(":")
    if name not in BOUNDS:
        raise ValueError(f"unknown bound {spec!r}: one of {', '.join(BOUNDS)} (SMILE's clipping as smile:TAU)")
    if not tau_text:
        return name, 5.0 if name == "smile" else None
    if name != "smile":
        raise ValueError(f"{spec!r}: only smile takes a clipping value")
    try:
        tau = float(tau_text)
    except ValueError:
        raise ValueError(f"{spec!r}: the clipping value must be a number > 0 or inf") from None
    if not tau > 0:
        raise ValueError(f"{spec!r}: the clipping value must be a number > 0 or inf")
    return name, None if math.isinf(tau) else tau


@dataclass(frozen=True)
class LevelStats:
    """One bound at one level: the true MI, the mean of the estimates (second half of the level), its bias and the
    estimates' standard deviation."""

    truth: float
    mean: float
    bias: float
    std: float


@dataclass(frozen=True)
class StaircaseResult:
    """Every bound's estimate at every step, the levels, and the per-level statistics."""

    levels: tuple[float, ...]
    steps_per_level: int
    batch_size: int
    estimates: dict[str, list[float]]

    def stats(self) -> dict[str, list[LevelStats]]:
        """Per bound, one :class:`LevelStats` per level."""
        out: dict[str, list[LevelStats]] = {}
        n = self.steps_per_level
        for spec, values in self.estimates.items():
            rows = []
            for k, truth in enumerate(self.levels):
                tail = values[k * n + n // 2 : (k + 1) * n]
                mean = statistics.fmean(tail)
                std = statistics.stdev(tail) if len(tail) > 1 else 0.0
                rows.append(LevelStats(truth, mean, mean - truth, std))
            out[spec] = rows
        return out


class _Stairs:
    """Batches of correlated Gaussians whose mutual information steps through ``levels``, ``steps_per_level``
    batches each (the last level continues)."""

    def __init__(self, levels: list[float], steps_per_level: int, dim: int, cubic: bool) -> None:
        self.levels, self.steps_per_level, self.dim, self.cubic = levels, steps_per_level, dim, cubic
        self.calls = 0

    def __call__(self, b: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        level = self.levels[min(self.calls // self.steps_per_level, len(self.levels) - 1)]
        self.calls += 1
        return correlated_gaussians(b, mi=level, dim=self.dim, cubic=self.cubic, generator=g)


def staircase(
    bounds: Sequence[str] = ("dv", "mine", "nwj", "infonce", "smile:5"),
    *,
    levels: Sequence[float] = LEVELS,
    dim: int = 20,
    batch_size: int = 64,
    steps_per_level: int = 4000,
    critic: str = "separable",
    cubic: bool = False,
    lr: float = 5e-4,
    seed: int = 0,
    progress: bool = False,
) -> StaircaseResult:
    """Run the staircase for each bound of ``bounds`` (names as :func:`parse_bound` reads them); every bound sees
    the same sequence of batches (the same ``seed``) and starts from the same critic initialization."""
    specs = [(spec, *parse_bound(spec)) for spec in bounds]
    if not specs:
        raise ValueError("bounds is empty")
    if isinstance(steps_per_level, bool) or not isinstance(steps_per_level, int) or steps_per_level < 2:
        raise ValueError(f"steps_per_level must be an integer >= 2, got {steps_per_level!r}")
    steps = list(levels)
    if not steps:
        raise ValueError("levels is empty")
    estimates = {}
    for spec, name, tau in specs:
        result = estimate_mi(
            _Stairs(steps, steps_per_level, dim, cubic),
            bound=name,
            steps=steps_per_level * len(steps),
            batch_size=batch_size,
            critic=make_critic(critic, dim, dim, seed=seed),
            lr=lr,
            tau=tau,
            seed=seed,
            progress=progress,
        )
        estimates[spec] = result.trajectory
    return StaircaseResult(tuple(float(v) for v in steps), steps_per_level, batch_size, estimates)
