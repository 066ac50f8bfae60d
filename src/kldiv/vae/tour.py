"""The tour's VAE section: the tutorial's MLP VAE trained on the embedded 8x8 digits for three values of beta, with
samples, reconstructions and the reconstruction/KL trade-off."""

from __future__ import annotations

import torch

from kldiv.data import load_digits
from kldiv.report import Cell, Context, Figure, Section, Table, png_bytes, register_section
from kldiv.runs import RunOptions
from kldiv.vae.plots import reconstructions_figure, samples_figure, tradeoff_figure
from kldiv.vae.train import TrainConfig, TrainResult, train

BETAS = (0.5, 1.0, 4.0)
EPOCHS = 40
QUICK_EPOCHS = 8


def _epochs(ctx: Context) -> tuple[int, int]:
    """Training epochs and KL warm-up epochs."""
    return (QUICK_EPOCHS, 2) if ctx.quick else (EPOCHS, 10)


def _train(ctx: Context, beta: float) -> TrainResult:
    epochs, warmup = _epochs(ctx)
    config = TrainConfig(
        dataset="digits",
        epochs=epochs,
        batch_size=64,
        beta=beta,
        schedule=f"linear:{warmup}",
        figures=False,
    )
    options = RunOptions(out=ctx.out_dir / "vae" / f"beta-{beta:g}", overwrite=True, progress=False)
    return train(config, options, data=load_digits())


@register_section("vae", order=30)
def vae_section(ctx: Context) -> Section:
    """Three beta-VAEs on the digits: the trade-off table, samples and reconstructions of beta = 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these models are tiny: one thread is faster, and immune to a busy machine
    try:
        results = {beta: _train(ctx, beta) for beta in BETAS}
    finally:
        torch.set_num_threads(threads)
    rows: list[list[Cell]] = []
    for beta, result in results.items():
        t = result.test
        rows.append([beta, t.reconstruction, t.kl, -t.elbo, f"{t.active_units}/{result.model.z_dim}"])
    table = Table(
        header=["β", "reconstruction (nats)", "KL (nats)", "−ELBO (nats)", "active units"],
        rows=rows,
        title="β-VAE on the 8×8 digits (test set, per image)",
        summary_columns=["β", "reconstruction (nats)", "KL (nats)", "−ELBO (nats)"],
    )
    model = results[1.0].model
    data = load_digits()
    epochs, warmup = _epochs(ctx)
    trade = [{"beta": b, "kl": r.test.kl, "reconstruction": r.test.reconstruction} for b, r in results.items()]
    return Section(
        title="VAE: the KL term under control",
        blocks=[
            f"The tutorial's MLP VAE (hidden 400-400, z = 20, Bernoulli decoder) trained by `kldiv vae train` on "
            f"scikit-learn's 8×8 digits ({data.train.shape[0]} training images), {epochs} epochs, the KL weight "
            f"warmed up linearly over {warmup} epochs to β. The loss is reconstruction + β·KL(q(z|x) ‖ N(0, I)), "
            "the KL from kldiv's closed form. Larger β buys a smaller KL (rate) with a worse reconstruction "
            "(distortion) and fewer active latent units.",
            table,
            Figure(
                "vae-tradeoff",
                png_bytes(tradeoff_figure(trade)),
                "Reconstruction against KL on the test set, one point per β.",
            ),
            Figure(
                "vae-samples",
                png_bytes(samples_figure(model, generator=torch.Generator().manual_seed(0))),
                "Samples from the prior decoded by the β = 1 model.",
            ),
            Figure(
                "vae-reconstructions",
                png_bytes(reconstructions_figure(model, data.test)),
                "Test digits (top) and their reconstructions (bottom), β = 1.",
            ),
        ],
    )
