"""Metrics of a classifier's predictive distribution: accuracy, negative log-likelihood, Brier score and the
expected calibration error with the bins of its reliability diagram.

Inputs: ``probs`` of shape ``(..., C)`` with the classes last (each row a probability vector, checked), and
``labels`` of shape ``(...)``, integer class ids in ``[0, C)``; every sample counts. Results are float64 tensors
on the inputs' device, computed in float64. A metric of no sample raises ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from kldiv._validate import is_validation_enabled
from kldiv.losses.options import check_choice, check_label_tensor, check_probs
from kldiv.losses.rows import cross_entropy_rows, log_of_probs, reduce_rows, rows_per_chunk

MetricReduction = Literal["mean", "sum", "none"]
ProbsKind = Literal["probs", "log_probs"]


@dataclass(frozen=True)
class CalibrationBins:
    """The equal-width confidence bins ``((m - 1) / M, m / M]``, ``m = 1..M``, of a reliability diagram.

    ``edges`` (M + 1,): ``m / M``; ``count`` (M,), int64: the samples whose confidence (largest probability)
    falls in the bin; ``accuracy`` and ``confidence`` (M,): their fraction of correct predictions and their
    mean confidence, NaN in an empty bin (nothing to plot there). ``ece`` is the expected calibration error.
    """

    edges: Tensor
    count: Tensor
    accuracy: Tensor
    confidence: Tensor
    ece: Tensor


def _rows(
    name: str, probs: object, labels: object, *, check: bool, check_labels: bool = True
) -> tuple[Tensor, Tensor, torch.Size]:
    """The argument ``name`` as float64 rows (N, C) (checked to be probabilities if ``check``), the labels (N,)
    (checked to be class ids if ``check_labels``), and the batch shape ``(...)``."""
    if not isinstance(probs, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(probs).__name__}")
    if not probs.is_floating_point():
        raise TypeError(f"{name} has dtype {probs.dtype}; a floating-point dtype is required")
    if probs.dim() == 0 or probs.shape[-1] == 0:
        raise ValueError(f"{name} has shape {tuple(probs.shape)}; expected (..., C) with C >= 1 classes last")
    n_classes = probs.shape[-1]
    rows = probs.reshape(-1, n_classes).to(torch.float64)
    if rows.shape[0] == 0:
        raise ValueError(f"{name} of shape {tuple(probs.shape)} holds no sample; a metric needs at least one")
    batch_shape = probs.shape[:-1]
    labels = check_label_tensor(
        labels,
        batch_shape,
        ids="class ids",
        expected=f"{tuple(batch_shape)}, the shape of {name} without its last (class) dimension",
    )
    flat = labels.reshape(-1).to(device=rows.device, dtype=torch.int64)
    outside = (flat < 0) | (flat >= n_classes) if check_labels else None
    if outside is not None and bool(outside.any()):
        i = int(outside.nonzero()[0, 0])
        where = tuple(int(k) for k in np.unravel_index(i, tuple(batch_shape)))
        raise ValueError(f"labels holds {int(flat[i])} at index {where}, outside the class ids [0, {n_classes})")
    if check:
        every = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
        check_probs(name, rows, every, rows_per_chunk(None, n_classes))
    return rows, flat, batch_shape


def _check_reduction(reduction: str) -> str:
    check_choice("reduction", reduction, get_args(MetricReduction))
    return "batchmean" if reduction == "mean" else reduction


def accuracy(scores: Tensor, labels: Tensor) -> Tensor:
    """``(1/N) sum_i [argmax_c s_ic = y_i]``: the fraction of samples whose top class is the label.

    ``scores`` may be probabilities, log-probabilities or logits (the argmax is the same); of tied maxima the
    first counts. NaN scores and labels outside the class ids raise ``ValueError`` (unless validation is off:
    ``kldiv.validation(False)``, as in a training step).
    """
    checked = is_validation_enabled()
    rows, lab, _ = _rows("scores", scores, labels, check=False, check_labels=checked)
    if checked and bool(torch.isnan(rows).any()):
        flat = int(torch.isnan(rows).nonzero()[0, 0])
        raise ValueError(f"scores holds NaN in row {flat} (of the flattened batch); its top class is undefined")
    return (rows.argmax(-1) == lab).to(torch.float64).mean()


def negative_log_likelihood(
    probs: Tensor, labels: Tensor, *, kind: ProbsKind = "probs", reduction: MetricReduction = "mean"
) -> Tensor:
    """``-log p_{y_i}`` per sample, reduced: the cross-entropy of the one-hot labels and the predictions.

    ``kind="log_probs"`` reads ``probs`` as log-probabilities. A label of probability 0 gives +inf. Each row is
    taken as the distribution it represents (divided by its sum, which the check allows to differ from 1 by
    rounding). Reference: Bishop (2006), "Pattern recognition and machine learning", eq. 4.108; Guo et al.
    (2017), "On calibration of modern neural networks", section 2.
    """
    check_choice("kind", kind, get_args(ProbsKind))
    how = _check_reduction(reduction)
    rows, lab, batch_shape = _rows("probs", probs, labels, check=kind == "probs")
    every = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
    if kind == "log_probs":
        check_probs("exp(probs) (log-probabilities given)", rows.exp(), every, rows_per_chunk(None, rows.shape[1]))
    log_p = rows if kind == "log_probs" else log_of_probs(rows)
    values = cross_entropy_rows(log_p, lab, every, torch.float64)
    return reduce_rows(values, every, how, rows.shape[1], batch_shape)


def brier_score(probs: Tensor, labels: Tensor, *, reduction: MetricReduction = "mean") -> Tensor:
    """``sum_c (p_ic - [c = y_i])^2`` per sample, reduced: the multi-class Brier score, in ``[0, 2]``.

    0 for a certain correct prediction, 2 for a certain wrong one. (Some libraries divide by ``C``, or, for two
    classes, score one column only, which halves it.) Reference: Brier (1950), "Verification of forecasts
    expressed in terms of probability".
    """
    how = _check_reduction(reduction)
    rows, lab, batch_shape = _rows("probs", probs, labels, check=True)
    onehot = torch.zeros_like(rows).scatter_(1, lab[:, None], 1.0)
    values = (rows - onehot).square().sum(-1)
    every = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
    return reduce_rows(values, every, how, rows.shape[1], batch_shape)


def calibration_bins(probs: Tensor, labels: Tensor, *, n_bins: int = 15) -> CalibrationBins:
    """The reliability diagram of the top-class predictions, in ``n_bins`` equal-width confidence bins, and the
    expected calibration error ``ECE = sum_m (|B_m| / N) |acc(B_m) - conf(B_m)|``.

    A sample's confidence is its largest probability, its prediction that class (the first of tied maxima); bin
    ``m`` holds the confidences in ``((m - 1) / M, m / M]``. Reference: Naeini, Cooper & Hauskrecht (2015),
    "Obtaining well calibrated probabilities using Bayesian binning"; Guo et al. (2017), "On calibration of
    modern neural networks", section 2.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int):
        raise TypeError(f"n_bins must be an int, got {type(n_bins).__name__}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    rows, lab, _ = _rows("probs", probs, labels, check=True)
    confidence, prediction = rows.max(-1)
    correct = (prediction == lab).to(torch.float64)
    edges = torch.arange(n_bins + 1, dtype=torch.float64, device=rows.device) / n_bins
    index = (torch.searchsorted(edges, confidence) - 1).clamp(0, n_bins - 1)
    count = torch.bincount(index, minlength=n_bins)
    correct_sum = torch.zeros(n_bins, dtype=torch.float64, device=rows.device).index_add_(0, index, correct)
    confidence_sum = torch.zeros_like(correct_sum).index_add_(0, index, confidence)
    occupied = count > 0
    per_bin = count.clamp_min(1).to(torch.float64)
    nan = torch.full_like(correct_sum, float("nan"))
    return CalibrationBins(
        edges=edges,
        count=count,
        accuracy=torch.where(occupied, correct_sum / per_bin, nan),
        confidence=torch.where(occupied, confidence_sum / per_bin, nan),
        ece=(correct_sum - confidence_sum).abs().sum() / rows.shape[0],
    )


def expected_calibration_error(probs: Tensor, labels: Tensor, *, n_bins: int = 15) -> Tensor:
    """``ECE = sum_m (|B_m| / N) |acc(B_m) - conf(B_m)|`` over ``n_bins`` equal-width confidence bins, in
    ``[0, 1]`` (0: perfectly calibrated on these samples). The bins themselves: :func:`calibration_bins`.

    Reference: Naeini, Cooper & Hauskrecht (2015); Guo et al. (2017), "On calibration of modern neural
    networks", section 2.
    """
    return calibration_bins(probs, labels, n_bins=n_bins).ece
