"""Regularizers of a classifier's predictive distribution ``p = softmax(logits)`` (classes along ``dim``).

=============================  ==========================================================================
``kl_model_to_target``         ``KL(p || t) = sum_c p_c log(p_c / t_c)`` per sample (t a fixed distribution)
``kl_target_to_model``         ``KL(t || p) = sum_c t_c log(t_c / p_c)`` per sample
``marginal_kl_to_uniform``     ``KL(pbar || U) = log C - H(pbar)``, ``pbar = mean_b p_b`` (the batch marginal)
``confidence_penalty``         ``-beta H(p)`` per sample (Pereyra et al. 2017)
``label_smoothing_loss``       ``(1 - eps) CE(y, p) + eps CE(U, p)`` per sample (Szegedy et al. 2016)
=============================  ==========================================================================

Every value comes from the discrete core (:mod:`kldiv.discrete`) with its edge semantics: a ``-inf`` logit is
an exact zero probability; ``0 log 0 = 0``; a term ``a log(a / 0)`` with ``a > 0`` is +inf. No epsilon is added
anywhere. Gradients are finite wherever the value is finite; a ``-inf`` logit gets gradient 0.

``reduction``: ``"mean"`` averages the per-sample values over every dimension but ``dim`` (like
``F.cross_entropy``; note that :func:`kldiv.losses.forward_kl`'s ``"mean"`` also divides by the number of classes,
and its ``"batchmean"`` is this ``"mean"``), ``"sum"`` adds them, ``"none"`` returns them. A mean over no sample is
0. float16/bfloat16 inputs are computed in float32; results are float32, or float64 if an input is float64.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from kldiv._numerics import log_softmax, with_gradient
from kldiv._validate import check_log_space, check_scalar, event_shape
from kldiv.discrete import _logit_difference, cross_entropy_log, entropy_log, kl_log
from kldiv.losses.options import check_choice, check_labels, check_probs, compute_dtype, valid_rows
from kldiv.losses.rows import _centered, cross_entropy_rows, log_of_probs, reduce_rows, rows_per_chunk, weighted

RegularizerReduction = Literal["mean", "sum", "none"]


def _floating_tensor(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} has dtype {x.dtype}; a floating-point dtype is required")
    return x


def _reduce(values: Tensor, reduction: RegularizerReduction) -> Tensor:
    """Reduce per-sample values (0 for the mean of no sample)."""
    if reduction == "none":
        return values
    total = values.sum()
    return total if reduction == "sum" else total / max(values.numel(), 1)


def _classes_last(logits: object, dim: int) -> Tensor:
    """Checked logits in the compute dtype with the class dimension moved last."""
    x = _floating_tensor("logits", logits)
    _, d = event_shape(("logits",), (x,), dim)
    check_log_space("logits", x, d, x.dtype, log_probs=False)
    return x.to(compute_dtype(x.dtype)).movedim(d, -1)


def _model_and_target(logits: object, target: object, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """``log softmax(logits)``, ``log target`` and ``logits - log target`` (where both are finite), broadcast
    against each other, in the compute dtype, classes last."""
    x = _floating_tensor("logits", logits)
    t = _floating_tensor("target", target)
    if t.device != x.device:
        raise ValueError(f"target is on {t.device} but logits on {x.device}; move them to one device")
    shape, d = event_shape(("logits", "target"), (x, t), dim)
    own_x, own_t = (u.dim() - (len(shape) - d) for u in (x, t))
    for name, u, own in (("logits", x, own_x), ("target", t, own_t)):
        if own < 0:
            raise ValueError(
                f"{name} of shape {tuple(u.shape)} has no class dimension (dim {dim} of the broadcast shape)"
            )
    check_log_space("logits", x, own_x, x.dtype, log_probs=False)
    rows = t.movedim(own_t, -1).reshape(-1, t.shape[own_t])
    every = torch.ones(rows.shape[0], dtype=torch.bool, device=t.device)
    check_probs("target", rows, every, rows_per_chunk(None, rows.shape[1]))
    cdtype = compute_dtype(x.dtype, t.dtype)
    x = x.to(cdtype).expand(shape).movedim(d, -1)
    log_t = log_of_probs(t.to(cdtype).expand(shape).movedim(d, -1))
    return log_softmax(x, -1), log_softmax(log_t, -1), _logit_difference(x, log_t, 1.0)


def kl_model_to_target(
    logits: Tensor, target: Tensor, *, dim: int = -1, reduction: RegularizerReduction = "mean"
) -> Tensor:
    """``KL(p || t) = sum_c p_c log(p_c / t_c)``, ``p = softmax(logits)``, per sample, reduced.

    Mode-seeking (reverse KL to the target): the model is pulled onto the target's support. ``target`` is a
    probability vector along ``dim`` that broadcasts against ``logits`` (e.g. shape ``(C,)`` or ``(B, C)``).
    Edges: a ``-inf`` logit contributes 0; a class the model gives mass and the target none makes the value
    +inf. Gradients reach ``target`` too (at its positive entries) if it requires them.
    Reference: Kullback & Leibler (1951); Cover & Thomas (2006), eq. 2.26.
    """
    check_choice("reduction", reduction, get_args(RegularizerReduction))
    log_p, log_t, ratio = _model_and_target(logits, target, dim)
    return _reduce(kl_log(log_p, log_t, -1, ratio), reduction)


def kl_target_to_model(
    logits: Tensor, target: Tensor, *, dim: int = -1, reduction: RegularizerReduction = "mean"
) -> Tensor:
    """``KL(t || p) = sum_c t_c log(t_c / p_c)``, ``p = softmax(logits)``, per sample, reduced.

    Mass-covering (forward KL from the target); it is ``CE(t, p) - H(t)``, the soft-label cross-entropy less a
    constant. ``target`` as in :func:`kl_model_to_target`. Edges: a class with ``t_c = 0`` contributes 0 (also
    at a ``-inf`` logit); a class with ``t_c > 0`` and a ``-inf`` logit makes the value +inf.
    Reference: Kullback & Leibler (1951); Cover & Thomas (2006), eq. 2.26.
    """
    check_choice("reduction", reduction, get_args(RegularizerReduction))
    log_p, log_t, ratio = _model_and_target(logits, target, dim)
    return _reduce(kl_log(log_t, log_p, -1, -ratio), reduction)


def _marginal_value(rows: Tensor) -> Tensor:
    """``KL(pbar || U)`` of the logits ``rows`` ``(B, C)``: ``log pbar = log_softmax_c(logsumexp_b log p_b)``
    (a class no sample can take gets -inf), then the KL of the ``C`` probabilities in float64."""
    log_marginal = torch.log_softmax(torch.logsumexp(torch.log_softmax(rows, -1), 0).double(), -1)
    uniform = torch.full_like(log_marginal, -math.log(rows.shape[1]))
    return kl_log(log_marginal, uniform, -1).to(rows.dtype)


def _marginal_gradient(grad: Tensor, _value: Tensor, x: Tensor) -> tuple[Tensor]:
    """``dKL/dx_bk = p_bk (l_k - sum_c p_bc l_c) / B`` with ``l = log pbar`` (0 where ``pbar = 0``, as then
    ``p_bk = 0``): the chain rule through ``pbar = mean_b softmax(x_b)``, ``dKL/dpbar_c = log pbar_c + 1 + log C``
    (the constants cancel against ``sum_c p_bc = 1``)."""
    p = torch.softmax(x, -1)
    marginal = p.mean(0)
    present = marginal > 0  # log kept off 0, so that second derivatives stay finite too
    log_marginal = torch.where(present, torch.log(torch.where(present, marginal, 1.0)), 0.0)
    return (grad * _centered(p, log_marginal) / x.shape[0],)


def marginal_kl_to_uniform(logits: Tensor, *, dim: int = -1) -> Tensor:
    """``KL(pbar || U) = log C - H(pbar)`` of the batch marginal ``pbar = mean_b softmax(logits_b)`` and the
    uniform distribution over the ``C`` classes: a scalar in ``[0, log C]``.

    The mean runs over every dimension but ``dim``. It is 0 when the batch uses every class equally often on
    average (each prediction may still be confident) and ``log C`` when every sample puts all its mass on the
    same class: a class-balance term, not a per-sample one (that is :func:`confidence_penalty`, or
    :func:`kl_model_to_target` with a uniform target). ``log pbar`` is formed exactly as
    ``logsumexp_b log p_b - log B``; the gradient is the closed form ``p_bk (log pbar_k - sum_c p_bc log pbar_c)
    / B``. Reference: Cover & Thomas (2006), eq. 2.26 and theorem 2.6.4.
    """
    x = _classes_last(logits, dim)
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] == 0:
        raise ValueError(f"logits of shape {tuple(x.shape)} hold no sample; the batch marginal needs at least one")
    return with_gradient(_marginal_value, _marginal_gradient, rows)


def confidence_penalty(
    logits: Tensor, *, beta: float, dim: int = -1, reduction: RegularizerReduction = "mean"
) -> Tensor:
    """``-beta H(p) = beta sum_c p_c log p_c``, ``p = softmax(logits)``, per sample, reduced (``beta >= 0``).

    Added to the loss, it rewards spread-out predictions: it is ``<= 0``, and ``-beta log C`` at the uniform
    distribution (its minimum); equivalently ``beta (KL(p || U) - log C)``. A ``-inf`` logit contributes 0.
    Reference: Pereyra et al. (2017), "Regularizing neural networks by penalizing confident output
    distributions".
    """
    b = check_scalar("beta", beta, low=0.0)
    check_choice("reduction", reduction, get_args(RegularizerReduction))
    x = _classes_last(logits, dim)
    return _reduce(-b * entropy_log(log_softmax(x, -1), -1), reduction)


def label_smoothing_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    eps: float,
    ignore_index: int = -100,
    dim: int = -1,
    reduction: RegularizerReduction = "mean",
) -> Tensor:
    """Cross-entropy with label smoothing: ``(1 - eps) CE(y, p) + eps CE(U, p)`` per sample, reduced.

    ``CE(y, p) = -log p_y`` is the hard-label term and ``CE(U, p) = -(1/C) sum_c log p_c = KL(U || p) + log C``
    the smoothing term: the loss is the cross-entropy from the smoothed target ``(1 - eps) onehot(y) + eps / C``,
    i.e. ``(1 - eps) CE(y, p) + eps (KL(U || p) + log C)``, and equals ``F.cross_entropy(logits, labels,
    label_smoothing=eps)`` (with ``dim=1`` for torch's ``(N, C, d1, ...)`` layout). ``labels`` has the shape of
    ``logits`` without ``dim``; samples with ``labels == ignore_index`` count for nothing (their logits may hold
    anything) and ``"mean"`` divides by the others (0 if there is none, where torch gives NaN). A ``-inf`` logit
    makes the smoothing term +inf (the uniform target has mass there) unless ``eps = 0``.
    Reference: Szegedy et al. (2016), "Rethinking the Inception architecture for computer vision", section 7;
    Müller, Kornblith & Hinton (2019), "When does label smoothing help?".
    """
    e = check_scalar("eps", eps, low=0.0, high=1.0)
    check_choice("reduction", reduction, get_args(RegularizerReduction))
    x = _floating_tensor("logits", logits)
    _, d = event_shape(("logits",), (x,), dim)
    moved = x.movedim(d, -1)
    batch_shape, n_classes = moved.shape[:-1], moved.shape[-1]
    valid = valid_rows(batch_shape, labels, ignore_index, None, x.device)
    rows = torch.where(valid[:, None], moved.reshape(-1, n_classes), 0.0)  # ignored rows may hold anything
    check_log_space("logits", rows.reshape(moved.shape).movedim(-1, d), d, x.dtype, log_probs=False)
    check_labels(labels.reshape(-1), valid, n_classes, ignore_index, vocab_of="logits")
    cdtype = compute_dtype(x.dtype)
    log_p = log_softmax(rows.to(cdtype), -1)
    hard = cross_entropy_rows(rows, labels, valid, cdtype)
    smooth = torch.where(valid, cross_entropy_log(torch.full_like(log_p, -math.log(n_classes)), log_p, -1), 0.0)
    values = weighted(1.0 - e, hard) + weighted(e, smooth)
    return reduce_rows(values, valid, "batchmean" if reduction == "mean" else reduction, n_classes, batch_shape)
