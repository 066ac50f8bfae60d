"""Regressions of the losses: +inf rows get a zero gradient, -inf on both sides and alpha = 0 give no NaN."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kldiv.losses import distillation_loss, forward_kl, reverse_kl, symmetric_kl


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
