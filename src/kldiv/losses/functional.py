"""Token-level divergence losses for distillation and RLHF over logits of shape ``(..., V)`` (rows = tokens).

Every loss is a per-token divergence between the student ``Q = softmax(student_logits / T)`` and the teacher
``P = softmax(teacher / T)``, reduced over the valid tokens:

================  ========================================================================================
``forward_kl``    ``KL(P||Q) = sum_v p_v log(p_v / q_v)`` (mean-seeking; Hinton et al. 2015)
``reverse_kl``    ``KL(Q||P)`` (mode-seeking; Gu et al. 2024, "MiniLLM")
``symmetric_kl``  ``w KL(P||Q) + (1 - w) KL(Q||P)`` (``w = 0.5``: half the Jeffreys divergence)
``generalized_jsd``  ``beta KL(P||M) + (1 - beta) KL(Q||M)``, ``M = beta P + (1 - beta) Q`` (Agarwal et al. 2024)
``distillation_loss``  ``alpha T^2 KL(P_T||Q_T) + (1 - alpha) CE(Q_1, labels)`` (Hinton et al. 2015)
================  ========================================================================================

The per-token values are those of the discrete core (:func:`kldiv.kl_from_logits`,
:func:`kldiv.generalized_js_from_logits`), computed by the same kernels, with the same edge semantics: a
``-inf`` logit is an exact zero probability; a teacher ``-inf`` contributes 0 to ``KL(P||Q)``; a student
``-inf`` where the teacher has mass gives +inf (and vice versa for the reverse KL). Gradients are finite
wherever the value is finite; on every path a token whose divergence is +inf gets no gradient from it (the
value, not the gradient, reports the impossibility; the hard-label term of :func:`distillation_loss` keeps its
gradient ``softmax - onehot``).

Options shared by every loss
----------------------------
* ``temperature`` ``T > 0`` divides both sides' logits (no ``T^2`` factor except in :func:`distillation_loss`).
* Valid tokens: ``labels != ignore_index`` (``labels`` of the batch shape ``...``) and ``mask`` (bool, ``True`` =
  valid), combined with AND. Ignored rows may hold anything (NaN, all ``-inf``): they are replaced before any
  arithmetic, contribute 0 and get a zero gradient.
* ``reduction``: ``"batchmean"`` = sum / number of valid tokens; ``"sum"``; ``"mean"`` = sum / (valid tokens x
  V_student), like ``torch``'s ``"mean"`` over elements; ``"none"`` = per-token values of shape ``...`` (0 at
  ignored tokens). When every token is ignored the result is 0 with a zero gradient, never NaN.
* Teacher forms: a tensor of ``teacher_kind`` ``"logits"``, ``"log_probs"`` or ``"probs"`` (probabilities are
  taken as ``log p``, ``log 0 = -inf``; the temperature applies to ``log p`` as to logits), or a :class:`TopK`.
* Vocabulary sizes may differ: the shorter side is padded with ``-inf`` logits (zero probability). Teacher mass
  on ids the student lacks makes ``KL(P||Q)`` +inf, exactly; to truncate the teacher to the shared ids instead
  (which renormalizes it over them), pass ``teacher_logits[..., :V_student]``. When the sizes differ and the
  loss is +inf, a ``UserWarning`` says so, once per process; so does a ``teacher_kind="logits"`` teacher whose
  every valid row is >= 0 and sums to 1 (almost surely probabilities).
* Precision: float16/bfloat16 inputs are upcast to float32 before any arithmetic; the result is float32
  (float64 for float64 inputs), and gradients return in the input dtype.
* ``implementation``: ``"naive"`` runs the discrete-core kernels over the whole batch, with the closed-form
  gradients of :class:`kldiv.losses.rows.RowDivergence` (the reference; a top-k teacher is densified to
  N x V). ``"chunked"`` and ``"auto"`` (the same) walk the rows in chunks of ``chunk_size`` rows (default
  ``2^18 // V``) with gradients computed in forward, so intermediates are O(chunk x V): logits and log-prob
  teachers take the fused closed-form Function of :mod:`kldiv.losses.chunked`; probabilities and top-k teachers
  take :mod:`kldiv.losses.sparse`, which runs the naive kernels chunk by chunk (the same values and gradients,
  the same validation).
"""

from __future__ import annotations

from typing import get_args

from torch import Tensor

from kldiv._validate import check_scalar
from kldiv.discrete import _check_beta
from kldiv.losses.chunked import chunked_rows
from kldiv.losses.options import (
    Divergence,
    Implementation,
    Reduction,
    TeacherKind,
    TopK,
    check_choice,
    check_labels,
    check_logits_tensor,
    check_not_meta,
    check_options,
    check_probs,
    check_rows,
    check_topk,
    check_topk_values,
    compute_dtype,
    valid_rows,
    warn_if_probabilities,
    warn_if_vocabularies_make_it_infinite,
)
from kldiv.losses.rows import cross_entropy_rows, reduce_rows, reference_rows, rows_per_chunk, weighted
from kldiv.losses.sparse import chunked_teacher_rows

# ----------------------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------------------


def _loss(
    divergence: Divergence,
    student_logits: Tensor,
    teacher: Tensor | TopK,
    *,
    teacher_kind: TeacherKind,
    temperature: float,
    labels: Tensor | None,
    ignore_index: int,
    mask: Tensor | None,
    reduction: Reduction,
    implementation: Implementation,
    chunk_size: int | None,
    coef: float = 0.0,
    normalized: bool = False,
    kl_weight: float = 1.0,
    ce_weight: float = 0.0,
) -> Tensor:
    t_value = check_options(reduction, temperature, implementation)
    student = check_logits_tensor("student_logits", student_logits)
    batch_shape = student.shape[:-1]
    vocab = student.shape[-1]
    n = batch_shape.numel()
    # logits and log-prob teachers take the fused operator (which handles meta tensors); the rest reads data here
    fused = not isinstance(teacher, TopK) and teacher_kind != "probs" and implementation != "naive"
    if not fused:
        where = "implementation='naive'" if implementation == "naive" else "a top-k or probability teacher"
        check_not_meta(where, student, *((teacher.values,) if isinstance(teacher, TopK) else (teacher,)))
    if isinstance(teacher, TopK):
        check_topk(teacher, batch_shape, t_value)
        dtypes = [student.dtype, teacher.values.dtype]
    else:
        check_choice("teacher_kind", teacher_kind, get_args(TeacherKind))
        t_tensor = check_logits_tensor("teacher", teacher)
        if t_tensor.shape[:-1] != batch_shape:
            raise ValueError(
                f"teacher has batch shape {tuple(t_tensor.shape[:-1])} but student_logits has {tuple(batch_shape)} "
                "(shapes (..., V_teacher) and (..., V_student) must agree except in the vocabulary)"
            )
        dtypes = [student.dtype, t_tensor.dtype]
    cdtype = compute_dtype(*dtypes)
    valid = valid_rows(batch_shape, labels, ignore_index, mask, student.device)
    flat_s = student.reshape(n, vocab)
    flat_t = None if isinstance(teacher, TopK) else teacher.reshape(n, teacher.shape[-1])
    lab = None if (labels is None or not ce_weight) else labels.reshape(-1)
    if fused:
        assert flat_t is not None  # the operator checks what reads the data (no host synchronization here)
        values = chunked_rows(
            divergence,
            flat_s,
            flat_t,
            valid,
            temperature=t_value,
            coef=coef,
            normalized=normalized,
            reduction=reduction,
            teacher_log_probs=teacher_kind == "log_probs",
            kl_weight=kl_weight,
            ce_weight=ce_weight,
            labels=lab,
            ignore_index=ignore_index,
            chunk_size=chunk_size,
        )
        return values.reshape(batch_shape) if reduction == "none" else values
    if flat_t is None:
        assert isinstance(teacher, TopK)
        check_topk_values(teacher, valid, vocab, t_value)
    elif teacher_kind == "probs":
        check_probs("teacher", flat_t, valid, rows_per_chunk(chunk_size, flat_t.shape[1]))
    else:
        check_rows("teacher", flat_t, valid, t_value, log_probs=teacher_kind == "log_probs")
        if teacher_kind == "logits":
            warn_if_probabilities("teacher", flat_t, valid)
    if lab is not None:
        check_labels(lab, valid, vocab, ignore_index)
    if implementation == "naive":
        check_rows("student_logits", flat_s, valid, t_value)
        s = flat_s.to(cdtype)  # once: the gradients of both terms meet in cdtype and are rounded once
        rows = reference_rows(divergence, s, teacher, teacher_kind, valid, t_value, coef, normalized, cdtype)
        values = weighted(kl_weight, rows)
        if lab is not None:
            values = values + ce_weight * cross_entropy_rows(s, lab, valid, cdtype)
        values = reduce_rows(values, valid, reduction, vocab, batch_shape)
    else:
        values = chunked_teacher_rows(
            divergence,
            flat_s,
            teacher if flat_t is None else flat_t,
            valid,
            teacher_kind=teacher_kind,
            temperature=t_value,
            coef=coef,
            normalized=normalized,
            reduction=reduction,
            kl_weight=kl_weight,
            ce_weight=ce_weight,
            labels=lab,
            chunk_size=chunk_size,
        )
        values = values.reshape(batch_shape) if reduction == "none" else values
    _warn_if_vocabularies_make_it_infinite(values, vocab, teacher, valid)
    return values


def _warn_if_vocabularies_make_it_infinite(value: Tensor, vocab: int, teacher: Tensor | TopK, valid: Tensor) -> None:
    if isinstance(teacher, TopK):
        top = teacher.indices.reshape(-1, teacher.indices.shape[-1])[valid]
        teacher_ids = max(vocab, int(top.max()) + 1) if top.numel() else vocab
    else:
        teacher_ids = teacher.shape[-1]
    warn_if_vocabularies_make_it_infinite(value, vocab, teacher_ids)


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


def forward_kl(
    student_logits: Tensor,
    teacher: Tensor | TopK,
    *,
    teacher_kind: TeacherKind = "logits",
    temperature: float = 1.0,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    mask: Tensor | None = None,
    reduction: Reduction = "batchmean",
    implementation: Implementation = "auto",
    chunk_size: int | None = None,
) -> Tensor:
    """Forward KL ``KL(P||Q) = sum_v p_v log(p_v / q_v)`` of teacher P and student Q per token, reduced.

    Mean-seeking: the student is penalized where the teacher has mass. With ``reduction="batchmean"``, no
    temperature and no ignored tokens it equals ``F.kl_div(log_softmax(s), log_softmax(t), log_target=True,
    reduction="batchmean")`` on 2-D inputs. Edge semantics, options: see :mod:`kldiv.losses.functional`.
    Reference: Kullback & Leibler (1951); Hinton, Vinyals & Dean (2015), "Distilling the knowledge in a neural
    network".
    """
    return _loss(
        "forward",
        student_logits,
        teacher,
        teacher_kind=teacher_kind,
        temperature=temperature,
        labels=labels,
        ignore_index=ignore_index,
        mask=mask,
        reduction=reduction,
        implementation=implementation,
        chunk_size=chunk_size,
    )


def reverse_kl(
    student_logits: Tensor,
    teacher: Tensor | TopK,
    *,
    teacher_kind: TeacherKind = "logits",
    temperature: float = 1.0,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    mask: Tensor | None = None,
    reduction: Reduction = "batchmean",
    implementation: Implementation = "auto",
    chunk_size: int | None = None,
) -> Tensor:
    """Reverse KL ``KL(Q||P) = sum_v q_v log(q_v / p_v)`` of student Q and teacher P per token, reduced.

    Mode-seeking; +inf where the student puts mass on a zero-probability teacher entry (e.g. a renormalized
    top-k teacher). Reference: Gu et al. (2024), "MiniLLM: knowledge distillation of large language models".
    """
    return _loss(
        "reverse",
        student_logits,
        teacher,
        teacher_kind=teacher_kind,
        temperature=temperature,
        labels=labels,
        ignore_index=ignore_index,
        mask=mask,
        reduction=reduction,
        implementation=implementation,
        chunk_size=chunk_size,
    )


def symmetric_kl(
    student_logits: Tensor,
    teacher: Tensor | TopK,
    *,
    weight: float = 0.5,
    teacher_kind: TeacherKind = "logits",
    temperature: float = 1.0,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    mask: Tensor | None = None,
    reduction: Reduction = "batchmean",
    implementation: Implementation = "auto",
    chunk_size: int | None = None,
) -> Tensor:
    """``weight KL(P||Q) + (1 - weight) KL(Q||P)`` per token, reduced (``weight`` in [0, 1]).

    ``weight = 0.5`` is half the Jeffreys divergence (Jeffreys 1946); 1 and 0 are the forward and reverse KL.
    """
    w = check_scalar("weight", weight, low=0.0, high=1.0)
    return _loss(
        "symmetric",
        student_logits,
        teacher,
        teacher_kind=teacher_kind,
        temperature=temperature,
        labels=labels,
        ignore_index=ignore_index,
        mask=mask,
        reduction=reduction,
        implementation=implementation,
        chunk_size=chunk_size,
        coef=w,
    )


def generalized_jsd(
    student_logits: Tensor,
    teacher: Tensor | TopK,
    *,
    beta: float = 0.5,
    normalized: bool = False,
    teacher_kind: TeacherKind = "logits",
    temperature: float = 1.0,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    mask: Tensor | None = None,
    reduction: Reduction = "batchmean",
    implementation: Implementation = "auto",
    chunk_size: int | None = None,
) -> Tensor:
    """Generalized JSD ``beta KL(P||M) + (1 - beta) KL(Q||M)``, ``M = beta P + (1 - beta) Q`` per token, reduced.

    P is the teacher, Q the student: for ``0 < beta < 1`` this is the value of TRL's and Liger's GKD loss
    (Agarwal et al. 2024, "On-policy distillation of language models"). Same semantics as
    :func:`kldiv.generalized_js_from_logits`: ``beta`` in {0, 1} raises ``ValueError`` unless
    ``normalized=True``, which divides by ``beta (1 - beta)`` and takes the continuous limits KL(P||Q) at
    ``beta = 0`` and KL(Q||P) at ``beta = 1`` (TRL jumps by ``1 / beta`` there instead).
    """
    b = _check_beta(beta, normalized)
    return _loss(
        "jsd",
        student_logits,
        teacher,
        teacher_kind=teacher_kind,
        temperature=temperature,
        labels=labels,
        ignore_index=ignore_index,
        mask=mask,
        reduction=reduction,
        implementation=implementation,
        chunk_size=chunk_size,
        coef=b,
        normalized=normalized,
    )


def distillation_loss(
    student_logits: Tensor,
    teacher: Tensor | TopK,
    labels: Tensor,
    *,
    alpha: float = 0.5,
    temperature: float = 1.0,
    teacher_kind: TeacherKind = "logits",
    ignore_index: int = -100,
    mask: Tensor | None = None,
    reduction: Reduction = "batchmean",
    implementation: Implementation = "auto",
    chunk_size: int | None = None,
) -> Tensor:
    """Hinton distillation loss ``alpha T^2 KL(P_T||Q_T) + (1 - alpha) CE(Q_1, labels)`` per token, reduced.

    ``P_T``, ``Q_T`` are teacher and student at temperature ``T``; the ``T^2`` keeps the soft-target gradients
    on the scale of the hard-target ones; the cross-entropy uses the student at ``T = 1``. Tokens with
    ``labels == ignore_index`` (or ``mask`` False) are left out of both terms. On 2-D inputs with no ignored
    label this equals ``alpha * T**2 * F.kl_div(log_softmax(s / T), softmax(t / T), reduction="batchmean") +
    (1 - alpha) * F.cross_entropy(s, labels)``. Reference: Hinton, Vinyals & Dean (2015), "Distilling the
    knowledge in a neural network", section 2.
    """
    a = check_scalar("alpha", alpha, low=0.0, high=1.0)
    t_value = check_scalar("temperature", temperature, low=0.0, low_open=True)
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of token ids, got {type(labels).__name__}")
    return _loss(
        "forward",
        student_logits,
        teacher,
        teacher_kind=teacher_kind,
        temperature=t_value,
        labels=labels,
        ignore_index=ignore_index,
        mask=mask,
        reduction=reduction,
        implementation=implementation,
        chunk_size=chunk_size,
        kl_weight=a * t_value**2,
        ce_weight=1.0 - a,
    )
