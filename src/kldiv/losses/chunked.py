"""Fused, row-chunked divergence losses: value and gradient in one pass, O(chunk x V) intermediates.

:func:`chunked_divergence` is a torch operator (``kldiv::chunked_divergence``, with a fake implementation and
a registered gradient, so ``torch.compile`` takes it whole, without graph breaks) whose forward walks the rows
(tokens) in chunks;
for each chunk it upcasts to float32 (float64 stays float64), computes the per-token values with the kernels of
the discrete core (:func:`kldiv.losses.rows.divergence_rows`, so the values are those of the naive path)
and the gradients in closed form, and writes the gradients into preallocated buffers in the input dtype (one
rounding, at the end). Backward only scales the saved gradients by ``grad_output``.

Gradients per token, with ``q = softmax(s / T)`` (student), ``p = softmax(t / T)`` (teacher), ``m = beta p +
(1 - beta) q``, and ``<x, g> = sum_v x_v g_v``:

* ``KL(P||Q)``: ``d/ds = (q - p) / T``; ``d/dt = p (g - <p, g>) / T`` with ``g = log p - log q``.
* ``KL(Q||P)``: ``d/ds = q (g - <q, g>) / T`` with ``g = log q - log p``; ``d/dt = (p - q) / T``.
* ``JSD_beta``: ``d/ds = q (g - <q, g>) / T`` with ``g = (1 - beta) log(q / m)``; ``d/dt = p (h - <p, h>) / T``
  with ``h = beta log(p / m)`` (the mixture's own derivative cancels).
* ``CE(softmax(s), y)`` (distillation's hard term, at ``T = 1``): ``d/ds = softmax(s) - onehot(y)``.

Forward, reverse and symmetric KL with equal vocabularies and a teacher that needs no gradient (distillation,
RLHF) take a fast kernel: on CPU float32 the C kernel :mod:`kldiv._kernels` (one read of each row, value,
gradient and the hard-label term fused); elsewhere (CUDA, float64, bf16/fp16, or without the compiled
extension, or with ``KLDIV_NATIVE=0``) :func:`_kl_rows`, the same formulas in torch ops: two exponentials per
entry, in place, over chunks of 2^18 logits (1 MB, cache-resident). On the CPU the chunks (of either kernel) are
tasks that :func:`in_parallel` hands out to ``torch.get_num_threads()`` threads as they finish.
Small values are recomputed cancellation-free: by the C kernel itself in float64 (below 0.1), on the torch
path by the discrete core (below ``_REFINE_BELOW``). Rows with a non-finite logit (``-inf``) take the general
path. Logits are validated (one pass) only once a row is not finite, so valid input costs no
separate validation pass.

Entries with zero probability get a zero gradient term; rows whose value is +inf get a zero gradient (the
value, not the gradient, reports the impossibility). Ignored rows: value 0, gradient 0. Double backward is
not supported. On meta tensors the operator gives the shapes of its outputs.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from kldiv._numerics import INF, log_softmax
from kldiv.discrete import _logit_difference
from kldiv.losses.options import (
    Divergence,
    check_labels,
    check_rows,
    compute_dtype,
    warn_if_probabilities,
    warn_if_vocabularies_make_it_infinite,
)
from kldiv.losses.rows import (
    divergence_grads,
    divergence_rows,
    logit_ratio,
    pad_vocab,
    row_scale,
    rows_per_chunk,
    scale_precomputed,
    weighted,
)

kernel: Callable[..., None] | None
"""The C kernel ``kldiv._kernels.kl_rows``, or None when the package was built without a C compiler (then the
torch path serves every case)."""
try:
    from kldiv._kernels import kl_rows as kernel
except ImportError:
    kernel = None

NATIVE_TASK_ELEMENTS = 1 << 20
"""Logits per call of the C kernel (one task of :func:`in_parallel`): small enough that threads share the rows
out evenly when a core is busy, large enough that a call costs far more than its Python overhead."""


_REFINE_BELOW = 3e-3  # torch path, as in the discrete core: smaller per-token values are recomputed cancellation-free


_PAD = 80
"""Elements between the work arrays of :func:`_kl_rows`. Without it, arrays of whole chunks lie a multiple of
4 KB apart and the CPU's 4K-aliasing of loads and stores made the kernel up to 2x slower, depending on where the
allocator happened to put them."""


def workspace(rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The flat work buffer of :func:`_kl_rows` for chunks of up to ``rows`` rows; allocated once per call."""
    return torch.empty(3 * (rows * vocab + _PAD), dtype=dtype, device=device)


def _kl_rows(w_f: float, s: Tensor, t: Tensor, inv_t: float, weight: float, out: Tensor, work: Tensor) -> Tensor:
    """Per-row ``w_f KL(P||Q) + (1 - w_f) KL(Q||P)`` of one chunk of logits; the weighted gradient w.r.t. ``s``
    is written to ``out``.

    With ``a = s / T - max``, ``b = t / T - max`` (row-centred), ``Z_a = sum exp(a)``, ``q = exp(a) / Z_a``,
    ``p = exp(b) / Z_b``, ``d = b - a`` and ``c = log Z_b - log Z_a`` (so ``log p - log q = d - c``):

    * KL(P||Q) ``= <p, d> - c``, gradient ``q - p``;
    * KL(Q||P) ``= c - <q, d>``, gradient ``q (c - d - KL(Q||P))``.

    ``work`` is the buffer of :func:`workspace` (its dtype is the compute dtype). ``weight`` scales the gradient
    and includes the ``1/T`` of the chain rule. Two exponentials per entry (the
    fewest: one per side), ``1 / Z`` folded into per-row factors, and in-place passes over a chunk small enough
    to stay in cache; |c| <= log V, so the rounding error is that of ``log p - log q``. Non-finite inputs give a
    non-finite value.
    """
    cdtype = work.dtype  # float32, or float64 when either input is
    n = s.numel()
    a, b, d = (work[i * (n + _PAD) : i * (n + _PAD) + n].view(s.shape) for i in range(3))
    torch.mul(s, inv_t, out=a) if inv_t != 1.0 else a.copy_(s)
    torch.mul(t, inv_t, out=b) if inv_t != 1.0 else b.copy_(t)
    a.sub_(a.amax(-1, keepdim=True))
    b.sub_(b.amax(-1, keepdim=True))
    torch.sub(b, a, out=d)
    e_a, e_b = a.exp_(), b.exp_()
    z_a, z_b = e_a.sum(-1, keepdim=True), e_b.sum(-1, keepdim=True)
    c = torch.log(z_b / z_a)
    val = torch.zeros_like(c[:, 0])
    if w_f != 0.0:  # <p, d> (in place when d is not needed afterwards)
        ip_b = d.mul_(e_b).sum(-1) if w_f == 1.0 else torch.linalg.vecdot(e_b, d)
        val.add_(ip_b / z_b[:, 0] - c[:, 0], alpha=w_f)
    reverse_part = None
    if w_f != 1.0:
        de = d.mul_(e_a)
        val_r = c[:, 0] - de.sum(-1) / z_a[:, 0]
        val.add_(val_r, alpha=1.0 - w_f)
        reverse_part = de.neg_().addcmul_(e_a, c - val_r[:, None])  # e_a (c - d - KL(Q||P))
    # gradient: w_f (q - p) + (1 - w_f) q (c - d - KL(Q||P)), times weight; q and p scaled alike (exact 0 at q = p)
    g = out if out.dtype == cdtype else torch.empty_like(e_a)
    if w_f != 0.0:
        torch.mul(e_a, (w_f * weight) / z_a, out=g).addcmul_(e_b, (-w_f * weight) / z_b)
        if reverse_part is not None:
            g.addcmul_(reverse_part, ((1.0 - w_f) * weight) / z_a)
    else:
        assert reverse_part is not None
        torch.mul(reverse_part, weight / z_a, out=g)
    if g.data_ptr() != out.data_ptr():
        out.copy_(g)
    return val


def _native_ok(*tensors: Tensor) -> bool:
    """Whether the C kernel can take these CPU float32 tensors (rows with unit stride) and is enabled."""
    return (
        kernel is not None
        and os.environ.get("KLDIV_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")
        and all(x.device.type == "cpu" and x.dtype == torch.float32 and x.stride(-1) == 1 for x in tensors)
    )


def _native_rows(
    s: Tensor,
    t: Tensor,
    g: Tensor,
    ok: Tensor | None,
    labels: Tensor | None,
    w_f: float,
    inv_t: float,
    weight: float,
    ce_coef: float,
) -> tuple[Tensor, Tensor | None]:
    """Per-row KL values (float64, NaN on rows with a non-finite logit) and hard-label CE values (or None) of
    float32 rows by the C kernel :mod:`kldiv._kernels`, its gradient written to ``g`` (the kernel releases the
    GIL: :func:`in_parallel` runs several calls at once)."""
    assert kernel is not None
    n, vocab = s.shape
    kl = torch.empty(n, dtype=torch.float64)
    ce = None if labels is None else torch.empty(n, dtype=torch.float64)
    ok = None if ok is None else ok.contiguous()
    labels = None if labels is None else labels.to(torch.int64).contiguous()
    kernel(
        s.data_ptr(),
        t.data_ptr(),
        g.data_ptr(),
        kl.data_ptr(),
        None if ce is None else ce.data_ptr(),
        None if ok is None else ok.data_ptr(),
        None if labels is None else labels.data_ptr(),
        n,
        vocab,
        s.stride(0),
        t.stride(0),
        g.stride(0),
        inv_t,
        w_f,
        weight,
        ce_coef,
    )
    return kl, ce


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """The worker threads of :func:`in_parallel`, one per core, each running torch ops on one thread."""
    size = os.cpu_count() or 1
    keep = torch.get_num_threads()
    started = threading.Barrier(size)
    pool = ThreadPoolExecutor(size, thread_name_prefix="kldiv-rows", initializer=torch.set_num_threads, initargs=(1,))
    for future in [pool.submit(started.wait) for _ in range(size)]:  # every worker started (and single-threaded)
        future.result()
    torch.set_num_threads(keep)  # what threads started later inherit, which the workers' setting changed
    return pool


if hasattr(os, "register_at_fork"):  # a forked child (a DataLoader worker) inherits the pool without its threads
    os.register_at_fork(after_in_child=_pool.cache_clear)


def in_parallel(task: Callable[[int, Any], None], count: int, setup: Callable[[], Any], device: torch.device) -> None:
    """``task(k, state)`` for ``k`` in ``range(count)`` on ``torch.get_num_threads()`` CPU threads that each take
    the next ``k`` as soon as they are done; ``state = setup()`` once per thread.

    Dynamic scheduling with no barrier but the last: when another process holds a core, the thread that shares
    it simply does fewer tasks. (A static split waits for the slower half at every call, and torch's own
    intra-op parallelism pays a barrier per op: thousands per loss on cache-sized chunks, each a scheduler time
    slice when a core is busy.) The workers run their torch ops single-threaded, without autograd. Elsewhere
    than on the CPU, or with one thread, the tasks run in order on the calling thread.
    """
    workers = min(torch.get_num_threads(), os.cpu_count() or 1, count) if device.type == "cpu" else 1
    if workers <= 1:
        state = setup()
        for k in range(count):
            task(k, state)
        return
    claim = itertools.count()  # next() of a count is atomic under the GIL

    def worker() -> None:
        with torch.no_grad():  # grad mode is per thread: a worker starts with it on
            state = setup()
            for k in iter(lambda: next(claim), None):
                if k >= count:
                    return
                task(k, state)

    for future in [_pool().submit(worker) for _ in range(workers)]:
        future.result()


def _kl_chunk_fast(
    divergence: Divergence,
    coef: float,
    student: Tensor,
    teacher: Tensor,
    ok: Tensor,
    every: bool,
    labels: Tensor | None,
    cdtype: torch.dtype,
    temperature: float,
    kl_weight: float,
    ce_weight: float,
    scale: float,
    grad_s: Tensor,
    work: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Per-row ``kl_weight * KL + ce_weight * CE`` (forward, reverse or symmetric KL) of one chunk of rows
    (``ok``: the valid ones; ``every``: all are), gradient written to ``grad_s``; also the mask of valid rows
    with a non-finite logit, whose value and gradient the caller recomputes on the general path.

    The C kernel (``work`` None) or :func:`_kl_rows` does the work; rows with a value below ``_REFINE_BELOW``
    are recomputed cancellation-free (by the C kernel itself, else by the discrete core's kernel, in chunks of
    the rows given); ignored rows get value and gradient 0.
    """
    w_f = {"forward": 1.0, "reverse": 0.0}.get(divergence, coef)
    weight = kl_weight * scale / temperature
    if work is None:
        val, ce = _native_rows(
            student,
            teacher,
            grad_s,
            None if every else ok,
            labels if ce_weight else None,
            w_f,
            1.0 / temperature,
            weight,
            ce_weight * scale,
        )
    else:
        if not every:  # ignored rows may hold anything: compute on zeros, then zero their value and gradient
            student = torch.where(ok[:, None], student, 0.0)
            teacher = torch.where(ok[:, None], teacher, 0.0)
        # with the hard-label term, a float16/bfloat16 gradient is summed in the compute dtype and rounded once
        summed = ce_weight and grad_s.dtype != cdtype
        g = torch.empty(grad_s.shape, dtype=cdtype, device=grad_s.device) if summed else grad_s
        val = _kl_rows(w_f, student, teacher, 1.0 / temperature, weight, g, work)
        ce = None
        if ce_weight:
            assert labels is not None
            lab = torch.where(ok, labels, 0)[:, None]
            log_s1 = torch.log_softmax(student.to(cdtype), -1)
            ce = -log_s1.gather(1, lab)[:, 0]
            g_ce = log_s1.exp_().scatter_add_(1, lab, torch.full_like(log_s1[:, :1], -1.0)).mul_(ce_weight * scale)
            g.add_(g_ce)
            if summed:
                grad_s.copy_(g)
    bad = ok & ~torch.isfinite(val)
    if work is not None:  # the torch path's small values, recomputed cancellation-free (the C kernel does it itself)
        need = ok & ~bad & (val < _REFINE_BELOW)
        if bool(need.any()):
            rows = need.nonzero()[:, 0]
            s_rows, t_rows = student[rows].to(cdtype), teacher[rows].to(cdtype)
            ratio = _logit_difference(t_rows, s_rows, temperature)
            log_q = torch.log_softmax(s_rows / temperature, -1)
            log_p = torch.log_softmax(t_rows / temperature, -1)
            val[rows] = divergence_rows(divergence, log_q, log_p, ratio, coef, False).to(val.dtype)
    total = weighted(kl_weight, torch.where(bad, 0.0, val))
    if ce is not None:
        total = total + ce_weight * torch.where(bad, 0.0, ce)
    if not every:
        grad_s[~ok] = 0.0
        total = torch.where(ok, total, 0.0)
    return total, bad


def fill_rows(
    student: Tensor,
    teacher: Tensor,
    valid: Tensor,
    labels: Tensor | None,
    *,
    divergence: Divergence,
    temperature: float,
    coef: float,
    normalized: bool,
    kl_weight: float,
    ce_weight: float,
    scale: float,
    chunk_rows: int,
    values: Tensor,
    grad_s: Tensor,
    grad_t: Tensor | None,
) -> None:
    """Write the per-row ``kl_weight * divergence + ce_weight * CE`` of flat rows into ``values`` (N,) and its
    gradients, times ``scale``, into ``grad_s`` (and ``grad_t`` unless None), ``chunk_rows`` rows at a time.

    The fast kernel takes forward/reverse/symmetric KL when the teacher needs no gradient: the C kernel
    :mod:`kldiv._kernels` for CPU float32 rows, else :func:`_kl_rows`. Other rows (other divergences, a teacher
    gradient, vocabularies that differ, a -inf logit) take the general path, :func:`_general_rows`.
    """
    n, v_s = student.shape
    cdtype = compute_dtype(student.dtype, teacher.dtype)
    fast_possible = divergence in ("forward", "reverse", "symmetric") and grad_t is None and v_s == teacher.shape[1]
    native = fast_possible and _native_ok(student, teacher, grad_s)
    rows = torch.arange(n, device=student.device)  # the rows left to the general path
    if fast_possible:
        # the C kernel needs no work arrays: one call per task of NATIVE_TASK_ELEMENTS logits
        step = max(1, NATIVE_TASK_ELEMENTS // v_s) if native else chunk_rows
        all_valid = bool(valid.all())
        bad_rows: list[Tensor] = []

        def chunk(k: int, work: Tensor | None) -> None:
            i0, i1 = k * step, min(k * step + step, n)
            values[i0:i1], bad = _kl_chunk_fast(
                divergence,
                coef,
                student[i0:i1],
                teacher[i0:i1],
                valid[i0:i1],
                all_valid or bool(valid[i0:i1].all()),
                None if labels is None else labels[i0:i1],
                cdtype,
                temperature,
                kl_weight,
                ce_weight,
                scale,
                grad_s[i0:i1],
                work,
            )
            if bool(bad.any()):
                bad_rows.append(rows[i0:i1][bad])

        def setup() -> Tensor | None:  # one workspace per thread and call, reused by its chunks
            return None if native else workspace(min(chunk_rows, n), v_s, cdtype, student.device)

        in_parallel(chunk, -(-n // step), setup, student.device)
        rows = torch.cat(bad_rows).sort().values if bad_rows else rows[:0]
    if rows.numel():  # the logits are validated (whole, as the naive path does) once a row is not finite
        check_rows("student_logits", student, valid, temperature)
        check_rows("teacher", teacher, valid, temperature)

    def general(k: int, _: None) -> None:
        r = rows[k * chunk_rows : (k + 1) * chunk_rows]
        val, gs, gt = _general_rows(
            student[r],
            teacher[r],
            valid[r],
            None if labels is None else labels[r],
            divergence=divergence,
            temperature=temperature,
            coef=coef,
            normalized=normalized,
            kl_weight=kl_weight,
            ce_weight=ce_weight,
            scale=scale,
            cdtype=cdtype,
        )
        values[r] = val
        grad_s[r] = gs.to(grad_s.dtype)
        if grad_t is not None:
            grad_t[r] = gt.to(grad_t.dtype)

    in_parallel(general, -(-rows.numel() // chunk_rows), lambda: None, student.device)


def _general_rows(
    student: Tensor,
    teacher: Tensor,
    ok: Tensor,
    labels: Tensor | None,
    *,
    divergence: Divergence,
    temperature: float,
    coef: float,
    normalized: bool,
    kl_weight: float,
    ce_weight: float,
    scale: float,
    cdtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row ``kl_weight * divergence + ce_weight * CE`` of some rows and its gradients times ``scale`` by the
    discrete core's kernels and the closed forms of :func:`~kldiv.losses.rows.divergence_grads` (any divergence,
    -inf logits, vocab sizes that differ); 0 at ignored rows."""
    v_s, v_t = student.shape[1], teacher.shape[1]
    size = max(v_s, v_t)
    inv_t = 1.0 / temperature
    s = torch.where(ok[:, None], pad_vocab(student.to(cdtype), size), 0.0)
    t = torch.where(ok[:, None], pad_vocab(teacher.to(cdtype), size), 0.0)
    ratio = logit_ratio(t, s, temperature)
    s_raw = s
    if temperature != 1.0:
        s, t = s * inv_t, t * inv_t
    log_s, log_t = log_softmax(s, -1), log_softmax(t, -1)
    val = divergence_rows(divergence, log_s, log_t, ratio.to(cdtype), coef, normalized)
    gs, gt = divergence_grads(divergence, log_s, log_t, coef, normalized, ratio)
    row_w = ((ok & (val < INF)).to(cdtype) * (kl_weight * inv_t * scale))[:, None]
    gs = gs * row_w
    total = weighted(kl_weight, val)
    if ce_weight:
        assert labels is not None
        lab = torch.where(ok, labels, 0)[:, None]
        log_s1 = log_s if temperature == 1.0 else log_softmax(s_raw, -1)
        total = total - ce_weight * log_s1.gather(1, lab)[:, 0]
        g_ce = torch.exp(log_s1).scatter_add(1, lab, torch.full_like(log_s1[:, :1], -1.0))
        gs = gs + g_ce * (ok[:, None].to(cdtype) * (ce_weight * scale))
    return torch.where(ok, total, 0.0), gs[:, :v_s], (gt * row_w)[:, :v_t]


_LIBRARY = torch.library.Library("kldiv", "FRAGMENT")  # type: ignore[no-untyped-call]
_LIBRARY.define(  # type: ignore[no-untyped-call]
    "chunked_divergence(Tensor student, Tensor teacher, Tensor valid, Tensor? labels, str divergence, "
    "bool teacher_log_probs, float temperature, float coef, bool normalized, str reduction, float kl_weight, "
    "float ce_weight, int ignore_index, int chunk_rows, bool teacher_grad) -> (Tensor, Tensor, Tensor)"
)


def chunked_divergence(
    student: Tensor,
    teacher: Tensor,
    valid: Tensor,
    labels: Tensor | None,
    divergence: str,
    teacher_log_probs: bool,
    temperature: float,
    coef: float,
    normalized: bool,
    reduction: str,
    kl_weight: float,
    ce_weight: float,
    ignore_index: int,
    chunk_rows: int,
    teacher_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The torch operator ``kldiv::chunked_divergence``: per-token ``kl_weight * divergence + ce_weight * CE``
    over flat rows, reduced, with the gradients of the reduced loss w.r.t. student and teacher.

    Inputs: ``student`` (N, V_s) logits, ``teacher`` (N, V_t) logits (log-probabilities if
    ``teacher_log_probs``), ``valid`` (N,) bool, ``labels`` (N,) int64 or None; the options are validated by
    :func:`kldiv.losses.functional._loss`. Outputs: the loss (0-d, or (N,) for ``reduction="none"``), the
    student's gradient (N, V_s) and the teacher's (N, V_t, or empty unless ``teacher_grad``), each in its input's
    dtype. The checks that read the data (teacher log-probabilities, labels, and, once a row is not finite, the
    logits) and the warnings run here, so a compiled caller has no host synchronization of its own.
    """
    n, v_s = student.shape
    if teacher_log_probs:
        check_rows("teacher", teacher, valid, temperature, log_probs=True)
    else:
        warn_if_probabilities("teacher", teacher, valid)
    if ce_weight:
        assert labels is not None
        check_labels(labels, valid, v_s, ignore_index)
    grad_s = torch.empty_like(student)
    grad_t = torch.empty_like(teacher) if teacher_grad else None
    values = torch.zeros(n, dtype=compute_dtype(student.dtype, teacher.dtype), device=student.device)
    scale = row_scale(valid, reduction, v_s)
    fill_rows(
        student,
        teacher,
        valid,
        labels,
        divergence=divergence,  # type: ignore[arg-type]
        temperature=temperature,
        coef=coef,
        normalized=normalized,
        kl_weight=kl_weight,
        ce_weight=ce_weight,
        scale=scale,
        chunk_rows=chunk_rows,
        values=values,
        grad_s=grad_s,
        grad_t=grad_t,
    )
    loss = values if reduction == "none" else values.sum() * scale if reduction != "sum" else values.sum()
    warn_if_vocabularies_make_it_infinite(loss, v_s, teacher.shape[1])
    return loss, grad_s, teacher.new_empty(0) if grad_t is None else grad_t


def _shapes(
    student: Tensor, teacher: Tensor, valid: Tensor, labels: Tensor | None, *options: Any
) -> tuple[Tensor, Tensor, Tensor]:
    """The fake (meta) implementation of ``kldiv::chunked_divergence``: its outputs' shapes and dtypes
    (``options`` in the schema's order: ``reduction`` is the sixth, ``teacher_grad`` the last)."""
    reduction, teacher_grad = options[5], options[-1]
    cdtype = compute_dtype(student.dtype, teacher.dtype)
    loss = student.new_empty(student.shape[:1] if reduction == "none" else (), dtype=cdtype)
    return loss, torch.empty_like(student), torch.empty_like(teacher) if teacher_grad else teacher.new_empty(0)


def _save_gradients(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
    _, grad_s, grad_t = output
    ctx.set_materialize_grads(False)  # no zeros for the gradient outputs, which nothing differentiates
    ctx.save_for_backward(grad_s, grad_t)
    ctx.teacher_grad = inputs[-1]


def _scale_gradients(ctx: Any, grad_loss: Tensor | None, *_: Tensor | None) -> tuple[Tensor | None, ...]:
    """The gradients computed in forward times ``grad_loss`` (per row for ``reduction="none"``)."""
    if grad_loss is None:  # the loss itself is not differentiated
        return (None,) * 15
    grad_s, grad_t = ctx.saved_tensors
    per_row = grad_loss.dim() == 1
    scaled = [scale_precomputed(g, grad_loss, per_row) for g in (grad_s, grad_t if ctx.teacher_grad else None)]
    return (*scaled, *(None,) * 13)


# the low-level registration: torch.library.custom_op would import torch._dynamo at the first call (seconds)
_LIBRARY.impl("chunked_divergence", chunked_divergence, "CompositeExplicitAutograd")  # type: ignore[no-untyped-call]
torch.library.register_fake("kldiv::chunked_divergence", _shapes, lib=_LIBRARY)
torch.library.register_autograd(
    "kldiv::chunked_divergence", _scale_gradients, setup_context=_save_gradients, lib=_LIBRARY
)


def chunked_rows(
    divergence: Divergence,
    student: Tensor,
    teacher: Tensor,
    valid: Tensor,
    *,
    temperature: float,
    coef: float,
    normalized: bool,
    reduction: str,
    teacher_log_probs: bool = False,
    kl_weight: float = 1.0,
    ce_weight: float = 0.0,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> Tensor:
    """The reduced loss of flat rows (N, V) by :func:`chunked_divergence` (validated options).

    ``chunk_size`` is the number of rows per chunk; by default ``DEFAULT_CHUNK_ELEMENTS // V`` (at least 1).
    """
    chunk_rows = rows_per_chunk(chunk_size, max(student.shape[1], teacher.shape[1]))
    loss: Tensor
    loss, _, _ = torch.ops.kldiv.chunked_divergence(
        student,
        teacher,
        valid,
        labels,
        divergence,
        teacher_log_probs,
        temperature,
        coef,
        normalized,
        reduction,
        kl_weight,
        ce_weight,
        ignore_index,
        chunk_rows,
        torch.is_grad_enabled() and teacher.requires_grad,
    )
    return loss
