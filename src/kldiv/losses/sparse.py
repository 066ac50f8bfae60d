"""Row-chunked losses for the teachers the fused kernels do not cover: top-k teachers and probability teachers.

:class:`ChunkedTeacherRows` walks the rows (tokens) in chunks. For each chunk it runs the reference per-row
kernels of the naive path (:func:`kldiv.losses.rows.reference_rows`, which coarse-grains a ``rest="mass"`` top-k
teacher by :func:`~kldiv.losses.rows.topk_mass_rows`, plus the hard-label
:func:`~kldiv.losses.rows.cross_entropy_rows` of :func:`~kldiv.losses.functional.distillation_loss`) on
detached copies of the chunk's rows, and differentiates them there with ``torch.autograd.grad``: the per-row
values and the gradients ``d reduced / d student`` (and ``d reduced / d teacher`` when the teacher tensor or
``TopK.values`` requires grad) are those of the naive path, one formula for each. The gradients go into
preallocated buffers in the input dtypes; backward only scales them by ``grad_output``. A top-k teacher is
densified one chunk at a time, so intermediates are O(chunk x V), never N x V.

Validation is that of the naive path: the same checks with the same messages (the logits' batch index is that
of the whole batch). Ignored rows may hold anything: value 0, gradient 0. Double backward is not supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from kldiv.losses.options import (
    Divergence,
    Reduction,
    TeacherKind,
    TopK,
    check_rows,
    compute_dtype,
)
from kldiv.losses.rows import (
    cross_entropy_rows,
    reduce_rows,
    reference_rows,
    row_scale,
    rows_per_chunk,
    scale_precomputed,
    weighted,
)


@dataclass(frozen=True)
class RowSpec:
    """The validated options of :class:`ChunkedTeacherRows`.

    ``rest`` is the top-k teacher's rest policy, or None for a dense probability teacher; ``kind`` is ``TopK.kind``
    or ``teacher_kind``. The per-row value is ``kl_weight * divergence + ce_weight * CE``.
    """

    divergence: Divergence
    kind: TeacherKind
    rest: Literal["renormalize", "mass"] | None
    temperature: float
    coef: float
    normalized: bool
    reduction: Reduction
    kl_weight: float
    ce_weight: float
    chunk_rows: int


def _reference_rows(
    spec: RowSpec, student: Tensor, teacher: Tensor, indices: Tensor | None, valid: Tensor, labels: Tensor | None
) -> Tensor:
    """Per-row values of one chunk by the naive path's kernels (0 at ignored rows)."""
    cdtype = compute_dtype(student.dtype, teacher.dtype)
    student = student.to(cdtype)  # once: the gradients of both terms meet in cdtype and are rounded once
    source: Tensor | TopK = teacher
    if spec.rest is not None:
        assert indices is not None
        source = TopK(indices, teacher, kind=spec.kind, rest=spec.rest)
    naive = reference_rows(
        spec.divergence, student, source, spec.kind, valid, spec.temperature, spec.coef, spec.normalized, cdtype
    )
    values = weighted(spec.kl_weight, naive)
    if spec.ce_weight:
        assert labels is not None
        values = values + spec.ce_weight * cross_entropy_rows(student, labels, valid, cdtype)
    return values


def _check_student(student: Tensor, valid: Tensor, rows: slice, temperature: float) -> None:
    """:func:`check_rows` of the student's chunk; on failure, of the whole batch (the naive path's message)."""
    try:
        check_rows("student_logits", student[rows], valid[rows], temperature)
    except ValueError:
        check_rows("student_logits", student, valid, temperature)
        raise


def fill_rows(
    spec: RowSpec,
    student: Tensor,
    teacher: Tensor,
    indices: Tensor | None,
    valid: Tensor,
    labels: Tensor | None,
    grad_s: Tensor | None,
    grad_t: Tensor | None,
) -> Tensor:
    """The per-row values (N,) of flat rows, ``spec.chunk_rows`` at a time; the gradients of the reduced loss
    are written into ``grad_s`` and ``grad_t`` (each skipped when None)."""
    n = student.shape[0]
    cdtype = compute_dtype(student.dtype, teacher.dtype)
    values = torch.zeros(n, dtype=cdtype, device=student.device)
    scale = row_scale(valid, spec.reduction, student.shape[1])
    for i0 in range(0, n, spec.chunk_rows):
        rows = slice(i0, min(i0 + spec.chunk_rows, n))
        _check_student(student, valid, rows, spec.temperature)
        s = student[rows].detach().requires_grad_(grad_s is not None)
        t = teacher[rows].detach().requires_grad_(grad_t is not None)
        targets = [(leaf, buffer) for leaf, buffer in ((s, grad_s), (t, grad_t)) if buffer is not None]
        idx = None if indices is None else indices[rows]
        lab = None if labels is None else labels[rows]
        with torch.set_grad_enabled(bool(targets)):
            chunk = _reference_rows(spec, s, t, idx, valid[rows], lab)
            if targets:
                seed = torch.full_like(chunk, scale)  # d reduced / d row value
                grads = torch.autograd.grad(chunk, [leaf for leaf, _ in targets], seed, materialize_grads=True)
                for (_, buffer), grad in zip(targets, grads, strict=True):
                    buffer[rows] = grad
        values[rows] = chunk.detach()
    return values


class ChunkedTeacherRows(torch.autograd.Function):
    """Reduced per-token ``kl_weight * divergence + ce_weight * CE`` over flat rows; gradients precomputed.

    Inputs: ``student`` (N, V_s) logits; ``teacher``: a probability teacher (N, V_t) or ``TopK.values`` (N, k)
    with its ``indices`` (N, k); ``valid`` (N,) bool; ``labels`` (N,) int64 or None; the :class:`RowSpec`.
    Output: a 0-d tensor, or (N,) for ``reduction="none"``.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        student: Tensor,
        teacher: Tensor,
        indices: Tensor | None,
        valid: Tensor,
        labels: Tensor | None,
        spec: RowSpec,
    ) -> Tensor:
        need_s, need_t = ctx.needs_input_grad[:2]  # type: ignore[attr-defined]
        grad_s = torch.empty_like(student) if need_s else None
        grad_t = torch.empty_like(teacher) if need_t else None
        values = fill_rows(spec, student, teacher, indices, valid, labels, grad_s, grad_t)
        ctx.save_for_backward(grad_s, grad_t)  # type: ignore[arg-type]
        ctx.per_row = spec.reduction == "none"  # type: ignore[attr-defined]
        return reduce_rows(values, valid, spec.reduction, student.shape[1], values.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        grad_s, grad_t = ctx.saved_tensors
        return (
            scale_precomputed(grad_s, grad_output, ctx.per_row),
            scale_precomputed(grad_t, grad_output, ctx.per_row),
            None,
            None,
            None,
            None,
        )


def chunked_teacher_rows(
    divergence: Divergence,
    student: Tensor,
    teacher: Tensor | TopK,
    valid: Tensor,
    *,
    teacher_kind: TeacherKind,
    temperature: float,
    coef: float,
    normalized: bool,
    reduction: Reduction,
    kl_weight: float = 1.0,
    ce_weight: float = 0.0,
    labels: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """The reduced loss of flat student rows (N, V) and a top-k or probability teacher by
    :class:`ChunkedTeacherRows` (arguments validated as in :func:`kldiv.losses.functional._loss`).

    ``chunk_size`` is the number of rows per chunk; by default ``2^18 // width`` (at least 1), ``width`` the
    wider of the student's and a dense teacher's vocabularies.
    """
    n, vocab = student.shape
    indices = None
    if isinstance(teacher, TopK):
        indices = teacher.indices.reshape(n, teacher.indices.shape[-1])
        values = teacher.values.reshape(n, teacher.values.shape[-1])
        kind, rest = teacher.kind, teacher.rest
    else:
        values, kind, rest = teacher, teacher_kind, None
    chunk_rows = rows_per_chunk(chunk_size, max(vocab, values.shape[1] if rest is None else 0))
    spec = RowSpec(divergence, kind, rest, temperature, coef, normalized, reduction, kl_weight, ce_weight, chunk_rows)
    if not (torch.is_grad_enabled() and (student.requires_grad or values.requires_grad)):
        rows = fill_rows(spec, student, values, indices, valid, labels, None, None)
        return reduce_rows(rows, valid, reduction, vocab, rows.shape)
    out: Tensor = ChunkedTeacherRows.apply(student, values, indices, valid, labels, spec)  # type: ignore[no-untyped-call]
    return out
