"""The regularized classification loss and the evaluation of a classifier.

    loss = CE(y, p) + R(p)                  p = softmax(logits), CE(y, p) = -log p_y (mean over the batch)

with one regularizer ``R`` from :mod:`kldiv.losses` (every formula lives there):

=====================  ==================================================================================
``none``               ``R = 0``
``kl-uniform``         ``beta KL(pbar || U)``, ``pbar`` the batch-average prediction (the tutorial's term:
                       it balances the classes over the batch; each prediction may stay confident)
``kl-target``          ``beta mean_b KL(t || p_b)`` towards a fixed class distribution ``t`` (mass-covering)
``confidence``         ``-beta mean_b H(p_b)`` (Pereyra et al. 2017)
``label-smoothing``    the loss is ``(1 - eps) CE(y, p) + eps CE(U, p)`` (Szegedy et al. 2016); ``R`` is
                       what it adds to ``CE(y, p)``
=====================  ==================================================================================

A distilled student replaces the regularized loss with Hinton's (:func:`distilled_loss`):

    loss = alpha T^2 KL(P_T || Q_T) + (1 - alpha) CE(y, q)       P_T = softmax(teacher / T), Q_T = softmax(logits / T)

from :func:`kldiv.losses.distillation_loss`. The ``T^2`` keeps the gradient of the soft term on the scale of the
hard one: the gradient of ``KL(P_T || Q_T)`` in the logits is ``(Q_T - P_T) / T``, and for large ``T`` the
difference ``Q_T - P_T`` itself shrinks like ``1 / T`` (Hinton, Vinyals & Dean 2015, section 2.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kldiv._inference import inference
from kldiv.classify.model import Classifier
from kldiv.losses import (
    confidence_penalty,
    distillation_loss,
    forward_kl,
    kl_target_to_model,
    label_smoothing_loss,
    marginal_kl_to_uniform,
)
from kldiv.metrics import CalibrationBins, accuracy, brier_score, calibration_bins, negative_log_likelihood

__all__ = [
    "REGULARIZERS",
    "Evaluation",
    "LossTerms",
    "distilled_loss",
    "evaluate",
    "predict_logits",
    "regularized_loss",
]

REGULARIZERS = ("none", "kl-uniform", "kl-target", "confidence", "label-smoothing")
"""The names :func:`regularized_loss` accepts."""


@dataclass(frozen=True)
class LossTerms:
    """A batch's loss ``total = cross_entropy + regularizer`` (scalars; ``total`` carries the gradient). A
    distilled loss also reports ``teacher_kl``, ``KL(P_T || Q_T)`` without its weight (no gradient)."""

    total: Tensor
    cross_entropy: Tensor
    regularizer: Tensor
    teacher_kl: Tensor | None = None


def regularized_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    reg: str,
    beta: float = 0.0,
    target: Tensor | None = None,
    eps: float = 0.0,
) -> LossTerms:
    """The mean cross-entropy of ``logits`` ``(B, C)`` and ``labels`` ``(B,)`` plus the regularizer ``reg`` (one
    of :data:`REGULARIZERS`, see the module docstring); ``target`` ``(C,)`` is required for ``kl-target``."""
    cross_entropy = F.cross_entropy(logits, labels)
    if reg == "none":
        return LossTerms(cross_entropy, cross_entropy, torch.zeros_like(cross_entropy))
    if reg == "label-smoothing":
        total = label_smoothing_loss(logits, labels, eps=eps)
        return LossTerms(total, cross_entropy, total - cross_entropy)
    if reg == "kl-uniform":
        term = beta * marginal_kl_to_uniform(logits)
    elif reg == "kl-target":
        if target is None:
            raise ValueError("reg='kl-target' needs target, a probability vector over the classes")
        term = beta * kl_target_to_model(logits, target)
    elif reg == "confidence":
        term = confidence_penalty(logits, beta=beta)
    else:
        raise ValueError(f"reg must be one of {', '.join(map(repr, REGULARIZERS))}, got {reg!r}")
    return LossTerms(cross_entropy + term, cross_entropy, term)


def distilled_loss(
    logits: Tensor, labels: Tensor, teacher_logits: Tensor, *, alpha: float, temperature: float
) -> LossTerms:
    """Hinton's loss ``alpha T^2 KL(P_T || Q_T) + (1 - alpha) CE(y, q)`` of the student's ``logits`` ``(B, C)``
    against the teacher's ``teacher_logits`` ``(B, C)`` and the ``labels`` ``(B,)`` (batch means; see the module
    docstring), by :func:`kldiv.losses.distillation_loss`. ``regularizer`` is what it adds to ``CE(y, q)``;
    ``teacher_kl`` is ``KL(P_T || Q_T)`` alone. Reference: Hinton, Vinyals & Dean (2015), "Distilling the
    knowledge in a neural network"."""
    total = distillation_loss(logits, teacher_logits, labels, alpha=alpha, temperature=temperature)
    cross_entropy = F.cross_entropy(logits, labels)
    with torch.no_grad():
        teacher_kl = forward_kl(logits, teacher_logits, temperature=temperature)
    return LossTerms(total, cross_entropy, total - cross_entropy, teacher_kl)


@dataclass(frozen=True)
class Evaluation:
    """Metrics of a classifier on labelled images: accuracy, NLL (nats per image), Brier score, ECE, and the
    reliability diagram's bins (:class:`kldiv.metrics.CalibrationBins`)."""

    accuracy: float
    nll: float
    brier: float
    ece: float
    bins: CalibrationBins


def predict_logits(model: Classifier, x: Tensor, *, batch_size: int = 256) -> Tensor:
    """The logits ``(N, C)`` of images ``x`` ``(N, *image_shape)``, in eval mode without gradients, in batches."""
    model.check_images(x)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    with inference(model):
        return torch.cat([model(x[s : s + batch_size]) for s in range(0, x.shape[0], batch_size)])


def evaluate(model: Classifier, x: Tensor, labels: Tensor, *, batch_size: int = 256, n_bins: int = 15) -> Evaluation:
    """Accuracy, NLL, Brier score and ECE (``n_bins`` equal-width bins) of ``model`` on images ``x`` and their
    ``labels``, computed by :mod:`kldiv.metrics` in float64 from the log-softmax of the logits."""
    if x.shape[0] == 0:
        raise ValueError("x holds no image; evaluation needs at least one")
    log_probs = torch.log_softmax(predict_logits(model, x, batch_size=batch_size).double(), -1)
    probs = log_probs.exp()
    bins = calibration_bins(probs, labels, n_bins=n_bins)
    return Evaluation(
        accuracy=float(accuracy(log_probs, labels)),
        nll=float(negative_log_likelihood(log_probs, labels, kind="log_probs")),
        brier=float(brier_score(probs, labels)),
        ece=float(bins.ece),
        bins=bins,
    )
