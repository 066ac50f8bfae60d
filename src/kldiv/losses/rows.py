"""The per-row formulas of the losses, shared by every implementation (naive, chunked, top-k, fused linear,
vocab-parallel): per-token divergences and their closed-form gradients, the teacher's forms as dense rows, the
hard-label cross-entropy, the reductions, and the chunking rule.

Rows are flat ``(N, V)`` with the vocabulary last; log-probabilities are normalized per row.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx

from kldiv._numerics import INF, log_softmax
from kldiv.discrete import _log_mixture, _logit_difference, js_log, kl_log
from kldiv.losses.options import Divergence, TeacherKind, TopK

DEFAULT_CHUNK_ELEMENTS = 1 << 18
"""Default chunk: this many logits (rows x V) per chunk, i.e. 1 MB per float32 intermediate (stays in cache)."""


def rows_per_chunk(chunk_size: int | None, width: int, elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Rows per chunk: ``chunk_size`` (a positive int), or by default ``elements // width`` (at least 1)."""
    if chunk_size is None:
        return max(1, elements // width)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (rows per chunk) or None, got {chunk_size!r}")
    return chunk_size


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


def weighted(weight: float, values: Tensor) -> Tensor:
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


def _centered(x: Tensor, g: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``x (g - <x, g>)`` per row, with 0 where ``x == 0`` (``g`` may be infinite there), formed in the wider of
    the two dtypes and returned in ``dtype`` (default: ``x``'s)."""
    support = x > 0
    g = torch.where(support & torch.isfinite(g), g, 0.0)  # +inf only on rows whose value is +inf (zero gradient)
    wide = x.to(g.dtype) if g.dtype == torch.float64 else x
    centred = torch.where(support, wide * (g - (wide * g).sum(-1, keepdim=True)), 0.0)
    return centred.to(x.dtype if dtype is None else dtype)


def logit_ratio(t: Tensor, s: Tensor, temperature: float) -> Tensor:
    """``(t - s) / T`` in float64 where both logits are finite (0 elsewhere): ``log p - log q`` up to a per-row
    constant, rounded once (the difference of two float32 logits is exact in float64)."""
    return _logit_difference(t.to(torch.float64), s.to(torch.float64), temperature)


def divergence_grads(
    divergence: Divergence,
    log_s: Tensor,
    log_t: Tensor,
    coef: float,
    normalized: bool,
    ratio_ts: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Gradients of the divergence w.r.t. the tempered student and teacher logits ``s / T``, ``t / T``.

    ``ratio_ts`` (``log_t - log_s`` up to a per-row constant: :func:`logit_ratio`) sharpens the centred KL
    gradients ``x (g - <x, g>)``, where a per-row constant of ``g`` cancels (the rounding of the log-softmax
    normalizers drops out); given in float64, they are formed in float64 and rounded once. Without it a float32
    ``g - <x, g>`` of large log-ratios (|g| ~ 50) cancels to a relative error of 1e-5.
    """
    q, p = torch.exp(log_s), torch.exp(log_t)
    log_ts = log_t - log_s
    if ratio_ts is not None:
        log_ts = torch.where(torch.isfinite(log_s) & torch.isfinite(log_t), ratio_ts, log_ts)
    if divergence == "forward" or (divergence == "jsd" and coef == 0.0):
        return q - p, _centered(p, log_ts)
    if divergence == "reverse" or (divergence == "jsd" and coef == 1.0):
        return _centered(q, -log_ts), p - q
    if divergence == "symmetric":
        gs = (coef * (q - p) + (1.0 - coef) * _centered(q, -log_ts, q.dtype)).to(q.dtype)
        gt = (coef * _centered(p, log_ts, p.dtype) + (1.0 - coef) * (p - q)).to(p.dtype)
        return gs, gt
    log_m = _log_mixture(log_t, log_s, coef)
    gs = _centered(q, (1.0 - coef) * (log_s - log_m))
    gt = _centered(p, coef * (log_t - log_m))
    if normalized:
        scale = 1.0 / (coef * (1.0 - coef))
        gs, gt = gs * scale, gt * scale
    return gs, gt


class RowDivergence(torch.autograd.Function):
    """Per-row divergence of the tempered logits ``s / T`` (student) and ``t / T`` (teacher), with the
    closed-form gradients of :func:`divergence_grads` in place of autograd through the value's kernels.

    The value is :func:`divergence_rows` of their ``log_softmax``; autograd through those cancellation-free
    kernels loses accuracy (at V = 32000 float32 gradients 100x further from float64 than ``q - p``), while
    the closed forms are exact to the rounding of ``q`` and ``p``. Rows whose value is +inf get a zero gradient
    (the value, not the gradient, reports the impossibility). Backward recomputes from the inputs in
    differentiable ops, so double backward works. ``ratio`` (:func:`logit_ratio`, or None) sharpens the value
    and the gradients.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        s: Tensor,
        t: Tensor,
        ratio: Tensor | None,
        divergence: Divergence,
        coef: float,
        normalized: bool,
    ) -> Tensor:
        r = None if ratio is None else ratio.to(s.dtype)
        value = divergence_rows(divergence, log_softmax(s, -1), log_softmax(t, -1), r, coef, normalized)
        ctx.save_for_backward(s, t, value, ratio)  # type: ignore[arg-type]
        ctx.spec = (divergence, coef, normalized)  # type: ignore[attr-defined]
        return value

    @staticmethod
    def backward(ctx: Any, grad_value: Tensor) -> tuple[Tensor | None, ...]:
        s, t, value, ratio = ctx.saved_tensors
        divergence, coef, normalized = ctx.spec
        gs, gt = divergence_grads(divergence, log_softmax(s, -1), log_softmax(t, -1), coef, normalized, ratio)
        w = torch.where(value < INF, grad_value, 0.0)[:, None]
        need_s, need_t = ctx.needs_input_grad[:2]
        return (gs * w if need_s else None), (gt * w if need_t else None), None, None, None, None


def row_divergence(
    divergence: Divergence, s: Tensor, t: Tensor, ratio: Tensor | None, coef: float, normalized: bool
) -> Tensor:
    """:class:`RowDivergence` of the tempered logits ``s``, ``t`` (N, V)."""
    out: Tensor = RowDivergence.apply(s, t, ratio, divergence, coef, normalized)  # type: ignore[no-untyped-call]
    return out


def pad_vocab(x: Tensor, size: int) -> Tensor:
    return x if x.shape[-1] == size else F.pad(x, (0, size - x.shape[-1]), value=-INF)


def log_of_probs(p: Tensor) -> Tensor:
    """``log p`` with ``log 0 = -inf`` and finite gradients."""
    support = p > 0
    return torch.where(support, torch.log(torch.where(support, p, 1.0)), -INF)


def topk_dense(teacher: TopK, valid: Tensor, vocab: int, temperature: float, cdtype: torch.dtype) -> Tensor:
    """Untempered teacher logits (N, vocab) from a top-k teacher: the k values at their ids, ``-inf`` elsewhere;
    one more column (N, vocab + 1) when a valid row has ids beyond the student's vocabulary.

    That column stands for every id ``>= vocab`` at once: it holds ``T logsumexp(r / T)`` of their values ``r``
    (logits, or ``log p``), so the tempered teacher gives it their total mass. The student has no mass there,
    and each divergence here depends on such ids only through the teacher's total mass on them (KL(P||Q) is
    +inf, KL(Q||P) gains 0, the JSD gains ``beta log(1 / beta)`` times it), so the merge is exact and nothing is
    allocated in proportion to the ids. Ignored rows get a harmless teacher.
    """
    n, k = valid.shape[0], teacher.indices.shape[-1]
    idx = torch.where(valid[:, None], teacher.indices.reshape(n, k), 0)
    values = teacher.values.reshape(n, k).to(cdtype)
    if teacher.kind == "probs":
        raw = log_of_probs(torch.where(valid[:, None], values, 1.0))
    else:
        raw = torch.where(valid[:, None], values, 0.0)
    inside = idx < vocab
    dense = torch.full((n, vocab + 1), -INF, dtype=cdtype, device=values.device)
    dense = dense.scatter(1, torch.where(inside, idx, vocab), torch.where(inside, raw, -INF))[:, :vocab]
    if bool(inside.all()):
        return dense
    return torch.cat([dense, temperature * _logsumexp(torch.where(inside, -INF, raw) / temperature)], 1)


def _logsumexp(x: Tensor) -> Tensor:
    """``logsumexp`` over the last dim, kept: ``-inf`` with a zero gradient (not NaN) on rows of all ``-inf``."""
    top = x.detach().amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, 0.0)
    total = torch.exp(x - top).sum(-1, keepdim=True)
    some = total > 0
    return torch.where(some, torch.log(torch.where(some, total, 1.0)) + top, -INF)


def topk_mass_rows(teacher: TopK, student: Tensor, valid: Tensor, cdtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probabilities over the k ids and "the rest": shape (N, k + 1), normalized."""
    n = student.shape[0]
    idx = teacher.indices.reshape(n, teacher.indices.shape[-1])
    idx = torch.where(valid[:, None], idx, torch.arange(idx.shape[1], device=idx.device) % student.shape[1])
    uniform = 1.0 / (idx.shape[1] + 1)  # ignored rows: a harmless valid teacher
    fill = uniform if teacher.kind == "probs" else math.log(uniform)
    values = torch.where(valid[:, None], teacher.values.reshape(n, teacher.values.shape[-1]).to(cdtype), fill)
    # a rest below the rounding noise of summing k values is taken as exactly 0 (e.g. k = V)
    noise = 4 * (idx.shape[1] + 1) * torch.finfo(teacher.values.dtype).eps
    if teacher.kind == "probs":
        log_top = log_of_probs(values)
        rest = 1.0 - values.sum(-1, keepdim=True)
    else:
        log_top = values
        rest = -torch.expm1(torch.logsumexp(values, -1, keepdim=True))
    log_rest = torch.where(rest > noise, torch.log(torch.where(rest > noise, rest, 1.0)), -INF)
    log_q = log_softmax(student, -1)
    in_top = torch.zeros_like(student, dtype=torch.bool).scatter(1, idx, True)
    q_rest = torch.logsumexp(torch.where(in_top, -INF, log_q), -1, keepdim=True)
    log_s = torch.cat([log_q.gather(1, idx), q_rest], -1)
    log_t = torch.cat([log_top, log_rest], -1)
    return log_softmax(log_s, -1), log_softmax(log_t, -1)


def reference_rows(
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
    """Per-row values (N,) by the discrete-core kernels, with closed-form gradients (:class:`RowDivergence`) and
    autograd through the teacher's form (temperature, ``log p``, top-k ids); 0 at ignored rows.

    The teacher's values are checked by the caller (:func:`~kldiv.losses.options.check_rows`,
    :func:`~kldiv.losses.options.check_probs`, :func:`~kldiv.losses.options.check_topk_values`).
    """
    n, vocab = student.shape
    s = torch.where(valid[:, None], student.to(cdtype), 0.0)
    if isinstance(teacher, TopK) and teacher.rest == "mass":
        s, t = topk_mass_rows(teacher, s, valid, cdtype)  # log-probabilities over k + 1 categories
        ratio = None
    else:
        if isinstance(teacher, TopK):
            t = topk_dense(teacher, valid, vocab, temperature, cdtype)
        else:
            t = teacher.reshape(n, teacher.shape[-1]).to(cdtype)
            if teacher_kind == "probs":
                t = log_of_probs(torch.where(valid[:, None], t, 1.0))
        size = max(vocab, t.shape[1])
        s, t = pad_vocab(s, size), pad_vocab(t, size)
        # rows of ignored tokens must stay valid distributions: give them a finite teacher
        t = torch.where(valid[:, None], t, 0.0)
        ratio = logit_ratio(t, s, temperature)
        if temperature != 1.0:
            s, t = s / temperature, t / temperature
    values = row_divergence(divergence, s, t, ratio, coef, normalized)
    return torch.where(valid, values, 0.0)


def cross_entropy_rows(student: Tensor, labels: Tensor, valid: Tensor, cdtype: torch.dtype) -> Tensor:
    """``-log softmax(student)[label]`` per row (N,), 0 at ignored rows; +inf where the label's logit is -inf,
    with the gradient ``softmax - onehot`` all the same (the labels of valid rows are checked by the caller:
    :func:`~kldiv.losses.options.check_labels`)."""
    lab = torch.where(valid, labels.reshape(-1), 0)
    s = torch.where(valid[:, None], student.to(cdtype), 0.0)
    ce = -log_softmax(s, -1).gather(1, lab[:, None])[:, 0]
    return torch.where(valid, ce, 0.0)


def scale_precomputed(g: Tensor | None, grad_output: Tensor, per_row: bool) -> Tensor | None:
    """A gradient computed in forward times the incoming ``grad_output`` (per row for ``reduction="none"``);
    returned without a copy when ``grad_output`` is 1 (the usual ``loss.backward()``)."""
    if g is None:
        return None
    if per_row:
        return (g.to(grad_output.dtype) * grad_output[:, None]).to(g.dtype)
    if not torch.compiler.is_compiling() and grad_output.device.type != "meta" and bool(grad_output == 1):
        return g
    return (g.to(grad_output.dtype) * grad_output).to(g.dtype)
