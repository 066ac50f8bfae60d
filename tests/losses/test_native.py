"""The C kernel of the fast KL losses (kldiv._kernels) against the float64 naive reference, and its edge cases."""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kldiv.losses import chunked, distillation_loss, forward_kl, reverse_kl, symmetric_kl

from .backends import backend
from .cases import FAST_LOSSES as LOSSES


def _value_and_grad(loss: Callable[..., Any], s: torch.Tensor, t: torch.Tensor, **kw: Any) -> tuple[Any, Any]:
    s_ = s.detach().clone().requires_grad_()
    v = loss(s_, t, **kw)
    w = torch.linspace(0.5, 1.5, v.numel()).reshape(v.shape).to(v.dtype) if v.dim() else torch.tensor(1.7)
    (g,) = torch.autograd.grad((v * w).sum(), s_)
    return v, g


def _check_against_float64(loss: Callable[..., Any], s: torch.Tensor, t: torch.Tensor, **kw: Any) -> None:
    """float32 through the C kernel vs the naive path in float64 on the same float32 values."""
    with backend("native"):
        v1, g1 = _value_and_grad(loss, s, t, implementation="chunked", **kw)
    v0, g0 = _value_and_grad(loss, s.double(), t.double(), implementation="naive", **kw)
    assert g1.dtype == torch.float32
    assert torch.equal(torch.isfinite(v1), torch.isfinite(v0))
    finite = torch.isfinite(v0)
    torch.testing.assert_close(v1.double()[finite], v0[finite], rtol=1e-5, atol=1e-7)
    if v0.dim():  # the gradient is specified on rows of finite value (+inf rows: zero, by the chunked path)
        g1, g0 = g1[finite], g0[finite]
    elif not bool(finite):
        return
    scale = max(float(g0.abs().max()) if g0.numel() else 0.0, 1e-30)
    torch.testing.assert_close(g1.double(), g0, rtol=1e-5, atol=1e-5 * scale)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 12),
    v=st.sampled_from([1, 2, 15, 16, 17, 511, 512, 513, 1537]),
    name=st.sampled_from(sorted(LOSSES)),
    temperature=st.sampled_from([1.0, 0.7, 2.5]),
    offset=st.sampled_from([0.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_native_equals_naive(n: int, v: int, name: str, temperature: float, offset: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    s = 4 * torch.randn(n, v, generator=g) + offset
    t = 4 * torch.randn(n, v, generator=g) - offset
    _check_against_float64(LOSSES[name], s, t, temperature=temperature, chunk_size=5)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 12),
    v=st.sampled_from([1, 3, 17, 600]),
    alpha=st.sampled_from([0.0, 0.3, 1.0]),
    temperature=st.sampled_from([1.0, 2.5]),
    reduction=st.sampled_from(["batchmean", "sum", "none"]),
    seed=st.integers(0, 2**16),
)
def test_native_distillation_equals_naive(
    n: int, v: int, alpha: float, temperature: float, reduction: str, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    s, t = 3 * torch.randn(n, v, generator=g), 3 * torch.randn(n, v, generator=g)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.3] = -100
    s[labels == -100] = math.nan  # ignored rows may hold anything

    def loss(s_: torch.Tensor, t_: torch.Tensor, **kw: Any) -> torch.Tensor:
        return distillation_loss(s_, t_, labels, alpha=alpha, temperature=temperature, reduction=reduction, **kw)

    _check_against_float64(loss, s, t)


def test_rows_with_minus_inf_take_the_general_path() -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(9, 40, generator=g), torch.randn(9, 40, generator=g)
    s[2, 5] = -math.inf  # student -inf where the teacher has mass: forward KL +inf, zero gradient row
    t[4, :7] = -math.inf  # teacher zeros: finite forward KL
    s[6, 3] = t[6, 3] = -math.inf  # both: finite
    for name in LOSSES:
        _check_against_float64(LOSSES[name], s, t, reduction="none")


def test_nan_in_a_valid_row_raises_and_in_an_ignored_row_does_not() -> None:
    s, t = torch.randn(6, 30), torch.randn(6, 30)
    s[3, 7] = math.nan
    with backend("native"), pytest.raises(ValueError, match=r"student_logits.*NaN"):
        forward_kl(s.requires_grad_(), t, implementation="chunked")
    mask = torch.ones(6, dtype=torch.bool)
    mask[3] = False
    _check_against_float64(forward_kl, s.detach(), t, mask=mask)


def test_all_rows_ignored_gives_zero_and_zero_gradient() -> None:
    s = torch.full((4, 50), math.nan).requires_grad_()
    with backend("native"):
        out = reverse_kl(s, torch.randn(4, 50), mask=torch.zeros(4, dtype=torch.bool))
        out.backward()
    assert float(out) == 0.0
    assert s.grad is not None
    assert bool((s.grad == 0).all())


def test_rows_with_a_stride_equal_contiguous_rows() -> None:
    g = torch.Generator().manual_seed(2)
    wide_s, wide_t = torch.randn(7, 90, generator=g), torch.randn(7, 90, generator=g)
    s, t = wide_s[:, 10:73], wide_t[:, 5:68]
    assert s.stride(0) == 90
    assert not s.is_contiguous()
    with backend("native"):
        strided = _value_and_grad(symmetric_kl, s, t, temperature=1.5)
        contiguous = _value_and_grad(symmetric_kl, s.contiguous(), t.contiguous(), temperature=1.5)
    assert torch.equal(strided[0], contiguous[0])
    assert torch.equal(strided[1], contiguous[1])


def test_result_does_not_depend_on_the_thread_count() -> None:
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(37, 700, generator=g), torch.randn(37, 700, generator=g)
    threads = torch.get_num_threads()
    results = []
    try:
        for k in (1, 2, 3):
            torch.set_num_threads(k)
            with backend("native"):
                results.append(_value_and_grad(reverse_kl, s, t, reduction="none"))
    finally:
        torch.set_num_threads(threads)
    for v, grad in results[1:]:
        assert torch.equal(v, results[0][0])
        assert torch.equal(grad, results[0][1])


def test_underflowing_probabilities() -> None:
    # logits spread over 300 nats: exp underflows (flushed to 0 below 2^-126) on most entries. The log-ratios
    # reach 300, so float32 rounding of them alone costs ~1e-5 of the reverse-KL gradient (the naive float32 path
    # too): the kernel must be as accurate as the naive float32 path, within a factor 2.
    g = torch.Generator().manual_seed(4)
    s = torch.linspace(-300.0, 0.0, 257).repeat(5, 1) + torch.randn(5, 257, generator=g)
    t = torch.linspace(0.0, -300.0, 257).repeat(5, 1) + torch.randn(5, 257, generator=g)
    for name, loss in LOSSES.items():
        for teacher, temperature in ((t, 1.0), (s.flip(0), 3.0)):
            v0, g0 = _value_and_grad(loss, s.double(), teacher.double(), temperature=temperature, reduction="none")
            errors = []
            for impl in ("naive", "chunked"):
                with backend("native" if impl == "chunked" else "torch"):
                    v1, g1 = _value_and_grad(
                        loss, s, teacher, temperature=temperature, reduction="none", implementation=impl
                    )
                torch.testing.assert_close(v1.double(), v0, rtol=1e-6, atol=0)
                errors.append(float((g1.double() - g0).abs().max() / g0.abs().max()))
            assert errors[1] <= 2 * errors[0] + 1e-6, (name, temperature, errors)


def test_native_and_torch_backends_agree() -> None:
    g = torch.Generator().manual_seed(5)
    s, t = 5 * torch.randn(33, 1000, generator=g), 5 * torch.randn(33, 1000, generator=g)
    out = {}
    for fast in ("native", "torch"):
        with backend(fast):
            out[fast] = _value_and_grad(symmetric_kl, s, t, temperature=1.3, reduction="none")
    torch.testing.assert_close(out["native"][0], out["torch"][0], rtol=1e-5, atol=1e-7)
    scale = float(out["torch"][1].abs().max())
    torch.testing.assert_close(out["native"][1], out["torch"][1], rtol=1e-5, atol=1e-5 * scale)


def test_works_in_a_forked_child_after_use_in_the_parent() -> None:
    # a forked child (a DataLoader worker) inherits the parent's thread pool without its threads: it must make its
    # own instead of queueing work that no thread will ever run
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(40, 300, generator=g).requires_grad_(), torch.randn(40, 300, generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with backend("native"):
            forward_kl(s, t).backward()  # the parent uses the pool
            parent_pool = chunked._pool()
            pid = os.fork()
            if pid == 0:  # the child: exit code 0 once it has its own pool and the loss is computed
                if chunked._pool() is parent_pool:
                    os._exit(3)
                forward_kl(s, t).backward()
                os._exit(0)
    finally:
        torch.set_num_threads(threads)
    deadline = time.monotonic() + 60
    while (status := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if status[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(status[1]) == 0


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_small_values_are_exact_to_float64_rounding(
    name: str, temperature: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # student ~ teacher (RLHF against a reference policy): per-token KL from 1e-14 to 1; below 0.1 the kernel
    # computes it in float64 without cancellation (<p, d> - c in float32 would lose everything below ~1e-6)
    g = torch.Generator().manual_seed(7)
    s = 3 * torch.randn(24, 700, generator=g)
    scales = torch.logspace(-7, 0, 24)[:, None]
    t = s + scales * torch.randn(24, 700, generator=g)

    def no_torch_refine(*args: Any) -> None:
        raise AssertionError("the C kernel's rows were refined by the torch ops (N x V temporaries)")

    with monkeypatch.context() as patch, backend("native"):
        patch.setattr(chunked, "divergence_rows", no_torch_refine)
        v1, _ = _value_and_grad(LOSSES[name], s, t, temperature=temperature, reduction="none")
    v0, _ = _value_and_grad(LOSSES[name], s.double(), t.double(), temperature=temperature, reduction="none")
    assert float(v0.min()) < 1e-12
    assert float(v0.max()) > 1e-3
    torch.testing.assert_close(v1.double(), v0, rtol=2e-6, atol=0)  # the fast float32 formula above 0.1
    small = v0 < 0.09
    torch.testing.assert_close(v1.double()[small], v0[small], rtol=1.2e-7, atol=0)  # float32 output rounding


def test_overflow_of_logits_over_temperature_raises_as_on_the_other_paths() -> None:
    s, t = torch.randn(4, 20), torch.randn(4, 20)
    s[2, 3] = 3e38  # finite, but s / T overflows float32 at T = 0.5
    for fast in ("native", "torch"):
        with backend(fast), pytest.raises(ValueError, match="overflows"):
            forward_kl(s.clone().requires_grad_(), t, temperature=0.5)


def test_small_values_at_a_temperature_keep_float32_accuracy() -> None:
    # one-ulp differences at T = 0.7 (KL ~1e-21): the log-ratio must be formed from the exact differences of the
    # logits and scaled once, not from a and b rounded apart (which cost 1.2e-6 relative here)
    g = torch.Generator().manual_seed(3)
    s = 1e-3 * torch.randn(3, 400, generator=g)
    s[:, 0] = 3.0
    t = s.clone()
    idx = torch.randperm(400, generator=g)[:100]
    t[:, idx] = torch.nextafter(s[:, idx], torch.tensor(math.inf))
    with backend("native"):
        v1 = forward_kl(s.clone().requires_grad_(), t, temperature=0.7, reduction="none").detach()
    v0 = forward_kl(s.double(), t.double(), temperature=0.7, reduction="none", implementation="naive")
    assert bool((v0 > 0).all())
    torch.testing.assert_close(v1.double(), v0, rtol=1.2e-7, atol=0)
