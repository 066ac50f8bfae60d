"""The losses run under torch.compile (graph breaks at the validation's host synchronizations are allowed)."""

from __future__ import annotations

import pytest
import torch

from kldiv.losses import forward_kl


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
def test_compiled_chunked_path_with_the_c_kernel_matches_eager() -> None:
    # the fused Functions run eagerly inside the compiled function (graph breaks around them), with equal results
    torch.manual_seed(1)
    s = torch.randn(8, 50, requires_grad=True)
    t = torch.randn(8, 50)
    compiled = torch.compile(lambda a, b: forward_kl(a, b, temperature=2.0))
    value = compiled(s, t)
    value.backward()
    assert s.grad is not None
    grad = s.grad.clone()
    s.grad = None
    eager = forward_kl(s, t, temperature=2.0)
    eager.backward()
    assert torch.equal(value.detach(), eager.detach())
    assert torch.equal(grad, s.grad)
