"""Fused linear divergence losses: the student's logits ``hidden @ weight.T + bias`` are never materialized.

The rows (tokens) are processed in chunks: for each chunk the logits ``h_c W^T + b`` (chunk x V) are formed,
the chunked loss of :mod:`kldiv.losses.chunked` gives the value and the gradient ``G_c`` w.r.t. those logits,
and the parameter gradients are accumulated as ``dh_c = G_c W``, ``dW += G_c^T h_c``, ``db += sum_rows G_c``
(the chain rule through a linear layer). Memory: O(chunk x V) intermediates instead of the N x V logits and
their gradient. The teacher is given as logits, or as its own hidden states and head (computed per chunk too).
Reference: the fused-linear losses of Liger-Kernel (Hsu et al. 2024, arXiv:2410.10989) and Cut Cross-Entropy
(Wijmans et al. 2024, arXiv:2411.09009), here for KL divergences.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from kldiv.losses.chunked import DEFAULT_CHUNK_ELEMENTS, fill_rows, scale_precomputed
from kldiv.losses.functional import check_options, compute_dtype, row_scale

Direction = Literal["forward", "reverse"]
_ROWS_PER_CHUNK = 1 << 22  # logits per chunk (rows x V): larger than the logits path, for efficient matmuls


def _teacher_chunk(teacher: Tensor | tuple[Tensor, Tensor, Tensor | None], i0: int, i1: int) -> Tensor:
    if isinstance(teacher, Tensor):
        return teacher[i0:i1]
    hidden, weight, bias = teacher
    logits = hidden[i0:i1] @ weight.T
    return logits if bias is None else logits + bias


class _FusedLinearKL(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        teacher: Any,
        valid: Tensor,
        direction: Direction,
        temperature: float,
        reduction: str,
        chunk_rows: int,
    ) -> Tensor:
        n, v = hidden.shape[0], weight.shape[0]
        scale = row_scale(valid, reduction, v)  # applied to each chunk's logit gradient, so dh, dW, db come scaled
        grad_h = torch.zeros_like(hidden)
        grad_w = torch.zeros_like(weight)
        grad_b = None if bias is None else torch.zeros_like(bias)
        values = torch.zeros(n, dtype=compute_dtype(hidden.dtype, weight.dtype), device=hidden.device)
        logits = hidden.new_empty(min(chunk_rows, n), v)  # two buffers reused by every chunk
        grad_logits = torch.empty_like(logits)
        for i0 in range(0, n, chunk_rows):
            i1 = min(i0 + chunk_rows, n)
            z, g = logits[: i1 - i0], grad_logits[: i1 - i0]
            h = hidden[i0:i1]
            if not bool(valid[i0:i1].all()):  # masked rows may hold anything: keep NaN out of the weight gradient
                h = torch.where(valid[i0:i1, None], h, 0.0)
            torch.mm(h, weight.T, out=z)
            if bias is not None:
                z.add_(bias)
            fill_rows(
                z,
                _teacher_chunk(teacher, i0, i1).detach(),
                valid[i0:i1],
                None,
                divergence=direction,
                temperature=temperature,
                coef=0.0,
                normalized=False,
                kl_weight=1.0,
                ce_weight=0.0,
                scale=scale,
                chunk_rows=max(1, DEFAULT_CHUNK_ELEMENTS // v),
                values=values[i0:i1],
                grad_s=g,
                grad_t=None,
            )
            torch.mm(g, weight, out=grad_h[i0:i1])
            grad_w.addmm_(g.T, h)  # in place: no V x H temporary per chunk
            if grad_b is not None:
                grad_b.add_(g.sum(0))
        total = values.sum()
        # saved (not a ctx attribute) so autograd frees them after backward and .grad takes them without a copy
        ctx.save_for_backward(grad_h, grad_w, grad_b)  # type: ignore[arg-type]
        return total * scale

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        grad_h, grad_w, grad_b = ctx.saved_tensors
        return (
            scale_precomputed(grad_h, grad_output, False),
            scale_precomputed(grad_w, grad_output, False),
            scale_precomputed(grad_b, grad_output, False),
            None,
            None,
            None,
            None,
            None,
            None,
        )


def fused_linear_kl(
    hidden: Tensor,
    weight: Tensor,
    teacher: Tensor | tuple[Tensor, Tensor, Tensor | None],
    *,
    bias: Tensor | None = None,
    direction: Direction = "forward",
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: Literal["batchmean", "sum", "mean"] = "batchmean",
    chunk_size: int | None = None,
) -> Tensor:
    """KL between the teacher and the student ``softmax((hidden @ weight.T + bias) / T)`` without forming the
    N x V student logits.

    ``direction="forward"`` is KL(teacher || student), ``"reverse"`` KL(student || teacher), per token as in
    :func:`kldiv.losses.forward_kl`. ``hidden`` is (N, H), ``weight`` (V, H), ``bias`` (V,); ``teacher`` is
    (N, V) logits or a tuple ``(teacher_hidden, teacher_weight, teacher_bias)`` (also never materialized whole;
    no gradient flows to the teacher). ``mask`` (N,) bool marks the valid tokens. Gradients w.r.t. ``hidden``,
    ``weight`` and ``bias`` are exact (the chain rule through the linear layer, chunk by chunk).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden must be (N, H) and weight (V, H) with the same H, got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    if reduction not in ("batchmean", "sum", "mean"):
        raise ValueError(f"reduction must be 'batchmean', 'sum' or 'mean', got {reduction!r}")
    temperature = check_options(reduction, temperature, "auto")
    n = hidden.shape[0]
    if isinstance(teacher, Tensor):
        if teacher.dim() != 2 or teacher.shape[0] != n:
            raise ValueError(f"teacher logits must be (N, V) with N = {n}, got {tuple(teacher.shape)}")
    elif not (isinstance(teacher, tuple) and len(teacher) == 3):
        raise TypeError("teacher must be (N, V) logits or a tuple (teacher_hidden, teacher_weight, teacher_bias)")
    valid = torch.ones(n, dtype=torch.bool, device=hidden.device) if mask is None else mask.to(torch.bool)
    if valid.shape != (n,):
        raise ValueError(f"mask must have shape ({n},), got {tuple(valid.shape)}")
    if chunk_size is None:
        chunk_rows = max(1, _ROWS_PER_CHUNK // weight.shape[0])
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (rows per chunk), got {chunk_size!r}")
    else:
        chunk_rows = chunk_size
    out: Tensor = _FusedLinearKL.apply(  # type: ignore[no-untyped-call]
        hidden, weight, bias, teacher, valid, direction, temperature, reduction, chunk_rows
    )
    return out
