"""KL weight schedules and free bits: hand-computed values, the laws of each schedule, parsing, bad inputs."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kldiv.schedules import (
    Constant,
    Cyclical,
    LinearWarmup,
    Logistic,
    Scaled,
    epochs,
    free_bits,
    parse_schedule,
    tutorial_kl_weight,
)

FAST = settings(max_examples=60, deadline=None)
weights = st.floats(min_value=0.0, max_value=10.0, allow_nan=False, allow_infinity=False)


# --------------------------------------------------------------------------------------------------------------
# hand-computed values
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        (Constant(), 0, 1.0),
        (Constant(4.0), 10**9, 4.0),
        (Constant(0.0), 7, 0.0),
        # delay 2, then 0 -> 1 over 4 steps
        (LinearWarmup(4, delay_steps=2), 0, 0.0),
        (LinearWarmup(4, delay_steps=2), 1, 0.0),
        (LinearWarmup(4, delay_steps=2), 2, 0.0),
        (LinearWarmup(4, delay_steps=2), 3, 0.25),
        (LinearWarmup(4, delay_steps=2), 4, 0.5),
        (LinearWarmup(4, delay_steps=2), 5, 0.75),
        (LinearWarmup(4, delay_steps=2), 6, 1.0),
        (LinearWarmup(4, delay_steps=2), 10**6, 1.0),
        (LinearWarmup(4, start=0.5, end=2.5), 1, 1.0),
        (LinearWarmup(2, start=1.0, end=0.0), 1, 0.5),  # a ramp down
        (LinearWarmup(0, start=0.25, end=1.0, delay_steps=3), 2, 0.25),  # warmup_steps = 0: a step at delay_steps
        (LinearWarmup(0, start=0.25, end=1.0, delay_steps=3), 3, 1.0),
        (LinearWarmup(0), 0, 1.0),
        # end / (1 + exp(-0.5 (step - 10)))
        (Logistic(10, 0.5), 10, 0.5),
        (Logistic(10, 0.5), 12, 1 / (1 + math.exp(-1.0))),  # 0.7310585786300049
        (Logistic(10, 0.5), 8, 1 / (1 + math.exp(1.0))),  # 0.2689414213699951
        (Logistic(10, 0.5), 0, 1 / (1 + math.exp(5.0))),
        (Logistic(10, 0.5, end=2.0), 12, 2 / (1 + math.exp(-1.0))),
        (Logistic(10, 0.5), 10**6, 1.0),  # exactly end far past the midpoint
        (Logistic(1e6, 1.0), 0, 0.0),  # exp(1e6) would overflow: the weight is 0, not an OverflowError
        (Logistic(2.5, 2.0), 3, 1 / (1 + math.exp(-1.0))),  # fractional midpoint
        # 100 steps, 4 cycles of 25, rising over the first 12.5 steps of each
        (Cyclical(100), 0, 0.0),
        (Cyclical(100), 5, 0.4),
        (Cyclical(100), 12, 0.96),
        (Cyclical(100), 13, 1.0),
        (Cyclical(100), 24, 1.0),
        (Cyclical(100), 25, 0.0),
        (Cyclical(100), 30, 0.4),
        (Cyclical(100), 75, 0.0),
        (Cyclical(100), 99, 1.0),
        (Cyclical(100), 100, 1.0),
        (Cyclical(100), 10**6, 1.0),
        (Cyclical(100, n_cycles=4, ratio=1.0), 5, 0.2),  # a saw tooth
        (Cyclical(100, n_cycles=4, ratio=1.0), 24, 0.96),
        (Cyclical(100, n_cycles=2, ratio=0.5, start=0.5, end=1.5), 10, 0.9),
        # period 10/3: step 3 is at tau = 0.9 (plateau), step 4 at tau = 0.2, step 7 at tau = 0.1
        (Cyclical(10, n_cycles=3), 3, 1.0),
        (Cyclical(10, n_cycles=3), 4, 0.4),
        (Cyclical(10, n_cycles=3), 7, 0.2),
        (Scaled(LinearWarmup(4), 4.0), 2, 2.0),
        (Scaled(LinearWarmup(4), 4.0), 100, 4.0),
        (Scaled(Scaled(Constant(2.0), 3.0), 0.5), 0, 3.0),
        (Scaled(lambda step: 0.25, 2.0), 9, 0.5),  # any callable is a schedule
    ],
)
def test_schedule_value_at_step(schedule: Callable[[int], float], step: int, expected: float) -> None:
    value = schedule(step)
    assert type(value) is float
    assert value == pytest.approx(expected, rel=1e-15, abs=1e-15)


@pytest.mark.parametrize(
    "schedule",
    [Constant(2), LinearWarmup(4, start=0, end=2), Logistic(3, 1, end=2), Cyclical(8, 2, 1, start=0, end=2)],
)
def test_integer_fields_give_float_weights(schedule: Callable[[int], float]) -> None:
    assert all(type(schedule(s)) is float for s in range(12))


def test_numpy_integer_step_is_accepted() -> None:
    assert Cyclical(100)(np.int64(5)) == Cyclical(100)(5) == pytest.approx(0.4)


def test_schedules_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LinearWarmup(4).warmup_steps = 8  # type: ignore[misc]


def fu_reference(n_iter: int, start: float, stop: float, n_cycle: int, ratio: float) -> np.ndarray:
    """``frange_cycle_linear`` from Fu et al.'s code release (github.com/haofuml/cyclical_annealing)."""
    L = np.ones(n_iter) * stop
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio)
    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and (int(i + c * period) < n_iter):
            L[int(i + c * period)] = v
            v += step
            i += 1
    return L


@pytest.mark.parametrize(
    ("total", "n_cycles", "ratio", "start", "end"),
    [
        (100, 4, 0.5, 0.0, 1.0),
        (1000, 5, 0.8, 0.0, 1.0),
        (60, 3, 1.0, 0.0, 1.0),
        (40, 4, 0.25, 0.2, 0.9),
        (12, 12, 0.5, 0.0, 1.0),
    ],
)
def test_cyclical_matches_fu_reference_code(total: int, n_cycles: int, ratio: float, start: float, end: float) -> None:
    schedule = Cyclical(total, n_cycles=n_cycles, ratio=ratio, start=start, end=end)
    ours = np.array([schedule(s) for s in range(total)])
    np.testing.assert_allclose(ours, fu_reference(total, start, end, n_cycles, ratio), rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------------------------
# laws
# --------------------------------------------------------------------------------------------------------------
@FAST
@given(
    warmup=st.integers(0, 1000),
    delay=st.integers(0, 100),
    start=weights,
    end=weights,
    a=st.integers(0, 1500),
    b=st.integers(0, 1500),
)
def test_linear_warmup_is_monotone_and_bounded(
    warmup: int, delay: int, start: float, end: float, a: int, b: int
) -> None:
    schedule = LinearWarmup(warmup, start=start, end=end, delay_steps=delay)
    a, b = min(a, b), max(a, b)
    wa, wb = schedule(a), schedule(b)
    assert min(start, end) <= wa <= max(start, end)
    assert min(start, end) <= wb <= max(start, end)
    assert (wa <= wb) if start <= end else (wa >= wb)
    assert schedule(delay + warmup + a) == end
    if delay > 0:
        assert schedule(min(a, delay - 1)) == start


@pytest.mark.parametrize(
    "schedule",
    [
        LinearWarmup(10**17, start=7.62280082457942, end=0.021060533511106927),
        Cyclical(10**17, n_cycles=1, ratio=1.0, start=7.62280082457942, end=0.021060533511106927),
    ],
    ids=["LinearWarmup", "Cyclical"],
)
def test_ramp_never_rounds_past_end(schedule: Callable[[int], float]) -> None:
    # (10**17 - 1) / 10**17 rounds to 1.0 and start + (end - start) * 1.0 is 0.021060533511106705 < end
    assert schedule(10**17 - 1) == 0.021060533511106927


@FAST
@given(warmup=st.integers(1, 500), start=weights, end=weights)
def test_linear_warmup_steps_are_evenly_spaced(warmup: int, start: float, end: float) -> None:
    schedule = LinearWarmup(warmup, start=start, end=end)
    values = np.array([schedule(s) for s in range(warmup + 1)])
    np.testing.assert_allclose(values, np.linspace(start, end, warmup + 1), rtol=1e-12, atol=1e-12)


@FAST
@given(
    n_cycles=st.integers(1, 8),
    period=st.integers(1, 60),
    ratio=st.floats(min_value=0.01, max_value=1.0),
    start=weights,
    end=weights,
    data=st.data(),
)
def test_cyclical_is_periodic_with_plateau_at_end(
    n_cycles: int, period: int, ratio: float, start: float, end: float, data: st.DataObject
) -> None:
    total = n_cycles * period
    schedule = Cyclical(total, n_cycles=n_cycles, ratio=ratio, start=start, end=end)
    step = data.draw(st.integers(0, total - 1), label="step")
    value = schedule(step)
    assert min(start, end) <= value <= max(start, end)
    if step + period < total:
        assert schedule(step + period) == value
    if (step % period) / period >= ratio:
        assert value == end
    if step % period == 0:
        assert value == start
    assert schedule(total + step) == end


@FAST
@given(
    midpoint=st.integers(-10_000, 10_000),
    steepness=st.floats(min_value=1e-3, max_value=10.0),
    end=weights,
    a=st.integers(0, 20_000),
    b=st.integers(0, 20_000),
)
def test_logistic_is_monotone_with_half_at_midpoint(
    midpoint: int, steepness: float, end: float, a: int, b: int
) -> None:
    schedule = Logistic(midpoint, steepness, end=end)
    a, b = min(a, b), max(a, b)
    assert 0.0 <= schedule(a) <= schedule(b) <= end
    if midpoint >= 0:
        assert schedule(midpoint) == end / 2


# --------------------------------------------------------------------------------------------------------------
# epochs, the tutorial's warm-up
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n_epochs", "steps_per_epoch", "expected"),
    [(0, 5, 0), (2, 50, 100), (0.5, 3, 2), (2.5, 1, 3), (0.3, 10, 3), (0.25, 3, 1), (1 / 3, 3, 1)],
)
def test_epochs_rounds_half_up(n_epochs: float, steps_per_epoch: int, expected: int) -> None:
    assert epochs(n_epochs, steps_per_epoch) == expected


@pytest.mark.parametrize(
    ("num_epochs", "expected"),
    [
        (1, [1.0]),
        (2, [0.0, 1.0]),
        (10, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0]),
        (5, [0.0, 0.5, 1.0, 1.0, 1.0]),
    ],
)
def test_tutorial_kl_weight_warms_up_over_half_of_training(num_epochs: int, expected: list[float]) -> None:
    values = [tutorial_kl_weight(epoch, num_epochs) for epoch in range(num_epochs)]
    assert values == pytest.approx(expected, rel=1e-15, abs=0)


def test_tutorial_kl_weight_is_linear_warmup_over_epochs() -> None:
    for num_epochs in range(1, 40):
        for epoch in range(num_epochs):
            assert tutorial_kl_weight(epoch, num_epochs) == LinearWarmup(num_epochs // 2)(epoch)


@pytest.mark.parametrize(
    ("epoch", "num_epochs", "name"),
    [
        (0, 0, "num_epochs"),
        (-1, 4, "epoch"),
        (4, 4, "epoch"),
        (1.0, 4, "epoch"),
        (0, 2.0, "num_epochs"),
        (True, 4, "epoch"),
    ],
)
def test_tutorial_kl_weight_rejects_bad_arguments(epoch: Any, num_epochs: Any, name: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        tutorial_kl_weight(epoch, num_epochs)


# --------------------------------------------------------------------------------------------------------------
# parse_schedule
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("constant", Constant(1.0)),
        ("constant:0.5", Constant(0.5)),
        (" Constant : 4 ", Constant(4.0)),
        ("linear:2", LinearWarmup(warmup_steps=20)),
        ("linear:0.25", LinearWarmup(warmup_steps=3)),  # 2.5 steps, rounded half up
        ("linear:0", LinearWarmup(warmup_steps=0)),
        ("logistic:5:0.01", Logistic(midpoint=50.0, steepness=0.01)),
        ("logistic:0.5:2", Logistic(midpoint=5.0, steepness=2.0)),
        ("cyclical:4:0.5", Cyclical(100, n_cycles=4, ratio=0.5)),
        ("CYCLICAL:1:1", Cyclical(100, n_cycles=1, ratio=1.0)),
    ],
)
def test_parse_schedule_builds_the_schedule(spec: str, expected: object) -> None:
    assert parse_schedule(spec, total_steps=100, steps_per_epoch=10) == expected


@FAST
@given(
    spe=st.integers(1, 1000),
    e=st.floats(min_value=0.0, max_value=100.0),
    k=st.floats(min_value=1e-6, max_value=100.0),
    b=weights,
    n=st.integers(1, 20),
    r=st.floats(min_value=1e-6, max_value=1.0),
)
def test_parse_schedule_round_trips(spe: int, e: float, k: float, b: float, n: int, r: float) -> None:
    total = 20 * spe

    def parse(spec: str) -> object:
        return parse_schedule(spec, total_steps=total, steps_per_epoch=spe)

    assert parse(f"constant:{b!r}") == Constant(b)
    assert parse(f"linear:{e!r}") == LinearWarmup(epochs(e, spe))
    assert parse(f"logistic:{e!r}:{k!r}") == Logistic(e * spe, k)
    assert parse(f"cyclical:{n}:{r!r}") == Cyclical(total, n_cycles=n, ratio=r)


GRAMMAR = re.escape("constant:B") + r"[\s\S]*linear:E[\s\S]*logistic:E:K[\s\S]*cyclical:N:R"


@pytest.mark.parametrize(
    ("spec", "detail"),
    [
        ("", "unknown schedule"),
        ("cosine", "unknown schedule"),
        ("linear", "0 field"),
        ("linear:1:2", "2 field"),
        ("constant:1:2", "2 field"),
        ("logistic:5", "1 field"),
        ("cyclical:4", "1 field"),
        ("constant:", r"\bB\b"),
        ("constant:abc", r"\bB\b[\s\S]*'abc'"),
        ("constant:-1", r"\bvalue\b[\s\S]*-1"),
        ("constant:nan", r"\bvalue\b[\s\S]*nan"),
        ("linear:x", r"\bE\b[\s\S]*'x'"),
        ("linear:-1", r"\bn_epochs\b[\s\S]*-1"),
        ("linear:inf", r"\bn_epochs\b[\s\S]*inf"),
        ("logistic:-1:0.1", r"\bE\b[\s\S]*-1"),
        ("logistic:5:0", r"\bsteepness\b[\s\S]*0"),
        ("logistic:5:k", r"\bK\b[\s\S]*'k'"),
        ("cyclical:4.0:0.5", r"\bN\b[\s\S]*'4.0'"),
        ("cyclical:0:0.5", r"\bn_cycles\b[\s\S]*0"),
        ("cyclical:101:0.5", r"\bn_cycles\b[\s\S]*101"),
        ("cyclical:4:0", r"\bratio\b[\s\S]*0"),
        ("cyclical:4:1.5", r"\bratio\b[\s\S]*1.5"),
    ],
)
def test_parse_schedule_errors_name_the_problem_and_list_the_grammar(spec: str, detail: str) -> None:
    with pytest.raises(ValueError, match=detail) as info:
        parse_schedule(spec, total_steps=100, steps_per_epoch=10)
    assert re.search(GRAMMAR, str(info.value))
    assert repr(spec) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"total_steps": 0, "steps_per_epoch": 10}, "total_steps"),
        ({"total_steps": 100, "steps_per_epoch": 0}, "steps_per_epoch"),
        ({"total_steps": 100.0, "steps_per_epoch": 10}, "total_steps"),
    ],
)
def test_parse_schedule_rejects_bad_lengths(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        parse_schedule("constant", **kwargs)


# --------------------------------------------------------------------------------------------------------------
# bad fields and steps
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "name", "value"),
    [
        (lambda: Constant(-1.0), "value", "-1.0"),
        (lambda: Constant(math.nan), "value", "nan"),
        (lambda: Constant(math.inf), "value", "inf"),
        (lambda: LinearWarmup(-1), "warmup_steps", "-1"),
        (lambda: LinearWarmup(2.5), "warmup_steps", "2.5"),
        (lambda: LinearWarmup(True), "warmup_steps", "True"),
        (lambda: LinearWarmup(4, delay_steps=-3), "delay_steps", "-3"),
        (lambda: LinearWarmup(4, start=math.nan), "start", "nan"),
        (lambda: LinearWarmup(4, end=-0.5), "end", "-0.5"),
        (lambda: Logistic(math.inf, 1.0), "midpoint", "inf"),
        (lambda: Logistic(10, 0.0), "steepness", "0.0"),
        (lambda: Logistic(10, -1.0), "steepness", "-1.0"),
        (lambda: Logistic(10, math.nan), "steepness", "nan"),
        (lambda: Logistic(10, 1.0, end=math.inf), "end", "inf"),
        (lambda: Cyclical(0), "total_steps", "0"),
        (lambda: Cyclical(100.0), "total_steps", "100.0"),
        (lambda: Cyclical(100, n_cycles=0), "n_cycles", "0"),
        (lambda: Cyclical(3, n_cycles=4), "n_cycles", "4"),
        (lambda: Cyclical(100, ratio=0.0), "ratio", "0.0"),
        (lambda: Cyclical(100, ratio=1.01), "ratio", "1.01"),
        (lambda: Cyclical(100, ratio=math.nan), "ratio", "nan"),
        (lambda: Cyclical(100, start=-1.0), "start", "-1.0"),
        (lambda: Cyclical(100, end=math.nan), "end", "nan"),
        (lambda: Scaled(Constant(), -2.0), "factor", "-2.0"),
        (lambda: Scaled(Constant(), math.inf), "factor", "inf"),
        (lambda: epochs(-1.0, 10), "n_epochs", "-1.0"),
        (lambda: epochs(1.0, 0), "steps_per_epoch", "0"),
        (lambda: free_bits(torch.ones(2, 3), -0.1), "lam", "-0.1"),
        (lambda: free_bits(torch.ones(2, 3), math.nan), "lam", "nan"),
    ],
)
def test_bad_field_raises_value_error_naming_it(build: Callable[[], object], name: str, value: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{name}\b[\s\S]*{re.escape(value)}"):
        build()


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: Constant("1"), "value"),  # type: ignore[arg-type]
        (lambda: Logistic(10, None), "steepness"),  # type: ignore[arg-type]
        (lambda: Scaled(1.0, 2.0), "schedule"),  # type: ignore[arg-type]
        (lambda: parse_schedule(None, total_steps=1, steps_per_epoch=1), "spec"),  # type: ignore[arg-type]
        (lambda: free_bits([[1.0, 2.0]], 0.0), "kl_per_dim"),  # type: ignore[arg-type]
    ],
)
def test_wrong_type_raises_type_error_naming_it(build: Callable[[], object], name: str) -> None:
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        build()


# Scaled wraps a bare callable that accepts anything: Scaled itself must check the step
ALL_SCHEDULES = [Constant(), LinearWarmup(4), Logistic(10, 0.5), Cyclical(100), Scaled(lambda step: 1.0, 2.0)]


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("step", [-1, 2.0, True, "3", None, math.nan])
def test_bad_step_raises_value_error(schedule: Callable[[Any], float], step: Any) -> None:
    with pytest.raises(ValueError, match=rf"\bstep\b[\s\S]*{re.escape(repr(step))}"):
        schedule(step)


# --------------------------------------------------------------------------------------------------------------
# free bits
# --------------------------------------------------------------------------------------------------------------
def test_free_bits_hand_computed() -> None:
    kl = torch.tensor([[0.1, 2.0, 0.5], [0.3, 1.0, 0.7]], dtype=torch.float64)
    # batch means 0.2, 1.5, 0.6 -> max(0.5, .) = 0.5, 1.5, 0.6
    out = free_bits(kl, 0.5)
    assert out.shape == ()
    assert out.item() == pytest.approx(2.6, rel=1e-15)
    assert free_bits(kl, 2.0).item() == 6.0  # every dimension below the floor


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 16),
    z_dim=st.integers(1, 12),
    lam=st.floats(min_value=0.0, max_value=3.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_free_bits_value_and_gradient(batch: int, z_dim: int, lam: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    kl = (torch.rand(batch, z_dim, generator=g, dtype=torch.float64) * 4).requires_grad_()
    out = free_bits(kl, lam)
    means = kl.detach().numpy().mean(0)
    assert out.item() == pytest.approx(np.maximum(lam, means).sum(), rel=1e-12)
    out.backward()
    assert kl.grad is not None
    below = torch.from_numpy(means < lam)
    assert torch.equal(kl.grad[:, below], torch.zeros(batch, int(below.sum()), dtype=torch.float64))
    assert torch.equal(kl.grad[:, ~below], torch.full((batch, int((~below).sum())), 1 / batch, dtype=torch.float64))


def test_free_bits_gradient_passes_at_the_floor() -> None:
    kl = torch.tensor([[0.5, 0.2], [0.5, 0.2]], dtype=torch.float64, requires_grad=True)
    free_bits(kl, 0.5).backward()
    assert kl.grad is not None
    assert kl.grad.tolist() == [[0.5, 0.0], [0.5, 0.0]]


def test_free_bits_with_zero_floor_is_the_mean_kl() -> None:
    g = torch.Generator().manual_seed(0)
    kl = torch.rand(32, 10, generator=g, dtype=torch.float64)
    kl[:, 3] = 0.0  # a collapsed dimension: its mean sits at the floor 0 and still gets the gradient
    kl.requires_grad_()
    kl2 = kl.detach().clone().requires_grad_()
    out, ref = free_bits(kl, 0.0), kl2.sum(1).mean()
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-14)
    out.backward()
    ref.backward()
    assert kl.grad is not None
    assert kl2.grad is not None
    torch.testing.assert_close(kl.grad, kl2.grad, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kl", "detail"),
    [
        (torch.ones(5), r"\(batch, z_dim\)[\s\S]*\(5,\)"),
        (torch.ones(2, 3, 4), r"\(2, 3, 4\)"),
        (torch.ones(0, 3), r"\(0, 3\)"),
        (torch.ones(3, 0), r"\(3, 0\)"),
        (torch.ones((), dtype=torch.float32), r"\(\)"),
        (torch.ones(2, 3, dtype=torch.int64), "floating-point[\\s\\S]*int64"),
    ],
)
def test_free_bits_rejects_bad_kl_per_dim(kl: torch.Tensor, detail: str) -> None:
    with pytest.raises(ValueError, match=rf"\bkl_per_dim\b[\s\S]*{detail}"):
        free_bits(kl, 0.1)
