"""The reference (naive) losses: agreement with torch and the discrete core, options, teachers, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import kldiv
from kldiv.losses import (
    DistillationLoss,
    ForwardKLLoss,
    GeneralizedJSDLoss,
    ReverseKLLoss,
    SymmetricKLLoss,
    TopK,
    distillation_loss,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    symmetric_kl,
)

DT = torch.float64
INF = math.inf


def _logits(*shape: int, seed: int = 0, dtype: torch.dtype = DT) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(*shape, generator=g, dtype=DT)).to(dtype)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_forward_kl_matches_torch_kl_div(impl: str) -> None:
    s, t = _logits(6, 9), _logits(6, 9, seed=1)
    ref = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    torch.testing.assert_close(forward_kl(s, t, implementation=impl), ref, rtol=1e-12, atol=0)
    ref_sum = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="sum")
    torch.testing.assert_close(forward_kl(s, t, reduction="sum", implementation=impl), ref_sum, rtol=1e-12, atol=0)
    ref_mean = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="mean")
    torch.testing.assert_close(forward_kl(s, t, reduction="mean", implementation=impl), ref_mean, rtol=1e-12, atol=0)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
@pytest.mark.parametrize(("alpha", "temperature"), [(0.5, 1.0), (0.3, 2.0), (0.9, 4.0), (1.0, 0.5), (0.0, 3.0)])
def test_seed_knowledge_distillation_loss_reproduced(impl: str, alpha: float, temperature: float) -> None:
    s = _logits(12, 10).requires_grad_()
    t = _logits(12, 10, seed=3)
    labels = torch.randint(0, 10, (12,), generator=torch.Generator().manual_seed(0))
    seed = alpha * temperature**2 * F.kl_div(
        F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean"
    ) + (1 - alpha) * F.cross_entropy(s, labels)
    ours = distillation_loss(s, t, labels, alpha=alpha, temperature=temperature, implementation=impl)
    torch.testing.assert_close(ours, seed, rtol=1e-12, atol=1e-15)
    (g_seed,) = torch.autograd.grad(seed, s)
    (g_ours,) = torch.autograd.grad(ours, s)
    torch.testing.assert_close(g_ours, g_seed, rtol=1e-10, atol=1e-15)


def test_per_token_values_are_the_discrete_core() -> None:
    s, t = _logits(2, 3, 7), _logits(2, 3, 7, seed=1)
    for temperature in (1.0, 3.0):
        out = forward_kl(s, t, temperature=temperature, reduction="none", implementation="naive")
        torch.testing.assert_close(out, kldiv.kl_from_logits(t, s, temperature=temperature), rtol=0, atol=0)
        out = reverse_kl(s, t, temperature=temperature, reduction="none", implementation="naive")
        torch.testing.assert_close(out, kldiv.kl_from_logits(s, t, temperature=temperature), rtol=0, atol=0)
        out = generalized_jsd(s, t, beta=0.2, temperature=temperature, reduction="none", implementation="naive")
        ref = kldiv.generalized_js_from_logits(t, s, beta=0.2, temperature=temperature)
        torch.testing.assert_close(out, ref, rtol=1e-15, atol=1e-16)


def test_symmetric_kl_is_the_weighted_mix() -> None:
    s, t = _logits(5, 6), _logits(5, 6, seed=1)
    mix = symmetric_kl(s, t, weight=0.25, implementation="naive")
    ref = 0.25 * forward_kl(s, t, implementation="naive") + 0.75 * reverse_kl(s, t, implementation="naive")
    torch.testing.assert_close(mix, ref, rtol=1e-14, atol=0)


def test_generalized_jsd_edges_are_the_kl_limits() -> None:
    s, t = _logits(5, 6), _logits(5, 6, seed=1)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(s, t, beta=0.0)
    torch.testing.assert_close(generalized_jsd(s, t, beta=0.0, normalized=True), forward_kl(s, t))
    torch.testing.assert_close(generalized_jsd(s, t, beta=1.0, normalized=True), reverse_kl(s, t))
    near = generalized_jsd(s, t, beta=1e-6, normalized=True)
    torch.testing.assert_close(near, forward_kl(s, t), rtol=1e-4, atol=0)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_ignore_index_and_mask_select_rows(impl: str) -> None:
    s, t = _logits(4, 5, 6), _logits(4, 5, 6, seed=1)
    labels = torch.randint(0, 6, (4, 5), generator=torch.Generator().manual_seed(2))
    labels[0, :3] = -100
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[2, 1] = False
    valid = (labels != -100) & mask
    s_bad = s.clone()
    s_bad[~valid] = math.nan  # ignored rows may hold anything
    per = forward_kl(s, t, reduction="none", implementation="naive")
    got = forward_kl(s_bad, t, labels=labels, mask=mask, implementation=impl)
    torch.testing.assert_close(got, per[valid].sum() / valid.sum(), rtol=1e-12, atol=0)
    none = forward_kl(s_bad, t, labels=labels, mask=mask, reduction="none", implementation=impl)
    assert (none[~valid] == 0).all()
    torch.testing.assert_close(none[valid], per[valid], rtol=1e-12, atol=0)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
def test_all_ignored_is_zero_with_zero_gradient(impl: str, reduction: str) -> None:
    s = _logits(3, 4).requires_grad_()
    t = _logits(3, 4, seed=1).requires_grad_()
    labels = torch.full((3,), -100)
    out = distillation_loss(s, t, labels, alpha=0.5, temperature=2.0, reduction=reduction, implementation=impl)  # type: ignore[arg-type]
    assert torch.isfinite(out).all()
    assert (out == 0).all()
    gs, gt = torch.autograd.grad(out.sum(), (s, t))
    assert (gs == 0).all()
    assert (gt == 0).all()


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_neg_inf_logits_exact(impl: str) -> None:
    s = _logits(3, 5).requires_grad_()
    t = _logits(3, 5, seed=1)
    with torch.no_grad():
        t[:, 0] = -INF  # teacher zero: contributes nothing to KL(P||Q)
        s[0, 0] = -INF  # student zero where the teacher is zero: still finite
    out = forward_kl(s, t, reduction="none", implementation=impl)
    ref = kldiv.kl_from_logits(t, s.detach())
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=0)
    (g,) = torch.autograd.grad(out.sum(), s)
    assert torch.isfinite(g).all()
    assert g[0, 0] == 0
    t2 = t.clone()
    t2[1, 0] = 0.0  # teacher mass where the student is -inf: +inf
    s2 = s.detach().clone()
    s2[1, 0] = -INF
    assert forward_kl(s2, t2, reduction="none", implementation=impl)[1] == INF


def test_teacher_kinds_agree() -> None:
    s, t = _logits(4, 7), _logits(4, 7, seed=1)
    ref = forward_kl(s, t, temperature=2.0, implementation="naive")
    lp = torch.log_softmax(t, -1)
    got_lp = forward_kl(s, lp, teacher_kind="log_probs", temperature=2.0, implementation="naive")
    got_lpc = forward_kl(s, lp, teacher_kind="log_probs", temperature=2.0, implementation="chunked")
    got_p = forward_kl(s, lp.exp(), teacher_kind="probs", temperature=2.0)
    for got in (got_lp, got_lpc, got_p):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)


def test_topk_renormalize_equals_masked_teacher() -> None:
    s, t = _logits(4, 9), _logits(4, 9, seed=1)
    vals, idx = t.topk(3, -1)
    masked = torch.full_like(t, -INF).scatter(1, idx, vals)
    for kind, v in (("logits", vals), ("log_probs", vals.log_softmax(-1)), ("probs", vals.softmax(-1))):
        top = TopK(idx, v, kind=kind)  # type: ignore[arg-type]
        for fn in (forward_kl, generalized_jsd):
            got = fn(s, top, temperature=1.5)
            ref = fn(s, masked, temperature=1.5, implementation="naive")
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    assert reverse_kl(s, TopK(idx, vals)) == INF


def test_topk_mass_is_coarse_grained_kl() -> None:
    s, t = _logits(3, 6), _logits(3, 6, seed=1)
    p = t.softmax(-1)
    vals, idx = p.topk(2, -1)
    got = forward_kl(s, TopK(idx, vals, kind="probs", rest="mass"), reduction="none")
    q = s.softmax(-1)
    q_top = q.gather(1, idx)
    p_c = torch.cat([vals, 1 - vals.sum(-1, keepdim=True)], -1)
    q_c = torch.cat([q_top, 1 - q_top.sum(-1, keepdim=True)], -1)
    torch.testing.assert_close(got, kldiv.kl(p_c, q_c), rtol=1e-12, atol=0)
    got_lp = forward_kl(s, TopK(idx, vals.log(), kind="log_probs", rest="mass"), reduction="none")
    torch.testing.assert_close(got_lp, got, rtol=1e-12, atol=0)
    # the full teacher as its "top V": the exact KL
    full = TopK(torch.arange(6).expand(3, 6), p, kind="probs", rest="mass")
    torch.testing.assert_close(forward_kl(s, full, reduction="none"), kldiv.kl_from_logits(t, s), rtol=1e-10, atol=0)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_vocab_sizes_differ_pad_with_neg_inf(impl: str) -> None:
    s, t = _logits(3, 5), _logits(3, 7, seed=1)
    t_short = t[:, :5]
    padded = F.pad(t_short, (0, 2), value=-INF)
    # teacher shorter than the student: the teacher is zero on the extra ids
    torch.testing.assert_close(
        forward_kl(_logits(3, 7), t_short, implementation=impl),
        forward_kl(_logits(3, 7), padded, implementation="naive"),
        rtol=1e-12,
        atol=0,
    )
    # teacher mass on ids the student lacks: +inf forward, finite reverse
    assert forward_kl(s, t, implementation=impl) == INF
    t_zero = t.clone()
    t_zero[:, 5:] = -INF
    torch.testing.assert_close(reverse_kl(s, t_zero, implementation=impl), reverse_kl(s, t_zero[:, :5]))


@pytest.mark.parametrize("impl", ["naive", "chunked"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_upcast_result_float32(impl: str, dtype: torch.dtype) -> None:
    s = _logits(4, 8, dtype=dtype).requires_grad_()
    t = _logits(4, 8, seed=1, dtype=dtype)
    out = forward_kl(s, t, temperature=2.0, implementation=impl)
    assert out.dtype == torch.float32
    ref = forward_kl(s.detach().double(), t.double(), temperature=2.0, implementation="naive")
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=0)
    (g,) = torch.autograd.grad(out, s)
    assert g.dtype == dtype


def test_modules_call_the_functions() -> None:
    s, t = _logits(4, 6), _logits(4, 6, seed=1)
    labels = torch.tensor([1, -100, 2, 3])
    kw = {"temperature": 2.0, "reduction": "sum"}
    torch.testing.assert_close(ForwardKLLoss(**kw)(s, t, labels), forward_kl(s, t, labels=labels, **kw))  # type: ignore[arg-type]
    torch.testing.assert_close(ReverseKLLoss(**kw)(s, t, labels), reverse_kl(s, t, labels=labels, **kw))  # type: ignore[arg-type]
    torch.testing.assert_close(
        SymmetricKLLoss(weight=0.3, **kw)(s, t),
        symmetric_kl(s, t, weight=0.3, **kw),  # type: ignore[arg-type]
    )
    torch.testing.assert_close(
        GeneralizedJSDLoss(beta=0.2, **kw)(s, t),
        generalized_jsd(s, t, beta=0.2, **kw),  # type: ignore[arg-type]
    )
    torch.testing.assert_close(
        DistillationLoss(alpha=0.7, **kw)(s, t, labels),
        distillation_loss(s, t, labels, alpha=0.7, **kw),  # type: ignore[arg-type]
    )
    with pytest.raises(ValueError, match="reduction"):
        ForwardKLLoss(reduction="avg")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda s, t: forward_kl(s, t, reduction="avg"), ValueError, "reduction must be one of"),
        (lambda s, t: forward_kl(s, t, temperature=0.0), ValueError, "temperature"),
        (lambda s, t: forward_kl(s, t, implementation="fast"), ValueError, "implementation"),
        (lambda s, t: forward_kl(s, t[:2]), ValueError, "teacher has batch shape"),
        (lambda s, t: forward_kl(s, t.numpy()), TypeError, "teacher must be a torch.Tensor"),
        (lambda s, t: forward_kl(s[0, 0], t), ValueError, "student_logits is a scalar"),
        (lambda s, t: forward_kl(s, t, labels=torch.zeros(3)), TypeError, "labels has dtype"),
        (lambda s, t: forward_kl(s, t, labels=torch.zeros(2, dtype=torch.long)), ValueError, "labels has shape"),
        (lambda s, t: forward_kl(s, t, mask=torch.ones(3)), TypeError, "mask must be a bool tensor"),
        (lambda s, t: forward_kl(s, t, teacher_kind="probits"), ValueError, "teacher_kind"),
        (lambda s, t: forward_kl(s, t, teacher_kind="probs"), ValueError, r"teacher has .* in row 0, entry \d; proba"),
        (lambda s, t: forward_kl(s, t, teacher_kind="log_probs"), ValueError, "log-probabilities must be"),
        (lambda s, t: forward_kl(s, torch.full_like(t, math.nan)), ValueError, "NaN"),
        (lambda s, t: forward_kl(s, t, temperature=1e-310), ValueError, "overflows"),
        (lambda s, t: symmetric_kl(s, t, weight=1.5), ValueError, "weight"),
        (lambda s, t: distillation_loss(s, t, torch.tensor([0, 1, 9])), ValueError, "outside"),
        (lambda s, t: distillation_loss(s, t, torch.tensor([0, 1, 2]), alpha=2.0), ValueError, "alpha"),
        (lambda s, t: forward_kl(s, t, chunk_size=0, implementation="chunked"), ValueError, "chunk_size"),
        (lambda s, t: forward_kl(s, TopK(torch.tensor([[0, 0]] * 3), t[:, :2])), ValueError, "distinct"),
        (lambda s, t: forward_kl(s, TopK(torch.tensor([[0, 1]] * 3), t[:, :2], rest="mass")), ValueError, "mass"),
    ],
)
def test_bad_input_names_the_argument(call, error: type[Exception], match: str) -> None:  # type: ignore[no-untyped-def]
    s, t = _logits(3, 5), _logits(3, 5, seed=1)
    with pytest.raises(error, match=match):
        call(s, t)
