"""The row-chunked path of top-k and probability teachers against the naive reference: values, gradients,
edge cases, memory, validation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

import kldiv
from kldiv.losses import TopK, distillation_loss, forward_kl, generalized_jsd, reverse_kl
from kldiv.losses.sparse import chunked_teacher_rows

from .cases import LOSSES
from .probes import Allocations

DT = torch.float64
INF = math.inf


def _by_function(out: torch.Tensor) -> bool:
    """Whether ``out`` comes from :class:`ChunkedTeacherRows` (through the reshape of ``reduction="none"``)."""
    node = out.grad_fn
    if node is not None and type(node).__name__ == "ViewBackward0":
        node = node.next_functions[0][0]
    return type(node).__name__ == "ChunkedTeacherRowsBackward"


def _teacher_leaf(teacher: torch.Tensor | TopK, grad: bool) -> tuple[torch.Tensor | TopK, torch.Tensor]:
    """A fresh copy of the teacher and the tensor of its values (a leaf requiring grad if ``grad``)."""
    if isinstance(teacher, TopK):
        values = teacher.values.detach().clone().requires_grad_(grad)
        return TopK(teacher.indices, values, kind=teacher.kind, rest=teacher.rest), values
    values = teacher.detach().clone().requires_grad_(grad)
    return values, values


def _both(
    loss: Callable[..., Any], s: torch.Tensor, teacher: torch.Tensor | TopK, *, teacher_grad: bool, **kw: Any
) -> list[tuple[torch.Tensor, ...]]:
    """Value and gradients (student, teacher values if ``teacher_grad``) of the naive and chunked paths; the
    output is weighted (per row for ``reduction="none"``) so that backward's scaling is exercised too."""
    out = []
    for impl in ("naive", "chunked"):
        s_ = s.detach().clone().requires_grad_()
        t_, values = _teacher_leaf(teacher, teacher_grad)
        v = loss(s_, t_, implementation=impl, **kw)
        w = torch.linspace(-1.0, 2.0, v.numel(), dtype=v.dtype).reshape(v.shape)
        leaves = (s_, values) if teacher_grad else (s_,)
        grads = torch.autograd.grad((v * w).sum() if v.dim() else v * 1.7, leaves)
        out.append((v, *grads))
    return out


def _assert_same(naive: tuple[torch.Tensor, ...], chunked: tuple[torch.Tensor, ...]) -> None:
    """Chunked equals naive: value to 1e-10, gradients to 1e-10 (relative to the largest entry); +inf, NaN alike."""
    (v0, *g0), (v1, *g1) = naive, chunked
    torch.testing.assert_close(v1, v0, rtol=1e-10, atol=1e-15, equal_nan=True)
    for a, b in zip(g1, g0, strict=True):
        assert a.dtype == b.dtype
        scale = float(b[torch.isfinite(b)].abs().max()) if bool(torch.isfinite(b).any()) else 1.0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13 * max(scale, 1.0), equal_nan=True)


def _rows_mask(g: torch.Generator, n: int, ignore: str) -> torch.Tensor:
    if ignore == "some":
        return torch.rand(n, generator=g) < 0.6
    return torch.full((n,), ignore == "none")


def _topk(g: torch.Generator, n: int, vocab: int, k: int, kind: str, rest: str, neg_inf: bool, full: bool) -> TopK:
    """Random distinct top-k ids in ``range(vocab)`` and values of ``kind``.

    ``rest="mass"``: true (log-)probabilities summing to at most 1 (exactly 1 if ``full``); a zero when ``neg_inf``.
    ``"renormalize"``: logits, log-softmax or softmax values; a ``-inf`` logit (zero probability) when ``neg_inf``.
    """
    idx = torch.rand(n, vocab, generator=g).argsort(-1)[:, :k]
    logits = 3 * torch.randn(n, k + (0 if full else 1), generator=g, dtype=DT)
    if neg_inf and k > 1:
        logits[:, 0] = -INF
    if rest == "mass":
        probs = logits.softmax(-1)[:, :k]
        values = probs if kind == "probs" else probs.log()
    elif kind == "logits":
        values = logits[:, :k]
    else:
        values = logits.log_softmax(-1)[:, :k]
        values = values.exp() if kind == "probs" else values
    return TopK(idx, values, kind=kind, rest=rest)  # type: ignore[arg-type]


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(0, 11),
    vocab=st.integers(1, 7),
    extra=st.integers(0, 2),
    k=st.integers(1, 9),
    chunk=st.integers(1, 4),
    name=st.sampled_from(sorted(LOSSES)),
    kind=st.sampled_from(["logits", "log_probs", "probs"]),
    rest=st.sampled_from(["renormalize", "mass"]),
    temperature=st.sampled_from([1.0, 0.6, 2.5]),
    reduction=st.sampled_from(["batchmean", "sum", "mean", "none"]),
    ignore=st.sampled_from(["none", "some", "all"]),
    neg_inf=st.booleans(),
    full=st.booleans(),
    teacher_grad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_topk_chunked_equals_naive(
    n: int,
    vocab: int,
    extra: int,
    k: int,
    chunk: int,
    name: str,
    kind: str,
    rest: str,
    temperature: float,
    reduction: str,
    ignore: str,
    neg_inf: bool,
    full: bool,
    teacher_grad: bool,
    seed: int,
) -> None:
    """Every divergence, both rest policies, all kinds; ids beyond the student (renormalize), k = 1 and k = V."""
    if rest == "mass":
        kind = "probs" if kind == "logits" else kind
        extra, temperature = 0, 1.0  # mass: the ids lie in the student's vocabulary, T = 1
    g = torch.Generator().manual_seed(seed)
    k = min(k, vocab + extra)
    teacher = _topk(g, n, vocab + extra, k, kind, rest, neg_inf, full)
    s = 3 * torch.randn(n, vocab, generator=g, dtype=DT)
    if vocab > 1 and n:
        s[0, 0] = -INF  # a student zero (+inf forward KL where the teacher has mass there)
    mask = _rows_mask(g, n, ignore)
    s[~mask] = math.nan  # ignored rows may hold anything
    teacher.values[~mask] = math.nan
    naive, chunked = _both(
        LOSSES[name],
        s,
        teacher,
        teacher_grad=teacher_grad,
        temperature=temperature,
        reduction=reduction,
        mask=mask,
        chunk_size=chunk,
    )
    _assert_same(naive, chunked)


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(0, 11),
    vocab=st.integers(1, 7),
    teacher_vocab=st.integers(1, 9),
    chunk=st.integers(1, 4),
    name=st.sampled_from(sorted(LOSSES)),
    temperature=st.sampled_from([1.0, 0.6, 2.5]),
    reduction=st.sampled_from(["batchmean", "sum", "mean", "none"]),
    ignore=st.sampled_from(["none", "some", "all"]),
    zeros=st.booleans(),
    teacher_grad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_probs_teacher_chunked_equals_naive(
    n: int,
    vocab: int,
    teacher_vocab: int,
    chunk: int,
    name: str,
    temperature: float,
    reduction: str,
    ignore: str,
    zeros: bool,
    teacher_grad: bool,
    seed: int,
) -> None:
    """Dense probability teachers, vocabularies that differ (teacher mass beyond the student: +inf forward KL)."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, teacher_vocab, generator=g, dtype=DT)
    if zeros and teacher_vocab > 1:
        logits[:, -1] = -INF  # exact zero probabilities
    p = logits.softmax(-1)
    s = 3 * torch.randn(n, vocab, generator=g, dtype=DT)
    mask = _rows_mask(g, n, ignore)
    s[~mask] = math.nan
    p[~mask] = math.nan
    naive, chunked = _both(
        LOSSES[name],
        s,
        p,
        teacher_grad=teacher_grad,
        teacher_kind="probs",
        temperature=temperature,
        reduction=reduction,
        mask=mask,
        chunk_size=chunk,
    )
    _assert_same(naive, chunked)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 9),
    vocab=st.integers(1, 6),
    k=st.integers(1, 6),
    alpha=st.sampled_from([0.0, 0.3, 1.0]),
    temperature=st.sampled_from([1.0, 2.0]),
    teacher=st.sampled_from(["renormalize", "mass", "probs"]),
    reduction=st.sampled_from(["batchmean", "sum", "mean", "none"]),
    teacher_grad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_distillation_chunked_equals_naive(
    n: int,
    vocab: int,
    k: int,
    alpha: float,
    temperature: float,
    teacher: str,
    reduction: str,
    teacher_grad: bool,
    seed: int,
) -> None:
    """``alpha T^2 KL + (1 - alpha) CE`` with ignored labels (NaN rows), for top-k and probability teachers."""
    g = torch.Generator().manual_seed(seed)
    k = min(k, vocab)
    t: torch.Tensor | TopK
    if teacher == "probs":
        t = torch.randn(n, vocab, generator=g, dtype=DT).softmax(-1)
    else:
        temperature = 1.0 if teacher == "mass" else temperature
        t = _topk(g, n, vocab, k, "log_probs", teacher, neg_inf=False, full=False)
    labels = torch.randint(0, vocab, (n,), generator=g)
    ignored = torch.rand(n, generator=g) < 0.3
    labels[ignored] = -100
    s = 2 * torch.randn(n, vocab, generator=g, dtype=DT)
    s[ignored] = math.nan

    def loss(s_: torch.Tensor, t_: torch.Tensor | TopK, **kw: Any) -> torch.Tensor:
        return distillation_loss(s_, t_, labels, alpha=alpha, temperature=temperature, reduction=reduction, **kw)  # type: ignore[arg-type]

    naive, chunked = _both(loss, s, t, teacher_grad=teacher_grad, chunk_size=2)
    _assert_same(naive, chunked)


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
@pytest.mark.parametrize("teacher", ["renormalize", "mass", "probs"])
def test_all_rows_ignored_is_zero_with_zero_gradient(reduction: str, teacher: str) -> None:
    n, vocab = 5, 4
    s = torch.full((n, vocab), math.nan, dtype=DT, requires_grad=True)
    values = torch.full((n, 2 if teacher != "probs" else vocab), -INF, dtype=DT, requires_grad=True)
    t: torch.Tensor | TopK = values
    if teacher != "probs":
        t = TopK(torch.tensor([[0, 1]] * n), values, kind="log_probs", rest=teacher)  # type: ignore[arg-type]
    labels = torch.full((n,), -100)
    out = distillation_loss(s, t, labels, teacher_kind="probs", temperature=1.0, reduction=reduction, chunk_size=2)  # type: ignore[arg-type]
    assert _by_function(out)
    assert (out == 0).all()
    gs, gt = torch.autograd.grad(out.sum(), (s, values))
    assert (gs == 0).all()
    assert (gt == 0).all()


def test_values_and_gradients_are_bit_for_bit_the_naive_ones() -> None:
    """The same kernels on rows of the same width (the student padded like the whole batch's dense teacher); with a
    unit ``grad_output`` (a non-unit one rescales the stored gradient: one more rounding)."""
    g = torch.Generator().manual_seed(8)
    s = 3 * torch.randn(9, 6, generator=g, dtype=DT)
    values, idx = (3 * torch.randn(9, 9, generator=g, dtype=DT)).topk(3, -1)
    values[idx >= 6] = -INF  # ids beyond the student, with zero teacher probability: finite values
    for name in ("forward", "reverse", "jsd"):
        results = []
        for impl in ("naive", "chunked"):
            s_, v_ = s.clone().requires_grad_(), values.clone().requires_grad_()
            out = LOSSES[name](s_, TopK(idx, v_), temperature=1.5, reduction="none", implementation=impl, chunk_size=2)
            results.append((out, *torch.autograd.grad(out.sum(), (s_, v_))))  # unit grad_output: no rescaling
        for a, b in zip(*results, strict=True):
            assert torch.equal(a, b), name


def test_topk_ids_beyond_student_vocab_are_infinite_forward_kl() -> None:
    s = torch.randn(4, 5, dtype=DT)
    idx = torch.tensor([[0, 1], [2, 7], [3, 4], [6, 1]])  # rows 1 and 3 put teacher mass on ids 7 and 6
    values = torch.randn(4, 2, dtype=DT)
    values[3, 0] = -INF  # ... except that row 3 gives id 6 zero probability
    for kind in ("logits", "log_probs"):
        top = TopK(idx, values, kind=kind)
        got = forward_kl(s, top, reduction="none", chunk_size=1)
        ref = forward_kl(s, top, reduction="none", implementation="naive")
        assert got[1] == INF
        assert torch.isfinite(got[[0, 2, 3]]).all()
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)
        assert bool(torch.isfinite(generalized_jsd(s, top, chunk_size=1)))


def test_auto_takes_the_chunked_function() -> None:
    s = torch.randn(3, 5, dtype=DT, requires_grad=True)
    top = TopK(torch.tensor([[0, 1]] * 3), torch.randn(3, 2, dtype=DT))
    p = torch.randn(3, 5, dtype=DT).softmax(-1)
    for out in (forward_kl(s, top), reverse_kl(s, p, teacher_kind="probs", implementation="chunked")):
        assert _by_function(out)
    assert forward_kl(s, top, implementation="naive").grad_fn is not None
    assert not _by_function(forward_kl(s, top, implementation="naive"))


def test_no_grad_returns_the_same_value_without_the_function() -> None:
    s = torch.randn(6, 5, dtype=DT, requires_grad=True)
    top = TopK(torch.tensor([[0, 3]] * 6), torch.randn(6, 2, dtype=DT))
    with torch.no_grad():
        got = forward_kl(s, top, temperature=2.0, chunk_size=4)
    assert got.grad_fn is None
    torch.testing.assert_close(got, forward_kl(s.detach(), top, temperature=2.0, implementation="naive"))


@pytest.mark.parametrize(
    ("teacher", "dtype"),
    [
        *[(t, d) for t in ("renormalize", "mass") for d in (torch.bfloat16, torch.float16)],
        ("probs", torch.float16),
        ("probs", torch.bfloat16),  # regression: bf16 probabilities were checked with float32's sum tolerance
    ],
)
def test_low_precision_upcast_gradients_in_input_dtype(dtype: torch.dtype, teacher: str) -> None:
    g = torch.Generator().manual_seed(4)
    s = (3 * torch.randn(10, 30, generator=g)).to(dtype)
    t: torch.Tensor | TopK
    if teacher == "probs":
        t = torch.randn(10, 30, generator=g).softmax(-1).to(dtype)
        kw: dict[str, Any] = {"teacher_kind": "probs", "temperature": 2.0}
    else:
        t = _topk(g, 10, 30, 6, "log_probs", teacher, neg_inf=False, full=False)
        t = TopK(t.indices, t.values.to(dtype), kind="log_probs", rest=t.rest)
        kw = {"temperature": 1.0 if teacher == "mass" else 2.0}
    results = []
    for impl in ("naive", "chunked"):
        s_ = s.clone().requires_grad_()
        t_, values = _teacher_leaf(t, True)
        out = generalized_jsd(s_, t_, implementation=impl, chunk_size=3, **kw)
        results.append((out, *torch.autograd.grad(out, (s_, values))))  # grad_output 1: no second rounding
    (v0, gs0, gt0), (v1, gs1, gt1) = results
    assert v1.dtype == torch.float32
    assert gs1.dtype == dtype
    assert gt1.dtype == dtype
    torch.testing.assert_close(v1, v0, rtol=1e-6, atol=0)
    torch.testing.assert_close(gs1, gs0, rtol=0, atol=0)  # the same float32 arithmetic and one final rounding
    torch.testing.assert_close(gt1, gt0, rtol=0, atol=0)


@pytest.mark.parametrize("teacher", ["renormalize", "mass", "probs"])
def test_chunked_path_allocates_chunk_times_vocab(teacher: str) -> None:
    """Forward and backward allocate nothing of N x V but the student's gradient; the naive path (which densifies
    the teacher) fails the same probe."""
    n, vocab, k, chunk = 256, 40, 4, 4
    g = torch.Generator().manual_seed(5)
    t: torch.Tensor | TopK
    if teacher == "probs":
        t = torch.randn(n, vocab, generator=g, dtype=DT).softmax(-1)
    else:
        t = _topk(g, n, vocab, k, "log_probs", teacher, neg_inf=False, full=False)
    kind = "probs" if teacher == "probs" else "logits"
    bound = 8 * chunk * (vocab + 1)  # far below n * vocab = 10240
    for impl in ("chunked", "naive"):
        s = torch.randn(n, vocab, generator=g, dtype=DT, requires_grad=True)
        probe = Allocations()
        with probe:
            out = forward_kl(s, t, teacher_kind=kind, implementation=impl, chunk_size=chunk)  # type: ignore[arg-type]
            torch.autograd.grad(out, s)
        large = [(op, size) for op, size in probe.allocated if size > bound]
        if impl == "chunked":
            assert large == [("aten.empty_like.default", n * vocab)], large  # the student gradient buffer
        else:
            assert len(large) > 1
            assert max(size for _, size in large) >= n * vocab


@pytest.mark.parametrize("teacher", ["renormalize", "mass", "probs"])
@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_gradcheck_chunked_teacher_rows(teacher: str, reduction: str) -> None:
    g = torch.Generator().manual_seed(6)
    s = torch.randn(5, 4, generator=g, dtype=DT, requires_grad=True)
    valid = torch.tensor([True, False, True, True, True])
    labels = torch.tensor([0, 1, 3, 2, 1])
    if teacher == "probs":
        values = torch.randn(5, 4, generator=g, dtype=DT).softmax(-1).requires_grad_()
        indices = None
    else:
        top = _topk(g, 5, 4, 2, "log_probs", teacher, neg_inf=False, full=False)
        values, indices = top.values.requires_grad_(), top.indices
    temperature = 1.0 if teacher == "mass" else 1.5

    def fn(s_: torch.Tensor, v_: torch.Tensor) -> torch.Tensor:
        t: torch.Tensor | TopK = v_ if indices is None else TopK(indices, v_, kind="log_probs", rest=teacher)  # type: ignore[arg-type]
        out = chunked_teacher_rows(
            "jsd",
            s_,
            t,
            valid,
            teacher_kind="probs",
            temperature=temperature,
            coef=0.3,
            normalized=False,
            reduction=reduction,  # type: ignore[arg-type]
            kl_weight=0.8,
            ce_weight=0.2,
            labels=labels,
            chunk_size=2,
        )
        assert _by_function(out)
        return out

    with kldiv.validation(False):  # the perturbed probabilities leave the simplex
        assert gradcheck(fn, (s, values), eps=1e-6, atol=1e-8)


def _bad_cases() -> list[tuple[str, Callable[[str], Any], str]]:
    """(case, call(implementation), expected message part): a loss over 6 tokens, 5 ids, chunks of 2 rows."""
    g = torch.Generator().manual_seed(7)
    s = torch.randn(6, 5, generator=g, dtype=DT)
    p = torch.randn(6, 5, generator=g, dtype=DT).softmax(-1)
    idx = torch.tensor([[0, 1]] * 6)
    lp = torch.randn(6, 3, generator=g, dtype=DT).log_softmax(-1)[:, :2]

    def loss(student: torch.Tensor, teacher: torch.Tensor | TopK, **kw: Any) -> Callable[[str], Any]:
        return lambda impl: forward_kl(student, teacher, implementation=impl, chunk_size=2, **kw)  # type: ignore[arg-type]

    s_nan, s_inf, p_big, p_neg, idx_far = s.clone(), s.clone(), p.clone(), p.clone(), idx.clone()
    s_nan[4, 2] = math.nan
    s_inf[5] = -INF
    p_big[5, 0] += 0.1
    p_neg[3, :2] = torch.tensor([-0.1, p_neg[3, 0] + p_neg[3, 1] + 0.1])
    idx_far[1, 0], idx_far[4, 1] = 5, 7  # the naive message names the largest id of the batch, 7
    lp_big = lp.clone()
    lp_big[3] = torch.tensor([-0.1, -0.2])
    return [
        ("student NaN", loss(s_nan, TopK(idx, lp)), "NaN"),
        ("student -inf row", loss(s_inf, TopK(idx, lp)), "-inf everywhere"),
        ("overflow", loss(s, TopK(idx, lp), temperature=1e-310), "overflows"),
        ("probs sum", loss(s, p_big, teacher_kind="probs"), "teacher sums to .* in row 5; probabilities must sum to 1"),
        ("probs negative", loss(s, p_neg, teacher_kind="probs"), r"teacher has -0.1 in row 3, entry 0; probabilities"),
        ("topk probs > 1", loss(s, TopK(idx, torch.where(idx == 1, 1.5, 0.2).double(), kind="probs")), r"\[0, 1\]"),
        ("mass probs sum", loss(s, TopK(idx, torch.full((6, 2), 0.6, dtype=DT), kind="probs", rest="mass")), "at most"),
        ("mass log_probs", loss(s, TopK(idx, lp_big, kind="log_probs", rest="mass")), "logsumexp <= 0"),
        ("mass ids", loss(s, TopK(idx_far, lp, kind="log_probs", rest="mass")), "reach 7"),
        ("mass temperature", loss(s, TopK(idx, lp, kind="log_probs", rest="mass"), temperature=2.0), "temperature=1"),
        ("mass logits", loss(s, TopK(idx, lp, rest="mass")), "needs kind"),
        ("distinct", loss(s, TopK(torch.tensor([[0, 0]] * 6), lp)), "distinct"),
        ("negative id", loss(s, TopK(-idx - 1, lp)), ">= 0"),
        ("shape", loss(s, TopK(idx[:5], lp[:5])), "must both have shape"),
        (
            "labels",
            lambda impl: distillation_loss(
                s, TopK(idx, lp), torch.tensor([0, 1, 2, 9, 0, 1]), implementation=impl, chunk_size=2
            ),
            "labels holds 9",
        ),
    ]


@pytest.mark.parametrize(("case", "call", "match"), _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_input_raises_the_naive_error(case: str, call: Callable[[str], Any], match: str) -> None:
    messages = []
    for impl in ("naive", "chunked"):
        with pytest.raises(ValueError, match=match) as info:
            call(impl)
        messages.append(str(info.value))
    assert messages[0] == messages[1], case


@pytest.mark.parametrize("chunk_size", [0, -3, True, 2.0])
def test_bad_chunk_size_names_the_argument(chunk_size: Any) -> None:
    s = torch.randn(3, 5, dtype=DT)
    top = TopK(torch.tensor([[0, 1]] * 3), torch.randn(3, 2, dtype=DT))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        forward_kl(s, top, chunk_size=chunk_size)
