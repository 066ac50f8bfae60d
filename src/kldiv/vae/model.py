"""VAE models: a Gaussian encoder q(z|x) = N(mu(x), diag(exp(log_var(x)))) and a decoder p(x|z).

The models only map tensors; every formula of the objective (likelihood, KL, ELBO, IWAE) lives in
:mod:`kldiv.vae.objective`. Reference: Kingma & Welling (2014), "Auto-Encoding Variational Bayes", ICLR.

- :class:`MLPVAE`: the tutorial's fully connected VAE (784-400-400-20 on MNIST, ReLU).
- :class:`ConvVAE`: a small convolutional VAE (stride-2 convolutions; any image size, e.g. 28x28 and 8x8).

Decoder outputs: Bernoulli logits (``likelihood="bernoulli"``), or Gaussian means in [0, 1] (a sigmoid) with one
learned scalar ``log_sigma`` (the decoder's log standard deviation, initialized to 0) for ``likelihood="gaussian"``.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from kldiv._validate import _first, _fmt, is_validation_enabled

__all__ = ["MLPVAE", "VAE", "ConvVAE", "Likelihood", "build_model", "check_images", "reparameterize"]

Likelihood = Literal["bernoulli", "gaussian"]
_LIKELIHOODS: tuple[str, ...] = get_args(Likelihood)


def reparameterize(mu: Tensor, log_var: Tensor, eps: Tensor) -> Tensor:
    """``z = mu + exp(0.5 log_var) * eps`` with ``eps ~ N(0, I)``: a differentiable sample of q(z|x).

    ``eps`` broadcasts against ``mu`` (e.g. ``(S, B, z_dim)`` noise for S samples per image). Reference: Kingma &
    Welling (2014), Sec. 2.4 (the reparameterization trick).
    """
    return torch.addcmul(mu, torch.exp(0.5 * log_var), eps)


def check_images(model: VAE, x: Tensor, name: str = "x") -> None:
    """``x`` must be a floating tensor ``(B, *model.image_shape)``; for the Bernoulli likelihood its values must
    lie in [0, 1] (a value check, skipped under ``kldiv.set_validation(False)``). Raises ``ValueError``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of images, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of images in [0, 1], got dtype {x.dtype}")
    expected = "(B, " + ", ".join(map(str, model.image_shape)) + ")"
    if x.dim() != 4 or tuple(x.shape[1:]) != model.image_shape:
        raise ValueError(
            f"{name} must have shape {expected} for a model with image_shape={model.image_shape}, got {tuple(x.shape)}"
        )
    if model.likelihood == "bernoulli" and is_validation_enabled() and x.numel():
        lo, hi = torch.aminmax(x.detach())
        if not (bool(lo >= 0) and bool(hi <= 1)):
            bad = ~((x >= 0) & (x <= 1))
            idx = _first(bad)
            raise ValueError(
                f"{name} must hold values in [0, 1] for the Bernoulli likelihood, got {x[idx].item()!r} "
                f"at index {_fmt(idx)}"
            )


def _check_shape(image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"image_shape must be three positive integers (channels, height, width), got {image_shape!r}")
    return (shape[0], shape[1], shape[2])


def _check_sizes(name: str, sizes: tuple[int, ...]) -> tuple[int, ...]:
    sizes = tuple(sizes)
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise ValueError(f"{name} must be a non-empty sequence of positive integers, got {sizes!r}")
    return sizes


class VAE(nn.Module):
    """Base class: a Gaussian encoder and a decoder. Subclasses implement :meth:`encode` and :meth:`decode`.

    Attributes: ``image_shape`` (C, H, W), ``z_dim``, ``likelihood`` ("bernoulli" | "gaussian"), and
    ``log_sigma``: the Gaussian decoder's learned scalar log standard deviation (a parameter initialized to 0),
    ``None`` for the Bernoulli likelihood.
    """

    z_dim: int
    likelihood: Likelihood
    image_shape: tuple[int, int, int]
    log_sigma: nn.Parameter | None

    def __init__(self, image_shape: tuple[int, int, int], z_dim: int, likelihood: Likelihood = "bernoulli") -> None:
        super().__init__()
        self.image_shape = _check_shape(image_shape)
        if isinstance(z_dim, bool) or not isinstance(z_dim, int) or z_dim < 1:
            raise ValueError(f"z_dim must be a positive integer, got {z_dim!r}")
        if likelihood not in _LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {_LIKELIHOODS}, got {likelihood!r}")
        self.z_dim = z_dim
        self.likelihood = likelihood
        if likelihood == "gaussian":
            self.log_sigma = nn.Parameter(torch.zeros(()))
        else:
            self.register_parameter("log_sigma", None)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images ``(B, C, H, W)`` in [0, 1] -> ``(mu, log_var)``, each ``(B, z_dim)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement encode(x) -> (mu, log_var)")

    def decode(self, z: Tensor) -> Tensor:
        """Latents ``(..., z_dim)`` -> decoder outputs ``(..., C, H, W)``: Bernoulli logits or Gaussian means."""
        raise NotImplementedError(f"{type(self).__name__} must implement decode(z) -> decoder outputs")

    def forward(
        self, x: Tensor, *, eps: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One reparameterized pass: ``(decoded, mu, log_var)`` with ``z = mu + exp(0.5 log_var) * eps``.

        ``eps`` (``(B, z_dim)``) is the standard normal noise; drawn from ``generator`` when not given.
        """
        mu, log_var = self.encode(x)
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        elif eps.shape != mu.shape:
            raise ValueError(f"eps must have shape {tuple(mu.shape)} (batch, z_dim), got {tuple(eps.shape)}")
        return self.decode(reparameterize(mu, log_var, eps)), mu, log_var

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, z_dim={self.z_dim}, likelihood={self.likelihood!r}"

    def _output(self, out: Tensor) -> Tensor:
        """Raw decoder output -> logits (Bernoulli) or means in [0, 1] (Gaussian)."""
        return torch.sigmoid(out) if self.likelihood == "gaussian" else out


class MLPVAE(VAE):
    """Fully connected VAE; the defaults are the tutorial's 784-400-400-20 with ReLU.

    Encoder: ``D -> hidden[0] -> ... -> hidden[-1]`` (ReLU), then two linear heads ``-> z_dim`` for ``mu`` and
    ``log_var``. Decoder: ``z_dim -> hidden[-1] -> ... -> hidden[0]`` (ReLU) ``-> D`` with ``D = C * H * W``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        hidden: tuple[int, ...] = (400, 400),
        z_dim: int = 20,
        likelihood: Likelihood = "bernoulli",
    ) -> None:
        super().__init__(image_shape, z_dim, likelihood)
        hidden = _check_sizes("hidden", hidden)
        d = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        enc: list[nn.Module] = []
        for n_in, n_out in pairwise((d, *hidden)):
            enc += [nn.Linear(n_in, n_out), nn.ReLU()]
        self.encoder = nn.Sequential(*enc)
        self.mu = nn.Linear(hidden[-1], z_dim)
        self.log_var = nn.Linear(hidden[-1], z_dim)
        dec: list[nn.Module] = []
        for n_in, n_out in pairwise((z_dim, *reversed(hidden))):
            dec += [nn.Linear(n_in, n_out), nn.ReLU()]
        dec.append(nn.Linear(hidden[0], d))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h: Tensor = self.encoder(x.flatten(-3))
        return self.mu(h), self.log_var(h)

    def decode(self, z: Tensor) -> Tensor:
        out: Tensor = self.decoder(z)
        return self._output(out.reshape(*out.shape[:-1], *self.image_shape))


class ConvVAE(VAE):
    """Small convolutional VAE for any image size (28x28 MNIST, 8x8 digits, odd sizes too).

    Encoder: ``len(channels)`` 3x3 convolutions with stride 2 and padding 1 (ReLU), flatten, two linear heads for
    ``mu`` and ``log_var``. Decoder: linear ``z_dim -> channels[-1] x h x w`` (ReLU) and the mirrored 3x3 transposed
    convolutions with stride 2, their output padding chosen so that every size is restored exactly.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        z_dim: int = 20,
        likelihood: Likelihood = "bernoulli",
        channels: tuple[int, ...] = (32, 64),
    ) -> None:
        super().__init__(image_shape, z_dim, likelihood)
        channels = _check_sizes("channels", channels)
        c, h, w = self.image_shape
        sizes = [(h, w)]
        for _ in channels:
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # 3x3 kernel, stride 2, padding 1
            sizes.append((h, w))
        enc: list[nn.Module] = []
        for c_in, c_out in pairwise((c, *channels)):
            enc += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self._latent_map = (channels[-1], h, w)
        flat = channels[-1] * h * w
        self.mu = nn.Linear(flat, z_dim)
        self.log_var = nn.Linear(flat, z_dim)
        self.project = nn.Sequential(nn.Linear(z_dim, flat), nn.ReLU())
        dec: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(pairwise((*reversed(channels), c))):
            (h_in, w_in), (h_out, w_out) = sizes[-1 - i], sizes[-2 - i]
            pad = (h_out - (2 * h_in - 1), w_out - (2 * w_in - 1))  # output = 2 (in - 1) - 2 + 3 + pad
            dec.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad))
            if i < len(channels) - 1:
                dec.append(nn.ReLU())
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        lead = x.shape[:-3]
        h: Tensor = self.encoder(x.reshape(-1, *self.image_shape))
        h = h.reshape(*lead, h.shape[-1])
        return self.mu(h), self.log_var(h)

    def decode(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        h: Tensor = self.project(z.reshape(-1, self.z_dim))
        out: Tensor = self.decoder(h.reshape(-1, *self._latent_map))
        return self._output(out.reshape(*lead, *self.image_shape))


_MODELS: dict[str, type[MLPVAE] | type[ConvVAE]] = {"mlp": MLPVAE, "conv": ConvVAE}


def build_model(
    name: str, image_shape: tuple[int, int, int], *, z_dim: int = 20, likelihood: Likelihood = "bernoulli"
) -> VAE:
    """The VAE called ``name`` ("mlp": :class:`MLPVAE`, "conv": :class:`ConvVAE`) for images of ``image_shape``."""
    if name not in _MODELS:
        raise ValueError(f"model must be one of {sorted(_MODELS)}, got {name!r}")
    return _MODELS[name](image_shape=image_shape, z_dim=z_dim, likelihood=likelihood)
