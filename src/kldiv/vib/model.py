"""The variational information bottleneck classifier (Alemi et al. 2017, "Deep variational information bottleneck").

A stochastic encoder ``q(z|x) = N(mu(x), diag(sigma(x)^2))`` (an MLP; ``sigma = softplus(a - 5)`` as in the paper,
so the noise starts small) and a linear softmax decoder ``q(y|z)``. The objective per example is

    loss = E_{z ~ q(z|x)} [-log q(y|z)] + beta KL(q(z|x) || N(0, I))

the cross-entropy of the sampled codes (the reparameterization trick) plus ``beta`` times the rate; the rate's mean
over the data is an upper bound on ``I(Z; X)``. The KL is kldiv's closed form
(:func:`kldiv.distributions.gaussian.kl_diag_gaussian_std_normal`). Prediction averages the softmax over ``S``
codes.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kldiv.distributions.gaussian import kl_diag_gaussian_std_normal

__all__ = ["VIBClassifier", "VIBTerms", "vib_terms"]

SOFTPLUS_SHIFT = 5.0


class VIBClassifier(nn.Module):
    """Encoder MLP ``input -> hidden... -> (mu, a)`` of ``z_dim`` each, decoder ``Linear(z_dim, classes)``."""

    def __init__(
        self, input_dim: int, hidden: tuple[int, ...] = (1024, 1024), z_dim: int = 256, classes: int = 10
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in itertools.pairwise((input_dim, *hidden)):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(hidden[-1] if hidden else input_dim, 2 * z_dim))
        self.encoder = nn.Sequential(*layers)
        self.decoder = nn.Linear(z_dim, classes)
        self.z_dim = z_dim

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``mu`` and ``log sigma`` ``(B, z_dim)`` (``log softplus(a - 5)``, exact where softplus underflows)."""
        mu, a = cast(Tensor, self.encoder(x)).chunk(2, dim=-1)
        shifted = a - SOFTPLUS_SHIFT
        log_sigma = torch.where(shifted < -30, shifted, torch.log(F.softplus(shifted.clamp_min(-30))))
        return mu, log_sigma

    def forward(self, x: Tensor, samples: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        """Logits of ``samples`` codes per example ``(S, B, classes)``, and ``mu``, ``log sigma``."""
        mu, log_sigma = self.encode(x)
        z = mu + log_sigma.exp() * torch.randn((samples, *mu.shape), dtype=mu.dtype, device=mu.device)
        return self.decoder(z), mu, log_sigma


class VIBTerms(NamedTuple):
    """Per-batch means: the ``loss``, its cross-entropy ``nll`` and the ``rate`` KL(q(z|x) || N(0, I)) (nats)."""

    loss: Tensor
    nll: Tensor
    rate: Tensor


def vib_terms(logits: Tensor, labels: Tensor, mu: Tensor, log_sigma: Tensor, *, beta: float) -> VIBTerms:
    """The VIB objective of the module docstring from :meth:`VIBClassifier.forward`'s outputs (the cross-entropy
    averaged over the ``S`` codes and the batch, the rate over the batch)."""
    s = logits.shape[0]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.repeat(s))
    rate = cast(Tensor, kl_diag_gaussian_std_normal(mu, 2.0 * log_sigma)).mean()
    return VIBTerms(nll + beta * rate, nll, rate)
