"""Regressions of the losses: +inf rows get a zero gradient on every path, -inf on both sides and alpha = 0 give
no NaN."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from kldiv.losses import TopK, distillation_loss, forward_kl, reverse_kl, symmetric_kl


@pytest.mark.parametrize("loss", [forward_kl, reverse_kl])
def test_infinite_rows_have_zero_not_nan_gradients(loss: object) -> None:
    assert callable(loss)
    inf = math.inf
    s = torch.tensor([[0.0, 1.0, -inf], [0.5, 0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.0, -inf, 2.0], [0.0, 0.3, 1.0]], dtype=torch.float64, requires_grad=True)
    value = loss(s, t, reduction="none", implementation="chunked")
    assert math.isinf(float(value[0]))
    (value[1] * 1.0).backward()
    assert s.grad is not None
    assert t.grad is not None
    assert torch.isfinite(s.grad).all()
    assert torch.isfinite(t.grad).all()
    assert bool((s.grad[0] == 0).all())
    assert bool((t.grad[0] == 0).all())


@pytest.mark.parametrize("implementation", ["naive", "chunked"])
def test_symmetric_kl_finite_where_both_sides_are_minus_inf(implementation: str) -> None:
    s = torch.tensor([[0.0, 1.0, -math.inf], [0.5, -1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.3, -0.2, -math.inf], [0.0, 0.0, 0.0]], dtype=torch.float64)
    value = symmetric_kl(s, t, weight=0.3, implementation=implementation, reduction="none")
    expected = 0.3 * forward_kl(s, t, reduction="none") + 0.7 * reverse_kl(s, t, reduction="none")
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    (g,) = torch.autograd.grad(value.sum(), s)
    assert bool(torch.isfinite(g).all())


@pytest.mark.parametrize("implementation", ["naive", "chunked"])
def test_distillation_alpha_zero_is_cross_entropy_even_where_kl_is_infinite(implementation: str) -> None:
    s = torch.tensor([[0.0, 1.0, -math.inf], [0.5, -1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.3, -0.2, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)  # KL(P||Q) = +inf in row 0
    labels = torch.tensor([1, 2])
    value = distillation_loss(s, t, labels, alpha=0.0, temperature=2.0, implementation=implementation)
    torch.testing.assert_close(value, F.cross_entropy(s, labels), rtol=1e-12, atol=0)
    (g,) = torch.autograd.grad(value, s)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(s, labels), s)
    torch.testing.assert_close(g, g_ce, rtol=1e-12, atol=1e-15)


INFINITE_ROW_CASES: dict[str, tuple[Any, dict[str, Any]]] = {
    # student [0, -inf, 1] against a uniform teacher: the teacher has mass where the student has none
    "forward": (forward_kl, {}),
    "symmetric": (symmetric_kl, {"weight": 0.3}),
    # the student has mass where the teacher has none
    "reverse, teacher -inf": (reverse_kl, {"teacher": [[0.0, 0.0, -math.inf]]}),
    "reverse, probability 0": (reverse_kl, {"teacher": [[0.5, 0.5, 0.0]], "teacher_kind": "probs"}),
    "reverse, top-k": (reverse_kl, {"topk": True}),
    # the label's logit is -inf: the cross-entropy is +inf too, and keeps its gradient (1 - alpha) (q - onehot)
    "distillation": (distillation_loss, {"labels": True, "alpha": 0.4}),
}


@pytest.mark.parametrize("case", list(INFINITE_ROW_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_whose_value_is_infinite_get_a_zero_gradient_on_every_path(case: str, dtype: torch.dtype) -> None:
    loss, options = INFINITE_ROW_CASES[case]
    options = dict(options)
    s0 = torch.tensor([[0.0, -math.inf, 1.0], [0.3, -0.2, 0.5]], dtype=dtype)
    teacher: Any = torch.zeros(2, 3, dtype=dtype)
    if "teacher" in options:
        teacher[0] = torch.tensor(options.pop("teacher"), dtype=dtype)
        if options.get("teacher_kind") == "probs":
            teacher[1] = 1.0 / 3
    if options.pop("topk", False):  # row 0: no teacher mass on id 1
        teacher = TopK(torch.tensor([[0, 2, 1], [0, 1, 2]]), torch.tensor([[0.0, 0.0, -math.inf], [0.0] * 3]))
        teacher = TopK(teacher.indices, teacher.values.to(dtype))
        s0[0, 1] = 0.0
    args: tuple[Any, ...] = (torch.tensor([1, 0]),) if options.pop("labels", False) else ()
    grads = []
    for implementation in ("naive", "chunked"):
        s = s0.clone().requires_grad_()
        value = loss(s, teacher, *args, reduction="none", implementation=implementation, **options)
        assert value[0] == math.inf
        assert bool(torch.isfinite(value[1]))
        (g,) = torch.autograd.grad(value.sum(), s)  # the sum is +inf: only the finite row's gradient flows
        expected = torch.zeros(3, dtype=dtype)
        if case == "distillation":  # only the KL term's gradient is 0
            expected = 0.6 * (torch.softmax(s0[0], -1) - torch.tensor([0.0, 1.0, 0.0], dtype=dtype))
        torch.testing.assert_close(g[0], expected, rtol=0, atol=1e-7, msg=implementation)
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-7)
