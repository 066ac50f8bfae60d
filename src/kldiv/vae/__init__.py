"""Variational autoencoders with the KL term under control: models, the ELBO and beta-VAE loss, the IWAE bound.

Models in :mod:`kldiv.vae.model`, formulas in :mod:`kldiv.vae.objective`.
"""

from kldiv.vae.model import MLPVAE, VAE, ConvVAE, Likelihood, build_model
from kldiv.vae.objective import (
    ELBOTerms,
    Evaluation,
    active_units,
    elbo_terms,
    evaluate,
    iwae_bound,
    log_likelihood,
    vae_loss,
)

__all__ = [
    "MLPVAE",
    "VAE",
    "ConvVAE",
    "ELBOTerms",
    "Evaluation",
    "Likelihood",
    "active_units",
    "build_model",
    "elbo_terms",
    "evaluate",
    "iwae_bound",
    "log_likelihood",
    "vae_loss",
]
