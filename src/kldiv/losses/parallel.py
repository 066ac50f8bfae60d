"""Vocab-parallel losses: student and teacher logits (or the student's head) sharded along the vocabulary.

In tensor-parallel training the output head is split by rows, so rank ``r`` of a group of size ``R`` holds the
columns ``[o_r, o_r + V_r)`` of the logits (contiguous shards in rank order, ``sum_r V_r = V``). Every loss of
:mod:`kldiv.losses.functional` is exact without gathering the ``N x V`` logits, by the pattern of Megatron-LM's
vocab-parallel cross-entropy (Shoeybi et al. 2019, "Megatron-LM: training multi-billion parameter language
models using model parallelism", ``VocabParallelCrossEntropy``), with ``a = s / T`` (student), ``b = t / T``
(teacher) and three all-reduces of ``O(N)`` floats:

1. ``m = max_v a_v`` -> ``all_reduce(MAX)`` (both sides at once, plus a flag for NaN/+inf entries, plus the
   untempered student maximum when the cross-entropy needs it);
2. ``Z = sum_v exp(a_v - m)`` -> ``all_reduce(SUM)``, so ``log q_v = a_v - m - log Z`` (same for ``p``); the
   shard sizes ``V_r`` travel along (global ``V`` and this rank's offset ``o_r``);
3. the row's partial sums of non-negative terms, one per KL "component" of the loss -> ``all_reduce(SUM)``::

       KL(X||Y) = sum_v [x_v log(x_v / y_v) - x_v + y_v]        (each term >= 0, sum x = sum y = 1)

   with the terms of the discrete core (:func:`kldiv._numerics.kl_terms_from_log_ratio`), cancellation-free.
   The components: ``KL(P||Q)`` (forward), ``KL(Q||P)`` (reverse), both (symmetric: ``w KL(P||Q) + (1 - w)
   KL(Q||P)``), or ``KL(P||M)`` and ``KL(Q||M)`` with the per-entry mixture ``log m = log(beta p + (1 - beta)
   q)`` (:func:`kldiv.discrete._log_mixture`, local once ``log p``, ``log q`` are) for the generalized JSD
   ``beta KL(P||M) + (1 - beta) KL(Q||M)``. The cross-entropy's target logit ``s_y`` rides in the same
   all-reduce: the rank owning column ``y`` contributes ``s_y``, the others 0 (Megatron's masked target), and
   ``CE = lse(s) - s_y``.

The gradient of every shard is local, precomputed in the forward in float32 (float64 for float64 inputs); with
``x (g - <x, g>)`` centred by the global inner product, which is a component itself (``<p, log p/q> =
KL(P||Q)`` as ``sum p = 1``), so no further collective is needed:

* ``KL(P||Q)``: ``d/ds = (q - p) / T``; ``d/dt = p (g - <p, g>) / T``, ``g = log p/q``;
* ``KL(Q||P)``: ``d/ds = q (g - <q, g>) / T``, ``g = log q/p``; ``d/dt = (p - q) / T``;
* ``JSD_beta``: ``d/ds = q (g - <q, g>) / T``, ``g = (1 - beta) log(q/m)``, ``<q, g> = (1 - beta) KL(Q||M)``;
  ``d/dt = p (h - <p, h>) / T``, ``h = beta log(p/m)`` (the mixture's own derivative cancels);
* ``CE(softmax(s), y)`` at ``T = 1``: ``d/ds = softmax(s) - onehot(y)`` (the one-hot on the owning rank only).

:func:`vocab_parallel_linear_kl` forms the student's logits ``hidden @ weight_shard.T + bias_shard`` locally,
chunk by chunk, and applies the chain rule: ``dW_r = G_r^T h`` and ``db_r = sum_rows G_r`` are local, while
``dh = sum_r G_r W_r`` is all-reduced (SUM) in backward, as for the input of Megatron's
``ColumnParallelLinear`` (``copy_to_tensor_model_parallel_region``).

Edge semantics (as :mod:`kldiv.losses.functional`):

====================================  ==================================================================
``-inf`` logit                         probability exactly 0 (also a whole shard of ``-inf``)
``p_v = 0`` (forward) / ``q_v = 0``    term 0, gradient term 0
``q_v = 0 < p_v`` (forward)            row value +inf, row gradient 0 (reverse: ``p_v = 0 < q_v``); the
                                       JSD is always finite; distillation keeps the row's CE gradient
masked row (``mask`` False or          value 0, gradient 0; its logits (its hidden state, for the linear
``labels == ignore_index``)            form) may hold anything (NaN, -inf)
every row masked                       0 with a zero gradient, never NaN
NaN / +inf in a valid row, a valid     ``ValueError`` on every rank (the check travels with the MAX
row ``-inf`` on every rank, a label    all-reduce, the label check follows the SUM that gives ``V``, so
outside ``[0, V)``                     no rank is left waiting)
====================================  ==================================================================

Every rank must pass the same batch shape, ``mask``, ``labels`` and options; the result (value or per-token
values) is the same on every rank. ``reduction="mean"`` divides by the global vocabulary size ``V``. With
``group=None`` and ``torch.distributed`` not initialized the world size is 1 and these are ordinary (unsharded)
losses. Student and teacher must be sharded alike (same ``V_r``); pad a smaller vocabulary with ``-inf`` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from kldiv._numerics import INF, kl_terms_from_log_ratio
from kldiv._validate import check_scalar
from kldiv.discrete import _check_beta, _log_mixture, _logit_difference
from kldiv.losses.options import Divergence, Reduction, check_choice, check_logits_tensor, compute_dtype, valid_rows
from kldiv.losses.rows import row_scale, rows_per_chunk, scale_precomputed

Direction = Divergence
"""``"forward"`` KL(P||Q), ``"reverse"`` KL(Q||P), ``"symmetric"`` (``weight``), ``"jsd"`` (``beta``)."""

ScalarReduction = Literal["batchmean", "sum", "mean"]

DEFAULT_LINEAR_CHUNK_ELEMENTS = 1 << 22
"""Default chunk of :func:`vocab_parallel_linear_kl`: this many logits (rows x largest ``V_r``) per chunk."""

DEFAULT_CHUNK_ELEMENTS = 1 << 20
"""Default chunk of the logits losses: this many logits (rows x largest ``V_r``) per chunk (4 MB per float32
intermediate; three all-reduces of O(chunk rows) per chunk)."""


def _world_size(group: dist.ProcessGroup | None) -> int:
    """Size of ``group``; 1 when ``torch.distributed`` is not initialized and no group is given."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise RuntimeError("group was given but torch.distributed is not initialized (init_process_group)")
        return 1
    return int(dist.get_world_size(group))


def _all_reduce(x: Tensor, op: Any, group: dist.ProcessGroup | None, world: int) -> Tensor:
    if world > 1:
        dist.all_reduce(x, op=op, group=group)
    return x


def _kl_terms(log_a: Tensor, log_b: Tensor, ratio_ab: Tensor) -> Tensor:
    """Terms ``a log(a/b) - a + b`` (>= 0) of ``KL(A||B)`` per entry: ``b`` where ``a = 0``, +inf where ``b = 0 < a``.

    ``ratio_ab`` is ``log a - log b`` where both are finite (any value elsewhere).
    """
    a_zero = log_a == -INF
    b_zero = log_b == -INF
    both = ~a_zero & ~b_zero
    a = torch.exp(torch.where(both, log_a, 0.0))
    b = torch.exp(torch.where(both, log_b, 0.0))
    terms = kl_terms_from_log_ratio(torch.where(both, ratio_ab, 0.0), a, b)
    return torch.where(both, terms, torch.where(a_zero, torch.exp(log_b), INF))


def _centered(log_a: Tensor, log_b: Tensor, ratio_ab: Tensor, inner: Tensor) -> Tensor:
    """``a (log(a/b) - inner)`` per entry, 0 where ``a = 0``: the gradient of ``KL(A||B)`` w.r.t. A's logits when
    ``inner`` (N,) is the row's global ``<a, log a/b> = KL(A||B)`` (finite; rows of value +inf are zeroed later)."""
    g = torch.where((log_a > -INF) & (log_b > -INF), ratio_ab, 0.0)
    return torch.where(log_a > -INF, torch.exp(log_a) * (g - inner[:, None]), 0.0)


@dataclass(frozen=True)
class _Spec:
    """The per-row loss ``kl_weight * divergence + ce_weight * CE(softmax(s), label)`` (validated options).

    ``coef`` is the forward weight ``w`` of ``"symmetric"`` and ``beta`` of ``"jsd"``.
    """

    divergence: Divergence
    temperature: float
    coef: float = 0.0
    normalized: bool = False
    kl_weight: float = 1.0
    ce_weight: float = 0.0

    def components(self) -> tuple[tuple[str, float], ...]:
        """The KL components ``(name, weight)`` whose weighted sum is the divergence; ``"pq"`` is KL(P||Q), ``"qp"``
        KL(Q||P), ``"pm"`` / ``"qm"`` KL(P||M) / KL(Q||M). Zero-weight components are left out (no ``0 * inf``)."""
        d, c = self.divergence, self.coef
        if d == "forward" or (d == "jsd" and c == 0.0):  # beta = 0: the continuous limit KL(P||Q)
            return (("pq", 1.0),)
        if d == "reverse" or (d == "jsd" and c == 1.0):  # beta = 1: KL(Q||P)
            return (("qp", 1.0),)
        if d == "symmetric":
            return tuple((name, w) for name, w in (("pq", c), ("qp", 1.0 - c)) if w > 0.0)
        k = 1.0 / (c * (1.0 - c)) if self.normalized else 1.0
        return (("pm", c * k), ("qm", (1.0 - c) * k))


def _sharded_rows(
    student: Tensor,
    teacher: Tensor,
    valid: Tensor,
    labels: Tensor | None,
    valid_all: Tensor,
    group: dist.ProcessGroup | None,
    world: int,
    spec: _Spec,
    reduction: str,
    want_t: bool,
    row0: int = 0,
) -> tuple[Tensor, Tensor, Tensor | None, float]:
    """Per-row values (N,) of flat vocab-sharded rows and the gradients of the reduced loss w.r.t. this rank's shards.

    ``student``, ``teacher`` (N, V_r); ``valid`` (N,) and ``labels`` (N,) global ids (only if ``spec.ce_weight``)
    are the same on every rank. ``valid_all`` is the whole batch's ``valid`` (this call may be a chunk of it), for
    the reduction's scale, which is returned too: the reduced loss is ``values.sum() * scale``. Values are 0 at
    masked rows; gradients are in the input dtypes (``None`` for the teacher unless ``want_t``). ``row0`` is the
    chunk's first row in the batch (for error messages).
    """
    n, v_local = student.shape
    cdtype = compute_dtype(student.dtype, teacher.dtype)
    temperature = spec.temperature
    with_ce = spec.ce_weight != 0.0
    untempered_ce = with_ce and temperature != 1.0  # the CE needs its own normalizer at T = 1
    ok = valid[:, None]
    s = torch.where(ok, student.to(cdtype), 0.0)
    t = torch.where(ok, teacher.to(cdtype), 0.0)
    inv_t = 1.0 / temperature
    a, b = (s, t) if temperature == 1.0 else (s * inv_t, t * inv_t)

    # 1. global row maxima, with a flag for NaN / +inf (also overflow at T) so that every rank raises together
    bad = (torch.isnan(a) | (a == INF)).any(-1) | (torch.isnan(b) | (b == INF)).any(-1)
    maxima = [a.amax(-1), b.amax(-1), bad.to(cdtype)] + ([s.amax(-1)] if untempered_ce else [])
    stats = torch.stack(maxima)
    stats = torch.where(torch.isnan(stats), INF, stats)
    _all_reduce(stats, dist.ReduceOp.MAX, group, world)
    if bool((stats[2] > 0).any()):
        raise ValueError(
            "student_shard or teacher_shard holds NaN or +inf in a valid row on some rank (or overflows at "
            f"temperature={temperature:g}); mask those rows out or fix the logits"
        )
    m_a, m_b = stats[0], stats[1]
    dead = (m_a == -INF) | (m_b == -INF)
    if bool(dead.any()):
        row = int(dead.nonzero()[0, 0]) + row0
        side = "student_shard" if bool(m_a[row - row0] == -INF) else "teacher_shard"
        raise ValueError(f"{side} is -inf on every rank at valid row {row} (no probability mass); mask that row out")

    # 2. global normalizers; the shard sizes travel in the same all-reduce (slot r holds V_r)
    rank = int(dist.get_rank(group)) if world > 1 else 0
    sizes = torch.zeros(world, dtype=cdtype, device=student.device)
    sizes[rank] = float(v_local)
    parts = [torch.exp(a - m_a[:, None]).sum(-1), torch.exp(b - m_b[:, None]).sum(-1)]
    if untempered_ce:
        parts.append(torch.exp(s - stats[3][:, None]).sum(-1))
    sums = torch.cat([*parts, sizes])
    _all_reduce(sums, dist.ReduceOp.SUM, group, world)
    lse_a = m_a + torch.log(sums[:n])
    lse_b = m_b + torch.log(sums[n : 2 * n])
    lse_s = stats[3] + torch.log(sums[2 * n : 3 * n]) if untempered_ce else lse_a
    shard_sizes = [round(float(x)) for x in sums[len(parts) * n :]]
    vocab, offset = sum(shard_sizes), sum(shard_sizes[:rank])
    scale = row_scale(valid_all, reduction, vocab)
    target: tuple[Tensor, Tensor] | None = None  # the CE's label: on this shard (N,), its local column (N, 1)
    if with_ce:
        assert labels is not None
        lab = torch.where(valid, labels, 0)
        out_of_range = (lab < 0) | (lab >= vocab)
        if bool(out_of_range.any()):
            bad_label = int(lab[out_of_range][0])
            raise ValueError(f"labels holds {bad_label}, outside [0, {vocab}) for a valid token (and not ignore_index)")
        on_shard = (lab >= offset) & (lab < offset + v_local)
        target = on_shard, torch.where(on_shard, lab - offset, 0)[:, None]
    log_q = a - lse_a[:, None]
    log_p = b - lse_b[:, None]
    ratio = _logit_difference(t, s, temperature) - (lse_b - lse_a)[:, None]  # log p - log q where finite
    log_m = _log_mixture(log_p, log_q, spec.coef) if spec.divergence == "jsd" and 0.0 < spec.coef < 1.0 else None

    def pair(name: str) -> tuple[Tensor, Tensor, Tensor]:
        """``(log x, log y, log x - log y)`` of the component ``KL(X||Y)``."""
        if name == "pq":
            return log_p, log_q, ratio
        if name == "qp":
            return log_q, log_p, -ratio
        assert log_m is not None
        log_x = log_p if name == "pm" else log_q
        return log_x, log_m, log_x - log_m

    # 3. the components' global sums of non-negative terms, and the CE's target logit (0 off its rank)
    components = spec.components()
    rows = [_kl_terms(*pair(name)).sum(-1) for name, _ in components]
    if target is not None:
        on_shard, column = target
        rows.append(torch.where(on_shard, s.gather(1, column)[:, 0], 0.0))
    reduced = torch.stack(rows)
    _all_reduce(reduced, dist.ReduceOp.SUM, group, world)
    kl_value = sum((w * reduced[i] for i, (_, w) in enumerate(components)), torch.zeros_like(lse_a))
    values = spec.kl_weight * kl_value if spec.kl_weight != 0.0 else torch.zeros_like(kl_value)
    if target is not None:
        values = values + spec.ce_weight * (lse_s - reduced[-1])
    values = torch.where(valid, values, 0.0)

    # local gradients, scaled by d(reduced)/d(row value); the divergence's gradient is 0 on rows where it is +inf
    row_w = ((valid & (kl_value < INF)).to(cdtype) * (spec.kl_weight * scale * inv_t))[:, None]
    gs = torch.zeros_like(s)
    gt = torch.zeros_like(t) if want_t else None
    names = {name for name, _ in components}
    q_minus_p = torch.exp(log_q) - torch.exp(log_p) if names & {"pq", "qp"} else torch.zeros_like(s)
    for i, (name, w) in enumerate(components):
        inner = torch.where(reduced[i] < INF, reduced[i], 0.0)
        if name in ("pq", "pm") and gt is not None:  # KL(P||Y) w.r.t. the teacher: p (log(p/y) - <p, log(p/y)>)
            gt = gt + w * _centered(*pair(name), inner)
        if name in ("qp", "qm"):  # KL(Q||Y) w.r.t. the student: q (log(q/y) - <q, log(q/y)>)
            gs = gs + w * _centered(*pair(name), inner)
        if name == "pq":  # KL(P||Q) w.r.t. the student
            gs = gs + w * q_minus_p
        if name == "qp" and gt is not None:  # KL(Q||P) w.r.t. the teacher
            gt = gt - w * q_minus_p
    gs = gs * row_w
    if target is not None:  # CE at T = 1: softmax(s) - onehot(y), the one-hot on the rank owning y
        on_shard, column = target
        log_s1 = s - lse_s[:, None] if untempered_ce else log_q
        g_ce = torch.exp(log_s1).scatter_add(1, column, torch.where(on_shard, -1.0, 0.0).to(cdtype)[:, None])
        gs = gs + g_ce * (valid.to(cdtype) * (spec.ce_weight * scale))[:, None]
    grad_t = None if gt is None else (gt * row_w).to(teacher.dtype)
    return values, gs.to(student.dtype), grad_t, scale


class VocabParallelDivergence(torch.autograd.Function):
    """Per-token loss of vocab-sharded flat rows, reduced; each rank's gradient for its own shard, precomputed.

    Inputs: ``student``, ``teacher`` (N, V_r) logits of this rank, ``valid`` (N,) bool and ``labels`` (N,) global
    ids or None (the same on every rank), the group, its size and the :class:`_Spec`. Output: a 0-d tensor, or
    (N,) for ``reduction="none"``; the same on every rank. No collective in backward.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        student: Tensor,
        teacher: Tensor,
        valid: Tensor,
        labels: Tensor | None,
        group: dist.ProcessGroup | None,
        world: int,
        spec: _Spec,
        reduction: str,
        chunk_rows: int,
    ) -> Tensor:
        n = student.shape[0]
        want_t = teacher.requires_grad
        values = torch.zeros(n, dtype=compute_dtype(student.dtype, teacher.dtype), device=student.device)
        grad_s = torch.empty_like(student)
        grad_t = torch.empty_like(teacher) if want_t else None
        scale = 1.0
        for i0 in range(0, max(n, 1), chunk_rows):  # one (empty) chunk for N = 0: every rank joins the collectives
            i1 = min(i0 + chunk_rows, n)
            lab = None if labels is None else labels[i0:i1]
            values[i0:i1], grad_s[i0:i1], gt, scale = _sharded_rows(
                student[i0:i1], teacher[i0:i1], valid[i0:i1], lab, valid, group, world, spec, reduction, want_t, i0
            )
            if grad_t is not None:
                assert gt is not None
                grad_t[i0:i1] = gt
        ctx.save_for_backward(grad_s, grad_t)  # type: ignore[arg-type]
        ctx.none = reduction == "none"  # type: ignore[attr-defined]
        if reduction == "none":
            return values
        return values.sum() * scale

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        grad_s, grad_t = ctx.saved_tensors
        nones: tuple[None, ...] = (None,) * 7
        return (
            scale_precomputed(grad_s, grad_output, ctx.none),
            scale_precomputed(grad_t, grad_output, ctx.none),
            *nones,
        )


class VocabParallelLinearDivergence(torch.autograd.Function):
    """The loss of :class:`VocabParallelDivergence` with the student's logits ``hidden @ weight.T + bias`` formed
    per row chunk on this rank; gradients for ``hidden`` (all-reduced in backward), ``weight``, ``bias`` and the
    teacher's logits, precomputed. Inputs: ``hidden`` (N, H), ``weight`` (V_r, H), ``bias`` (V_r,) or None,
    ``teacher`` (N, V_r), ``valid`` (N,). Output: a 0-d tensor."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        teacher: Tensor,
        valid: Tensor,
        group: dist.ProcessGroup | None,
        world: int,
        spec: _Spec,
        reduction: str,
        chunk_rows: int,
    ) -> Tensor:
        need_h, need_w, need_b, need_t = ctx.needs_input_grad[:4]  # type: ignore[attr-defined]
        n = hidden.shape[0]
        if not bool(valid.all()):
            hidden = torch.where(valid[:, None], hidden, 0.0)  # a masked row's hidden state may hold NaN
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b and bias is not None else None
        grad_t = torch.empty_like(teacher) if need_t else None
        values = []
        scale = 1.0
        for i0 in range(0, max(n, 1), chunk_rows):  # one (empty) chunk for N = 0: every rank joins the collectives
            i1 = min(i0 + chunk_rows, n)
            h = hidden[i0:i1]
            logits = h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)
            vals, g, gt, scale = _sharded_rows(
                logits, teacher[i0:i1], valid[i0:i1], None, valid, group, world, spec, reduction, need_t, i0
            )
            values.append(vals)
            if grad_h is not None:
                torch.mm(g, weight, out=grad_h[i0:i1])  # this rank's part of dL/dh, summed over ranks in backward
            if grad_w is not None:
                grad_w.addmm_(g.T, h)
            if grad_b is not None:
                grad_b.add_(g.sum(0))
            if grad_t is not None:
                assert gt is not None
                grad_t[i0:i1] = gt
        ctx.save_for_backward(grad_h, grad_w, grad_b, grad_t)  # type: ignore[arg-type]
        ctx.group = group  # type: ignore[attr-defined]
        ctx.world = world  # type: ignore[attr-defined]
        return torch.cat(values).sum() * scale

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        grad_h, grad_w, grad_b, grad_t = ctx.saved_tensors
        gh = scale_precomputed(grad_h, grad_output, False)
        if gh is not None:
            _all_reduce(gh, dist.ReduceOp.SUM, ctx.group, ctx.world)  # dL/dh = sum_r G_r W_r (Megatron's copy region)
        nones: tuple[None, ...] = (None,) * 6
        return (
            gh,
            scale_precomputed(grad_w, grad_output, False),
            scale_precomputed(grad_b, grad_output, False),
            scale_precomputed(grad_t, grad_output, False),
            *nones,
        )


# ----------------------------------------------------------------------------------------------------------
# Option checks
# ----------------------------------------------------------------------------------------------------------


def _divergence_spec(
    direction: Direction, temperature: float, weight: float | None, beta: float | None, normalized: bool
) -> _Spec:
    """Validate the divergence options as :func:`kldiv.losses.symmetric_kl` / :func:`kldiv.losses.generalized_jsd`."""
    check_choice("direction", direction, get_args(Direction))
    t_value = check_scalar("temperature", temperature, low=0.0, low_open=True)
    if not isinstance(normalized, bool):
        raise TypeError(f"normalized must be a bool, got {type(normalized).__name__}")
    if weight is not None and direction != "symmetric":
        raise ValueError(f"weight applies to direction='symmetric' only, got direction={direction!r}")
    if (beta is not None or normalized) and direction != "jsd":
        raise ValueError(f"beta and normalized apply to direction='jsd' only, got direction={direction!r}")
    coef = 0.0
    if direction == "symmetric":
        coef = check_scalar("weight", 0.5 if weight is None else weight, low=0.0, high=1.0)
    elif direction == "jsd":
        coef = _check_beta(0.5 if beta is None else beta, normalized)
    return _Spec(direction, t_value, coef, normalized)


def _agreed_rows(rows: int, group: dist.ProcessGroup | None, world: int, device: torch.device) -> int:
    """The fewest rows per chunk over the ranks (shards may differ in ``V_r``): every rank must run the same
    chunks, as each chunk's collectives pair up across ranks."""
    agreed = torch.tensor([float(rows)], dtype=torch.float64, device=device)
    return int(_all_reduce(agreed, dist.ReduceOp.MIN, group, world))


def _check_shards(student_shard: Tensor, teacher_shard: Tensor, student_name: str = "student_shard") -> None:
    if teacher_shard.shape != student_shard.shape:
        raise ValueError(
            f"teacher_shard has shape {tuple(teacher_shard.shape)} but {student_name} has "
            f"{tuple(student_shard.shape)}; both must be the same (..., V_r) columns of this rank (pad the smaller "
            "vocabulary with -inf before sharding)"
        )


def _logits_loss(
    student_shard: Tensor,
    teacher_shard: Tensor,
    spec: _Spec,
    group: dist.ProcessGroup | None,
    labels: Tensor | None,
    ignore_index: int,
    mask: Tensor | None,
    reduction: str,
    chunk_size: int | None,
) -> Tensor:
    check_choice("reduction", reduction, get_args(Reduction))
    student = check_logits_tensor("student_shard", student_shard)
    teacher = check_logits_tensor("teacher_shard", teacher_shard)
    _check_shards(student, teacher)
    batch_shape = student.shape[:-1]
    v_local = student.shape[-1]
    n = batch_shape.numel()
    valid = valid_rows(batch_shape, labels, ignore_index, mask, student.device)
    flat_labels = None if labels is None or spec.ce_weight == 0.0 else labels.reshape(n).to(torch.int64)
    world = _world_size(group)
    out: Tensor = VocabParallelDivergence.apply(  # type: ignore[no-untyped-call]
        student.reshape(n, v_local),
        teacher.reshape(n, v_local),
        valid,
        flat_labels,
        group,
        world,
        spec,
        reduction,
        _agreed_rows(rows_per_chunk(chunk_size, v_local, DEFAULT_CHUNK_ELEMENTS), group, world, student.device),
    )
    return out.reshape(batch_shape) if reduction == "none" else out


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


def vocab_parallel_kl(
    student_shard: Tensor,
    teacher_shard: Tensor,
    *,
    group: dist.ProcessGroup | None = None,
    temperature: float = 1.0,
    direction: Direction = "forward",
    weight: float | None = None,
    beta: float | None = None,
    normalized: bool = False,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    mask: Tensor | None = None,
    reduction: Reduction = "batchmean",
    chunk_size: int | None = None,
) -> Tensor:
    """A divergence between student ``Q = softmax(s / T)`` and teacher ``P = softmax(t / T)`` whose logits are
    sharded along V.

    ``direction``: ``"forward"`` ``KL(P||Q) = sum_v p_v log(p_v / q_v)``; ``"reverse"`` ``KL(Q||P)``;
    ``"symmetric"`` ``weight KL(P||Q) + (1 - weight) KL(Q||P)`` (``weight`` in [0, 1], default 0.5, as
    :func:`kldiv.losses.symmetric_kl`); ``"jsd"`` ``beta KL(P||M) + (1 - beta) KL(Q||M)``, ``M = beta P +
    (1 - beta) Q`` (``beta`` default 0.5; ``normalized=True`` divides by ``beta (1 - beta)`` and allows ``beta``
    in {0, 1}, the limits KL(P||Q) and KL(Q||P), as :func:`kldiv.losses.generalized_jsd`). Each rank of
    ``group`` passes its contiguous columns ``(..., V_r)`` of both logits (rank order = column order); the value
    equals the unsharded loss of the concatenated logits, and backward gives each rank the gradient of its own
    shard (and of the teacher's, if it requires grad). Three all-reduces of ``O(N)`` floats in forward, none in
    backward; float32 accumulation (float64 for float64 inputs). ``labels``/``ignore_index`` and ``mask`` (batch
    shape, the same on every rank) select the valid tokens, ``reduction`` in {"batchmean", "sum", "mean", "none"}
    as in :mod:`kldiv.losses.functional`. Edge semantics and gradients: see :mod:`kldiv.losses.parallel`.
    Memory: ``chunk x V_r`` intermediates; ``chunk_size`` defaults to ``2**20 // max_r V_r`` rows, agreed on across
    ranks (each chunk runs the three collectives).
    Reference: Shoeybi et al. (2019), "Megatron-LM", vocab-parallel cross-entropy.
    """
    spec = _divergence_spec(direction, temperature, weight, beta, normalized)
    return _logits_loss(student_shard, teacher_shard, spec, group, labels, ignore_index, mask, reduction, chunk_size)


def vocab_parallel_distillation_loss(
    student_shard: Tensor,
    teacher_shard: Tensor,
    labels: Tensor,
    *,
    group: dist.ProcessGroup | None = None,
    alpha: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    mask: Tensor | None = None,
    reduction: Reduction = "batchmean",
    chunk_size: int | None = None,
) -> Tensor:
    """Hinton distillation loss ``alpha T^2 KL(P_T||Q_T) + (1 - alpha) CE(Q_1, labels)`` per token, with the
    logits sharded along V; equals :func:`kldiv.losses.distillation_loss` of the concatenated logits.

    ``labels`` are global token ids in ``[0, V)`` (the batch shape, the same on every rank); tokens with
    ``labels == ignore_index`` (or ``mask`` False) are left out of both terms. The cross-entropy is Megatron's
    vocab-parallel cross-entropy: ``CE = log sum_v exp(s_v) - s_y`` with the global normalizer at ``T = 1`` and
    the target logit ``s_y`` all-reduced (SUM) from the rank that owns column ``y``; its gradient
    ``softmax(s) - onehot(y)`` is local. With ``alpha = 0`` the loss is the cross-entropy alone (no ``0 * inf``
    from an infinite KL). ``chunk_size`` as in :func:`vocab_parallel_kl`. Reference: Hinton, Vinyals & Dean
    (2015); Shoeybi et al. (2019), "Megatron-LM".
    """
    a = check_scalar("alpha", alpha, low=0.0, high=1.0)
    t_value = check_scalar("temperature", temperature, low=0.0, low_open=True)
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of token ids, got {type(labels).__name__}")
    spec = _Spec("forward", t_value, kl_weight=a * t_value**2, ce_weight=1.0 - a)
    return _logits_loss(student_shard, teacher_shard, spec, group, labels, ignore_index, mask, reduction, chunk_size)


def vocab_parallel_linear_kl(
    hidden: Tensor,
    weight_shard: Tensor,
    teacher_shard: Tensor,
    *,
    bias_shard: Tensor | None = None,
    group: dist.ProcessGroup | None = None,
    temperature: float = 1.0,
    direction: Direction = "forward",
    weight: float | None = None,
    beta: float | None = None,
    normalized: bool = False,
    mask: Tensor | None = None,
    reduction: ScalarReduction = "batchmean",
    chunk_size: int | None = None,
) -> Tensor:
    """:func:`vocab_parallel_kl` with the student's logits ``hidden @ weight_shard.T + bias_shard`` formed on each
    rank from its rows of a vocab-parallel head, ``chunk_size`` rows at a time.

    ``hidden`` (..., H) is the same on every rank (the replicated input of the head); ``weight_shard`` (V_r, H)
    holds the head's rows ``[o_r, o_r + V_r)``, ``bias_shard`` (V_r,) its bias entries, ``teacher_shard`` (..., V_r)
    the teacher's logits of the same columns. ``direction``, ``weight`` (the forward weight of
    ``"symmetric"``, not the head), ``beta``, ``normalized``, ``temperature`` and ``mask`` as in
    :func:`vocab_parallel_kl`; ``reduction`` in {"batchmean", "sum", "mean"}. Gradients: ``weight_shard``,
    ``bias_shard`` and ``teacher_shard`` (if it requires grad) get their local gradient; ``hidden`` gets
    ``sum_r G_r W_r``, all-reduced (SUM) over ``group`` in backward, like the input gradient of Megatron's
    ``ColumnParallelLinear`` — so do not also route ``hidden`` through a region that all-reduces its gradient.
    The value equals :func:`kldiv.losses.fused_linear_kl` (and the unsharded loss of the materialized logits).
    Memory: ``chunk x V_r`` logits at a time; ``chunk_size`` defaults to ``2**22 // max_r V_r`` rows and is
    agreed on across ranks (MIN all-reduce), as every chunk runs the three collectives.
    Reference: Shoeybi et al. (2019), "Megatron-LM", column-parallel output layer and vocab-parallel
    cross-entropy.
    """
    spec = _divergence_spec(direction, temperature, weight, beta, normalized)
    check_choice("reduction", reduction, get_args(ScalarReduction))
    for name, x in (("hidden", hidden), ("weight_shard", weight_shard), ("teacher_shard", teacher_shard)):
        check_logits_tensor(name, x)
    if weight_shard.dim() != 2 or weight_shard.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight_shard must be (V_r, H) with H = hidden.shape[-1] = {hidden.shape[-1]}, got "
            f"{tuple(weight_shard.shape)}"
        )
    if hidden.dtype != weight_shard.dtype:
        raise TypeError(f"hidden has dtype {hidden.dtype} but weight_shard has {weight_shard.dtype}; use one dtype")
    if bias_shard is not None:
        check_logits_tensor("bias_shard", bias_shard)
        if bias_shard.shape != (weight_shard.shape[0],):
            raise ValueError(f"bias_shard must have shape ({weight_shard.shape[0]},), got {tuple(bias_shard.shape)}")
        if bias_shard.dtype != weight_shard.dtype:
            raise TypeError(f"bias_shard has dtype {bias_shard.dtype} but weight_shard has {weight_shard.dtype}")
    batch_shape = hidden.shape[:-1]
    v_local = weight_shard.shape[0]
    if teacher_shard.shape != (*batch_shape, v_local):
        raise ValueError(
            f"teacher_shard has shape {tuple(teacher_shard.shape)}; expected {(*batch_shape, v_local)}: the batch "
            "shape of hidden and this rank's V_r columns (the rows of weight_shard)"
        )
    rows = rows_per_chunk(chunk_size, v_local, DEFAULT_LINEAR_CHUNK_ELEMENTS)
    n = batch_shape.numel()
    valid = valid_rows(batch_shape, None, -100, mask, hidden.device)
    world = _world_size(group)
    out: Tensor = VocabParallelLinearDivergence.apply(  # type: ignore[no-untyped-call]
        hidden.reshape(n, hidden.shape[-1]),
        weight_shard,
        bias_shard,
        teacher_shard.reshape(n, v_local),
        valid,
        group,
        world,
        spec,
        reduction,
        _agreed_rows(rows, group, world, hidden.device),
    )
    return out
