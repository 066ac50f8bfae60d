"""Estimating a mutual information by training a critic on one of the bounds of :mod:`kldiv.mi.bounds`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kldiv.mi.bounds import BOUNDS, MineState, dv, infonce, mine, nwj, smile
from kldiv.mi.critics import ConcatCritic, SeparableCritic

__all__ = ["CRITICS", "MIEstimate", "estimate_mi", "make_critic"]

CRITICS = ("separable", "concat")
Sampler = Callable[[int, torch.Generator], tuple[Tensor, Tensor]]


@dataclass
class MIEstimate:
    """The ``estimate`` (nats): the mean of the bound over the last ``average`` steps of ``trajectory`` (the bound's
    value on each step's batch, before that step's update); and the trained ``critic``."""

    estimate: float
    trajectory: list[float]
    critic: nn.Module


def make_critic(kind: str, x_dim: int, y_dim: int, *, seed: int = 0) -> nn.Module:
    """A ``"separable"`` or ``"concat"`` critic (hidden widths 256, 256) initialized from ``seed`` (torch's global
    generator is left as it was)."""
    if kind not in CRITICS:
        raise ValueError(f"critic must be one of {', '.join(map(repr, CRITICS))} or an nn.Module, got {kind!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SeparableCritic(x_dim, y_dim) if kind == "separable" else ConcatCritic(x_dim, y_dim)


def _bound_value(bound: str, scores: Tensor, state: MineState, tau: float | None) -> tuple[Tensor, MineState]:
    if bound == "mine":
        return mine(scores, state)
    if bound == "smile":
        return smile(scores, tau), state
    return {"dv": dv, "nwj": nwj, "infonce": infonce}[bound](scores), state


def estimate_mi(
    data: tuple[Tensor, Tensor] | Sampler,
    *,
    bound: str = "smile",
    steps: int = 2000,
    batch_size: int = 64,
    critic: str | nn.Module = "separable",
    lr: float = 5e-4,
    tau: float | None = 5.0,
    average: int = 100,
    seed: int = 0,
    progress: bool = False,
) -> MIEstimate:
    """Train a critic by gradient ascent on ``bound`` (one of :data:`~kldiv.mi.bounds.BOUNDS`) and return the
    estimate of ``I(X; Y)`` with its trajectory.

    ``data``: paired samples ``(x, y)`` ``(N, dx)``, ``(N, dy)`` from which each step draws ``batch_size`` rows
    without replacement, or a sampler ``(batch_size, generator) -> (x, y)`` of fresh joint samples. ``critic``:
    ``"separable"`` or ``"concat"`` (:mod:`kldiv.mi.critics`, hidden widths 256, 256), or a module mapping
    ``(x, y)`` to ``(B, B)`` scores. ``tau``: SMILE's clipping. Adam with learning rate ``lr``; the random numbers
    (initialization, batches) come from ``seed``. ``progress``: show a progress bar.
    """
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {', '.join(map(repr, BOUNDS))}, got {bound!r}")
    for name, number, low in (("steps", steps, 1), ("batch_size", batch_size, 2), ("average", average, 1)):
        if isinstance(number, bool) or not isinstance(number, int) or number < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {number!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if tau is not None and not (isinstance(tau, (int, float)) and not isinstance(tau, bool) and tau > 0):
        raise ValueError(f"tau must be a number > 0 or None, got {tau!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    generator = torch.Generator().manual_seed(seed)
    if callable(data):
        sample = data
    else:
        if not (isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)):
            raise TypeError("data must be a pair of tensors (x, y) or a sampler (batch_size, generator) -> (x, y)")
        x_all, y_all = data
        if x_all.dim() != 2 or y_all.dim() != 2 or x_all.shape[0] != y_all.shape[0]:
            raise ValueError(
                f"x and y must be (N, dx) and (N, dy) with the same N, got {tuple(x_all.shape)}, {tuple(y_all.shape)}"
            )
        if not (x_all.is_floating_point() and y_all.is_floating_point()):
            raise TypeError(f"data must be floating-point tensors, got {x_all.dtype} and {y_all.dtype}")
        if x_all.shape[0] < batch_size:
            raise ValueError(f"batch_size {batch_size} exceeds the {x_all.shape[0]} samples")

        def sample(b: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
            index = torch.randperm(x_all.shape[0], generator=g)[:b]
            return x_all[index], y_all[index]

    batch = sample(batch_size, generator)  # the first step's batch also sizes a critic built here
    if isinstance(critic, nn.Module):
        model = critic
    else:
        model = make_critic(critic, batch[0].shape[1], batch[1].shape[1], seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    state = MineState(None)
    trajectory = []
    from tqdm.auto import tqdm

    for step in tqdm(range(steps), desc=bound, disable=not progress, leave=False, dynamic_ncols=True):
        x, y = batch if step == 0 else sample(batch_size, generator)
        scores = model(x, y)
        if not bool(torch.isfinite(scores).all()):
            raise FloatingPointError(f"the critic's scores became non-finite at step {step}; try a smaller lr")
        value, state = _bound_value(bound, scores, state, tau)
        if not bool(torch.isfinite(value)):
            raise FloatingPointError(f"the {bound} bound became {float(value)}; try a smaller lr or another bound")
        optimizer.zero_grad(set_to_none=True)
        value.neg().backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        trajectory.append(float(value.detach()))
    tail = trajectory[-average:]
    return MIEstimate(estimate=sum(tail) / len(tail), trajectory=trajectory, critic=model)
