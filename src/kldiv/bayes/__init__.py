"""Bayesian neural networks: layers with a Gaussian posterior over their weights, weight priors, the KL term.

Layers in :mod:`kldiv.bayes.layers`, priors and the KL to them in :mod:`kldiv.bayes.priors`, converting an
existing network and the KL of a whole network in :mod:`kldiv.bayes.convert`, the training loss (the negative
ELBO per training example) in :mod:`kldiv.bayes.objective`, the Monte-Carlo predictive and its uncertainty and
calibration metrics in :mod:`kldiv.bayes.predict`.
"""

from kldiv.bayes.convert import bayesianize, kl_loss
from kldiv.bayes.layers import BayesianConv2d, BayesianLayer, BayesianLinear, flipout, local_reparam, posterior_std
from kldiv.bayes.objective import (
    ElboTerms,
    GaussianNoise,
    classification_nll,
    gaussian_log_prob,
    gaussian_nll,
    negative_elbo,
)
from kldiv.bayes.predict import (
    ClassMetrics,
    ClassPredictive,
    RegressionPredictive,
    class_predictive,
    classification_metrics,
    mixture_nll,
    mutual_information,
    ood_auroc,
    predict_classes,
    predict_regression,
    predictive_log_probs,
    regression_predictive,
    sample_outputs,
    write_reliability_png,
)
from kldiv.bayes.priors import GaussianPrior, Prior, ScaleMixturePrior, kl_mc_terms, kl_terms

__all__ = [
    "BayesianConv2d",
    "BayesianLayer",
    "BayesianLinear",
    "ClassMetrics",
    "ClassPredictive",
    "ElboTerms",
    "GaussianNoise",
    "GaussianPrior",
    "Prior",
    "RegressionPredictive",
    "ScaleMixturePrior",
    "bayesianize",
    "class_predictive",
    "classification_metrics",
    "classification_nll",
    "flipout",
    "gaussian_log_prob",
    "gaussian_nll",
    "kl_loss",
    "kl_mc_terms",
    "kl_terms",
    "local_reparam",
    "mixture_nll",
    "mutual_information",
    "negative_elbo",
    "ood_auroc",
    "posterior_std",
    "predict_classes",
    "predict_regression",
    "predictive_log_probs",
    "regression_predictive",
    "sample_outputs",
    "write_reliability_png",
]
