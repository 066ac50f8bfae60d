"""Fused linear KL equals the loss of the materialized logits, in value and in every gradient."""

from __future__ import annotations

import pytest
import torch

from kldiv.losses import forward_kl, reverse_kl
from kldiv.losses.linear import fused_linear_kl

F64 = torch.float64


def _setup(n: int = 13, h: int = 6, v: int = 9, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, dtype=F64, generator=g, requires_grad=True)
    weight = torch.randn(v, h, dtype=F64, generator=g, requires_grad=True)
    bias = torch.randn(v, dtype=F64, generator=g, requires_grad=True)
    teacher = torch.randn(n, v, dtype=F64, generator=g)
    return hidden, weight, bias, teacher


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean"])
@pytest.mark.parametrize("chunk_size", [1, 4, 100])
def test_fused_linear_matches_materialized_logits(direction: str, reduction: str, chunk_size: int) -> None:
    hidden, weight, bias, teacher = _setup()
    mask = torch.ones(hidden.shape[0], dtype=torch.bool)
    mask[[2, 7]] = False
    value = fused_linear_kl(
        hidden,
        weight,
        teacher,
        bias=bias,
        direction=direction,
        temperature=1.7,
        mask=mask,
        reduction=reduction,
        chunk_size=chunk_size,  # type: ignore[arg-type]
    )
    value.backward()
    grads = [x.grad.clone() for x in (hidden, weight, bias)]  # type: ignore[union-attr]
    for x in (hidden, weight, bias):
        x.grad = None
    loss = forward_kl if direction == "forward" else reverse_kl
    ref = loss(
        hidden @ weight.T + bias, teacher, temperature=1.7, mask=mask, reduction=reduction, implementation="naive"
    )
    ref.backward()
    torch.testing.assert_close(value, ref, rtol=1e-10, atol=1e-12)
    for got, x in zip(grads, (hidden, weight, bias), strict=True):
        torch.testing.assert_close(got, x.grad, rtol=1e-10, atol=1e-12)


def test_teacher_given_as_hidden_states_and_head() -> None:
    hidden, weight, bias, _ = _setup()
    g = torch.Generator().manual_seed(5)
    t_hidden = torch.randn(hidden.shape[0], 4, dtype=F64, generator=g)
    t_weight = torch.randn(weight.shape[0], 4, dtype=F64, generator=g)
    value = fused_linear_kl(hidden, weight, (t_hidden, t_weight, None), bias=bias, chunk_size=3)
    ref = forward_kl(hidden @ weight.T + bias, t_hidden @ t_weight.T, implementation="naive")
    torch.testing.assert_close(value, ref, rtol=1e-10, atol=1e-12)


def test_gradcheck_small() -> None:
    hidden, weight, bias, teacher = _setup(n=4, h=3, v=5)
    assert torch.autograd.gradcheck(
        lambda a, b, c: fused_linear_kl(a, b, teacher, bias=c, chunk_size=3), (hidden, weight, bias)
    )


def test_bad_shapes_raise() -> None:
    hidden, weight, bias, teacher = _setup()
    with pytest.raises(ValueError, match="hidden must be"):
        fused_linear_kl(hidden, weight[:, :2], teacher)
    with pytest.raises(ValueError, match="bias must have shape"):
        fused_linear_kl(hidden, weight, teacher, bias=bias[:3])
    with pytest.raises(ValueError, match="teacher logits must be"):
        fused_linear_kl(hidden, weight, teacher[:3])


def test_masked_rows_may_hold_nan() -> None:
    g = torch.Generator().manual_seed(5)
    h = torch.randn(7, 4, generator=g, dtype=torch.float64)
    w = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(7, 9, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, False, True, True, False, True, True])
    h_nan = h.clone()
    h_nan[~mask] = torch.nan
    hn = h_nan.requires_grad_()
    out = fused_linear_kl(hn, w, t, mask=mask, chunk_size=3)
    gh, gw = torch.autograd.grad(out, (hn, w))
    ref = forward_kl(h[mask] @ w.T, t[mask])
    rgw = torch.autograd.grad(ref, w)[0]
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(gw, rgw, rtol=1e-10, atol=1e-14)
    assert bool((gh[~mask] == 0).all())
    assert bool(torch.isfinite(gh).all())
