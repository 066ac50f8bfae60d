"""Bayesian neural networks: layers with a Gaussian posterior over their weights, weight priors, the KL term.

Layers in :mod:`kldiv.bayes.layers`, priors and the KL to them in :mod:`kldiv.bayes.priors`, converting an
existing network and the KL of a whole network in :mod:`kldiv.bayes.convert`.
"""

from kldiv.bayes.convert import bayesianize, kl_loss
from kldiv.bayes.layers import BayesianConv2d, BayesianLayer, BayesianLinear, flipout, local_reparam, posterior_std
from kldiv.bayes.priors import GaussianPrior, Prior, ScaleMixturePrior, kl_mc_terms, kl_terms

__all__ = [
    "BayesianConv2d",
    "BayesianLayer",
    "BayesianLinear",
    "GaussianPrior",
    "Prior",
    "ScaleMixturePrior",
    "bayesianize",
    "flipout",
    "kl_loss",
    "kl_mc_terms",
    "kl_terms",
    "local_reparam",
    "posterior_std",
]
