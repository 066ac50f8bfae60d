"""Fused linear losses equal the functional losses of the materialized logits, in value and in every gradient."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import pytest
import torch
from torch import Tensor

from kldiv.losses import (
    distillation_loss,
    forward_kl,
    fused_linear_distillation_loss,
    fused_linear_jsd,
    fused_linear_kl,
    generalized_jsd,
    reverse_kl,
    symmetric_kl,
)

from .backends import BACKENDS, backend

F64 = torch.float64

KINDS = ["forward", "reverse", "symmetric", "jsd", "jsd_normalized", "distillation"]
REDUCTIONS = ["batchmean", "sum", "mean", "none"]
IGNORE = -100


def fused(kind: str, hidden: Tensor, weight: Tensor, teacher: Any, labels: Tensor | None, **kw: Any) -> Tensor:
    """The fused linear loss of ``kind`` (``kw``: bias, temperature, mask, reduction, chunk_size, ...)."""
    if kind in ("forward", "reverse"):
        return fused_linear_kl(hidden, weight, teacher, direction=kind, labels=labels, **kw)
    if kind == "symmetric":
        return fused_linear_kl(hidden, weight, teacher, direction="symmetric", forward_weight=0.3, labels=labels, **kw)
    if kind == "jsd":
        return fused_linear_jsd(hidden, weight, teacher, beta=0.3, labels=labels, **kw)
    if kind == "jsd_normalized":
        return fused_linear_jsd(hidden, weight, teacher, beta=0.7, normalized=True, labels=labels, **kw)
    assert kind == "distillation"
    assert labels is not None
    return fused_linear_distillation_loss(hidden, weight, teacher, labels, alpha=0.3, **kw)


def reference(kind: str, logits: Tensor, teacher: Tensor, labels: Tensor | None, **kw: Any) -> Tensor:
    """The same loss of the materialized logits by the naive functional path."""
    kw = {"implementation": "naive", **kw}
    if kind == "forward":
        return forward_kl(logits, teacher, labels=labels, **kw)
    if kind == "reverse":
        return reverse_kl(logits, teacher, labels=labels, **kw)
    if kind == "symmetric":
        return symmetric_kl(logits, teacher, weight=0.3, labels=labels, **kw)
    if kind == "jsd":
        return generalized_jsd(logits, teacher, beta=0.3, labels=labels, **kw)
    if kind == "jsd_normalized":
        return generalized_jsd(logits, teacher, beta=0.7, normalized=True, labels=labels, **kw)
    assert labels is not None
    return distillation_loss(logits, teacher, labels, alpha=0.3, **kw)


def make(n: int = 13, h: int = 6, v: int = 9, v_t: int | None = None, seed: int = 0) -> dict[str, Tensor]:
    """Random float64 inputs; tokens 2 and 7 masked, 4 and 9 labelled ``IGNORE``; invalid rows hold NaN in
    ``hidden_nan`` and in every teacher form (``hidden`` keeps them finite, for the reference)."""
    v_t = v if v_t is None else v_t
    g = torch.Generator().manual_seed(seed)
    d = {
        "hidden": torch.randn(n, h, dtype=F64, generator=g),
        "weight": torch.randn(v, h, dtype=F64, generator=g),
        "bias": torch.randn(v, dtype=F64, generator=g),
        "t_hidden": torch.randn(n, 4, dtype=F64, generator=g),
        "t_weight": torch.randn(v_t, 4, dtype=F64, generator=g),
        "t_bias": torch.randn(v_t, dtype=F64, generator=g),
        "labels": torch.randint(0, v, (n,), generator=g),
        "mask": torch.ones(n, dtype=torch.bool),
    }
    d["mask"][[2, 7] if n > 7 else []] = False
    d["labels"][[4, 9] if n > 9 else []] = IGNORE
    valid = d["mask"] & (d["labels"] != IGNORE)
    d["t_logits"] = d["t_hidden"] @ d["t_weight"].T + d["t_bias"]
    for key in ("t_hidden", "t_logits"):
        d[key] = torch.where(valid[:, None], d[key], torch.nan)
    d["hidden_nan"] = torch.where(valid[:, None], d["hidden"], torch.nan)
    return d


def run(
    loss: Callable[..., Tensor], leaves: tuple[Tensor, ...], reduction: str, seed: int = 1
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Value and gradients of ``loss(*leaves)``; backward with a non-uniform ``grad_output`` (0.7 for a scalar)."""
    leaves = tuple(x.detach().clone().requires_grad_() for x in leaves)
    value = loss(*leaves)
    if reduction == "none":
        grad_output = torch.randn(value.shape, dtype=F64, generator=torch.Generator().manual_seed(seed)).to(value.dtype)
    else:
        grad_output = torch.tensor(0.7, dtype=value.dtype)
    return value.detach(), torch.autograd.grad(value, leaves, grad_output)


def assert_same(got: tuple[Tensor, tuple[Tensor, ...]], ref: tuple[Tensor, tuple[Tensor, ...]], tol: float) -> None:
    torch.testing.assert_close(got[0], ref[0].to(got[0].dtype), rtol=tol, atol=tol)
    for name, a, b in zip(("hidden", "weight", "bias"), got[1], ref[1], strict=True):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=tol, atol=tol, msg=lambda m, k=name: f"d{k}: {m}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("chunk_size", [1, 4, 100])
@pytest.mark.parametrize("teacher_form", ["logits", "head"])
@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_matches_materialized_logits(
    kind: str, reduction: str, chunk_size: int, teacher_form: str, temperature: float
) -> None:
    d = make()
    teacher = d["t_logits"] if teacher_form == "logits" else (d["t_hidden"], d["t_weight"], d["t_bias"])
    kw: dict[str, Any] = {"temperature": temperature, "mask": d["mask"], "reduction": reduction}
    got = run(
        lambda h, w, b: fused(kind, h, w, teacher, d["labels"], bias=b, chunk_size=chunk_size, **kw),
        (d["hidden_nan"], d["weight"], d["bias"]),
        reduction,
    )
    ref = run(
        lambda h, w, b: reference(kind, h @ w.T + b, d["t_logits"], d["labels"], **kw),
        (d["hidden"], d["weight"], d["bias"]),
        reduction,
    )
    assert_same(got, ref, 1e-10)
    assert got[0].shape == ((13,) if reduction == "none" else ())
    valid = d["mask"] & (d["labels"] != IGNORE)
    assert bool((got[1][0][~valid] == 0).all())  # the NaN rows get an exact zero gradient
    if reduction == "none":
        assert bool((got[0][~valid] == 0).all())


@pytest.mark.parametrize("kind", KINDS)
def test_without_bias_mask_or_labels(kind: str) -> None:
    d = make(n=6)
    labels = d["labels"] if kind == "distillation" else None
    leaves = (d["hidden"], d["weight"])
    got = run(lambda h, w: fused(kind, h, w, d["t_logits"], labels, chunk_size=4), leaves, "batchmean")
    ref = run(lambda h, w: reference(kind, h @ w.T, d["t_logits"], labels), leaves, "batchmean")
    torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-10)
    for a, b in zip(got[1], ref[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("kind", "v_t"), [("forward", 6), ("reverse", 12), ("jsd", 6), ("jsd", 12), ("distillation", 6)]
)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_teacher_vocabulary_may_differ(kind: str, v_t: int, reduction: str) -> None:
    d = make(v_t=v_t)
    kw: dict[str, Any] = {"temperature": 1.3, "mask": d["mask"], "reduction": reduction}
    for teacher in (d["t_logits"], (d["t_hidden"], d["t_weight"], d["t_bias"])):
        got = run(
            lambda h, w, b, t=teacher: fused(kind, h, w, t, d["labels"], bias=b, chunk_size=5, **kw),
            (d["hidden_nan"], d["weight"], d["bias"]),
            reduction,
        )
        ref = run(
            lambda h, w, b: reference(kind, h @ w.T + b, d["t_logits"], d["labels"], **kw),
            (d["hidden"], d["weight"], d["bias"]),
            reduction,
        )
        assert bool(torch.isfinite(got[0]).all())
        assert_same(got, ref, 1e-10)


@pytest.mark.parametrize("kind", ["forward", "jsd", "distillation"])
def test_teacher_neg_inf_logits_are_exact_zeros(kind: str) -> None:
    d = make()
    teacher = d["t_logits"].clone()
    teacher[:, [0, 3]] = -torch.inf
    kw: dict[str, Any] = {"temperature": 2.0, "mask": d["mask"], "reduction": "none"}
    got = run(
        lambda h, w, b: fused(kind, h, w, teacher, d["labels"], bias=b, chunk_size=3, **kw),
        (d["hidden_nan"], d["weight"], d["bias"]),
        "none",
    )
    ref = run(
        lambda h, w, b: reference(kind, h @ w.T + b, teacher, d["labels"], **kw),
        (d["hidden"], d["weight"], d["bias"]),
        "none",
    )
    assert bool(torch.isfinite(got[0]).all())
    assert_same(got, ref, 1e-10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("how", ["mask", "labels"])
def test_all_rows_ignored_gives_zero_not_nan(kind: str, reduction: str, how: str) -> None:
    d = make(n=5)
    hidden = torch.full((5, 6), torch.nan, dtype=F64, requires_grad=True)
    weight, bias = d["weight"].requires_grad_(), d["bias"].requires_grad_()
    teacher = torch.full((5, 9), torch.nan, dtype=F64)
    labels = torch.full((5,), IGNORE) if how == "labels" else d["labels"]
    mask = torch.zeros(5, dtype=torch.bool) if how == "mask" else None
    value = fused(kind, hidden, weight, teacher, labels, bias=bias, mask=mask, reduction=reduction, chunk_size=2)
    grads = torch.autograd.grad(value, (hidden, weight, bias), torch.ones_like(value))
    assert value.shape == ((5,) if reduction == "none" else ())
    assert bool((value == 0).all())
    for g in grads:
        assert bool((g == 0).all())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["batchmean", "none"])
@pytest.mark.parametrize("fast", BACKENDS)
def test_float32_matches_float64_reference(kind: str, reduction: str, fast: str) -> None:
    # the C kernel or the torch ops for the float32 KL rows (the JSD takes the general path either way)
    with nullcontext() if kind.startswith("jsd") else backend(fast):
        _float32_matches_float64_reference(kind, reduction)


def _float32_matches_float64_reference(kind: str, reduction: str) -> None:
    d = make(n=40, h=16, v=50)
    leaves = tuple(d[k].float().double() for k in ("hidden", "weight", "bias"))  # the float32 values, exactly
    kw: dict[str, Any] = {"temperature": 1.5, "mask": d["mask"], "reduction": reduction}
    teacher = d["t_logits"].float()
    got = run(
        lambda h, w, b: fused(kind, h, w, teacher, d["labels"], bias=b, chunk_size=7, **kw),
        tuple(x.float() for x in leaves),
        reduction,
    )
    ref = run(
        lambda h, w, b: reference(kind, h @ w.T + b, teacher.double(), d["labels"], **kw),
        leaves,
        reduction,
    )
    assert got[0].dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in got[1])
    assert_same(got, ref, 2e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_bfloat16_upcasts_and_returns_gradients_in_bfloat16(kind: str, reduction: str) -> None:
    d = make(n=20, h=8, v=30)
    leaves = tuple(d[k].bfloat16().double() for k in ("hidden", "weight", "bias"))
    teacher = d["t_logits"].nan_to_num().bfloat16()
    kw: dict[str, Any] = {"temperature": 2.0, "mask": d["mask"], "reduction": reduction}
    got = run(
        lambda h, w, b: fused(kind, h, w, teacher, d["labels"], bias=b, chunk_size=6, **kw),
        tuple(x.bfloat16() for x in leaves),
        reduction,
    )
    ref = run(lambda h, w, b: reference(kind, h @ w.T + b, teacher.double(), d["labels"], **kw), leaves, reduction)
    assert got[0].dtype == torch.float32
    assert all(g.dtype == torch.bfloat16 for g in got[1])
    assert_same(got, ref, 3e-2)  # the logits are rounded to bfloat16 (as when materialized in bfloat16)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(reduction: str) -> None:
    hidden = torch.zeros(0, 4, dtype=F64, requires_grad=True)
    weight = torch.ones(5, 4, dtype=F64, requires_grad=True)
    value = fused_linear_jsd(hidden, weight, torch.zeros(0, 5, dtype=F64), reduction=reduction)  # type: ignore[arg-type]
    (grad_w,) = torch.autograd.grad(value.sum(), weight)
    assert value.shape == ((0,) if reduction == "none" else ())
    assert bool((grad_w == 0).all())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_gradcheck(kind: str, reduction: str) -> None:
    d = make(n=5, h=3, v=4, seed=3)
    mask = torch.tensor([True, True, False, True, True])
    labels = torch.tensor([1, IGNORE, 0, 3, 2])
    teacher = (d["t_hidden"].nan_to_num(), d["t_weight"], d["t_bias"]) if kind == "jsd" else d["t_logits"].nan_to_num()
    leaves = tuple(d[k].clone().requires_grad_() for k in ("hidden", "weight", "bias"))
    assert torch.autograd.gradcheck(
        lambda h, w, b: fused(
            kind, h, w, teacher, labels, bias=b, mask=mask, temperature=1.4, reduction=reduction, chunk_size=2
        ),
        leaves,
    )


def test_gradients_only_where_required() -> None:
    d = make()
    hidden = d["hidden"].clone().requires_grad_()
    t_logits = d["t_logits"].nan_to_num().requires_grad_()
    for reduction in ("sum", "none"):  # weight and bias need no gradient: not computed, hidden's still exact
        value = fused_linear_kl(hidden, d["weight"], t_logits, bias=d["bias"], reduction=reduction)  # type: ignore[arg-type]
        value.sum().backward()
    h = d["hidden"].clone().requires_grad_()
    ref = forward_kl(h @ d["weight"].T + d["bias"], t_logits.detach(), reduction="sum", implementation="naive")
    torch.testing.assert_close(hidden.grad, 2 * torch.autograd.grad(ref, h)[0], rtol=1e-10, atol=1e-12)
    assert t_logits.grad is None  # no gradient flows to the teacher


def test_none_ignored_rows_get_zero_gradient_whatever_their_grad_output() -> None:
    d = make()
    hidden = d["hidden_nan"].clone().requires_grad_()
    weight = d["weight"].clone().requires_grad_()
    valid = d["mask"] & (d["labels"] != IGNORE)
    grad_output = torch.where(valid, 1.0, torch.inf).to(F64)
    value = fused_linear_jsd(hidden, weight, d["t_logits"], labels=d["labels"], mask=d["mask"], reduction="none")
    gh, gw = torch.autograd.grad(value, (hidden, weight), grad_output)
    assert bool(torch.isfinite(gw).all())
    assert bool((gh[~valid] == 0).all())
    assert bool(torch.isfinite(gh).all())


def test_none_equals_the_rows_of_sum() -> None:
    d = make()
    kw: dict[str, Any] = {"bias": d["bias"], "mask": d["mask"], "labels": d["labels"], "chunk_size": 4}
    rows = fused_linear_jsd(d["hidden_nan"], d["weight"], d["t_logits"], reduction="none", **kw)
    total = fused_linear_jsd(d["hidden_nan"], d["weight"], d["t_logits"], reduction="sum", **kw)
    torch.testing.assert_close(rows.sum(), total, rtol=1e-12, atol=0)


def test_default_chunk_size_and_one_row() -> None:
    d = make(n=1)
    value = fused_linear_kl(d["hidden"], d["weight"], d["t_logits"], direction="reverse")
    ref = reverse_kl(d["hidden"] @ d["weight"].T, d["t_logits"], implementation="naive")
    torch.testing.assert_close(value, ref, rtol=1e-12, atol=0)


def _bad_cases() -> list[tuple[str, Callable[[], object], type[Exception], str]]:
    d = make()
    h, w, b, t, lab = d["hidden"], d["weight"], d["bias"], d["t_logits"].nan_to_num(), d["labels"]
    head = (d["t_hidden"].nan_to_num(), d["t_weight"], d["t_bias"])
    return [
        ("hidden 1-D", lambda: fused_linear_kl(h[0], w, t), ValueError, r"hidden must have shape \(N, H\)"),
        ("hidden int", lambda: fused_linear_kl(h.long(), w, t), TypeError, "hidden has dtype torch.int64"),
        ("hidden list", lambda: fused_linear_kl([[1.0]], w, t), TypeError, "hidden must be a torch.Tensor"),  # type: ignore[arg-type]
        ("weight V = 0", lambda: fused_linear_kl(h, w[:0], t), ValueError, "an empty vocabulary"),
        ("weight H", lambda: fused_linear_kl(h, w[:, :2], t), ValueError, r"weight has shape \(9, 2\).*H = .* 6"),
        ("bias shape", lambda: fused_linear_kl(h, w, t, bias=b[:3]), ValueError, r"bias must have shape \(9,\)"),
        ("bias int", lambda: fused_linear_kl(h, w, t, bias=b.long()), TypeError, "bias has dtype torch.int64"),
        ("teacher rows", lambda: fused_linear_kl(h, w, t[:3]), ValueError, r"teacher logits have shape \(3, 9\)"),
        ("teacher 3-D", lambda: fused_linear_kl(h, w, t[None]), ValueError, "teacher must have shape"),
        ("teacher type", lambda: fused_linear_kl(h, w, [t]), TypeError, "teacher must be"),  # type: ignore[arg-type]
        ("teacher tuple len", lambda: fused_linear_kl(h, w, head[:2]), TypeError, "teacher must be"),  # type: ignore[arg-type]
        (
            "teacher_hidden rows",
            lambda: fused_linear_kl(h, w, (head[0][:3], head[1], head[2])),
            ValueError,
            "teacher_hidden has 3 rows, expected N = 13",
        ),
        (
            "teacher_weight H",
            lambda: fused_linear_kl(h, w, (head[0], head[1][:, :2], head[2])),
            ValueError,
            "teacher_weight has shape",
        ),
        (
            "teacher_bias shape",
            lambda: fused_linear_kl(h, w, (head[0], head[1], head[2][:2])),
            ValueError,
            r"teacher_bias must have shape \(9,\)",
        ),
        ("mask shape", lambda: fused_linear_kl(h, w, t, mask=d["mask"][:3]), ValueError, "mask has shape"),
        ("mask dtype", lambda: fused_linear_kl(h, w, t, mask=d["mask"].long()), TypeError, "mask must be a bool"),
        ("labels dtype", lambda: fused_linear_kl(h, w, t, labels=lab.double()), TypeError, "labels has dtype"),
        ("labels shape", lambda: fused_linear_jsd(h, w, t, labels=lab[:3]), ValueError, "labels has shape"),
        (
            "label out of range",
            lambda: fused_linear_distillation_loss(h, w, t, torch.where(torch.arange(13) == 5, 9, lab)),
            ValueError,
            r"labels holds 9 at index 5, outside \[0, 9\)",
        ),
        ("negative label", lambda: fused_linear_distillation_loss(h, w, t, lab - 20), ValueError, "labels holds -"),
        ("labels missing", lambda: fused_linear_distillation_loss(h, w, t, None), TypeError, "labels must be"),  # type: ignore[arg-type]
        ("direction", lambda: fused_linear_kl(h, w, t, direction="jsd"), ValueError, "direction must be one of"),  # type: ignore[arg-type]
        (
            "forward_weight without symmetric",
            lambda: fused_linear_kl(h, w, t, forward_weight=0.2),
            ValueError,
            "forward_weight applies to direction='symmetric' only",
        ),
        (
            "forward_weight range",
            lambda: fused_linear_kl(h, w, t, direction="symmetric", forward_weight=1.5),
            ValueError,
            r"forward_weight must be in \[0.0, 1.0\], got 1.5",
        ),
        ("beta 0", lambda: fused_linear_jsd(h, w, t, beta=0.0), ValueError, "pass normalized=True"),
        ("beta range", lambda: fused_linear_jsd(h, w, t, beta=1.5), ValueError, "beta must be in"),
        ("normalized type", lambda: fused_linear_jsd(h, w, t, normalized=1), TypeError, "normalized must be a bool"),  # type: ignore[arg-type]
        ("alpha", lambda: fused_linear_distillation_loss(h, w, t, lab, alpha=-0.1), ValueError, "alpha must be in"),
        ("temperature", lambda: fused_linear_kl(h, w, t, temperature=0.0), ValueError, "temperature must be in"),
        ("reduction", lambda: fused_linear_kl(h, w, t, reduction="avg"), ValueError, "reduction must be one of"),  # type: ignore[arg-type]
        ("chunk_size 0", lambda: fused_linear_kl(h, w, t, chunk_size=0), ValueError, "chunk_size must be a positive"),
        ("chunk_size bool", lambda: fused_linear_kl(h, w, t, chunk_size=True), ValueError, "chunk_size must be"),
        (
            "nan in valid row",
            lambda: fused_linear_kl(torch.where(torch.arange(13)[:, None] == 7, torch.nan, h), w, t, chunk_size=5),
            ValueError,
            r"rows \[5, 10\) of hidden .* student_logits has nan at index \(2, 0\)",
        ),
        (
            "nan in teacher head",
            lambda: fused_linear_kl(h, w, (head[0], head[1], torch.full_like(head[2], torch.inf))),
            ValueError,
            "teacher has inf",
        ),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_raises(case: tuple[str, Callable[[], object], type[Exception], str]) -> None:
    _, call, error, match = case
    with pytest.raises(error, match=match):
        call()


def test_out_of_range_label_of_ignored_token_is_fine() -> None:
    d = make()
    labels = d["labels"].clone()
    labels[[2, 7]] = 99  # masked tokens
    value = fused_linear_distillation_loss(d["hidden"], d["weight"], d["t_logits"], labels, mask=d["mask"])
    assert bool(torch.isfinite(value))


def _relative_error(g: Tensor, reference: Tensor) -> float:
    """max |g - reference| / max |reference|."""
    return float((g.double() - reference).abs().max() / reference.abs().max())


def _near_teacher_case(dtype: torch.dtype, seed: int = 3) -> tuple[Tensor, Tensor, Tensor]:
    """hidden (64, 32), weight (500, 32) in ``dtype`` and teacher logits near the student's (KL ~1e-3 per token)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(64, 32, generator=g).to(dtype)
    weight = (torch.randn(500, 32, generator=g) / 32**0.5).to(dtype)
    teacher = hidden.double() @ weight.double().T + 0.05 * torch.randn(64, 500, generator=g, dtype=F64)
    return hidden, weight, teacher.float()


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_head_forms_logits_and_weight_gradient_in_float32(kind: str) -> None:
    """bf16 hidden and weight with a teacher near the student: the gradients are within 1.5x of the bf16
    rounding of the float64 gradient of the same values (with bf16 logits the error was 11-16%: the logits'
    rounding, 2^-9 of their size, is then most of the student-teacher difference)."""
    hidden, weight, teacher = _near_teacher_case(torch.bfloat16)
    labels = torch.randint(0, 500, (64,), generator=torch.Generator().manual_seed(4))
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    got = torch.autograd.grad(fused(kind, h, w, teacher, labels, temperature=2.0), (h, w))
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    ref = torch.autograd.grad(reference(kind, h64 @ w64.T, teacher.double(), labels, temperature=2.0), (h64, w64))
    for g, r in zip(got, ref, strict=True):
        assert g.dtype == torch.bfloat16
        assert _relative_error(g, r) <= 1.5 * _relative_error(r.bfloat16(), r)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_autocast_bf16_hidden_states_with_a_float32_head(kind: str, reduction: str) -> None:
    """Under torch.autocast the hidden states come out of a linear layer in bf16 while the head stays float32
    (the dtypes differ: this raised TypeError). The loss is float32; the gradients come back in each input's
    dtype, dW accurate to float32 and dh to its bf16 rounding."""
    hidden, weight, teacher = _near_teacher_case(torch.float32)
    project = torch.nn.Linear(32, 32)
    labels = torch.randint(0, 500, (64,), generator=torch.Generator().manual_seed(4))
    w = weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = project(hidden).detach().requires_grad_()  # bf16, as autocast leaves a linear layer's output
        value = fused(kind, h, w, teacher, labels, temperature=2.0, reduction=reduction)
    assert h.dtype == torch.bfloat16
    assert value.dtype == torch.float32
    weights = torch.linspace(0.5, 1.5, value.numel()).reshape(value.shape)
    g_h, g_w = torch.autograd.grad((value * weights).sum(), (h, w))
    assert g_h.dtype == torch.bfloat16
    assert g_w.dtype == torch.float32
    h64, w64 = h.detach().double().requires_grad_(), weight.double().requires_grad_()
    ref_value = reference(kind, h64 @ w64.T, teacher.double(), labels, temperature=2.0, reduction=reduction)
    r_h, r_w = torch.autograd.grad((ref_value * weights.double()).sum(), (h64, w64))
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-4, atol=1e-6)
    assert _relative_error(g_w, r_w) <= 1e-5
    assert _relative_error(g_h, r_h) <= 1.5 * _relative_error(r_h.bfloat16(), r_h)
