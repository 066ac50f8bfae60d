"""The tour's losses section: the known failure modes of large-vocabulary KL losses written the usual way in
plain torch, next to `kldiv.losses` and a float64 reference, and the time of forward + backward against V."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from kldiv import viz
from kldiv.losses import forward_kl, generalized_jsd
from kldiv.report import Cell, Context, Figure, Section, Table, png_bytes, register_section

__all__ = ["failure_modes_table", "losses_section", "timing_figure"]

F64 = torch.float64
TEMPERATURE = 2.0
TIMING_TOKENS = 256
TIMING_VOCABS = (8000, 16000, 32000)
TIMING_ROUNDS = 9

LossFn = Callable[[Tensor, Tensor], Tensor]


# --- Plain torch, written the usual way ----------------------------------------------------------------------


def _plain_masked_mean_kl(s: Tensor, t: Tensor, mask: Tensor) -> Tensor:
    """Masked mean over tokens of `F.kl_div(log_softmax(s), log_softmax(t), log_target=True, "none").sum(-1)`."""
    per_token = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="none", log_target=True).sum(-1)
    return (per_token * mask).sum() / mask.sum()


def _plain_log_target_kl(s: Tensor, t: Tensor) -> Tensor:
    """`F.kl_div(log_softmax(s), log_softmax(t), log_target=True, reduction="batchmean")`."""
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True)


def _plain_probs_target_kl(s: Tensor, t: Tensor) -> Tensor:
    """`F.kl_div(log_softmax(s), softmax(t), reduction="batchmean")`: the teacher as probabilities."""
    return F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="batchmean")


def _plain_bf16_then_upcast_kl(s: Tensor, t: Tensor) -> Tensor:
    """`log_softmax` in the inputs' dtype (bf16), then `.float()` and the batchmean `F.kl_div` in float32."""
    return F.kl_div(F.log_softmax(s, -1).float(), F.log_softmax(t, -1).float(), reduction="batchmean", log_target=True)


def _plain_trl_gjsd(s: Tensor, t: Tensor, beta: float) -> Tensor:
    """TRL's GKD loss: KL(P‖Q) at beta = 0, else beta KL(P‖M) + (1-beta) KL(Q‖M) via logsumexp, token mean."""
    log_q, log_p = F.log_softmax(s, -1), F.log_softmax(t, -1)
    if beta == 0.0:
        return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1).mean()
    b = torch.tensor(beta, dtype=log_q.dtype)
    log_m = torch.logsumexp(torch.stack([log_q + torch.log(1 - b), log_p + torch.log(b)]), dim=0)
    kl_teacher = F.kl_div(log_m, log_p, reduction="none", log_target=True)
    kl_student = F.kl_div(log_m, log_q, reduction="none", log_target=True)
    return (b * kl_teacher + (1 - b) * kl_student).sum(-1).mean()


# --- Float64 references ----------------------------------------------------------------------------------------


def _reference_kl(s: Tensor, t: Tensor) -> float:
    """KL(P‖Q) per token in float64, averaged: sum p (expm1(-r) + r), r = log p - log q, each term >= 0."""
    log_q, log_p = F.log_softmax(s.to(F64), -1), F.log_softmax(t.to(F64), -1)
    r = log_p - log_q
    return float((log_p.exp() * (torch.expm1(-r) + r)).sum(-1).mean())


def _reference_gjsd_normalized(s: Tensor, t: Tensor, beta: float) -> float:
    """(beta KL(P‖M) + (1-beta) KL(Q‖M)) / (beta (1-beta)) in float64 from probabilities, token mean."""
    q, p = F.softmax(s.to(F64), -1), F.softmax(t.to(F64), -1)
    m = beta * p + (1 - beta) * q
    value = beta * torch.xlogy(p, p / m) + (1 - beta) * torch.xlogy(q, q / m)
    return float(value.sum(-1).mean()) / (beta * (1 - beta))


# --- Helpers -----------------------------------------------------------------------------------------------------


def _value(x: Tensor) -> float:
    return float(x.detach().item())


def _num(x: float, digits: int = 8) -> str:
    """A value as text; NaN and inf spelled like the table's other cells."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def _grad_state(g: Tensor) -> str:
    if bool(torch.isnan(g).any()):
        return "NaN"
    if bool(torch.isinf(g).any()):
        return "inf"
    return "0" if bool((g == 0).all()) else "finite"


def _grad_error(g: Tensor, reference: Tensor) -> float:
    """max |g - g_ref| / max |g_ref|: the gradient's error relative to its largest entry."""
    return float((g.detach().to(F64) - reference.detach()).abs().max() / reference.detach().abs().max())


def _value_and_grad(fn: LossFn, s: Tensor, t: Tensor) -> tuple[float, Tensor]:
    """The loss and its gradient w.r.t. the student `s` (a fresh leaf copy)."""
    leaf = s.detach().clone().requires_grad_(True)
    value = fn(leaf, t)
    (grad,) = torch.autograd.grad(value, leaf)
    return _value(value), grad


def _value_and_grads(fn: LossFn, s: Tensor, t: Tensor) -> tuple[float, Tensor, Tensor]:
    """The loss and its gradients w.r.t. student and teacher (both fresh leaf copies)."""
    s_leaf = s.detach().clone().requires_grad_(True)
    t_leaf = t.detach().clone().requires_grad_(True)
    value = fn(s_leaf, t_leaf)
    g_s, g_t = torch.autograd.grad(value, [s_leaf, t_leaf])
    return _value(value), g_s, g_t


def _kldiv_forward(s: Tensor, t: Tensor) -> Tensor:
    return forward_kl(s, t)


# --- The rows -----------------------------------------------------------------------------------------------------


def _row_all_ignored(gen: torch.Generator) -> list[Cell]:
    s, t = torch.randn(2, 3, 64, generator=gen), torch.randn(2, 3, 64, generator=gen)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    plain, plain_g = _value_and_grad(lambda a, b: _plain_masked_mean_kl(a, b, mask), s, t)
    ours, ours_g = _value_and_grad(lambda a, b: forward_kl(a, b, mask=mask), s, t)
    return [
        'every token ignored (`mask` all False): masked mean of per-token `F.kl_div(..., reduction="none")'
        ".sum(-1)` vs `forward_kl(s, t, mask=mask)`",
        f"{_num(plain)}; grad {_grad_state(plain_g)}",
        f"{_num(ours)}; grad {_grad_state(ours_g)}",
        "0 (no token counts; 0/0 has no value)",
    ]


def _row_both_neg_inf(gen: torch.Generator) -> list[Cell]:
    s, t = 2 * torch.randn(4, 50, generator=gen), 2 * torch.randn(4, 50, generator=gen)
    s[:, 7] = -math.inf
    t[:, 7] = -math.inf
    plain, plain_g = _value_and_grad(_plain_log_target_kl, s, t)
    ours, ours_g = _value_and_grad(_kldiv_forward, s, t)
    keep = [i for i in range(s.shape[-1]) if i != 7]
    exact = _reference_kl(s[:, keep], t[:, keep])
    return [
        "a vocabulary entry masked to −inf in teacher and student: `F.kl_div(log_softmax(s), log_softmax(t), "
        "log_target=True)` forms −inf − (−inf)",
        f"{_num(plain)}; grad {_grad_state(plain_g)}",
        f"{_num(ours)}; grad {_grad_state(ours_g)}",
        f"{_num(exact)} (the other entries)",
    ]


def _row_underflow(gen: torch.Generator) -> tuple[list[Cell], bool]:
    """Both log-probabilities of one entry below −104, so softmax(t) is 0 there in float32.

    Returns the row and whether plain torch's value and student gradient are right (within 1e-5).
    """
    s, t = 2 * torch.randn(4, 50, generator=gen), 2 * torch.randn(4, 50, generator=gen)
    s[:, 0] = s.amax(-1) - 150.0
    t[:, 0] = t.amax(-1) - 150.0
    s64, t64 = s.to(F64), t.to(F64)
    exact, ref_gs, ref_gt = _value_and_grads(_plain_log_target_kl, s64, t64)
    plain, plain_gs, plain_gt = _value_and_grads(_plain_probs_target_kl, s, t)
    ours, ours_gs, ours_gt = _value_and_grads(_kldiv_forward, s, t)
    min_log_p = max(float(F.log_softmax(x, -1)[:, 0].max()) for x in (s, t))

    def cell(value: float, g_s: Tensor, g_t: Tensor) -> str:
        state = _grad_state(g_t)
        teacher = f"{_grad_error(g_t, ref_gt):.0e}" if state == "finite" else state
        return f"{_num(value)}; student grad err {_grad_error(g_s, ref_gs):.0e}; teacher grad err {teacher}"

    plain_ok = abs(plain - exact) <= 1e-5 * exact and _grad_error(plain_gs, ref_gs) <= 1e-5
    row: list[Cell] = [
        f"both log-probabilities of one entry ≤ {_num(min_log_p, 3).replace('-', '−')} (below −104, so "
        "`softmax(t)` is 0 there in float32): `F.kl_div(log_softmax(s), softmax(t))`, "
        "teacher trained too (gradients w.r.t. both)",
        cell(plain, plain_gs, plain_gt),
        cell(ours, ours_gs, ours_gt),
        f"{_num(exact)} (float64, `log_target=True`)",
    ]
    return row, plain_ok


def _row_bf16(gen: torch.Generator) -> list[Cell]:
    t = (4 * torch.randn(16, 4000, generator=gen)).bfloat16()
    s = (t.float() + 0.5 * torch.randn(16, 4000, generator=gen)).bfloat16()
    exact, ref_g = _value_and_grad(_plain_log_target_kl, s.to(F64), t.to(F64))
    plain, plain_g = _value_and_grad(_plain_bf16_then_upcast_kl, s, t)
    ours, ours_g = _value_and_grad(_kldiv_forward, s, t)
    floor = _grad_error(ref_g.bfloat16(), ref_g)

    def cell(value: float, g: Tensor) -> str:
        return f"grad err {_grad_error(g, ref_g):.1e}; value rel. err {abs(value - exact) / exact:.0e}"

    return [
        "bf16 logits (16 × 4000, student near teacher): `log_softmax` in bf16 then the loss in float32, vs "
        "kldiv (upcasts first); grad err = max|g − g_ref| / max|g_ref|, against float64 from the same bf16 values",
        cell(plain, plain_g),
        cell(ours, ours_g),
        f"{_num(exact)}; rounding the exact gradient to bf16 alone: grad err {floor:.1e}",
    ]


def _row_gjsd(gen: torch.Generator) -> list[Cell]:
    s, t = torch.randn(8, 1000, generator=gen), torch.randn(8, 1000, generator=gen)
    beta = 1e-6
    trl_small, trl_zero = _value(_plain_trl_gjsd(s, t, beta)), _value(_plain_trl_gjsd(s, t, 0.0))
    ours_small = _value(generalized_jsd(s, t, beta=beta, normalized=True))
    ours_zero = _value(generalized_jsd(s, t, beta=0.0, normalized=True))
    return [
        "generalized JSD as β → 0: TRL-style `β KL(P‖M) + (1−β) KL(Q‖M)` (float32) at β = 1e-6 and at β = 0 "
        "exactly, vs `generalized_jsd(..., normalized=True)` (÷ β(1−β))",
        f"β=1e-6: {_num(trl_small, 4)} (÷β: {_num(trl_small / beta, 5)}); β=0: {_num(trl_zero, 8)}: "
        f"a jump ×{trl_zero / trl_small:.1e}",
        f"β=1e-6: {_num(ours_small)}; β=0: {_num(ours_zero)}",
        f"β=1e-6: {_num(_reference_gjsd_normalized(s, t, beta))}; β=0: {_num(_reference_kl(s, t))} = KL(P‖Q)",
    ]


def _row_tiny(gen: torch.Generator) -> list[Cell]:
    t = torch.randn(8, 1000, generator=gen)
    s = t + 4e-5 * torch.randn(8, 1000, generator=gen)
    exact = _reference_kl(s, t)
    log_target = _value(_plain_log_target_kl(s, t))
    probs = _value(_plain_probs_target_kl(s, t))
    ours = _value(forward_kl(s, t))

    def rel(x: float) -> str:
        return f"{abs(x - exact) / exact:.1e}"

    return [
        f"a tiny per-token KL (student ≈ teacher, KL ≈ {exact:.0e}), float32; relative error against float64",
        f"`log_target=True`: {_num(log_target, 4)} (rel. err {rel(log_target)}); `softmax(t)` target: "
        f"{_num(probs, 4)} (rel. err {rel(probs)})",
        f"{_num(ours)} (rel. err {rel(ours)})",
        f"{_num(exact, 10)} (float64, Σ p (expm1(−r) + r))",
    ]


def failure_modes_table(seed: int = 0) -> tuple[Table, bool]:
    """The failure-mode table, every cell computed live; also whether plain torch is right in the underflow row."""
    gen = torch.Generator().manual_seed(seed)
    underflow, plain_underflow_ok = _row_underflow(gen)
    rows = [
        _row_all_ignored(gen),
        _row_both_neg_inf(gen),
        underflow,
        _row_bf16(gen),
        _row_gjsd(gen),
        _row_tiny(gen),
    ]
    table = Table(
        header=["case", "plain torch, the usual way", "kldiv.losses", "exact (float64 or closed form)"],
        rows=rows,
        title="The known failure modes of large-vocabulary KL losses, and kldiv's result",
    )
    return table, plain_underflow_ok


# --- Timing -------------------------------------------------------------------------------------------------------


def _naive_timed(s: Tensor, t: Tensor) -> Tensor:
    """`F.kl_div(log_softmax(s / T), log_softmax(t / T), log_target=True, reduction="batchmean")`."""
    return F.kl_div(
        F.log_softmax(s / TEMPERATURE, -1), F.log_softmax(t / TEMPERATURE, -1), reduction="batchmean", log_target=True
    )


def _kldiv_timed(s: Tensor, t: Tensor) -> Tensor:
    return forward_kl(s, t, temperature=TEMPERATURE)


def _forward_backward_seconds(fn: LossFn, s: Tensor, t: Tensor) -> float:
    start = time.perf_counter()
    (grad,) = torch.autograd.grad(fn(s, t), s)
    del grad
    return time.perf_counter() - start


def timing_figure(seed: int = 0) -> tuple[Figure, dict[int, tuple[float, float]]]:
    """Forward + backward time of the naive path and kldiv for N = 256 tokens against V (min over rounds)."""
    gen = torch.Generator().manual_seed(seed)
    times: dict[int, tuple[float, float]] = {}
    for vocab in TIMING_VOCABS:
        s = torch.randn(TIMING_TOKENS, vocab, generator=gen).requires_grad_(True)
        t = torch.randn(TIMING_TOKENS, vocab, generator=gen)
        naive, ours = math.inf, math.inf
        for _ in range(TIMING_ROUNDS):  # alternate, so a change of machine speed hits both sides
            naive = min(naive, _forward_backward_seconds(_naive_timed, s, t))
            ours = min(ours, _forward_backward_seconds(_kldiv_timed, s, t))
        times[vocab] = (naive, ours)
    threads = torch.get_num_threads()
    fig, ax = viz.new_figure(6.0, 3.6)
    vocabs = list(times)
    ax.plot(vocabs, [1e3 * times[v][0] for v in vocabs], "o-", label="naive: F.kl_div(log_softmax, log_softmax)")
    ax.plot(vocabs, [1e3 * times[v][1] for v in vocabs], "s-", label="kldiv.losses.forward_kl")
    ax.set_xlabel("vocabulary size V")
    ax.set_ylabel("forward + backward (ms, min of rounds)")
    ax.set_xticks(vocabs)
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"N = {TIMING_TOKENS} tokens, T = {TEMPERATURE:g}, float32, {threads} CPU thread{'s' if threads > 1 else ''}"
    )
    ax.legend(fontsize=8)
    caption = (
        f"Time of forward + backward (gradient w.r.t. the student) for {TIMING_TOKENS} tokens, the minimum of "
        f"{TIMING_ROUNDS} alternating rounds, measured once while the tour ran: "
        + "; ".join(f"V = {v}: {1e3 * n:.1f} ms naive, {1e3 * o:.1f} ms kldiv" for v, (n, o) in times.items())
        + ". One run of a few milliseconds per call on a machine that may be busy: the minimum over rounds "
        "filters most of the noise, not all (a point can come out of line); benchmarks/large_vocab.py is the "
        "measurement to quote."
    )
    return Figure("losses-time-vs-vocab", png_bytes(fig), caption), times


# --- The section ----------------------------------------------------------------------------------------------------


@register_section("losses", order=20)
def losses_section(ctx: Context) -> Section:
    """Failure modes of the usual torch KL losses next to kldiv.losses, and a small timing figure."""
    table, plain_underflow_ok = failure_modes_table(ctx.seed)
    figure, times = timing_figure(ctx.seed)
    if plain_underflow_ok:
        underflow = (
            "**The underflow row is not a bug of plain torch for the usual use**: with a probability target whose "
            "entries underflow to 0, `F.kl_div` gives the right value and the right gradient w.r.t. the student "
            "(it uses `xlogy`, so 0 · log 0 = 0); only the teacher's gradient is NaN (d(p log p)/dp = log p + 1 "
            "is −inf at p = 0), which matters when the teacher is trained as well."
        )
    else:
        underflow = (
            "In the underflow row plain torch's value or student gradient is off by more than 1e-5 (relative) "
            "on this build."
        )
    largest = TIMING_VOCABS[-1]
    naive, ours = times[largest]
    return Section(
        title="Distillation and RLHF losses over large vocabularies",
        blocks=[
            "`kldiv.losses` (`forward_kl`, `reverse_kl`, `symmetric_kl`, `generalized_jsd`, `distillation_loss`) "
            "computes token-level divergences between a student Q = softmax(s / T) and a teacher P = softmax(t / T) "
            "over logits of shape (..., V). Each row below runs a known failure mode of these losses on small "
            "tensors: the plain-torch loss written the usual way, kldiv's loss, and a float64 reference "
            "(value; state of the gradient, or its error).",
            table,
            underflow,
            figure,
            f"At V = {largest} this run measured {1e3 * naive:.1f} ms for the naive path and {1e3 * ours:.1f} ms "
            f"for kldiv ({naive / ours:.1f}× faster) on {TIMING_TOKENS} tokens: a small, noisy measurement made "
            "while the tour runs. The full benchmark (larger batches, distillation, fused linear heads, peak "
            "memory, repeated rounds) is `benchmarks/large_vocab.py`, run as `python -m benchmarks.large_vocab`; "
            "docs/losses.md describes how the losses are computed and what they guarantee.",
        ],
    )
