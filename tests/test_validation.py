"""Input validation: every bad input raises, and the message names the argument and where the problem is."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

import kldiv

Fn = Callable[..., Any]
NAN = math.nan
INF = math.inf


@pytest.fixture(autouse=True)
def _validation_on() -> Iterator[None]:
    """Every test starts and ends with validation on (the default), whatever it does in between."""
    kldiv.set_validation(True)
    yield
    kldiv.set_validation(True)


def name_then(name: str, *parts: int) -> str:
    """Regex: the argument name as a word, then each index number (as words) in order."""
    return r"\b" + re.escape(name) + r"\b" + "".join(rf"[\s\S]*\b{i}\b" for i in parts)


# --------------------------------------------------------------------------------------------------------------
# probability arguments
# --------------------------------------------------------------------------------------------------------------
# function name -> (callable taking (p, q), names of its probability arguments)
PROB_FUNCS: dict[str, tuple[Fn, tuple[str, ...]]] = {
    "kl": (lambda p, q, **kw: kldiv.kl(p, q, **kw), ("p", "q")),
    "cross_entropy": (lambda p, q, **kw: kldiv.cross_entropy(p, q, **kw), ("p", "q")),
    "entropy": (lambda p, q, **kw: kldiv.entropy(p, **kw), ("p",)),
    "js": (lambda p, q, **kw: kldiv.js(p, q, **kw), ("p", "q")),
    "generalized_js": (lambda p, q, **kw: kldiv.generalized_js(p, q, beta=0.5, **kw), ("p", "q")),
    "renyi": (lambda p, q, **kw: kldiv.renyi(p, q, 0.5, **kw), ("p", "q")),
    "tv": (lambda p, q, **kw: kldiv.tv(p, q, **kw), ("p", "q")),
    "hellinger": (lambda p, q, **kw: kldiv.hellinger(p, q, **kw), ("p", "q")),
    "chi2": (lambda p, q, **kw: kldiv.chi2(p, q, **kw), ("p", "q")),
    "jeffreys": (lambda p, q, **kw: kldiv.jeffreys(p, q, **kw), ("p", "q")),
    "f_divergence": (lambda p, q, **kw: kldiv.f_divergence(p, q, kldiv.generators.kl_forward, **kw), ("p", "q")),
}
PROB_ARGS = [(fn, arg) for fn, (_, args) in PROB_FUNCS.items() for arg in args]

GOOD = [0.1, 0.2, 0.3, 0.15, 0.05, 0.2]  # K = 6


def _bad_row(value: float, at: int) -> list[float]:
    row = list(GOOD)
    row[at] = value
    return row


def _call_with_bad(fn_name: str, arg: str, bad: Any, good: Any) -> Any:
    fn, _ = PROB_FUNCS[fn_name]
    return fn(bad, good) if arg == "p" else fn(good, bad)


def _as(kind: str, x: Any) -> Any:
    return torch.tensor(x, dtype=torch.float64) if kind == "torch" else np.asarray(x, dtype=np.float64)


@pytest.mark.parametrize(("fn_name", "arg"), PROB_ARGS)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_negative_probability_names_argument_and_index(fn_name: str, arg: str, kind: str) -> None:
    bad = _as(kind, _bad_row(-0.05, 4))
    with pytest.raises(ValueError, match=name_then(arg, 4)):
        _call_with_bad(fn_name, arg, bad, _as(kind, GOOD))


@pytest.mark.parametrize(("fn_name", "arg"), PROB_ARGS)
def test_negative_probability_in_batch_names_row_and_column(fn_name: str, arg: str) -> None:
    rows = [list(GOOD) for _ in range(4)]
    rows[2][3] = -0.01
    with pytest.raises(ValueError, match=name_then(arg, 2, 3)):
        _call_with_bad(fn_name, arg, np.asarray(rows), np.asarray(GOOD))


@pytest.mark.parametrize(("fn_name", "arg"), PROB_ARGS)
@pytest.mark.parametrize("value", [NAN, INF], ids=["nan", "posinf"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_nan_and_inf_probabilities_name_argument_and_index(fn_name: str, arg: str, value: float, kind: str) -> None:
    bad = _as(kind, _bad_row(value, 4))
    with pytest.raises(ValueError, match=name_then(arg, 4)):
        _call_with_bad(fn_name, arg, bad, _as(kind, GOOD))


@pytest.mark.parametrize(("fn_name", "arg"), PROB_ARGS)
@pytest.mark.parametrize("total", [1.0 + 1e-3, 1.0 - 1e-3, 2.0, 0.5])
def test_float64_sum_off_one_beyond_tolerance_raises(fn_name: str, arg: str, total: float) -> None:
    bad = np.asarray(GOOD) * total
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        _call_with_bad(fn_name, arg, bad, np.asarray(GOOD))


@pytest.mark.parametrize(("fn_name", "arg"), PROB_ARGS)
def test_sum_off_one_in_batch_names_argument_and_row(fn_name: str, arg: str) -> None:
    rows = np.asarray([GOOD] * 5)
    rows[3] *= 1.1
    with pytest.raises(ValueError, match=name_then(arg, 3)):
        _call_with_bad(fn_name, arg, rows, np.asarray(GOOD))


@pytest.mark.parametrize(("fn_name", "arg"), PROB_ARGS)
@pytest.mark.parametrize("total", [1.0 + 1e-10, 1.0 - 1e-10, 1.0 + 1e-9, 1.0 - 1e-6, 1.0 + 3e-4])
def test_float64_sum_off_one_within_tolerance_is_accepted(fn_name: str, arg: str, total: float) -> None:
    ok = np.asarray(GOOD) * total
    out = _call_with_bad(fn_name, arg, ok, np.asarray(GOOD))
    assert not math.isnan(float(out))


# (dtype, accepted total, rejected total): tolerance sqrt(eps(dtype)): float32 3.5e-4, float16 0.031, bf16 0.088
DTYPE_SUMS = [
    (torch.float32, 1.0 + 1e-4, 1.0 + 1e-3),
    (torch.float16, 1.0 + 0.01, 1.0 + 0.1),
    (torch.bfloat16, 1.0 + 0.04, 1.0 + 0.25),
]


@pytest.mark.parametrize(("dtype", "accepted", "rejected"), DTYPE_SUMS)
@pytest.mark.parametrize("arg", ["p", "q"])
def test_sum_tolerance_follows_the_dtype(dtype: torch.dtype, accepted: float, rejected: float, arg: str) -> None:
    good = torch.tensor([0.25, 0.25, 0.5], dtype=dtype)
    ok = torch.tensor([0.25, 0.25, 0.5 + (accepted - 1.0)], dtype=dtype)
    bad = torch.tensor([0.25, 0.25, 0.5 + (rejected - 1.0)], dtype=dtype)
    out = kldiv.kl(ok, good) if arg == "p" else kldiv.kl(good, ok)
    assert out.dtype == dtype
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        kldiv.kl(bad, good) if arg == "p" else kldiv.kl(good, bad)


@pytest.mark.parametrize("arg", ["p", "q"])
def test_float32_numpy_probabilities_use_the_float32_sum_tolerance(arg: str) -> None:
    # A float32 softmax output sums to 1 only within float32 rounding (here 1 + 2.2e-8 once widened); the sum
    # check uses sqrt(eps) of the *input* dtype (docs/discrete.md), so this must be accepted.
    x = np.asarray([0.2, 0.0, 0.5, 0.3], dtype=np.float32)
    y = np.asarray([0.1, 0.3, 0.2, 0.4], dtype=np.float32)
    assert abs(float(y.astype(np.float64).sum()) - 1.0) > 1.5e-8
    out = kldiv.kl(x, y) if arg == "p" else kldiv.kl(y, x)
    assert not math.isnan(float(out))
    bad = np.asarray([0.2, 0.0, 0.5, 0.302], dtype=np.float32)
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        kldiv.kl(bad, y) if arg == "p" else kldiv.kl(y, bad)


# --------------------------------------------------------------------------------------------------------------
# logits and log-probabilities
# --------------------------------------------------------------------------------------------------------------
# name -> (callable taking (a, b), argument names)
LOGIT_FUNCS: dict[str, tuple[Fn, tuple[str, ...]]] = {
    "kl_from_logits": (lambda a, b, **kw: kldiv.kl_from_logits(a, b, **kw), ("p_logits", "q_logits")),
    "entropy_from_logits": (lambda a, b, **kw: kldiv.entropy_from_logits(a, **kw), ("logits",)),
    "cross_entropy_from_logits": (
        lambda a, b, **kw: kldiv.cross_entropy_from_logits(a, b, **kw),
        ("p_logits", "q_logits"),
    ),
    "js_from_logits": (lambda a, b, **kw: kldiv.js_from_logits(a, b, **kw), ("p_logits", "q_logits")),
    "generalized_js_from_logits": (
        lambda a, b, **kw: kldiv.generalized_js_from_logits(a, b, beta=0.5, **kw),
        ("p_logits", "q_logits"),
    ),
}
LOG_PROB_FUNCS: dict[str, tuple[Fn, tuple[str, ...]]] = {
    "kl_from_log_probs": (lambda a, b, **kw: kldiv.kl_from_log_probs(a, b, **kw), ("log_p", "log_q")),
    "entropy_from_log_probs": (lambda a, b, **kw: kldiv.entropy_from_log_probs(a, **kw), ("log_p",)),
    "cross_entropy_from_log_probs": (
        lambda a, b, **kw: kldiv.cross_entropy_from_log_probs(a, b, **kw),
        ("log_p", "log_q"),
    ),
    "js_from_log_probs": (lambda a, b, **kw: kldiv.js_from_log_probs(a, b, **kw), ("log_p", "log_q")),
    "generalized_js_from_log_probs": (
        lambda a, b, **kw: kldiv.generalized_js_from_log_probs(a, b, beta=0.5, **kw),
        ("log_p", "log_q"),
    ),
}
LOG_SPACE = {**LOGIT_FUNCS, **LOG_PROB_FUNCS}
LOG_ARGS = [(fn, i, arg) for fn, (_, args) in LOG_SPACE.items() for i, arg in enumerate(args)]

GOOD_LOGITS = [0.3, -1.2, 2.0, 0.0, -INF, 1.1]
GOOD_LOG_PROBS = list(np.log([0.1, 0.2, 0.3, 0.15, 0.05, 0.2]))


def _call_log(fn_name: str, position: int, bad: Any) -> Any:
    fn, _ = LOG_SPACE[fn_name]
    good = GOOD_LOG_PROBS if fn_name in LOG_PROB_FUNCS else GOOD_LOGITS
    good_arr = torch.tensor(good, dtype=torch.float64) if isinstance(bad, torch.Tensor) else np.asarray(good)
    return fn(bad, good_arr) if position == 0 else fn(good_arr, bad)


@pytest.mark.parametrize(("fn_name", "position", "arg"), LOG_ARGS)
@pytest.mark.parametrize("value", [NAN, INF], ids=["nan", "posinf"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_nan_and_posinf_in_log_space_name_argument_and_index(
    fn_name: str, position: int, arg: str, value: float, kind: str
) -> None:
    good = GOOD_LOG_PROBS if fn_name in LOG_PROB_FUNCS else GOOD_LOGITS
    row = list(good)
    row[3] = value
    bad = _as(kind, row)
    with pytest.raises(ValueError, match=name_then(arg, 3)):
        _call_log(fn_name, position, bad)


@pytest.mark.parametrize(("fn_name", "position", "arg"), LOG_ARGS)
def test_row_of_all_neg_inf_names_argument_and_row(fn_name: str, position: int, arg: str) -> None:
    good = GOOD_LOG_PROBS if fn_name in LOG_PROB_FUNCS else GOOD_LOGITS
    rows = [list(good) for _ in range(4)]
    rows[2] = [-INF] * len(good)
    with pytest.raises(ValueError, match=name_then(arg, 2)):
        _call_log(fn_name, position, np.asarray(rows))


@pytest.mark.parametrize(("fn_name", "position", "arg"), [a for a in LOG_ARGS if a[0] in LOG_PROB_FUNCS])
def test_positive_log_probability_names_argument_and_index(fn_name: str, position: int, arg: str) -> None:
    row = [-2.0, -3.0, 0.3, -INF, -1.5, -2.5]
    with pytest.raises(ValueError, match=name_then(arg, 2)):
        _call_log(fn_name, position, np.asarray(row))


@pytest.mark.parametrize(("fn_name", "position", "arg"), [a for a in LOG_ARGS if a[0] in LOG_PROB_FUNCS])
def test_unnormalized_log_probs_raise(fn_name: str, position: int, arg: str) -> None:
    # exp sums to 1.1: 'sums off 1 by more than sqrt(eps)' (docs/discrete.md) applies to log-probabilities too
    row = list(np.log([0.1, 0.2, 0.3, 0.15, 0.05, 0.3]))
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        _call_log(fn_name, position, np.asarray(row))


# --------------------------------------------------------------------------------------------------------------
# shapes and dtypes
# --------------------------------------------------------------------------------------------------------------
ALL_TWO_ARG: dict[str, Fn] = {
    **{k: v[0] for k, v in PROB_FUNCS.items() if k != "entropy"},
    **{k: v[0] for k, v in LOG_SPACE.items() if not k.startswith("entropy")},
}
ALL_ONE_ARG: dict[str, Fn] = {
    "entropy": PROB_FUNCS["entropy"][0],
    "entropy_from_logits": LOGIT_FUNCS["entropy_from_logits"][0],
    "entropy_from_log_probs": LOG_PROB_FUNCS["entropy_from_log_probs"][0],
}
ALL_FUNCS: dict[str, Fn] = {**ALL_TWO_ARG, **ALL_ONE_ARG}


def _uniform(shape: tuple[int, ...], fn_name: str) -> np.ndarray:
    k = shape[-1] if shape else 1
    if "log_probs" in fn_name:
        return np.full(shape, -math.log(k) if k else 0.0)
    if "logits" in fn_name:
        return np.zeros(shape)
    return np.full(shape, 1.0 / k if k else 0.0)


@pytest.mark.parametrize("fn_name", sorted(ALL_TWO_ARG))
def test_shapes_that_do_not_broadcast_raise(fn_name: str) -> None:
    fn = ALL_TWO_ARG[fn_name]
    with pytest.raises(ValueError, match="broadcast"):
        fn(_uniform((3, 4), fn_name), _uniform((2, 4), fn_name))


@pytest.mark.parametrize("fn_name", sorted(ALL_TWO_ARG))
def test_event_sizes_that_differ_raise(fn_name: str) -> None:
    fn = ALL_TWO_ARG[fn_name]
    with pytest.raises(ValueError, match="event"):
        fn(_uniform((4,), fn_name), _uniform((5,), fn_name))
    with pytest.raises(ValueError, match="event"):
        fn(_uniform((2, 4), fn_name), _uniform((2, 1), fn_name))  # no broadcasting along dim


@pytest.mark.parametrize("fn_name", sorted(ALL_FUNCS))
@pytest.mark.parametrize("shape", [(0,), (3, 0)])
def test_empty_event_dimension_raises(fn_name: str, shape: tuple[int, ...]) -> None:
    fn = ALL_FUNCS[fn_name]
    with pytest.raises(ValueError, match="empty"):
        fn(np.zeros(shape), np.zeros(shape))


@pytest.mark.parametrize("fn_name", sorted(ALL_FUNCS))
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_empty_batch_is_not_an_error_and_gives_an_empty_result(fn_name: str, kind: str) -> None:
    # Only the *event* dimension must be non-empty; a batch of zero distributions has the batch shape (0,).
    fn = ALL_FUNCS[fn_name]
    x: Any = _uniform((0, 4), fn_name)
    if kind == "torch":
        x = torch.as_tensor(x)
    out = fn(x, x)
    assert tuple(out.shape) == (0,)


@pytest.mark.parametrize("fn_name", sorted(ALL_FUNCS))
@pytest.mark.parametrize("dim", [1, -2, 5])
def test_dim_out_of_range_raises(fn_name: str, dim: int) -> None:
    fn = ALL_FUNCS[fn_name]
    x = _uniform((4,), fn_name)
    with pytest.raises(ValueError, match="dim"):
        fn(x, x, dim=dim)


@pytest.mark.parametrize("fn_name", sorted(ALL_FUNCS))
@pytest.mark.parametrize(
    "make",
    [
        lambda: np.asarray([1, 0, 0]),
        lambda: np.asarray([True, False, False]),
        lambda: torch.tensor([1, 0, 0]),
        lambda: torch.tensor([True, False, False]),
        lambda: torch.tensor([1, 0, 0], dtype=torch.uint8),
    ],
    ids=["np_int", "np_bool", "torch_int", "torch_bool", "torch_uint8"],
)
def test_integer_and_boolean_dtypes_raise_type_error_naming_the_argument(fn_name: str, make: Fn) -> None:
    fn = ALL_FUNCS[fn_name]
    bad = make()
    good: Any = _uniform((3,), fn_name)
    if isinstance(bad, torch.Tensor):
        good = torch.as_tensor(good)
    first = {"p", "logits", "log_p", "p_logits"}
    names = "|".join(sorted(first))
    with pytest.raises(TypeError, match=rf"\b({names})\b"):
        fn(bad, good)
    if fn_name not in ALL_ONE_ARG:
        with pytest.raises(TypeError, match=r"\b(q|q_logits|log_q)\b"):
            fn(good, bad)


@pytest.mark.parametrize("fn_name", ["kl", "cross_entropy", "entropy", "js", "generalized_js", "tv", "chi2"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_integer_counts_accepted_with_normalize(fn_name: str, kind: str) -> None:
    fn, _ = PROB_FUNCS[fn_name]
    counts_p = [3, 1, 4, 2]
    counts_q = [2, 2, 3, 1]
    if kind == "torch":
        p: Any = torch.tensor(counts_p)
        q: Any = torch.tensor(counts_q)
    else:
        p, q = np.asarray(counts_p), np.asarray(counts_q)
    got = float(fn(p, q, normalize=True))
    pf = np.asarray(counts_p, dtype=np.float64)
    qf = np.asarray(counts_q, dtype=np.float64)
    expected = float(fn(pf / pf.sum(), qf / qf.sum()))
    # integer tensors have no floating dtype to keep: they may be computed in torch's default (float32)
    assert got == pytest.approx(expected, rel=1e-12 if kind == "numpy" else 2e-5)


def test_normalize_rejects_all_zero_counts() -> None:
    with pytest.raises(ValueError, match=r"\bp\b"):
        kldiv.kl(np.asarray([0.0, 0.0]), np.asarray([1.0, 1.0]), normalize=True)


# --------------------------------------------------------------------------------------------------------------
# scalar options
# --------------------------------------------------------------------------------------------------------------
P3 = np.asarray([0.2, 0.3, 0.5])
Q3 = np.asarray([0.4, 0.4, 0.2])
L3 = np.asarray([0.1, -0.4, 1.0])


@pytest.mark.parametrize("alpha", [-0.5, -INF, NAN])
def test_invalid_renyi_alpha_raises(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        kldiv.renyi(P3, Q3, alpha)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0, INF])
def test_valid_renyi_alpha_is_accepted(alpha: float) -> None:
    assert float(kldiv.renyi(P3, Q3, alpha)) >= 0.0


GJS_FUNCS: dict[str, Fn] = {
    "generalized_js": lambda **kw: kldiv.generalized_js(P3, Q3, **kw),
    "generalized_js_from_logits": lambda **kw: kldiv.generalized_js_from_logits(L3, -L3, **kw),
    "generalized_js_from_log_probs": lambda **kw: kldiv.generalized_js_from_log_probs(np.log(P3), np.log(Q3), **kw),
}


@pytest.mark.parametrize("fn_name", sorted(GJS_FUNCS))
@pytest.mark.parametrize("beta", [-0.1, 1.1, NAN, INF, -INF])
@pytest.mark.parametrize("normalized", [False, True])
def test_beta_outside_unit_interval_raises(fn_name: str, beta: float, normalized: bool) -> None:
    with pytest.raises(ValueError, match="beta"):
        GJS_FUNCS[fn_name](beta=beta, normalized=normalized)


@pytest.mark.parametrize("fn_name", sorted(GJS_FUNCS))
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_beta_zero_or_one_requires_normalized(fn_name: str, beta: float) -> None:
    with pytest.raises(ValueError, match="beta"):
        GJS_FUNCS[fn_name](beta=beta)
    assert float(GJS_FUNCS[fn_name](beta=beta, normalized=True)) >= 0.0


JS_FUNCS: dict[str, Fn] = {
    "js": lambda **kw: kldiv.js(P3, Q3, **kw),
    "js_from_logits": lambda **kw: kldiv.js_from_logits(L3, -L3, **kw),
    "js_from_log_probs": lambda **kw: kldiv.js_from_log_probs(np.log(P3), np.log(Q3), **kw),
}


@pytest.mark.parametrize("fn_name", sorted(JS_FUNCS))
@pytest.mark.parametrize(
    "weights",
    [(0.3, 0.6), (0.5, 0.6), (-0.5, 1.5), (1.5, -0.5), (NAN, 0.5), (INF, -INF)],
)
def test_invalid_js_weights_raise(fn_name: str, weights: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="weights"):
        JS_FUNCS[fn_name](weights=weights)


@pytest.mark.parametrize("fn_name", sorted(JS_FUNCS))
def test_js_weights_of_wrong_length_raise(fn_name: str) -> None:
    with pytest.raises((ValueError, TypeError), match="weights"):
        JS_FUNCS[fn_name](weights=(0.2, 0.3, 0.5))


@pytest.mark.parametrize("fn_name", sorted(JS_FUNCS))
@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.0, 1.0), (0.25, 0.75)])
def test_valid_js_weights_are_accepted(fn_name: str, weights: tuple[float, float]) -> None:
    assert float(JS_FUNCS[fn_name](weights=weights)) >= 0.0


BASE_FUNCS: dict[str, Fn] = {
    "kl": lambda **kw: kldiv.kl(P3, Q3, **kw),
    "entropy": lambda **kw: kldiv.entropy(P3, **kw),
    "cross_entropy": lambda **kw: kldiv.cross_entropy(P3, Q3, **kw),
    "js": lambda **kw: kldiv.js(P3, Q3, **kw),
    "generalized_js": lambda **kw: kldiv.generalized_js(P3, Q3, beta=0.5, **kw),
    "renyi": lambda **kw: kldiv.renyi(P3, Q3, 2.0, **kw),
    "jeffreys": lambda **kw: kldiv.jeffreys(P3, Q3, **kw),
    "kl_from_logits": lambda **kw: kldiv.kl_from_logits(L3, -L3, **kw),
    "entropy_from_logits": lambda **kw: kldiv.entropy_from_logits(L3, **kw),
    "cross_entropy_from_logits": lambda **kw: kldiv.cross_entropy_from_logits(L3, -L3, **kw),
    "js_from_logits": lambda **kw: kldiv.js_from_logits(L3, -L3, **kw),
    "generalized_js_from_logits": lambda **kw: kldiv.generalized_js_from_logits(L3, -L3, beta=0.5, **kw),
    "kl_from_log_probs": lambda **kw: kldiv.kl_from_log_probs(np.log(P3), np.log(Q3), **kw),
    "entropy_from_log_probs": lambda **kw: kldiv.entropy_from_log_probs(np.log(P3), **kw),
}


@pytest.mark.parametrize("fn_name", sorted(BASE_FUNCS))
@pytest.mark.parametrize("base", [0.0, -2.0, 1.0, NAN])
def test_invalid_base_raises(fn_name: str, base: float) -> None:
    with pytest.raises(ValueError, match="base"):
        BASE_FUNCS[fn_name](base=base)


@pytest.mark.parametrize("fn_name", sorted(BASE_FUNCS))
@pytest.mark.parametrize("base", [None, 2, 2.0, 10.0, 0.5, math.e])
def test_valid_base_is_accepted(fn_name: str, base: float | None) -> None:
    assert not math.isnan(float(BASE_FUNCS[fn_name](base=base)))


TEMPERATURE_FUNCS = {k: v for k, v in BASE_FUNCS.items() if k.endswith("_from_logits")}


@pytest.mark.parametrize("fn_name", sorted(TEMPERATURE_FUNCS))
@pytest.mark.parametrize("temperature", [0.0, -1.0, NAN, -INF])
def test_invalid_temperature_raises(fn_name: str, temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        TEMPERATURE_FUNCS[fn_name](temperature=temperature)


SMOOTHING_FUNCS: dict[str, Fn] = {
    "kl": lambda **kw: kldiv.kl(P3, Q3, **kw),
    "cross_entropy": lambda **kw: kldiv.cross_entropy(P3, Q3, **kw),
}


@pytest.mark.parametrize("fn_name", sorted(SMOOTHING_FUNCS))
@pytest.mark.parametrize("smoothing", [-0.1, 1.0, 1.5, NAN, INF])
def test_smoothing_outside_zero_one_raises(fn_name: str, smoothing: float) -> None:
    with pytest.raises(ValueError, match="smoothing"):
        SMOOTHING_FUNCS[fn_name](smoothing=smoothing)


@pytest.mark.parametrize("fn_name", sorted(SMOOTHING_FUNCS))
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.999])
def test_smoothing_in_zero_one_is_accepted(fn_name: str, smoothing: float) -> None:
    assert math.isfinite(float(SMOOTHING_FUNCS[fn_name](smoothing=smoothing)))


@pytest.mark.parametrize("kind", ["Pearson", "kl", "", "neyman "])
def test_invalid_chi2_kind_raises(kind: str) -> None:
    with pytest.raises(ValueError, match="kind"):
        kldiv.chi2(P3, Q3, kind=kind)


@pytest.mark.parametrize("f", [3.0, "kl_forward", None])
def test_f_divergence_rejects_a_generator_that_is_not_callable(f: Any) -> None:
    with pytest.raises(TypeError, match=r"\bf\b"):
        kldiv.f_divergence(P3, Q3, f)


# --------------------------------------------------------------------------------------------------------------
# switching validation off
# --------------------------------------------------------------------------------------------------------------
NEG_P = np.asarray([-0.1, 0.6, 0.5])


def test_set_validation_false_turns_value_checks_off() -> None:
    with pytest.raises(ValueError, match=r"\bp\b"):
        kldiv.kl(NEG_P, Q3)
    kldiv.set_validation(False)
    kldiv.kl(NEG_P, Q3)  # no exception; the value is whatever the formula gives
    kldiv.kl(np.asarray([0.2, 0.3, 0.6]), Q3)  # sum off 1
    kldiv.kl_from_log_probs(np.asarray([0.5, -1.0, -2.0]), np.log(Q3))  # positive log-prob
    kldiv.set_validation(True)
    with pytest.raises(ValueError, match=r"\bp\b"):
        kldiv.kl(NEG_P, Q3)


def test_validation_context_manager_turns_checks_off_and_restores() -> None:
    with kldiv.validation(False):
        kldiv.kl(NEG_P, Q3)
        kldiv.kl(torch.tensor(NEG_P), torch.tensor(Q3))
    with pytest.raises(ValueError, match=r"\bp\b"):
        kldiv.kl(NEG_P, Q3)


def test_validation_context_manager_restores_state_after_exception() -> None:
    class BoomError(Exception):
        pass

    with pytest.raises(BoomError), kldiv.validation(False):
        raise BoomError
    with pytest.raises(ValueError, match=r"\bp\b"):
        kldiv.kl(NEG_P, Q3)


def test_validation_context_manager_restores_the_previous_state_not_the_default() -> None:
    kldiv.set_validation(False)
    with kldiv.validation(True), pytest.raises(ValueError, match=r"\bp\b"):
        kldiv.kl(NEG_P, Q3)
    kldiv.kl(NEG_P, Q3)  # back to off
    with kldiv.validation(False), kldiv.validation(True), pytest.raises(ValueError, match=r"\bq\b"):
        kldiv.kl(Q3, NEG_P)
    kldiv.kl(NEG_P, Q3)


def test_validation_context_manager_restores_after_validation_error_inside() -> None:
    kldiv.set_validation(False)
    with pytest.raises(ValueError, match=r"\bp\b"), kldiv.validation(True):
        kldiv.kl(NEG_P, Q3)
    kldiv.kl(NEG_P, Q3)  # still off after the error escaped the block
