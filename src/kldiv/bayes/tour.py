"""The tour's Bayesian-network section: a Bayesian MLP and its deterministic baseline on the 1-D regression toy,
the predictive bands over and beyond the data, and a two-row table."""

from __future__ import annotations

import torch

from kldiv.bayes.plots import uncertainty_figure
from kldiv.bayes.toy import CLUSTERS, NOISE_STD, PLOT_RANGE, toy_regression
from kldiv.bayes.train import BAND_SAMPLES, RegressionMetrics, TrainConfig, deterministic, toy_predictive, train
from kldiv.report import Cell, Context, Figure, Section, Table, png_bytes, register_section
from kldiv.runs import RunOptions

CONFIG = TrainConfig(task="regression", epochs=12, figures=False)


def _on_data(x: torch.Tensor) -> torch.Tensor:
    """Whether each grid point lies in a cluster of training inputs."""
    return torch.stack([(x >= lo) & (x <= hi) for lo, hi in CLUSTERS]).any(0)


@register_section("bnn", order=50)
def bnn_section(ctx: Context) -> Section:
    """The regression toy: test NLL and RMSE, and the predictive std on and far from the data."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster, and immune to a busy machine
    try:
        result = train(CONFIG, RunOptions(out=ctx.out_dir / "bnn", overwrite=True, progress=False))
        assert CONFIG.noise_std is not None
        grid, predictive = toy_predictive(result.model, CONFIG.noise_std, seed=CONFIG.seed)
        base = None if result.baseline is None else deterministic(result.baseline, grid)[0]
    finally:
        torch.set_num_threads(threads)
    x = grid.squeeze(1)
    std = predictive.std.squeeze(1)
    on, far = _on_data(x), x.abs() >= 7
    rows: list[list[Cell]] = []
    for name, m, on_std, far_std in (
        ("Bayesian MLP (mean field)", result.test, float(std[on].mean()), float(std[far].mean())),
        ("deterministic baseline", result.baseline_test, NOISE_STD, NOISE_STD),
    ):
        assert isinstance(m, RegressionMetrics)
        rows.append([name, f"{m.nll:.3f}", f"{m.rmse:.3f}", f"{on_std:.3f}", f"{far_std:.3f}"])
    table = Table(
        header=["model", "test NLL (nats)", "test RMSE", "predictive std on the data", "predictive std, |x| ≥ 7"],
        rows=rows,
        title="1-D regression with a gap: the predictive's spread where there are data and far from them",
        summary_columns=["model", "test NLL (nats)", "predictive std, |x| ≥ 7"],
    )
    return Section(
        title="Bayesian neural networks: uncertainty away from the data",
        blocks=[
            f"`kldiv bnn train --task regression`: 100 points with x in [−4, −2] ∪ [2, 4] and y = sin x + x/4 plus "
            f"Gaussian noise of std {NOISE_STD:g}. A 1-{str(CONFIG.hidden).replace(',', '-')}-1 "
            "MLP whose weights each have a Gaussian posterior is trained by the negative ELBO, mean NLL + "
            "KL(q ‖ p) / N with the KL to the N(0, 1) prior in closed form (`kldiv.bayes`); the same MLP with "
            "plain weights is trained beside it on the same batches. The Bayesian predictive mixes "
            f"{BAND_SAMPLES} weight draws: its spread grows outside the clusters, where the data do not pin the "
            f"weights down, while the baseline's stays at the noise std over the whole range [{PLOT_RANGE[0]:g}, "
            f"{PLOT_RANGE[1]:g}].",
            table,
            Figure(
                "bnn-uncertainty",
                png_bytes(uncertainty_figure(toy_regression(CONFIG.seed), grid, predictive, base)),
                "Predictive mean and ±2 std bands (total, and the epistemic part alone); the baseline dashed.",
            ),
        ],
    )
