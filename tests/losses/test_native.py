"""The C kernel of the fast KL losses (kldiv._kernels) against the float64 naive reference, and its edge cases."""

from __future__ import annotations

import math
import os
import platform
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kldiv.losses import chunked, distillation_loss, forward_kl, reverse_kl, symmetric_kl

from .backends import backend
from .cases import FAST_LOSSES as LOSSES

_kernels: ModuleType | None
try:
    from kldiv import _kernels
except ImportError:
    _kernels = None

SIMD_PATHS = _kernels.simd_paths() if _kernels is not None else ("not built",)
"""The SIMD paths of the C kernel this CPU can run, best (the one chosen at import) first."""


def _kernel_module() -> ModuleType:
    """``kldiv._kernels``; skips when it is not built, unless ``KLDIV_REQUIRE_NATIVE=1`` (then fails)."""
    if _kernels is None:
        if os.environ.get("KLDIV_REQUIRE_NATIVE") == "1":
            pytest.fail("KLDIV_REQUIRE_NATIVE=1 but the C kernel kldiv._kernels is not built")
        pytest.skip("the C kernel kldiv._kernels is not built (no C compiler at install time)")
    return _kernels


@pytest.fixture(params=SIMD_PATHS)
def simd_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test on each SIMD path of the C kernel this CPU supports (the chosen one restored after)."""
    module = _kernel_module()
    chosen = module.simd_path()
    module.set_simd_path(request.param)
    try:
        yield request.param
    finally:
        module.set_simd_path(chosen)


ONCE_PER_TEST = [HealthCheck.function_scoped_fixture]
"""For Hypothesis tests that take ``simd_path``: the path is set once for all of a test's examples, as meant."""


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
    # a float32 gradient entry is a difference of probabilities (<= 1) over T, times a weight <= 1.7: where the two
    # distributions nearly agree it cancels, and a few float32 ulps of that difference remain (an absolute error)
    cancellation = 8 * torch.finfo(torch.float32).eps * 1.7 / float(kw.get("temperature", 1.0))
    torch.testing.assert_close(g1.double(), g0, rtol=1e-5, atol=1e-5 * scale + cancellation)


@settings(max_examples=25, deadline=None, suppress_health_check=ONCE_PER_TEST)
@given(
    n=st.integers(1, 12),
    v=st.sampled_from([1, 2, 15, 16, 17, 511, 512, 513, 1537]),
    name=st.sampled_from(sorted(LOSSES)),
    temperature=st.sampled_from([1.0, 0.7, 2.5]),
    offset=st.sampled_from([0.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_native_equals_naive(
    simd_path: str, n: int, v: int, name: str, temperature: float, offset: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    s = 4 * torch.randn(n, v, generator=g) + offset
    t = 4 * torch.randn(n, v, generator=g) - offset
    _check_against_float64(LOSSES[name], s, t, temperature=temperature, chunk_size=5)


@settings(max_examples=20, deadline=None, suppress_health_check=ONCE_PER_TEST)
@given(
    n=st.integers(1, 12),
    v=st.sampled_from([1, 3, 17, 600]),
    alpha=st.sampled_from([0.0, 0.3, 1.0]),
    temperature=st.sampled_from([1.0, 2.5]),
    reduction=st.sampled_from(["batchmean", "sum", "none"]),
    seed=st.integers(0, 2**16),
)
def test_native_distillation_equals_naive(
    simd_path: str, n: int, v: int, alpha: float, temperature: float, reduction: str, seed: int
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


def test_underflowing_probabilities(simd_path: str) -> None:
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
    simd_path: str, name: str, temperature: float, monkeypatch: pytest.MonkeyPatch
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


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), None elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def test_the_best_simd_path_the_cpu_supports_is_chosen() -> None:
    # a build or a dispatch that loses the AVX2 path runs scalar-speed code without any other test noticing
    module = _kernel_module()
    paths = module.simd_paths()
    assert module.simd_path() == paths[0]
    assert paths[-1] == "baseline"
    assert set(paths) <= {"avx512f", "avx2", "baseline"}
    flags = _cpu_flags()
    if flags is not None and platform.machine() == "x86_64":
        assert ("avx2" in paths) == ({"avx2", "fma"} <= flags), (paths, flags & {"avx2", "fma"})
        assert ("avx512f" in paths) == ({"avx512f", "fma"} <= flags), (paths, flags & {"avx512f", "fma"})


def test_set_simd_path_rejects_unknown_and_unsupported_paths() -> None:
    module = _kernel_module()
    chosen = module.simd_path()
    with pytest.raises(ValueError, match="unknown SIMD path 'sse9'"):
        module.set_simd_path("sse9")
    for name in sorted({"avx512f", "avx2"} - set(module.simd_paths())):
        with pytest.raises(ValueError, match=f"cannot run the SIMD path '{name}'"):
            module.set_simd_path(name)
    assert module.simd_path() == chosen


def _kernel_exp(x: torch.Tensor) -> torch.Tensor:
    """The kernel's exponential (float32 or float64 by the dtype of ``x``, contiguous) on the current path."""
    module = _kernel_module()
    out = torch.empty_like(x)
    (module.exp_f32 if x.dtype == torch.float32 else module.exp_f64)(x.data_ptr(), out.data_ptr(), x.numel())
    return out


def test_float32_exponential_on_every_float(simd_path: str) -> None:
    # every float32 x in [log 2^-126, 0] (about 1.1e9 values): relative error below 1e-7 of the float64
    # exponential of the same x; below, down to -inf: within 2^-126 of it (subnormal or 0), never negative
    smallest_normal_log = torch.tensor(math.log(2.0**-126), dtype=torch.float32)
    if math.exp(float(smallest_normal_log)) < 2.0**-126:  # the first float32 whose exponential is normal
        smallest_normal_log = torch.nextafter(smallest_normal_log, torch.tensor(0.0))
    last = int(smallest_normal_log.neg().view(torch.int32))
    worst, step = 0.0, 1 << 18  # chunks that stay in cache: 5 s in all, against 30 s for chunks of 2^24
    for start in range(0, last + 1, step):  # the magnitudes' bit patterns, in order
        x = torch.arange(start, min(start + step, last + 1), dtype=torch.int32).view(torch.float32).neg()
        worst = max(worst, float(_kernel_exp(x).double().div_(x.double().exp_()).sub_(1.0).abs_().max()))
    assert worst < 1e-7, worst
    below = torch.arange(last + 1, int(torch.tensor(104.0).view(torch.int32)), dtype=torch.int32)
    x = torch.cat([below.view(torch.float32), torch.logspace(2, 38, 1000), torch.tensor([3.4e38, math.inf])]).neg()
    y = _kernel_exp(x).double()
    assert bool((y >= 0).all())
    assert float((y - x.double().exp()).abs().max()) <= 2.0**-126


def test_float64_exponential_against_mpmath(simd_path: str) -> None:
    # the float64 exponential of the small-value refinement: within 3 units in the last place (measured at most
    # 2.5) on [-708, 0], and within 2^-1022 of exp(x) below (subnormal or 0)
    mpmath = pytest.importorskip("mpmath")
    g = torch.Generator().manual_seed(8)
    x = torch.cat(
        [
            -708.0 * torch.rand(3000, generator=g, dtype=torch.float64),
            -torch.logspace(-20, math.log10(708.0), 1000, dtype=torch.float64),
            torch.tensor([0.0, -0.5 * math.log(2.0), -math.log(2.0), -1.5 * math.log(2.0)], dtype=torch.float64),
        ]
    )
    y = _kernel_exp(x)
    with mpmath.workdps(40):
        exact = [mpmath.exp(mpmath.mpf(float(v))) for v in x]
    ulps = [abs(mpmath.mpf(float(yi)) - e) / math.ulp(float(e)) for yi, e in zip(y, exact, strict=True)]
    assert max(ulps) <= 3, float(max(ulps))
    tail = -708.5 - 40.0 * torch.rand(500, generator=g, dtype=torch.float64)
    tail = torch.cat([tail, torch.tensor([-1e300, -math.inf], dtype=torch.float64)])
    y_tail = _kernel_exp(tail)
    assert bool((y_tail >= 0).all())
    assert float((y_tail - tail.exp()).abs().max()) <= 2.0**-1022


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_equal_logits_and_one_entry_rows_give_exactly_zero(simd_path: str, name: str) -> None:
    # q = p entry by entry: every term of the value and the gradient cancels exactly, on every path (a fused
    # multiply-add in a log-ratio once left 2e-15 in a one-entry row's gradient)
    g = torch.Generator().manual_seed(9)
    s = 3 * torch.randn(4, 700, generator=g)
    one_s, one_t = torch.randn(5, 1, generator=g), torch.randn(5, 1, generator=g)
    for student, teacher in ((s, s.clone()), (one_s, one_t)):
        with backend("native"):
            value, grad = _value_and_grad(LOSSES[name], student, teacher, temperature=0.7, reduction="none")
        assert bool((value == 0).all()), value
        assert bool((grad == 0).all()), grad.abs().max()
