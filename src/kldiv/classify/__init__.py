"""Classifiers trained with a KL regularizer of their predictive distribution, evaluated for accuracy and
calibration.

Models in :mod:`kldiv.classify.model`, the loss and the evaluation in :mod:`kldiv.classify.objective`, the trainer
in :mod:`kldiv.classify.train`, the teacher-and-students experiment in :mod:`kldiv.classify.distill`.
"""

from kldiv.classify.model import MODELS, Classifier, KLRegularizedCNN, MLPClassifier, build_model
from kldiv.classify.objective import (
    REGULARIZERS,
    Evaluation,
    LossTerms,
    distilled_loss,
    evaluate,
    predict_logits,
    regularized_loss,
)

__all__ = [
    "MODELS",
    "REGULARIZERS",
    "Classifier",
    "Evaluation",
    "KLRegularizedCNN",
    "LossTerms",
    "MLPClassifier",
    "build_model",
    "distilled_loss",
    "evaluate",
    "predict_logits",
    "regularized_loss",
]
