"""The VAE objective and its evaluation: ELBO terms, the beta-VAE loss with free bits, the importance-weighted
bound and active units.

With an encoder q(z|x) = N(mu, diag(sigma^2)), sigma^2 = exp(log_var), a prior p(z) = N(0, I) and a decoder p(x|z):

    log p(x) >= ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z))                     (Kingma & Welling 2014)
    loss = mean_batch(-log p(x|z) + beta * KL)                                  (Higgins et al. 2017, beta-VAE)
    log p(x) >= IWAE_k = E[log (1/k) sum_i p(x, z_i) / q(z_i|x)] >= ELBO        (Burda, Grosse & Salakhutdinov 2016)

The reconstruction term uses one reparameterized sample ``z = mu + sigma * eps``; the KL term is the closed form
:func:`kldiv.distributions.gaussian.kl_diag_gaussian_std_normal` (per latent dimension, accurate near the prior).
Everything is in nats per image.

References: Kingma & Welling (2014), "Auto-Encoding Variational Bayes", ICLR; Higgins et al. (2017), "beta-VAE:
Learning Basic Visual Concepts with a Constrained Variational Framework", ICLR; Burda, Grosse & Salakhutdinov
(2016), "Importance Weighted Autoencoders", ICLR; Kingma et al. (2016), "Improved Variational Inference with
Inverse Autoregressive Flow", NeurIPS (free bits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kldiv._inference import inference
from kldiv._validate import check_scalar
from kldiv.distributions.gaussian import kl_diag_gaussian_std_normal
from kldiv.vae.model import VAE, check_images

__all__ = [
    "ELBOTerms",
    "Evaluation",
    "active_units",
    "elbo_terms",
    "evaluate",
    "iwae_bound",
    "log_likelihood",
    "vae_loss",
]

_LOG_2PI = math.log(2 * math.pi)
ACTIVE_THRESHOLD = 1e-2
"""Burda et al. (2016): a latent unit is active when the variance over the data of its encoder mean exceeds this."""


@dataclass(frozen=True)
class ELBOTerms:
    """The two terms of the negative ELBO of a batch, per image, in nats.

    ``reconstruction``: ``(B,)``, ``-log p(x|z)`` at one reparameterized sample ``z ~ q(z|x)`` per image.
    ``kl_per_dim``: ``(B, z_dim)``, ``KL(q(z_j|x) || N(0, 1))`` for each latent dimension ``j`` (closed form).
    ``-(reconstruction + kl)`` is an unbiased one-sample estimate of the ELBO of each image.
    """

    reconstruction: Tensor
    kl_per_dim: Tensor

    @property
    def kl(self) -> Tensor:
        """``(B,)``: ``KL(q(z|x) || N(0, I)) = sum_j kl_per_dim[:, j]``."""
        return self.kl_per_dim.sum(-1)


@dataclass(frozen=True)
class Evaluation:
    """Per-image means in nats over an evaluated set: ``elbo = -(reconstruction + kl)``, the mean KL of each
    latent dimension (``kl = sum(kl_per_dim)``), and the number of active units (Burda et al. 2016)."""

    elbo: float
    reconstruction: float
    kl: float
    kl_per_dim: list[float]
    active_units: int


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= 1, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value}")
    return value


def _check_nonempty(x: Tensor) -> None:
    if x.shape[0] == 0:
        raise ValueError(f"x must hold at least one image, got shape {tuple(x.shape)}")


def _device(model: nn.Module, x: Tensor) -> torch.device:
    param = next(model.parameters(), None)
    return x.device if param is None else param.device


def log_likelihood(model: VAE, x: Tensor, decoded: Tensor) -> Tensor:
    """``log p(x|z)`` summed over the pixels, from the decoder output ``decoded = model.decode(z)``.

    ``x``: ``(B, C, H, W)``; ``decoded``: ``(..., C, H, W)`` broadcasting against ``x`` (e.g. ``(S, B, C, H, W)``
    for S samples per image); the result has shape ``decoded.shape[:-3]``.

    - Bernoulli (``decoded`` = logits l): ``sum_p x_p log sigmoid(l_p) + (1 - x_p) log sigmoid(-l_p)``, i.e. minus
      the binary cross-entropy with logits. For continuous ``x`` in [0, 1] this is the tutorial's BCE objective, not
      the log-density of a normalized distribution on [0, 1].
    - Gaussian (``decoded`` = means m): ``sum_p log N(x_p; m_p, sigma^2) = -0.5 sum_p (x_p - m_p)^2 / sigma^2
      - P (log sigma + 0.5 log 2 pi)`` with the model's scalar ``sigma = exp(log_sigma)`` and P pixels.
    """
    if decoded.dim() < 3 or tuple(decoded.shape[-3:]) != model.image_shape:
        raise ValueError(
            f"decoded must have shape (..., {', '.join(map(str, model.image_shape))}) for a model with "
            f"image_shape={model.image_shape}, got {tuple(decoded.shape)}"
        )
    try:
        target = x.expand_as(decoded)
    except RuntimeError as exc:
        raise ValueError(
            f"x of shape {tuple(x.shape)} does not broadcast against decoded of shape {tuple(decoded.shape)}"
        ) from exc
    pixels = (-3, -2, -1)
    if model.likelihood == "bernoulli":
        return -F.binary_cross_entropy_with_logits(decoded, target, reduction="none").sum(pixels)
    if model.log_sigma is None:
        raise ValueError(f"a model with likelihood={model.likelihood!r} must have a log_sigma parameter, got None")
    log_sigma = model.log_sigma
    n_pixels = math.prod(model.image_shape)
    squared = (target - decoded).square().sum(pixels)
    return -0.5 * squared * torch.exp(-2.0 * log_sigma) - n_pixels * (log_sigma + 0.5 * _LOG_2PI)


def _kl_per_dim(mu: Tensor, log_var: Tensor) -> Tensor:
    """``KL(N(mu_j, exp(log_var_j)) || N(0, 1))`` per dimension, by kldiv's closed form."""
    kl = kl_diag_gaussian_std_normal(mu, log_var, per_dimension=True)
    assert isinstance(kl, Tensor)  # tensors in, tensor out
    return kl


def _unwrap(model: nn.Module) -> VAE:
    """The VAE itself, also inside a wrapper holding it as ``.module`` (DistributedDataParallel)."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, VAE):
        raise TypeError(
            f"model must be a kldiv.vae.VAE (or a DistributedDataParallel of one), got {type(model).__name__}"
        )
    return inner


def elbo_terms(
    model: VAE, x: Tensor, *, eps: Tensor | None = None, generator: torch.Generator | None = None
) -> ELBOTerms:
    """The negative ELBO's terms of each image of the batch ``x`` (Kingma & Welling 2014, eq. 10):

    ``reconstruction = -log p(x|z)`` at ``z = mu + exp(0.5 log_var) * eps``, one sample per image, and
    ``kl_per_dim = KL(q(z_j|x) || N(0, 1))`` in closed form (:func:`kl_diag_gaussian_std_normal`).

    ``x``: ``(B, *model.image_shape)``, in [0, 1] for the Bernoulli likelihood. ``eps``: the ``(B, z_dim)``
    standard normal noise, else drawn from ``generator``. Differentiable (run under ``torch.no_grad()`` for
    evaluation). ``model`` may be a ``DistributedDataParallel`` wrapping a VAE: the pass goes through the wrapper's
    forward, so that gradients are synchronized.
    """
    vae = _unwrap(model)
    check_images(vae, x)
    decoded, mu, log_var = model(x, eps=eps, generator=generator)
    return ELBOTerms(reconstruction=-log_likelihood(vae, x, decoded), kl_per_dim=_kl_per_dim(mu, log_var))


def vae_loss(terms: ELBOTerms, *, beta: float = 1.0, free_bits: float = 0.0) -> Tensor:
    """The beta-VAE loss, a scalar: ``mean_b(reconstruction_b) + beta * KL_term`` (Higgins et al. 2017).

    ``KL_term = mean_b(sum_j KL_bj)`` (``beta = 1`` is the negative ELBO); with ``free_bits = lam > 0`` it is
    :func:`kldiv.schedules.free_bits` ``= sum_j max(lam, mean_b KL_bj)``: each latent dimension's batch-mean KL
    is floored at ``lam`` nats and gets no gradient below it (Kingma et al. 2016). ``beta >= 0``, ``lam >= 0``.
    """
    beta = check_scalar("beta", beta, low=0.0)
    lam = check_scalar("free_bits", free_bits, low=0.0)
    reconstruction = terms.reconstruction.mean()
    if lam > 0:
        from kldiv.schedules import free_bits as floored_kl

        kl_term = floored_kl(terms.kl_per_dim, lam)
    else:
        kl_term = terms.kl.mean()
    return reconstruction + beta * kl_term


def _count_active(means: Tensor, threshold: float) -> int:
    """Units whose encoder mean varies over the data by more than ``threshold`` (population variance)."""
    variance = means.double().var(0, correction=0)
    return int((variance > threshold).sum())


def evaluate(model: VAE, x: Tensor, *, batch_size: int = 1000, generator: torch.Generator | None = None) -> Evaluation:
    """Test-set ELBO of ``x`` ``(N, *image_shape)``: per-image means in nats of the reconstruction term (one
    reparameterized sample per image, from ``generator``), of the KL (closed form, total and per dimension),
    ``elbo = -(reconstruction + kl)``, and the active units (:func:`active_units`, threshold 1e-2).

    Runs in eval mode under ``torch.no_grad()`` in batches of ``batch_size`` (the previous mode is restored);
    sums are accumulated in float64.
    """
    check_images(model, x)
    _check_nonempty(x)
    batch_size = _check_count("batch_size", batch_size)
    device = _device(model, x)
    n = x.shape[0]
    reconstruction = torch.zeros((), dtype=torch.float64, device=device)
    kl_per_dim = torch.zeros(model.z_dim, dtype=torch.float64, device=device)
    means = []
    with inference(model):
        for start in range(0, n, batch_size):
            xb = x[start : start + batch_size].to(device)
            decoded, mu, log_var = model(xb, generator=generator)
            reconstruction -= log_likelihood(model, xb, decoded).double().sum()
            kl_per_dim += _kl_per_dim(mu, log_var).double().sum(0)
            means.append(mu)
    kl_mean = (kl_per_dim / n).cpu()
    rec, kl = float(reconstruction) / n, float(kl_mean.sum())
    return Evaluation(
        elbo=-(rec + kl),
        reconstruction=rec,
        kl=kl,
        kl_per_dim=kl_mean.tolist(),
        active_units=_count_active(torch.cat(means), ACTIVE_THRESHOLD),
    )


def active_units(model: VAE, x: Tensor, *, threshold: float = ACTIVE_THRESHOLD, batch_size: int = 1000) -> int:
    """Number of active latent units (Burda et al. 2016): unit u is active when

    ``A_u = Cov_x(E_{q(z|x)}[z_u]) = Var_x(mu_u(x)) > threshold``,

    the variance of the encoder mean over the images ``x`` (population variance, ``1/N``). Eval mode, no grad.
    """
    check_images(model, x)
    _check_nonempty(x)
    threshold = check_scalar("threshold", threshold, low=0.0)
    batch_size = _check_count("batch_size", batch_size)
    device = _device(model, x)
    with inference(model):
        means = [model.encode(x[s : s + batch_size].to(device))[0] for s in range(0, x.shape[0], batch_size)]
    return _count_active(torch.cat(means), threshold)


def iwae_bound(
    model: VAE,
    x: Tensor,
    *,
    k: int = 5000,
    batch_size: int = 100,
    sample_chunk: int = 500,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """The importance-weighted bound ``log p(x) >= IWAE_k`` of each image, ``(N,)`` in nats (Burda et al. 2016):

    ``IWAE_k = log (1/k) sum_i w_i``, ``log w_i = log p(x|z_i) + log N(z_i; 0, I) - log N(z_i; mu, sigma^2)``,
    ``z_i = mu + sigma * eps_i`` for k independent ``eps_i ~ N(0, I)``: one estimate per image, computed as
    ``logsumexp_i(log w_i) - log k``. ``E[IWAE_k]`` increases with k from the ELBO (k = 1) to ``log p(x)``.

    Memory stays bounded: images go in batches of ``batch_size`` and samples in chunks of ``sample_chunk``
    combined by a running logsumexp, so at most ``sample_chunk x batch_size`` decoded images are held (plus the
    ``k x batch_size x z_dim`` noise). The noise is drawn from ``generator`` image after image, k samples at a time,
    so the result does not depend on ``batch_size`` or ``sample_chunk``. Eval mode, no grad; a tqdm progress bar
    over the images when ``progress``. For continuous ``x`` with the Bernoulli likelihood the "bound" is on the
    unnormalized BCE objective, not on a log-likelihood (see :func:`log_likelihood`).
    """
    check_images(model, x)
    _check_nonempty(x)
    k = _check_count("k", k)
    batch_size = _check_count("batch_size", batch_size)
    sample_chunk = _check_count("sample_chunk", sample_chunk)
    device = _device(model, x)
    n = x.shape[0]
    bounds: list[Tensor] = []
    from tqdm.auto import tqdm

    with inference(model), tqdm(total=n, desc=f"IWAE-{k}", unit="img", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            xb = x[start : start + batch_size].to(device)
            mu, log_var = model.encode(xb)
            std = torch.exp(0.5 * log_var)
            # log p(z) - log q(z|x) = -||z||^2 / 2 + ||eps||^2 / 2 + sum(log_var) / 2 (the 2 pi terms cancel)
            half_log_det = 0.5 * log_var.sum(-1)
            # Each image's k x z_dim noise in one draw, image after image: the same for any batching.
            draws = [torch.randn((k, model.z_dim), generator=generator, dtype=mu.dtype, device=device) for _ in xb]
            eps = torch.stack(draws, dim=1)  # (k, B, z_dim)
            total = torch.full_like(half_log_det, -math.inf)
            for s in range(0, k, sample_chunk):
                e = eps[s : s + sample_chunk]
                z = torch.addcmul(mu, std, e)
                log_w = log_likelihood(model, xb, model.decode(z))
                log_w = log_w - 0.5 * z.square().sum(-1) + 0.5 * e.square().sum(-1) + half_log_det
                total = torch.logaddexp(total, torch.logsumexp(log_w, 0))
            bounds.append((total - math.log(k)).to(x.device))
            bar.update(xb.shape[0])
    return torch.cat(bounds)
