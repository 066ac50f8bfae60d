"""Figures of a trained VAE: samples, reconstructions, training curves, the latent space, latent traversals.

Each function returns a matplotlib Figure (Agg canvas, no pyplot); :func:`write_figures` writes them as PNGs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from kldiv.data import ImageDataset
from kldiv.report import write_pngs
from kldiv.vae.model import VAE
from kldiv.viz import new_figure


def mean_image(model: VAE, decoded: Tensor) -> Tensor:
    """The decoder's mean image in [0, 1]: sigmoid of Bernoulli logits, or the Gaussian mean itself."""
    return torch.sigmoid(decoded) if model.likelihood == "bernoulli" else decoded.clamp(0.0, 1.0)


def _grid(images: Tensor, rows: int) -> np.ndarray:
    """(N, 1, H, W) images in [0, 1] tiled into one (rows*H, cols*W) array (gaps and blank cells are 0)."""
    n, _, h, w = images.shape
    cols = -(-n // rows)
    canvas = np.zeros((rows * (h + 1) - 1, cols * (w + 1) - 1))
    arr = images[:, 0].detach().cpu().numpy()
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = arr[i]
    return canvas


def _image_figure(canvas: np.ndarray, title: str, width: float = 6.0) -> Figure:
    height = max(1.5, width * canvas.shape[0] / canvas.shape[1] + 0.5)
    fig, ax = new_figure(width, height)
    ax.imshow(canvas, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    return fig


@torch.no_grad()
def samples_figure(model: VAE, *, n: int = 64, generator: torch.Generator | None = None) -> Figure:
    """Decoder means of ``n`` draws from the prior N(0, I)."""
    model.eval()
    z = torch.randn(n, model.z_dim, generator=generator)
    images = mean_image(model, model.decode(z))
    return _image_figure(_grid(images, int(np.sqrt(n)) or 1), f"{n} samples from the prior")


@torch.no_grad()
def reconstructions_figure(model: VAE, x: Tensor, *, n: int = 16) -> Figure:
    """Originals (top row) and the decoder means at the posterior means (bottom row)."""
    model.eval()
    x = x[:n]
    mu, _ = model.encode(x)
    images = torch.cat([x, mean_image(model, model.decode(mu))])
    return _image_figure(_grid(images, 2), "originals (top) and reconstructions (bottom)", width=8.0)


def curves_figure(metrics: Sequence[dict[str, float]]) -> Figure:
    """Training loss, evaluation negative ELBO, its reconstruction and KL parts, per epoch."""
    fig, ax = new_figure(7.0, 4.0)
    epochs = [row["epoch"] for row in metrics]
    for key, label in (
        ("train_loss", "train loss (rec + beta KL)"),
        ("eval_reconstruction", "eval reconstruction"),
    ):
        ax.plot(epochs, [row[key] for row in metrics], marker="o", ms=3, label=label)
    ax.plot(epochs, [-row["eval_elbo"] for row in metrics], marker="o", ms=3, label="eval -ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    kl_ax = ax.twinx()
    kl_ax.plot(epochs, [row["eval_kl"] for row in metrics], color="#d62728", ls="--", label="eval KL (right)")
    kl_ax.set_ylabel("KL, nats per image")
    lines = ax.get_legend_handles_labels()
    kl_lines = kl_ax.get_legend_handles_labels()
    ax.legend(lines[0] + kl_lines[0], lines[1] + kl_lines[1], fontsize=8)
    ax.set_title("training curves")
    return fig


@torch.no_grad()
def latent_figure(model: VAE, x: Tensor, labels: Tensor) -> Figure:
    """Posterior means of a 2-D latent space, coloured by class."""
    if model.z_dim != 2:
        raise ValueError(f"the latent scatter needs z_dim = 2, the model has z_dim = {model.z_dim}")
    model.eval()
    mu, _ = model.encode(x)
    fig, ax = new_figure(5.5, 5.0)
    points = ax.scatter(mu[:, 0].numpy(), mu[:, 1].numpy(), c=labels.numpy(), cmap="tab10", s=4)
    fig.colorbar(points, ax=ax, label="class")
    ax.set_xlabel("z_1")
    ax.set_ylabel("z_2")
    ax.set_title("posterior means")
    return fig


@torch.no_grad()
def traversals_figure(model: VAE, *, dims: int = 8, steps: int = 9, span: float = 3.0) -> Figure:
    """Decoder means along each of the first ``dims`` latent axes from -span to span (others at 0)."""
    model.eval()
    dims = min(dims, model.z_dim)
    values = torch.linspace(-span, span, steps)
    z = torch.zeros(dims, steps, model.z_dim)
    for d in range(dims):
        z[d, :, d] = values
    images = mean_image(model, model.decode(z.reshape(-1, model.z_dim)))
    return _image_figure(_grid(images, dims), f"latent traversals: rows z_1..z_{dims}, {-span:g} to {span:g}")


def write_figures(
    model: VAE,
    data: ImageDataset,
    metrics: Sequence[dict[str, float]],
    out_dir: Path,
    *,
    generator: torch.Generator | None = None,
) -> list[Path]:
    """samples.png, reconstructions.png, curves.png, traversals.png (and latent.png when z_dim = 2)."""
    figures = {
        "samples": samples_figure(model, generator=generator),
        "reconstructions": reconstructions_figure(model, data.test),
        "traversals": traversals_figure(model),
    }
    if metrics:
        figures["curves"] = curves_figure(metrics)
    if model.z_dim == 2:
        figures["latent"] = latent_figure(model, data.test[:5000], data.test_labels[:5000])
    return write_pngs(figures, out_dir)


def tradeoff_figure(rows: Sequence[dict[str, float]]) -> Figure:
    """The beta-VAE trade-off: reconstruction against KL on the test set, one point per beta."""
    fig, ax = new_figure(5.5, 4.0)
    kl = [row["kl"] for row in rows]
    rec = [row["reconstruction"] for row in rows]
    ax.plot(kl, rec, marker="o")
    for row in rows:
        ax.annotate(f"β={row['beta']:g}", (row["kl"], row["reconstruction"]), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("KL(q(z|x) ‖ p(z)), nats per image")
    ax.set_ylabel("reconstruction −log p(x|z), nats per image")
    ax.set_title("rate–distortion trade-off over β")
    return fig
