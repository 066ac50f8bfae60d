"""Fused linear divergence losses: the student's logits ``hidden @ weight.T + bias`` are never materialized.

The rows (tokens) are processed in chunks: for each chunk the logits ``h_c W^T + b`` (chunk x V) are formed,
:func:`kldiv.losses.chunked.fill_rows` gives the per-token values and the gradient ``G_c`` w.r.t. those logits,
and the parameter gradients are accumulated as ``dh_c = G_c W``, ``dW += G_c^T h_c``, ``db += sum_rows G_c``
(the chain rule through a linear layer). Memory: O(chunk x V) intermediates instead of the N x V logits and
their gradient. The teacher is given as logits, or as its own hidden states and head (computed per chunk too).

The losses per token are those of :mod:`kldiv.losses.functional` on the materialized logits:

==================================  ====================================================================
``fused_linear_kl``                 ``KL(P||Q)``, ``KL(Q||P)`` or ``w KL(P||Q) + (1 - w) KL(Q||P)``
``fused_linear_jsd``                ``beta KL(P||M) + (1 - beta) KL(Q||M)``, ``M = beta P + (1 - beta) Q``
``fused_linear_distillation_loss``  ``alpha T^2 KL(P_T||Q_T) + (1 - alpha) CE(Q_1, labels)``
==================================  ====================================================================

Backward: for the scalar reductions the gradients are complete after forward (each chunk's ``G_c`` is scaled
by ``d reduced / d row value`` before the matmuls) and backward only multiplies them by ``grad_output``. For
``reduction="none"`` the parameter gradients ``dW = sum_i g_i G_i^T h_i`` depend on the per-row ``grad_output``
``g_i``, unknown in forward: forward then computes the values only, and backward recomputes the chunks (the
logits and ``G_c``, once more) and scales each row by ``g_i`` before the matmuls; same memory, one extra logits
matmul and loss pass.
Reference: the fused-linear losses of Liger-Kernel (Hsu et al. 2024, arXiv:2410.10989) and Cut Cross-Entropy
(Wijmans et al. 2024, arXiv:2411.09009), here for KL divergences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from kldiv._validate import check_scalar
from kldiv.discrete import _check_beta
from kldiv.losses.chunked import fill_rows
from kldiv.losses.options import (
    Divergence,
    Reduction,
    check_labels,
    check_not_meta,
    check_options,
    compute_dtype,
    valid_rows,
    warn_if_probabilities,
    warn_if_vocabularies_make_it_infinite,
)
from kldiv.losses.rows import row_scale, rows_per_chunk, scale_precomputed

Direction = Literal["forward", "reverse", "symmetric"]
TeacherHead = tuple[Tensor, Tensor, Tensor | None]
"""A teacher given by its hidden states (N, H_t), head weight (V_t, H_t) and bias (V_t,) or None."""

_ROWS_PER_CHUNK = 1 << 22  # logits per chunk (rows x V): larger than the logits path, for efficient matmuls


@dataclass(frozen=True)
class _Loss:
    """The per-token loss ``kl_weight * divergence + ce_weight * CE`` as :func:`fill_rows` takes it."""

    divergence: Divergence
    temperature: float
    coef: float = 0.0
    normalized: bool = False
    kl_weight: float = 1.0
    ce_weight: float = 0.0


class _Teacher(NamedTuple):
    """The teacher as (N, V_t) logits, or as its hidden states and head (detached)."""

    logits: Tensor | None
    hidden: Tensor | None
    weight: Tensor | None
    bias: Tensor | None

    @property
    def vocab(self) -> int:
        if self.logits is not None:
            return self.logits.shape[1]
        assert self.weight is not None
        return self.weight.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        source = self.logits if self.logits is not None else self.hidden
        assert source is not None
        return source.dtype

    def rows(self, i0: int, i1: int, dtype: torch.dtype) -> Tensor:
        """The teacher logits of rows ``[i0, i1)`` in ``dtype`` (formed in it from a head whose weight and bias
        are already in it)."""
        if self.logits is not None:
            return self.logits[i0:i1].to(dtype)
        assert self.hidden is not None
        assert self.weight is not None
        logits = self.hidden[i0:i1].to(dtype) @ self.weight.T
        return logits if self.bias is None else logits + self.bias

    def head_in(self, dtype: torch.dtype) -> _Teacher:
        """The same teacher with its head's weight and bias in ``dtype``."""
        if self.weight is None:
            return self
        return self._replace(weight=self.weight.to(dtype), bias=None if self.bias is None else self.bias.to(dtype))


def _run(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    teacher: _Teacher,
    valid: Tensor,
    labels: Tensor | None,
    loss: _Loss,
    chunk_rows: int,
    *,
    scale: float,
    needs: tuple[bool, ...],
    row_grad: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor | None, Tensor | None, Tensor | None]]:
    """One pass over the rows, ``chunk_rows`` at a time: the per-token values, and the gradients of ``hidden``,
    ``weight``, ``bias`` (those ``needs`` asks for) accumulated from each chunk's logit gradient times ``scale``
    (and times ``row_grad`` per row, if given), each returned in its input's dtype.

    Everything runs in float32 (float64 if any input is) with autocast off: float16/bfloat16 and mixed dtypes
    (``torch.autocast`` gives bf16 hidden states and a float32 head) are upcast, chunk by chunk for ``hidden``;
    the logits are formed and ``dW``, ``db`` accumulated in float32, and each gradient is rounded once at the
    end (a bf16 head costs a float32 copy of the weight and of its gradient).
    """
    cdtype = compute_dtype(hidden.dtype, weight.dtype, teacher.dtype, *([] if bias is None else [bias.dtype]))
    out_dtypes = (weight.dtype, None if bias is None else bias.dtype)
    values = torch.zeros(hidden.shape[0], dtype=cdtype, device=hidden.device)
    with torch.autocast(hidden.device.type, enabled=False):
        weight, bias, teacher = weight.to(cdtype), None if bias is None else bias.to(cdtype), teacher.head_in(cdtype)
        grad_h = torch.zeros_like(hidden) if needs[0] else None
        grad_w = torch.zeros_like(weight) if needs[1] else None
        grad_b = torch.zeros_like(bias) if bias is not None and needs[2] else None
        n, v = hidden.shape[0], weight.shape[0]
        logits = torch.empty(min(chunk_rows, n), v, dtype=cdtype, device=hidden.device)  # reused by every chunk
        grad_logits = torch.empty_like(logits)
        inner_rows = rows_per_chunk(None, max(v, teacher.vocab))
        for i0 in range(0, n, chunk_rows):
            i1 = min(i0 + chunk_rows, n)
            z, g, ok = logits[: i1 - i0], grad_logits[: i1 - i0], valid[i0:i1]
            h = hidden[i0:i1].to(cdtype)
            if not bool(ok.all()):  # masked rows may hold anything: keep NaN out of the weight gradient
                h = torch.where(ok[:, None], h, 0.0)
            torch.mm(h, weight.T, out=z)
            if bias is not None:
                z.add_(bias)
            try:
                fill_rows(
                    z,
                    teacher.rows(i0, i1, cdtype),
                    ok,
                    None if labels is None else labels[i0:i1],
                    divergence=loss.divergence,
                    temperature=loss.temperature,
                    coef=loss.coef,
                    normalized=loss.normalized,
                    kl_weight=loss.kl_weight,
                    ce_weight=loss.ce_weight,
                    scale=scale,
                    chunk_rows=inner_rows,
                    values=values[i0:i1],
                    grad_s=g,
                    grad_t=None,
                )
            except ValueError as err:  # the logits are checked chunk by chunk: say which rows
                raise ValueError(
                    f"rows [{i0}, {i1}) of hidden (student_logits = hidden @ weight.T + bias; indices below count from "
                    f"row {i0}): {err}"
                ) from err
            if row_grad is not None:  # ignored rows keep a zero gradient, whatever their grad_output
                g.mul_(torch.where(ok, row_grad[i0:i1], 0.0)[:, None])
            if grad_h is not None and grad_h.dtype == cdtype:
                torch.mm(g, weight, out=grad_h[i0:i1])
            elif grad_h is not None:
                grad_h[i0:i1] = torch.mm(g, weight)
            if grad_w is not None:
                grad_w.addmm_(g.T, h)  # in place: no V x H temporary per chunk
            if grad_b is not None:
                grad_b.add_(g.sum(0))
    w_dtype, b_dtype = out_dtypes
    grad_w = None if grad_w is None else grad_w.to(w_dtype)
    grad_b = None if grad_b is None or b_dtype is None else grad_b.to(b_dtype)
    return values, (grad_h, grad_w, grad_b)


class FusedLinearDivergence(torch.autograd.Function):
    """Per-token ``kl_weight * divergence + ce_weight * CE`` of the logits ``hidden @ weight.T + bias``, reduced.

    Inputs: ``hidden`` (N, H), ``weight`` (V, H), ``bias`` (V,) or None, ``valid`` (N,) bool, ``labels`` (N,)
    int64 or None (read only when ``loss.ce_weight``), the :class:`_Loss`, the reduction, the rows per chunk,
    then the four fields of the :class:`_Teacher` (no gradient). Output: a 0-d tensor, or (N,) for
    ``reduction="none"``. Scalar reductions: the gradients are computed in forward, backward scales them.
    ``"none"``: forward computes the values only; backward recomputes the chunks, each row's logit gradient
    scaled by its ``grad_output``.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        valid: Tensor,
        labels: Tensor | None,
        loss: _Loss,
        reduction: str,
        chunk_rows: int,
        *teacher_fields: Tensor | None,
    ) -> Tensor:
        teacher = _Teacher(*teacher_fields)
        args = (hidden, weight, bias, teacher, valid, labels, loss, chunk_rows)
        ctx.loss, ctx.chunk_rows, ctx.none = loss, chunk_rows, reduction == "none"  # type: ignore[attr-defined]
        if reduction == "none":
            values, _ = _run(*args, scale=1.0, needs=(False, False, False))
            ctx.save_for_backward(hidden, weight, bias, valid, labels, *teacher)  # type: ignore[arg-type]
            return values
        scale = row_scale(valid, reduction, weight.shape[0])  # applied to each chunk's logit gradient
        values, grads = _run(*args, scale=scale, needs=ctx.needs_input_grad[:3])  # type: ignore[attr-defined]
        # saved (not a ctx attribute) so autograd frees them after backward and .grad takes them without a copy
        ctx.save_for_backward(*grads)  # type: ignore[arg-type]
        total = values.sum()
        return total if reduction == "sum" else total * scale

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        nones: tuple[None, ...] = (None,) * 9
        if not ctx.none:
            return tuple(scale_precomputed(g, grad_output, False) for g in ctx.saved_tensors) + nones
        hidden, weight, bias, valid, labels, *teacher_fields = ctx.saved_tensors
        teacher = _Teacher(*teacher_fields)
        args = (hidden, weight, bias, teacher, valid, labels, ctx.loss, ctx.chunk_rows)
        _, grads = _run(*args, scale=1.0, needs=ctx.needs_input_grad[:3], row_grad=grad_output)
        return *grads, *nones


# ----------------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------------


def _check_matrix(name: str, x: object, shape_text: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_text}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} has dtype {x.dtype}; a floating-point dtype is required")
    if x.dim() != 2 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape {shape_text} (2-D, non-empty last dim), got {tuple(x.shape)}")
    return x


def _check_head(prefix: str, hidden: object, weight: object, bias: object, n: int | None) -> None:
    """Check ``{prefix}hidden`` (N, H), ``{prefix}weight`` (V, H) and ``{prefix}bias`` (V,) or None."""
    h = _check_matrix(f"{prefix}hidden", hidden, "(N, H)")
    w = _check_matrix(f"{prefix}weight", weight, "(V, H)")
    if w.shape[0] == 0:
        raise ValueError(f"{prefix}weight has shape {tuple(w.shape)}: an empty vocabulary (V = 0)")
    if w.shape[1] != h.shape[1]:
        raise ValueError(
            f"{prefix}weight has shape {tuple(w.shape)} but {prefix}hidden has {tuple(h.shape)}: expected (V, H) "
            f"with H = {prefix}hidden.shape[1] = {h.shape[1]}"
        )
    if n is not None and h.shape[0] != n:
        raise ValueError(f"{prefix}hidden has {h.shape[0]} rows, expected N = {n} (one per token of hidden)")
    if h.device != w.device:
        raise ValueError(f"{prefix}hidden is on {h.device} but {prefix}weight on {w.device}")
    if bias is None:
        return
    if not isinstance(bias, Tensor):
        raise TypeError(f"{prefix}bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if bias.shape != (w.shape[0],):
        raise ValueError(f"{prefix}bias must have shape ({w.shape[0]},) (V of {prefix}weight), got {tuple(bias.shape)}")
    if not bias.is_floating_point():
        raise TypeError(f"{prefix}bias has dtype {bias.dtype}; a floating-point dtype is required")


def _check_teacher(teacher: object, n: int, device: torch.device) -> _Teacher:
    if isinstance(teacher, Tensor):
        t = _check_matrix("teacher", teacher, f"(N, V_teacher) with N = {n}")
        if t.shape[0] != n:
            raise ValueError(f"teacher logits have shape {tuple(t.shape)}; expected (N, V_teacher) with N = {n}")
        fields = _Teacher(t.detach(), None, None, None)
    elif isinstance(teacher, tuple) and len(teacher) == 3:
        t_hidden, t_weight, t_bias = teacher
        _check_head("teacher_", t_hidden, t_weight, t_bias, n)
        fields = _Teacher(None, t_hidden.detach(), t_weight.detach(), None if t_bias is None else t_bias.detach())
    else:
        raise TypeError(
            "teacher must be (N, V_teacher) logits or a tuple (teacher_hidden, teacher_weight, teacher_bias), got "
            f"{type(teacher).__name__}"
        )
    source = fields.logits if fields.logits is not None else fields.hidden
    assert source is not None
    if source.device != device:
        raise ValueError(f"the teacher is on {source.device} but hidden on {device}")
    return fields


def check_direction(direction: str, forward_weight: float | None) -> float:
    """Validate ``direction`` and ``forward_weight``; return the forward weight ``w`` of ``"symmetric"`` (else 0)."""
    if direction not in get_args(Direction):
        raise ValueError(f"direction must be one of 'forward', 'reverse', 'symmetric'; got {direction!r}")
    if direction != "symmetric":
        if forward_weight is not None:
            raise ValueError(f"forward_weight applies to direction='symmetric' only, got direction={direction!r}")
        return 0.0
    return check_scalar("forward_weight", 0.5 if forward_weight is None else forward_weight, low=0.0, high=1.0)


def _fused(
    loss: _Loss,
    hidden: Tensor,
    weight: Tensor,
    teacher: Tensor | TeacherHead,
    bias: Tensor | None,
    labels: Tensor | None,
    ignore_index: int,
    mask: Tensor | None,
    reduction: Reduction,
    chunk_size: int | None,
) -> Tensor:
    """Validate the tensors and run :class:`FusedLinearDivergence` (``loss`` is validated by the caller)."""
    check_options(reduction, loss.temperature, "auto")
    rows_per_chunk(chunk_size, 1)  # validated before the tensors
    _check_head("", hidden, weight, bias, None)
    n, v = hidden.shape[0], weight.shape[0]
    t = _check_teacher(teacher, n, hidden.device)
    check_not_meta("the fused linear losses", hidden, weight)
    valid = valid_rows(torch.Size([n]), labels, ignore_index, mask, hidden.device)
    targets = None
    if loss.ce_weight:
        assert labels is not None
        targets = labels.to(torch.int64)
        check_labels(targets, valid, v, ignore_index, vocab_of="weight")
    if t.logits is not None:
        warn_if_probabilities("teacher", t.logits, valid)
    chunk_rows = rows_per_chunk(chunk_size, max(v, t.vocab), _ROWS_PER_CHUNK)
    out: Tensor = FusedLinearDivergence.apply(  # type: ignore[no-untyped-call]
        hidden, weight, bias, valid, targets, loss, reduction, chunk_rows, *t
    )
    warn_if_vocabularies_make_it_infinite(out, v, t.vocab)
    return out


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


def fused_linear_kl(
    hidden: Tensor,
    weight: Tensor,
    teacher: Tensor | TeacherHead,
    *,
    bias: Tensor | None = None,
    direction: Direction = "forward",
    forward_weight: float | None = None,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    mask: Tensor | None = None,
    reduction: Reduction = "batchmean",
    chunk_size: int | None = None,
) -> Tensor:
    """KL between the teacher P and the student ``Q = softmax((hidden @ weight.T + bias) / T)`` per token, reduced,
    without forming the N x V student logits.

    ``direction="forward"``: ``KL(P||Q) = sum_v p_v log(p_v / q_v)``; ``"reverse"``: ``KL(Q||P)``;
    ``"symmetric"``: ``w KL(P||Q) + (1 - w) KL(Q||P)`` with ``w = forward_weight`` in [0, 1] (default 0.5; the
    forward weight of :func:`kldiv.losses.symmetric_kl`, not the head). Equals :func:`kldiv.losses.forward_kl`
    (``reverse_kl``, ``symmetric_kl``) of the materialized logits, with the same edge semantics and options.
    ``hidden`` is (N, H), ``weight`` (V, H), ``bias`` (V,); ``teacher`` is (N, V_t) logits or a tuple
    ``(teacher_hidden, teacher_weight, teacher_bias)``, never materialized whole; no gradient flows to it (V_t may
    differ from V: the shorter side is padded with ``-inf``). ``labels != ignore_index`` and ``mask`` (N,) select
    the valid tokens (here the labels are read for that only); ignored rows may hold anything. ``reduction`` in
    {"batchmean", "sum", "mean", "none"} (``"none"``: (N,) values; backward recomputes the chunks, see
    :mod:`kldiv.losses.linear`). ``chunk_size``: rows per chunk (default ``2**22 // max(V, V_t)``). Gradients
    w.r.t. ``hidden``, ``weight`` and ``bias`` are exact.
    """
    coef = check_direction(direction, forward_weight)
    t_value = check_scalar("temperature", temperature, low=0.0, low_open=True)
    return _fused(
        _Loss(direction, t_value, coef=coef),
        hidden,
        weight,
        teacher,
        bias,
        labels,
        ignore_index,
        mask,
        reduction,
        chunk_size,
    )


def fused_linear_jsd(
    hidden: Tensor,
    weight: Tensor,
    teacher: Tensor | TeacherHead,
    *,
    bias: Tensor | None = None,
    beta: float = 0.5,
    normalized: bool = False,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    mask: Tensor | None = None,
    reduction: Reduction = "batchmean",
    chunk_size: int | None = None,
) -> Tensor:
    """Generalized JSD ``beta KL(P||M) + (1 - beta) KL(Q||M)``, ``M = beta P + (1 - beta) Q``, of the teacher P and
    the student ``Q = softmax((hidden @ weight.T + bias) / T)`` per token, reduced, without forming the logits.

    Equals :func:`kldiv.losses.generalized_jsd` of the materialized logits (the GKD loss of Agarwal et al. 2024,
    "On-policy distillation of language models"): ``beta`` in {0, 1} raises unless ``normalized=True``, which
    divides by ``beta (1 - beta)`` and takes the limits KL(P||Q) at 0 and KL(Q||P) at 1. Inputs and options as
    in :func:`fused_linear_kl`.
    """
    if not isinstance(normalized, bool):
        raise TypeError(f"normalized must be a bool, got {type(normalized).__name__}")
    b = _check_beta(beta, normalized)
    t_value = check_scalar("temperature", temperature, low=0.0, low_open=True)
    return _fused(
        _Loss("jsd", t_value, coef=b, normalized=normalized),
        hidden,
        weight,
        teacher,
        bias,
        labels,
        ignore_index,
        mask,
        reduction,
        chunk_size,
    )


def fused_linear_distillation_loss(
    hidden: Tensor,
    weight: Tensor,
    teacher: Tensor | TeacherHead,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    alpha: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    mask: Tensor | None = None,
    reduction: Reduction = "batchmean",
    chunk_size: int | None = None,
) -> Tensor:
    """Hinton distillation loss ``alpha T^2 KL(P_T||Q_T) + (1 - alpha) CE(Q_1, labels)`` per token, reduced, of
    the student logits ``hidden @ weight.T + bias`` without forming them.

    Equals :func:`kldiv.losses.distillation_loss` of the materialized logits: ``P_T``, ``Q_T`` at temperature
    ``T``, the cross-entropy at ``T = 1``; tokens with ``labels == ignore_index`` (or ``mask`` False) are left out
    of both terms; the labels of valid tokens must lie in [0, V). Inputs and options as in
    :func:`fused_linear_kl`. Reference: Hinton, Vinyals & Dean (2015), "Distilling the knowledge in a neural
    network", section 2.
    """
    a = check_scalar("alpha", alpha, low=0.0, high=1.0)
    t_value = check_scalar("temperature", temperature, low=0.0, low_open=True)
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of token ids, got {type(labels).__name__}")
    return _fused(
        _Loss("forward", t_value, kl_weight=a * t_value**2, ce_weight=1.0 - a),
        hidden,
        weight,
        teacher,
        bias,
        labels,
        ignore_index,
        mask,
        reduction,
        chunk_size,
    )
