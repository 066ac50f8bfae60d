"""The losses under torch.compile: the fused path compiles whole (the C kernel and the chunked torch path are the
operator ``kldiv::chunked_divergence``), equal to eager; meta tensors give shapes or a clear error."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

from kldiv.losses import TopK, distillation_loss, forward_kl, fused_linear_kl, generalized_jsd

from .backends import BACKENDS, backend
from .cases import LOSSES

LABELS = torch.tensor([3, 0, 7, -100, 9, 1, 2, 4])
COMPILED: dict[str, Callable[..., torch.Tensor]] = {
    **LOSSES,
    "distillation": lambda s, t, **kw: distillation_loss(s, t, LABELS, alpha=0.4, **kw),
    "log_probs": lambda s, t, **kw: forward_kl(s, t.log_softmax(-1), teacher_kind="log_probs", **kw),
}
FAST = {"forward", "reverse", "symmetric", "distillation", "log_probs"}


@pytest.mark.slow
def test_compiled_reference_path_matches_eager() -> None:
    torch.manual_seed(0)
    s = torch.randn(8, 50, dtype=torch.float64, requires_grad=True)
    t = torch.randn(8, 50, dtype=torch.float64)
    compiled = torch.compile(lambda a, b: forward_kl(a, b, temperature=2.0, implementation="naive"))
    value = compiled(s, t)
    value.backward()
    assert s.grad is not None
    grad = s.grad.clone()
    s.grad = None
    eager = forward_kl(s, t, temperature=2.0, implementation="naive")
    eager.backward()
    torch.testing.assert_close(value.detach(), eager.detach(), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(grad, s.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMPILED))
@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_the_fused_path_compiles_without_graph_breaks(name: str, reduction: str) -> None:
    torch.manual_seed(2)
    s, t = torch.randn(8, 50, requires_grad=True), torch.randn(8, 50)
    explanation = torch._dynamo.explain(COMPILED[name])(s, t, temperature=2.0, reduction=reduction)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("loss", "name"), [(loss, name) for loss in COMPILED for name in (BACKENDS if loss in FAST else ["general"])]
)
def test_fullgraph_compiled_losses_equal_eager_on_every_path(loss: str, name: str) -> None:
    """The fast kernels (the C kernel, its torch counterpart) and the general chunked path (the JSD)."""
    torch.manual_seed(1)
    s, t = torch.randn(8, 50, requires_grad=True), torch.randn(8, 50)
    weights = torch.linspace(0.5, 2.0, 8)
    with backend(name) if name != "general" else contextlib.nullcontext():
        compiled = torch.compile(COMPILED[loss], fullgraph=True)
        results = []
        for fn in (compiled, COMPILED[loss]):
            value = fn(s, t, temperature=2.0, reduction="none")
            (grad,) = torch.autograd.grad((value * weights).sum(), s)
            results.append((value.detach(), grad))
    (value, grad), (eager_value, eager_grad) = results
    assert torch.equal(value, eager_value)
    assert torch.equal(grad, eager_grad)


@pytest.mark.slow
def test_compiling_a_loss_gives_no_warnings_of_kldiv() -> None:
    s, t = torch.randn(8, 50, requires_grad=True), torch.randn(8, 50)
    compiled = torch.compile(lambda a, b: forward_kl(a, b, temperature=2.0), fullgraph=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled(s, t).backward()
    ours = [w for w in caught if "kldiv" in w.filename or "Tensor.item()" in str(w.message)]
    assert ours == [], [str(w.message) for w in ours]


@pytest.mark.parametrize("name", list(COMPILED))
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
def test_meta_tensors_give_the_shapes_of_the_fused_path(name: str, reduction: str) -> None:
    s = torch.empty(2, 4, 50, device="meta", requires_grad=True)
    t = torch.empty(2, 4, 50, device="meta")
    labels = torch.empty(2, 4, dtype=torch.int64, device="meta")
    kw: dict[str, Any] = {"reduction": reduction}
    if name == "distillation":
        value = distillation_loss(s, t, labels, **kw)
    else:
        value = COMPILED[name](s, t, **kw)
    assert value.device.type == "meta"
    assert value.shape == ((2, 4) if reduction == "none" else ())
    (grad,) = torch.autograd.grad(value.sum(), s)
    assert grad.shape == s.shape
    assert grad.device.type == "meta"


@pytest.mark.parametrize(
    "call",
    [
        lambda s, t: forward_kl(s, t, implementation="naive"),
        lambda s, t: forward_kl(s, t.softmax(-1), teacher_kind="probs"),
        lambda s, t: generalized_jsd(s, TopK(torch.zeros(8, 2, dtype=torch.int64, device="meta"), t[:, :2])),
        lambda s, t: fused_linear_kl(s[:, :4], torch.empty(50, 4, device="meta"), t),
    ],
    ids=["naive", "probs", "topk", "fused_linear"],
)
def test_meta_tensors_elsewhere_raise_a_clear_error(call: Callable[[torch.Tensor, torch.Tensor], Any]) -> None:
    s, t = torch.empty(8, 50, device="meta"), torch.empty(8, 50, device="meta")
    with pytest.raises(NotImplementedError, match="meta tensors"):
        call(s, t)
