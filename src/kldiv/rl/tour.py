"""The tour's RL section: the bias and spread of the k1, k2, k3 estimators of a KL (Schulman's table)."""

from __future__ import annotations

import torch

from kldiv.report import Cell, Context, Section, Table, register_section
from kldiv.rl.estimators import ESTIMATORS

SAMPLES = 1_000_000
MEANS = (0.1, 1.0)
"""``p = N(mu, 1)`` for each ``mu``, ``q = N(0, 1)``: ``KL(q || p) = mu^2 / 2``."""


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


@register_section("rl", order=60)
def rl_section(ctx: Context) -> Section:
    """Schulman's k1/k2/k3 table, measured."""
    return Section(
        title="KL in reinforcement learning: estimating a KL from samples",
        blocks=[
            "Policy-gradient code measures the KL between the policy that collected a batch and the updated one "
            "from the batch's log-ratios `log p(x) - log q(x)` alone (`kldiv.rl.k1`, `k2`, `k3`). `k1 = -log r` is "
            "unbiased but noisy, `k2 = (log r)² / 2` is quiet but biased, `k3 = (r - 1) - log r` is unbiased, quiet "
            "and never negative: the estimate Stable-Baselines3 reports as `approx_kl`. For a penalty trained by "
            "gradient descent the ranking differs: with the samples held fixed, `k1`'s gradient averages to zero and "
            "`k2`'s is the exact gradient on average.",
            estimator_table(),
        ],
    )
