"""The fused linear nn.Modules hold the options and equal the functions, in value and gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from kldiv.losses import (
    FusedLinearDistillationLoss,
    FusedLinearJSDLoss,
    FusedLinearKLLoss,
    fused_linear_distillation_loss,
    fused_linear_jsd,
    fused_linear_kl,
)

F64 = torch.float64
OPTIONS: dict[str, Any] = {"temperature": 1.6, "ignore_index": -1, "reduction": "none", "chunk_size": 3}


def _inputs() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "hidden": torch.randn(7, 5, dtype=F64, generator=g),
        "weight": torch.randn(8, 5, dtype=F64, generator=g),
        "bias": torch.randn(8, dtype=F64, generator=g),
        "teacher": torch.randn(7, 8, dtype=F64, generator=g),
        "labels": torch.tensor([1, -1, 0, 7, 3, -1, 2]),
        "mask": torch.tensor([True, True, False, True, True, True, True]),
    }


def _value_and_grads(loss: Callable[[Tensor, Tensor, Tensor], Tensor], d: dict[str, Tensor]) -> list[Tensor]:
    leaves = [d[k].clone().requires_grad_() for k in ("hidden", "weight", "bias")]
    value = loss(*leaves)
    grad_output = torch.linspace(-1.0, 2.0, value.numel(), dtype=F64).reshape(value.shape)
    return [value.detach(), *torch.autograd.grad(value, leaves, grad_output)]


CASES: list[tuple[str, Callable[..., Tensor], Callable[..., Tensor]]] = [
    (
        "kl reverse",
        lambda h, w, b, d: FusedLinearKLLoss(direction="reverse", **OPTIONS)(h, w, d["teacher"], d["labels"], bias=b),
        lambda h, w, b, d: fused_linear_kl(
            h, w, d["teacher"], bias=b, direction="reverse", labels=d["labels"], **OPTIONS
        ),
    ),
    (
        "kl symmetric",
        lambda h, w, b, d: FusedLinearKLLoss(direction="symmetric", forward_weight=0.2, **OPTIONS)(
            h, w, d["teacher"], d["labels"], d["mask"], bias=b
        ),
        lambda h, w, b, d: fused_linear_kl(
            h,
            w,
            d["teacher"],
            bias=b,
            direction="symmetric",
            forward_weight=0.2,
            labels=d["labels"],
            mask=d["mask"],
            **OPTIONS,
        ),
    ),
    (
        "jsd",
        lambda h, w, b, d: FusedLinearJSDLoss(beta=0.8, normalized=True, **OPTIONS)(
            h, w, d["teacher"], d["labels"], d["mask"], bias=b
        ),
        lambda h, w, b, d: fused_linear_jsd(
            h, w, d["teacher"], bias=b, beta=0.8, normalized=True, labels=d["labels"], mask=d["mask"], **OPTIONS
        ),
    ),
    (
        "distillation",
        lambda h, w, b, d: FusedLinearDistillationLoss(alpha=0.2, **OPTIONS)(
            h, w, d["teacher"], d["labels"], d["mask"], bias=b
        ),
        lambda h, w, b, d: fused_linear_distillation_loss(
            h, w, d["teacher"], d["labels"], bias=b, alpha=0.2, mask=d["mask"], **OPTIONS
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_module_equals_function(case: tuple[str, Callable[..., Tensor], Callable[..., Tensor]]) -> None:
    _, module, function = case
    d = _inputs()
    got = _value_and_grads(lambda h, w, b: module(h, w, b, d), d)
    ref = _value_and_grads(lambda h, w, b: function(h, w, b, d), d)
    assert got[0].shape == (7,)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_module_defaults_equal_function_defaults() -> None:
    d = _inputs()
    args = (d["hidden"], d["weight"], d["teacher"])
    torch.testing.assert_close(FusedLinearKLLoss()(*args), fused_linear_kl(*args), rtol=0, atol=0)
    torch.testing.assert_close(FusedLinearJSDLoss()(*args), fused_linear_jsd(*args), rtol=0, atol=0)
    labels = d["labels"].clamp_min(0)
    torch.testing.assert_close(
        FusedLinearDistillationLoss()(*args, labels), fused_linear_distillation_loss(*args, labels), rtol=0, atol=0
    )


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: FusedLinearKLLoss(reduction="avg"), ValueError, "reduction must be one of"),
        (lambda: FusedLinearKLLoss(temperature=-1.0), ValueError, "temperature must be in"),
        (lambda: FusedLinearKLLoss(chunk_size=0), ValueError, "chunk_size must be a positive int"),
        (lambda: FusedLinearKLLoss(direction="jsd"), ValueError, "direction must be one of"),
        (lambda: FusedLinearKLLoss(forward_weight=0.3), ValueError, "forward_weight applies to direction='symmetric'"),
        (lambda: FusedLinearKLLoss(direction="symmetric", forward_weight=2.0), ValueError, "forward_weight must be"),
        (lambda: FusedLinearJSDLoss(beta=1.0), ValueError, "pass normalized=True"),
        (lambda: FusedLinearDistillationLoss(alpha=1.5), ValueError, "alpha must be in"),
    ],
)
def test_bad_options_raise_at_construction(make: Callable[[], object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_repr_names_the_options() -> None:
    text = repr(FusedLinearJSDLoss(beta=0.3, **OPTIONS))
    assert "temperature=1.6" in text
    assert "reduction='none'" in text
    assert "chunk_size=3" in text
    assert not list(FusedLinearKLLoss().parameters())  # the head belongs to the caller
