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
wherever the value is finite.

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
  (which renormalizes it over them), pass ``teacher_logits[..., :V_student]``.
* Precision: float16/bfloat16 inputs are upcast to float32 before any arithmetic; the result is float32
  (float64 for float64 inputs), and gradients return in the input dtype.
* ``implementation``: ``"naive"`` is plain autograd through the discrete-core kernels over the whole batch (the
  reference; a top-k teacher is densified to N x V). ``"chunked"`` and ``"auto"`` (the same) walk the rows in
  chunks of ``chunk_size`` rows (default ``2^18 // V``) with gradients computed in forward, so intermediates are
  O(chunk x V): logits and log-prob teachers take the fused closed-form Function of :mod:`kldiv.losses.chunked`;
  probabilities and top-k teachers take :mod:`kldiv.losses.sparse`, which runs the naive kernels chunk by chunk
  (the same values and gradients, the same validation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from kldiv._numerics import INF, log_softmax
from kldiv._validate import check_log_space, check_scalar, is_validation_enabled, sum_tolerance
from kldiv.discrete import _check_beta, _logit_difference, js_log, kl_log

Reduction = Literal["batchmean", "sum", "mean", "none"]
TeacherKind = Literal["logits", "log_probs", "probs"]
Implementation = Literal["auto", "chunked", "naive"]
Divergence = Literal["forward", "reverse", "symmetric", "jsd"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class TopK:
    """A teacher given by its top-k entries per token: ``indices`` (int64, ``(..., k)``) and ``values`` (same shape).

    ``kind`` says what ``values`` are: ``"logits"``, ``"log_probs"`` or ``"probs"``. ``rest`` is the policy for
    the mass outside the k entries:

    * ``"renormalize"``: the teacher is ``softmax`` over the k entries (zero elsewhere), at the loss's temperature.
      ``KL(P||Q)`` is then the usual sparse distillation loss; ``KL(Q||P)`` is +inf (the student has mass where
      the teacher has none), the generalized JSD stays finite.
    * ``"mass"``: the k values are the teacher's true (log-)probabilities and ``1 - sum`` of them is its remaining
      mass. Both distributions are coarse-grained to ``k + 1`` categories (the k ids and "the rest", the
      student's rest being ``1 - sum_k q``), and the divergence is taken between those: a lower bound of the
      full divergence (data processing inequality), exact when the teacher's rest mass sits on one id.
      Requires ``kind`` in {"log_probs", "probs"} and ``temperature == 1`` (the tempered teacher is not known
      from its top k). A rest below the rounding noise of the sum (``4 (k + 1) eps``) counts as exactly 0.

    Indices must be distinct within a token; an index beyond the student's vocabulary is teacher mass the
    student cannot represent (see the vocabulary policy of :mod:`kldiv.losses.functional`).
    """

    indices: Tensor
    values: Tensor
    kind: TeacherKind = "logits"
    rest: Literal["renormalize", "mass"] = "renormalize"


# ----------------------------------------------------------------------------------------------------------
# Option checks
# ----------------------------------------------------------------------------------------------------------


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _check_logits_tensor(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} has dtype {x.dtype}; a floating-point dtype is required")
    if x.dim() == 0:
        raise ValueError(f"{name} is a scalar; expected shape (..., V) with the vocabulary last")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has an empty vocabulary dimension (shape {tuple(x.shape)})")
    return x


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16/float32 inputs, float64 if any input is float64."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def valid_rows(
    batch_shape: torch.Size,
    labels: Tensor | None,
    ignore_index: int,
    mask: Tensor | None,
    device: torch.device,
) -> Tensor:
    """Flat bool tensor (N,) of the valid tokens: ``labels != ignore_index`` and ``mask``."""
    valid = torch.ones(batch_shape, dtype=torch.bool, device=device)
    if labels is not None:
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a torch.Tensor of token ids, got {type(labels).__name__}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels has dtype {labels.dtype}; an integer dtype is required")
        if labels.shape != batch_shape:
            raise ValueError(
                f"labels has shape {tuple(labels.shape)}; expected the logits' batch shape {tuple(batch_shape)}"
            )
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
        valid = valid & (labels != ignore_index)
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            kind = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool tensor (True = valid token), got {kind}")
        if mask.shape != batch_shape:
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}; expected the logits' batch shape {tuple(batch_shape)}"
            )
        valid = valid & mask
    return valid.reshape(-1)


def check_rows(name: str, x: Tensor, valid: Tensor, temperature: float, *, log_probs: bool = False) -> None:
    """Check the valid rows of flat logits ``x`` (N, V): no NaN or +inf, not all ``-inf``, no overflow at ``T``.

    One pass (the row maxima); the full diagnosis (which entry) runs only once something is wrong.
    """
    if not is_validation_enabled() or x.numel() == 0:
        return
    xd = x.detach().to(compute_dtype(x.dtype))
    top = xd.amax(-1)
    bad = valid & ~torch.isfinite(top / temperature)
    ok = not bool(bad.any())
    if ok and log_probs:
        lse = torch.logsumexp(xd, -1)
        ok = not bool((valid & ~(lse.abs() <= sum_tolerance(x.dtype))).any())
    if ok:
        return
    rows = x.detach()[valid]
    check_log_space(name, rows, 1, x.dtype, log_probs=log_probs)
    raise ValueError(
        f"{name} / temperature overflows (temperature={temperature:g}); use a larger temperature or smaller logits"
    )


def check_options(reduction: str, temperature: float, implementation: str) -> float:
    _check_choice("reduction", reduction, get_args(Reduction))
    _check_choice("implementation", implementation, get_args(Implementation))
    return check_scalar("temperature", temperature, low=0.0, low_open=True)


# ----------------------------------------------------------------------------------------------------------
# Kernels shared with the chunked implementation (flat rows, vocabulary last, normalized log-probabilities)
# ----------------------------------------------------------------------------------------------------------


def divergence_rows(
    divergence: Divergence, log_s: Tensor, log_t: Tensor, ratio_ts: Tensor | None, coef: float, normalized: bool
) -> Tensor:
    """Per-row divergence of student ``Q = exp(log_s)`` and teacher ``P = exp(log_t)`` (last dim).

    ``ratio_ts`` is ``log_t - log_s`` up to a per-row constant, more accurate when given from the logits.
    ``coef`` is ``beta`` for ``"jsd"`` and the forward weight ``w`` for ``"symmetric"``.
    """
    ratio_st = None if ratio_ts is None else -ratio_ts
    if divergence == "forward":
        return kl_log(log_t, log_s, -1, ratio_ts)
    if divergence == "reverse":
        return kl_log(log_s, log_t, -1, ratio_st)
    if divergence == "symmetric":
        value = torch.zeros_like(log_s[..., 0])  # not 0 * sum: a row with a -inf log-prob would give NaN
        if coef > 0.0:
            value = value + coef * kl_log(log_t, log_s, -1, ratio_ts)
        if coef < 1.0:
            value = value + (1.0 - coef) * kl_log(log_s, log_t, -1, ratio_st)
        return value
    if 0.0 < coef < 1.0:
        value = js_log(log_t, log_s, coef, -1)
        return value / (coef * (1.0 - coef)) if normalized else value
    # the continuous limits of the normalized form: KL(P||Q) at beta = 0, KL(Q||P) at beta = 1
    return kl_log(log_t, log_s, -1, ratio_ts) if coef == 0.0 else kl_log(log_s, log_t, -1, ratio_st)


def _weighted(weight: float, values: Tensor) -> Tensor:
    """``weight * values`` with ``0 * inf = 0``: a term switched off (distillation's ``alpha = 0``) is absent."""
    return weight * values if weight else torch.where(values < INF, values, 0.0) * 0.0  # zero, still in the graph


def reduce_rows(values: Tensor, valid: Tensor, reduction: str, vocab: int, batch_shape: torch.Size) -> Tensor:
    """Apply ``reduction`` to per-row values (0 at ignored rows already)."""
    if reduction == "none":
        return values.reshape(batch_shape)
    total = values.sum()
    if reduction == "sum":
        return total
    count = valid.sum().clamp_min(1).to(values.dtype)
    return total / count if reduction == "batchmean" else total / (count * vocab)


def row_scale(valid: Tensor, reduction: str, vocab: int) -> float:
    """The factor ``d reduced / d row value`` of a valid row for the scalar reductions (1 for ``"none"``)."""
    if reduction in ("sum", "none"):
        return 1.0
    count = max(int(valid.sum()), 1)
    return 1.0 / count if reduction == "batchmean" else 1.0 / (count * vocab)


# ----------------------------------------------------------------------------------------------------------
# The naive (reference) path
# ----------------------------------------------------------------------------------------------------------


def _pad_vocab(x: Tensor, size: int) -> Tensor:
    return x if x.shape[-1] == size else F.pad(x, (0, size - x.shape[-1]), value=-INF)


def _check_probs(name: str, p: Tensor, valid: Tensor, dtype: torch.dtype) -> None:
    """Raise unless the valid rows of ``p`` (N, V) are probabilities: finite, >= 0, summing to 1 within the
    tolerance of ``dtype``, the dtype they were given in (``p`` may be an upcast copy)."""
    if not is_validation_enabled() or p.numel() == 0:
        return
    rows = p.detach()[valid]
    sums = rows.sum(-1)
    tol = sum_tolerance(dtype)
    if bool((rows < 0).any()) or not bool(torch.isfinite(rows).all()) or bool(((sums - 1).abs() > tol).any()):
        raise ValueError(f"{name} must hold probabilities: finite, >= 0 and summing to 1 (tolerance {tol:.2g})")


def _log_of_probs(p: Tensor) -> Tensor:
    """``log p`` with ``log 0 = -inf`` and finite gradients."""
    support = p > 0
    return torch.where(support, torch.log(torch.where(support, p, 1.0)), -INF)


def _topk_dense(teacher: TopK, n: int, vocab: int, valid: Tensor, cdtype: torch.dtype) -> tuple[Tensor, int]:
    """Untempered teacher logits over ``max(vocab, max index + 1)`` ids: the k values, ``-inf`` elsewhere."""
    idx = teacher.indices.reshape(n, teacher.indices.shape[-1])
    values = teacher.values.reshape(n, teacher.values.shape[-1]).to(cdtype)
    idx = torch.where(valid[:, None], idx, torch.arange(idx.shape[1], device=idx.device))
    values = torch.where(valid[:, None], values, 0.0)
    size = max(vocab, int(idx.max()) + 1) if idx.numel() else vocab
    if teacher.kind == "probs":
        if is_validation_enabled() and bool((valid[:, None] & ~((values >= 0) & (values <= 1))).any()):
            raise ValueError("TopK.values (probs) must be in [0, 1]")
        values = torch.where(valid[:, None], values, 1.0)
    raw = _log_of_probs(values) if teacher.kind == "probs" else values
    dense = torch.full((n, size), -INF, dtype=cdtype, device=values.device).scatter(1, idx, raw)
    return dense, size


def _check_topk(teacher: TopK, batch_shape: torch.Size, temperature: float) -> None:
    _check_choice("TopK.kind", teacher.kind, get_args(TeacherKind))
    _check_choice("TopK.rest", teacher.rest, ("renormalize", "mass"))
    if not isinstance(teacher.indices, Tensor) or teacher.indices.dtype not in (torch.int64, torch.int32):
        raise TypeError("TopK.indices must be an int64 (or int32) tensor of vocabulary ids")
    _check_logits_tensor("TopK.values", teacher.values)
    if teacher.indices.shape != teacher.values.shape or teacher.values.shape[:-1] != batch_shape:
        raise ValueError(
            f"TopK.indices {tuple(teacher.indices.shape)} and TopK.values {tuple(teacher.values.shape)} must both "
            f"have shape (*{tuple(batch_shape)}, k), the student's batch shape and k entries"
        )
    if teacher.indices.numel():
        if bool((teacher.indices < 0).any()):
            raise ValueError("TopK.indices must be >= 0 (vocabulary ids)")
        srt = teacher.indices.sort(-1).values
        if bool((srt[..., 1:] == srt[..., :-1]).any()):
            raise ValueError("TopK.indices must be distinct within each token")
    if teacher.rest == "mass":
        if teacher.kind == "logits":
            raise ValueError('TopK(rest="mass") needs kind "probs" or "log_probs": top-k logits carry no rest mass')
        if temperature != 1.0:
            raise ValueError(
                f'TopK(rest="mass") needs temperature=1 (got {temperature:g}): the tempered teacher is not known '
                "from its top k entries"
            )


def check_mass_indices(indices: Tensor, valid: Tensor, vocab: int) -> None:
    """Raise unless the top-k ids (N, k) of the valid rows lie in the student's ``vocab`` ids (``rest="mass"``)."""
    top = indices[valid]
    if top.numel() and int(top.max()) >= vocab:
        raise ValueError(
            f"TopK.indices reach {int(top.max())} but the student has {vocab} ids; with rest='mass' "
            "the teacher's top k must lie in the student's vocabulary"
        )


def _topk_mass_rows(teacher: TopK, student: Tensor, valid: Tensor, cdtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probabilities over the k ids and "the rest": shape (N, k + 1), normalized."""
    n = student.shape[0]
    idx = teacher.indices.reshape(n, teacher.indices.shape[-1])
    check_mass_indices(idx, valid, student.shape[1])
    idx = torch.where(valid[:, None], idx, torch.arange(idx.shape[1], device=idx.device))
    uniform = 1.0 / (idx.shape[1] + 1)  # ignored rows: a harmless valid teacher
    fill = uniform if teacher.kind == "probs" else math.log(uniform)
    values = torch.where(valid[:, None], teacher.values.reshape(n, teacher.values.shape[-1]).to(cdtype), fill)
    # a rest below the rounding noise of summing k values is taken as exactly 0 (e.g. k = V)
    noise = 4 * (idx.shape[1] + 1) * torch.finfo(teacher.values.dtype).eps
    if teacher.kind == "probs":
        total = values.sum(-1, keepdim=True)
        if is_validation_enabled() and bool(
            (valid[:, None] & ((values < 0) | (total > 1 + sum_tolerance(teacher.values.dtype)))).any()
        ):
            raise ValueError("TopK.values (probs) must be >= 0 and sum to at most 1 per token")
        log_top = _log_of_probs(values)
        rest = 1.0 - total
        log_rest = torch.where(rest > noise, torch.log(torch.where(rest > noise, rest, 1.0)), -INF)
    else:
        log_top = values
        lse = torch.logsumexp(values, -1, keepdim=True)
        if is_validation_enabled() and bool((valid[:, None] & (lse > sum_tolerance(teacher.values.dtype))).any()):
            raise ValueError("TopK.values (log_probs) must have logsumexp <= 0 per token (mass at most 1)")
        rest = -torch.expm1(lse)
        log_rest = torch.where(rest > noise, torch.log(torch.where(rest > noise, rest, 1.0)), -INF)
    log_q = log_softmax(student, -1)
    in_top = torch.zeros_like(student, dtype=torch.bool).scatter(1, idx, True)
    q_rest = torch.logsumexp(torch.where(in_top, -INF, log_q), -1, keepdim=True)
    log_s = torch.cat([log_q.gather(1, idx), q_rest], -1)
    log_t = torch.cat([log_top, log_rest], -1)
    return log_softmax(log_s, -1), log_softmax(log_t, -1)


def _naive(
    divergence: Divergence,
    student: Tensor,
    teacher: Tensor | TopK,
    teacher_kind: TeacherKind,
    valid: Tensor,
    temperature: float,
    coef: float,
    normalized: bool,
    cdtype: torch.dtype,
) -> Tensor:
    """Per-row values (N,) by autograd through the discrete-core kernels; 0 at ignored rows."""
    n, vocab = student.shape
    s = torch.where(valid[:, None], student.to(cdtype), 0.0)
    if isinstance(teacher, TopK) and teacher.rest == "mass":
        log_s, log_t = _topk_mass_rows(teacher, s, valid, cdtype)
        ratio = None
    else:
        if isinstance(teacher, TopK):
            t, size = _topk_dense(teacher, n, vocab, valid, cdtype)
        else:
            t = teacher.reshape(n, teacher.shape[-1]).to(cdtype)
            t = torch.where(valid[:, None], t, 0.0)
            if teacher_kind == "probs":
                _check_probs("teacher", t, valid, teacher.dtype)
                t = _log_of_probs(torch.where(valid[:, None], t, 1.0))
            size = max(vocab, t.shape[1])
        s, t = _pad_vocab(s, size), _pad_vocab(t, size)
        # rows of ignored tokens must stay valid distributions: give them a finite teacher
        t = torch.where(valid[:, None], t, 0.0)
        ratio = _logit_difference(t, s, temperature)
        if temperature != 1.0:
            s, t = s / temperature, t / temperature
        log_s, log_t = log_softmax(s, -1), log_softmax(t, -1)
    values = divergence_rows(divergence, log_s, log_t, ratio, coef, normalized)
    return torch.where(valid, values, 0.0)


def _cross_entropy_rows(student: Tensor, labels: Tensor, valid: Tensor, cdtype: torch.dtype) -> Tensor:
    """``-log softmax(student)[label]`` per row (N,), 0 at ignored rows; +inf where the label's logit is -inf."""
    vocab = student.shape[1]
    lab = torch.where(valid, labels.reshape(-1), 0)
    if is_validation_enabled() and bool(((lab < 0) | (lab >= vocab)).any()):
        bad = int(lab[(lab < 0) | (lab >= vocab)][0])
        raise ValueError(f"labels holds {bad}, outside [0, {vocab}) for a valid token (and not ignore_index)")
    s = torch.where(valid[:, None], student.to(cdtype), 0.0)
    ce = -log_softmax(s, -1).gather(1, lab[:, None])[:, 0]
    return torch.where(valid, ce, 0.0)


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
    student = _check_logits_tensor("student_logits", student_logits)
    batch_shape = student.shape[:-1]
    vocab = student.shape[-1]
    n = batch_shape.numel()
    if isinstance(teacher, TopK):
        _check_topk(teacher, batch_shape, t_value)
        dtypes = [student.dtype, teacher.values.dtype]
    else:
        _check_choice("teacher_kind", teacher_kind, get_args(TeacherKind))
        t_tensor = _check_logits_tensor("teacher", teacher)
        if t_tensor.shape[:-1] != batch_shape:
            raise ValueError(
                f"teacher has batch shape {tuple(t_tensor.shape[:-1])} but student_logits has {tuple(batch_shape)} "
                "(shapes (..., V_teacher) and (..., V_student) must agree except in the vocabulary)"
            )
        dtypes = [student.dtype, t_tensor.dtype]
    cdtype = compute_dtype(*dtypes)
    valid = valid_rows(batch_shape, labels, ignore_index, mask, student.device)
    flat_s = student.reshape(n, vocab)
    if implementation == "naive":
        check_rows("student_logits", flat_s, valid, t_value)
        if not isinstance(teacher, TopK) and teacher_kind != "probs":
            flat_t = teacher.reshape(n, teacher.shape[-1])
            check_rows("teacher", flat_t, valid, t_value, log_probs=teacher_kind == "log_probs")
        values = _weighted(
            kl_weight, _naive(divergence, flat_s, teacher, teacher_kind, valid, t_value, coef, normalized, cdtype)
        )
        if ce_weight:
            assert labels is not None
            values = values + ce_weight * _cross_entropy_rows(flat_s, labels, valid, cdtype)
        return reduce_rows(values, valid, reduction, vocab, batch_shape)
    lab = None if (labels is None or not ce_weight) else labels.reshape(-1)
    if isinstance(teacher, TopK) or teacher_kind == "probs":
        from kldiv.losses.sparse import chunked_teacher_rows

        values = chunked_teacher_rows(
            divergence,
            flat_s,
            teacher if isinstance(teacher, TopK) else teacher.reshape(n, teacher.shape[-1]),
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
    else:  # the chunked Function checks logits itself, as soon as a chunk is not finite
        from kldiv.losses.chunked import chunked_rows

        flat_t = teacher.reshape(n, teacher.shape[-1])
        if teacher_kind == "log_probs":
            check_rows("teacher", flat_t, valid, t_value, log_probs=True)
        values = chunked_rows(
            divergence,
            flat_s,
            flat_t,
            valid,
            temperature=t_value,
            coef=coef,
            normalized=normalized,
            reduction=reduction,
            kl_weight=kl_weight,
            ce_weight=ce_weight,
            labels=lab,
            chunk_size=chunk_size,
        )
    return values.reshape(batch_shape) if reduction == "none" else values


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
