"""Every error template of the core reads correctly for each of its uses, and float32-rounded data is accepted.

Each case triggers one message and states the whole sentence it must read as (argument, expectation, received
value, where, what to do). A common check rejects self-contradictions: "finite" next to an interval closed at
infinity, and an empty batch index "()".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import kldiv
from kldiv import generators
from kldiv._validate import sum_tolerance

NAN, INF = math.nan, math.inf
P = [0.5, 0.25, 0.25]

CASES: dict[str, tuple[Callable[[], Any], type[Exception], str]] = {
    "base_inf": (lambda: kldiv.kl(P, P, base=INF), ValueError, r"base must be finite, in \(0\.0, inf\), got inf"),
    "base_nan": (lambda: kldiv.kl(P, P, base=NAN), ValueError, r"base must be a number in \(0\.0, inf\), got nan"),
    "base_negative": (lambda: kldiv.kl(P, P, base=-2), ValueError, r"base must be in \(0\.0, inf\), got -2\.0"),
    "base_one": (lambda: kldiv.kl(P, P, base=1), ValueError, r"base must not be 1 \(log 1 = 0\); use base=None"),
    "base_type": (lambda: kldiv.kl(P, P, base="2"), TypeError, r"base must be a real number, got str"),
    "alpha_negative": (lambda: kldiv.renyi(P, P, -1), ValueError, r"alpha must be in \[0\.0, inf\], got -1\.0"),
    "alpha_nan": (lambda: kldiv.renyi(P, P, NAN), ValueError, r"alpha must be a number in \[0\.0, inf\], got nan"),
    "smoothing_one": (
        lambda: kldiv.kl(P, P, smoothing=1.0),
        ValueError,
        r"smoothing must be in \[0\.0, 1\.0\), got 1\.0",
    ),
    "smoothing_inf": (
        lambda: kldiv.kl(P, P, smoothing=INF),
        ValueError,
        r"smoothing must be finite, in \[0\.0, 1\.0\), got inf",
    ),
    "temperature_zero": (
        lambda: kldiv.kl_from_logits(P, P, temperature=0.0),
        ValueError,
        r"temperature must be in \(0\.0, inf\), got 0\.0",
    ),
    "temperature_overflow": (
        lambda: kldiv.kl_from_logits([1e300, 0.0], [0.0, 0.0], temperature=1e-10),
        ValueError,
        r"p_logits / temperature overflows \(temperature=1e-10\); use a larger temperature or smaller logits",
    ),
    "weights_range": (
        lambda: kldiv.js(P, P, weights=(1.5, -0.5)),
        ValueError,
        r"weights\[0\] must be in \[0\.0, 1\.0\], got 1\.5",
    ),
    "weights_sum": (
        lambda: kldiv.js(P, P, weights=(0.5, 0.6)),
        ValueError,
        r"weights must sum to 1, got \(0\.5, 0\.6\) \(sum 1\.1\)",
    ),
    "weights_pair": (lambda: kldiv.js(P, P, weights=(1.0,)), ValueError, r"weights must be a pair \(w, 1 - w\)"),
    "beta_range": (
        lambda: kldiv.generalized_js(P, P, beta=2.0),
        ValueError,
        r"beta must be in \[0\.0, 1\.0\], got 2\.0",
    ),
    "beta_endpoint": (
        lambda: kldiv.generalized_js(P, P, beta=0.0),
        ValueError,
        r"beta=0: the unnormalized generalized JSD is 0 there \(M equals Q\).*pass normalized=True",
    ),
    "dim_range": (
        lambda: kldiv.kl(P, P, dim=2),
        ValueError,
        r"dim=2 is out of range for inputs with 1 dimension\(s\)",
    ),
    "dim_type": (lambda: kldiv.kl(P, P, dim=1.0), TypeError, r"dim must be an int, got float"),
    "scalar": (
        lambda: kldiv.kl(0.5, 0.5),
        ValueError,
        r"p is a scalar; a distribution needs an event dimension \(at least 1-D input\)",
    ),
    "event_sizes": (
        lambda: kldiv.kl(P, [0.5, 0.5]),
        ValueError,
        r"event sizes along dim -1 differ: p has 3, q has 2 entries",
    ),
    "broadcast": (
        lambda: kldiv.kl(np.full((2, 3), 1 / 3), np.full((3, 3), 1 / 3)),
        ValueError,
        r"p with shape \(2, 3\) and q with shape \(3, 3\) do not broadcast",
    ),
    "empty": (
        lambda: kldiv.kl(np.zeros((2, 0)), np.zeros((2, 0))),
        ValueError,
        r"the event dimension \(dim -1\) is empty; a distribution needs at least one entry",
    ),
    "negative": (
        lambda: kldiv.kl([0.5, -0.25, 0.75], P),
        ValueError,
        r"p has -0\.25 at index \(1,\) \(event dim -1\); probabilities must be >= 0",
    ),
    "nan": (
        lambda: kldiv.kl(P, [0.5, NAN, 0.5]),
        ValueError,
        r"q has nan at index \(1,\) \(event dim -1\); probabilities must not be NaN",
    ),
    "inf": (
        lambda: kldiv.kl([INF, 0.0, 0.0], P),
        ValueError,
        r"p has inf at index \(0,\) \(event dim -1\); probabilities must be finite",
    ),
    "sum_single": (
        lambda: kldiv.kl([0.5, 0.25, 0.35], P),
        ValueError,
        r"p sums to 1\.1 along dim -1, 0\.1 away from 1, beyond the tolerance 0\.00035 for 3 entries in float64 "
        r"\(which admits float32 rounding\); pass normalize=True to divide it by its sum, or renormalize it first "
        r"\(divide by its sum along dim -1\)",
    ),
    "sum_row": (
        lambda: kldiv.kl(P, np.asarray([P, [0.5, 0.25, 0.35]])),
        ValueError,
        r"q \(the row at batch index \(1,\)\) sums to 1\.1 along dim -1, 0\.1 away from 1",
    ),
    "normalize_zero_sum": (
        lambda: kldiv.kl([0, 0, 0], [1, 2, 3], normalize=True),
        ValueError,
        r"p sums to 0\.0 along dim -1; with normalize=True every row must have a positive, finite sum",
    ),
    "integer_dtype": (
        lambda: kldiv.kl(np.asarray([1, 0, 0]), P),
        TypeError,
        r"p has dtype int64; a floating-point dtype is required \(pass normalize=True to use integer counts\)",
    ),
    "bool_dtype": (
        lambda: kldiv.kl(torch.tensor([True, False]), torch.tensor([0.5, 0.5])),
        TypeError,
        r"p has dtype torch\.bool; a real floating-point dtype is required",
    ),
    "not_numbers": (lambda: kldiv.kl(["a", "b"], P[:2]), TypeError, r"p must be an array of numbers, got dtype <U1"),
    "log_probs_not_normalized": (
        lambda: kldiv.kl_from_log_probs(np.log([0.5, 0.6]), np.log([0.5, 0.5])),
        ValueError,
        r"log_p is not normalized along dim -1: its logsumexp is 0\.0953\d*, beyond the tolerance 0\.00035 of 0; "
        r"pass logits to the \*_from_logits function instead",
    ),
    "log_probs_positive": (
        lambda: kldiv.kl_from_log_probs([0.5, -INF], [0.0, -INF]),
        ValueError,
        r"log_p has 0\.5 at index \(0,\) \(event dim -1\); log-probabilities must be <= 0",
    ),
    "logits_all_neg_inf": (
        lambda: kldiv.kl_from_logits([-INF, -INF], [0.0, 0.0]),
        ValueError,
        r"p_logits is -inf everywhere along dim -1: that is not a distribution",
    ),
    "logits_all_neg_inf_row": (
        lambda: kldiv.kl_from_logits([[0.0, 0.0], [-INF, -INF]], [0.0, 0.0]),
        ValueError,
        r"p_logits is -inf everywhere along dim -1 in the row at batch index \(1,\): that is not a distribution",
    ),
    "logits_nan": (
        lambda: kldiv.kl_from_logits([0.0, NAN], [0.0, 0.0]),
        ValueError,
        r"p_logits has nan at index \(1,\) \(event dim -1\); NaN is not allowed",
    ),
    "logits_posinf": (
        lambda: kldiv.entropy_from_logits([0.0, INF]),
        ValueError,
        r"logits has inf at index \(1,\) \(event dim -1\); \+inf is not allowed",
    ),
    "chi2_kind": (
        lambda: kldiv.chi2(P, P, kind="pears"),  # type: ignore[arg-type]
        ValueError,
        r"kind must be 'pearson' or 'neyman', got 'pears'",
    ),
    "f_not_callable": (
        lambda: kldiv.f_divergence(P, P, 3),  # type: ignore[arg-type]
        TypeError,
        r"f must be an FGenerator or a callable t -> f\(t\), got int",
    ),
    "f_of_one": (
        lambda: kldiv.f_divergence(P, P, lambda t: t * t),
        ValueError,
        r"f\(1\) must be 0 for an f-divergence, got f\(1\) = 1\.0; use f\(t\) - f\(1\)",
    ),
    "f_slope": (
        lambda: kldiv.f_divergence([0.5, 0.5], [1.0, 0.0], lambda t: (t - 1) ** 2),
        ValueError,
        r"q has zeros where p > 0, which needs lim f\(t\)/t as t -> inf; pass an FGenerator with slope_at_infinity",
    ),
    "amari_alpha": (lambda: generators.amari_alpha(INF), ValueError, r"alpha must be a finite number, got inf"),
    "t_power": (
        lambda: generators.t_power(1.0),
        ValueError,
        r"power must be finite and not 0 or 1 \(f would vanish\), got 1\.0",
    ),
}


def _contradictions(message: str) -> list[str]:
    found = []
    if "finite" in message and re.search(r"inf\]", message):
        found.append("says finite but allows inf")
    if "index ()" in message:
        found.append("an empty batch index")
    return found


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_error_message_reads_as_stated(case: str) -> None:
    call, error, pattern = CASES[case]
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert re.search(pattern, message), f"{case}: {message!r}"
    assert not _contradictions(message), f"{case}: {message!r}: {_contradictions(message)}"


@pytest.mark.parametrize("n", [10, 1000, 32_000, 1_000_000])
def test_float32_softmax_cast_to_float64_is_accepted(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    p = torch.softmax(3 * torch.randn(n, generator=g), -1).double()
    q = torch.softmax(3 * torch.randn(n, generator=g), -1).double()
    assert torch.isfinite(kldiv.kl(p, q))
    assert math.isfinite(kldiv.kl(p.numpy(), q.numpy()))
    assert torch.isfinite(kldiv.kl_from_log_probs(p.log(), q.log()))


def test_the_reported_float32_rounding_case_is_accepted() -> None:
    # a float32 softmax that sums to 0.99999993 once widened (rejected before with a tolerance of 1.5e-8)
    p = torch.softmax(torch.tensor([2.0, 1.0, 0.1, -1.3, 0.7]), -1).double()
    q = torch.softmax(torch.tensor([0.0, 0.5, 1.0, -0.5, 0.2]), -1).double()
    assert abs(float(p.sum()) - 1) > 1.5e-8 or abs(float(q.sum()) - 1) > 1.5e-8
    assert torch.isfinite(kldiv.kl(p, q))


@pytest.mark.parametrize(
    ("dtype", "n", "expected"),
    [
        (torch.float64, 3, math.sqrt(2**-23)),
        (torch.float32, 3, math.sqrt(2**-23)),
        (torch.float16, 3, math.sqrt(2**-10)),
        (torch.bfloat16, 3, math.sqrt(2**-7)),
        (torch.float64, 10_000_000, 1e7 * 2**-23 / 100),
    ],
)
def test_sum_tolerance_rule(dtype: torch.dtype, n: int, expected: float) -> None:
    assert sum_tolerance(dtype, n) == pytest.approx(expected, rel=1e-12)


def test_unnormalized_weights_are_still_rejected_with_the_fix_in_the_message() -> None:
    with pytest.raises(ValueError, match=r"pass normalize=True"):
        kldiv.kl(torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64), torch.tensor([1 / 3] * 3, dtype=torch.float64))
    out = kldiv.kl(torch.tensor([0.3, 0.3, 0.3]), torch.tensor([1 / 3] * 3), normalize=True)
    assert float(out) == pytest.approx(0.0, abs=1e-7)
