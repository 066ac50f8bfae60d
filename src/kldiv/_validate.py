"""Argument checks shared by every function: one place for the messages.

Checks on tensor values cost a few reductions and one host synchronization; the location of a bad entry is
only searched for once something is known to be wrong. ``set_validation(False)`` (or the ``validation``
context manager) switches the value checks off for hot loops, like ``torch.distributions``' ``validate_args``.
Checks of scalar options (``alpha``, ``base``, ...) and of shapes always run: they are free.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from kldiv._array import Inputs, as_inputs

_enabled = True


def set_validation(enabled: bool) -> None:
    """Switch the value checks of every kldiv function on or off (on by default)."""
    global _enabled
    _enabled = bool(enabled)


def is_validation_enabled() -> bool:
    """Whether kldiv checks the values of its inputs."""
    return _enabled


@contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Context manager: ``with kldiv.validation(False): ...`` runs the block without value checks."""
    previous = _enabled
    set_validation(enabled)
    try:
        yield
    finally:
        set_validation(previous)


_EPS32 = torch.finfo(torch.float32).eps


def sum_tolerance(dtype: torch.dtype, n: int = 1) -> float:
    """Largest accepted ``|sum(p) - 1|`` for ``n`` probabilities stored in ``dtype``:
    ``max(sqrt(eps(dtype)), sqrt(eps32), n eps32 / 100)`` (float64: 3.5e-4 up to 2.9e5 entries).

    Why: the check is there to catch counts, unnormalized weights or the wrong ``dim`` (sums off by O(1)),
    never to reject rounding. Data is often float32-rounded before it reaches a float64 array or tensor (a
    float32 softmax cast to float64, a float32 file), and that origin cannot be detected after the cast, so
    every dtype at least as wide as float32 accepts float32's ``sqrt(eps32) = 3.5e-4``; narrower dtypes keep
    their own ``sqrt(eps)`` (float16 0.031, bfloat16 0.088). A float32 softmax's normalizer drifts with the row
    length (measured ``|sum - 1|``: 2e-6 at 32000 entries, 1.7e-4 at 1e6, 2.4e-3 at 1e7, about n eps32 / 500),
    so long rows get ``n eps32 / 100``, five times that drift. The divergences are computed for ``p / sum(p)``,
    so an accepted deviation never makes a value negative.
    """
    return max(math.sqrt(torch.finfo(dtype).eps), math.sqrt(_EPS32), n * _EPS32 / 100)


def _index(flat: int, shape: torch.Size) -> tuple[int, ...]:
    idx = []
    for size in reversed(shape):
        idx.append(flat % size)
        flat //= size
    return tuple(reversed(idx))


def _first(mask: Tensor) -> tuple[int, ...]:
    flat = int(mask.reshape(-1).nonzero()[0, 0])
    return _index(flat, mask.shape)


def _fmt(idx: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, idx)) + ("," if len(idx) == 1 else "") + ")"


def _where_text(name: str, x: Tensor, dim: int, mask: Tensor) -> str:
    idx = _first(mask)
    value = x[idx].item()
    return f"{name} has {value!r} at index {_fmt(idx)} (event dim {dim - x.dim()})"


def normalize_dim(dim: int, ndim: int, name: str = "dim") -> int:
    """Return ``dim`` as a non-negative index into ``ndim`` dimensions, or raise a clear error."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{name} must be an int, got {type(dim).__name__}")
    if ndim == 0:
        raise ValueError("inputs are scalars; a distribution needs an event dimension (at least 1-D input)")
    if not -ndim <= dim < ndim:
        raise ValueError(f"{name}={dim} is out of range for inputs with {ndim} dimension(s)")
    return dim % ndim


def event_shape(names: tuple[str, ...], tensors: tuple[Tensor, ...], dim: int) -> tuple[torch.Size, int]:
    """The broadcast shape of ``tensors`` and ``dim`` as a non-negative index into it.

    Batch dimensions broadcast; event sizes (along ``dim``) must be equal and non-zero.
    """
    shapes = [tuple(t.shape) for t in tensors]
    for n, t in zip(names, tensors, strict=True):
        if t.dim() == 0:
            raise ValueError(f"{n} is a scalar; a distribution needs an event dimension (at least 1-D input)")
    ndim = max(len(s) for s in shapes)
    d = normalize_dim(dim, ndim)
    sizes = [s[d - (ndim - len(s))] if d - (ndim - len(s)) >= 0 else 1 for s in shapes]
    if len(set(sizes)) > 1:
        desc = ", ".join(f"{n} has {k}" for n, k in zip(names, sizes, strict=True))
        raise ValueError(f"event sizes along dim {dim} differ: {desc} entries")
    try:
        shape = torch.Size(np.broadcast_shapes(*shapes))
    except ValueError:
        desc = " and ".join(f"{n} with shape {s}" for n, s in zip(names, shapes, strict=True))
        raise ValueError(f"{desc} do not broadcast") from None
    if shape[d] == 0:
        raise ValueError(f"the event dimension (dim {dim}) is empty; a distribution needs at least one entry")
    return shape, d


def _probs_violation(x: Tensor, dim: int, storage: torch.dtype, normalized: bool) -> Tensor:
    """A 0-d tensor that is <= 0 iff ``x`` holds valid probabilities (NaN propagates, so NaN means invalid).

    NaN and +inf entries make a row sum NaN or inf, so the minimum entry and the largest deviation of a row sum
    from 1 (or, for counts, positive finite row sums) are the whole check.
    """
    if x.numel() == 0:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    sums = x.sum(dim)
    if normalized:
        deviation = (sums - 1).abs().amax() - sum_tolerance(storage, x.shape[dim])
    else:
        deviation = torch.where((sums > 0) & (sums < math.inf), -1.0, 1.0).amax()
    return torch.maximum(-x.amin(), deviation)


def _diagnose_probs(name: str, x: Tensor, dim: int, storage: torch.dtype, normalized: bool) -> None:
    """Raise the error that says what is wrong with ``x`` and where (nothing if it is fine)."""
    if bool(torch.isnan(x).any()):
        raise ValueError(f"{_where_text(name, x, dim, torch.isnan(x))}; probabilities must not be NaN")
    if bool((x < 0).any()):
        raise ValueError(f"{_where_text(name, x, dim, x < 0)}; probabilities must be >= 0")
    if bool(torch.isinf(x).any()):
        raise ValueError(f"{_where_text(name, x, dim, torch.isinf(x))}; probabilities must be finite")
    sums = x.sum(dim)
    tol = sum_tolerance(storage, x.shape[dim])
    bad_sum = ~((sums - 1).abs() <= tol) if normalized else ~((sums > 0) & (sums < math.inf))
    if not bool(bad_sum.any()):
        return
    row = _first(bad_sum)
    total = sums[row].item()
    where = _row_text(row)
    if not normalized:
        raise ValueError(
            f"{name}{where} sums to {total!r} along dim {dim - x.dim()}; with normalize=True every row must have a "
            "positive, finite sum"
        )
    raise ValueError(
        f"{name}{where} sums to {total!r} along dim {dim - x.dim()}, {abs(total - 1):.2g} away from 1, beyond the "
        f"tolerance {tol:.2g} for {x.shape[dim]} entries in {_dtype_name(storage)} (which admits float32 rounding); "
        f"pass normalize=True to divide it by its sum, or renormalize it first (divide by its sum along dim "
        f"{dim - x.dim()})"
    )


def _row_text(row: tuple[int, ...]) -> str:
    """`` (the row at batch index (i, j))`` for a batch, nothing for a single distribution."""
    return f" (the row at batch index {_fmt(row)})" if row else ""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_log_space(name: str, x: Tensor, dim: int, storage: torch.dtype, *, log_probs: bool) -> None:
    """Logits (``log_probs=False``) or log-probabilities: no NaN, no +inf, not all -inf in a row.

    Log-probabilities must also be <= 0 and normalized (logsumexp within the dtype tolerance of 0).
    """
    if not _enabled or x.numel() == 0:
        return
    top = x.amax(dim)
    tol = sum_tolerance(storage, x.shape[dim])
    ok = bool(torch.isfinite(top).all())
    if ok and log_probs:
        ok = bool(((torch.logsumexp(x, dim)).abs() <= tol).all())
    if ok:
        return
    if bool(torch.isnan(x).any()):
        raise ValueError(f"{_where_text(name, x, dim, torch.isnan(x))}; NaN is not allowed")
    if bool((x == math.inf).any()):
        raise ValueError(f"{_where_text(name, x, dim, x == math.inf)}; +inf is not allowed")
    if bool((top == -math.inf).any()):
        row = _first(top == -math.inf)
        in_row = f" in the row at batch index {_fmt(row)}" if row else ""
        raise ValueError(f"{name} is -inf everywhere along dim {dim - x.dim()}{in_row}: that is not a distribution")
    if bool((x > tol).any()):
        raise ValueError(f"{_where_text(name, x, dim, x > tol)}; log-probabilities must be <= 0")
    lse = torch.logsumexp(x, dim)
    row = _first(lse.abs() > tol)
    raise ValueError(
        f"{name}{_row_text(row)} is not normalized along dim {dim - x.dim()}: its logsumexp is {lse[row].item()!r}, "
        f"beyond the tolerance {tol:.2g} of 0; pass logits to the *_from_logits function instead"
    )


def check_scalar(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
) -> float:
    """Check a real scalar option against an interval and return it as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, Tensor) and value.numel() == 1:
            value = float(value.item())
        else:
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    # an unbounded side is open at infinity unless infinity is allowed
    lo = f"{'(' if low_open else '['}{low}" if low is not None else f"{'[' if allow_inf else '('}-inf"
    hi = f"{high}{')' if high_open else ']'}" if high is not None else f"inf{']' if allow_inf else ')'}"
    interval = f"{lo}, {hi}"
    if math.isnan(v):
        raise ValueError(f"{name} must be a number in {interval}, got nan")
    if math.isinf(v) and not allow_inf:
        raise ValueError(f"{name} must be finite, in {interval}, got {v}")
    if (low is not None and (v < low or (low_open and v == low))) or (
        high is not None and (v > high or (high_open and v == high))
    ):
        raise ValueError(f"{name} must be in {interval}, got {v}")
    return v


def check_base(base: float | None) -> float | None:
    """``base`` of the logarithm: None (nats) or a positive number other than 1."""
    if base is None:
        return None
    b = check_scalar("base", base, low=0.0, low_open=True)
    if b == 1.0:
        raise ValueError("base must not be 1 (log 1 = 0); use base=None for nats, 2 for bits")
    return b


def _expand(tensors: tuple[Tensor, ...], shape: torch.Size) -> tuple[Tensor, ...]:
    return tuple(t if t.shape == shape else t.expand(shape) for t in tensors)


def prepare_probs(
    named: dict[str, object], dim: int, *, normalize: bool = False
) -> tuple[tuple[Tensor, ...], int, Inputs]:
    """Convert, check and broadcast probability vectors; returns (tensors, event dim >= 0, io).

    With ``normalize=True`` the inputs may be any non-negative weights or integer counts; each is divided
    by its sum along ``dim``.
    """
    io = as_inputs(named, allow_integer=normalize)
    names = tuple(named)
    shape, d = event_shape(names, io.tensors, dim)
    owns = [t.dim() - (len(shape) - d) for t in io.tensors]
    if _enabled:
        worst = [
            _probs_violation(t, own, io.storage_dtype, not normalize) for t, own in zip(io.tensors, owns, strict=True)
        ]
        if not bool(torch.stack(worst).amax() <= 0):
            for name, t, own in zip(names, io.tensors, owns, strict=True):
                _diagnose_probs(name, t, own, io.storage_dtype, not normalize)
    out = [t / t.sum(own, keepdim=True) if normalize else t for t, own in zip(io.tensors, owns, strict=True)]
    return _expand(tuple(out), shape), d, io


def prepare_log(named: dict[str, object], dim: int, *, log_probs: bool) -> tuple[tuple[Tensor, ...], int, Inputs]:
    """Convert, check and broadcast logits (``log_probs=False``) or log-probabilities."""
    io = as_inputs(named)
    names = tuple(named)
    shape, d = event_shape(names, io.tensors, dim)
    for name, t in zip(names, io.tensors, strict=True):
        check_log_space(name, t, t.dim() - (len(shape) - d), io.storage_dtype, log_probs=log_probs)
    return _expand(io.tensors, shape), d, io


def temper(named: dict[str, Tensor], temperature: float) -> tuple[Tensor, ...]:
    """``logits / temperature`` for each entry, checking that no finite logit overflows."""
    t_value = check_scalar("temperature", temperature, low=0.0, low_open=True)
    if t_value == 1.0:
        return tuple(named.values())
    out = tuple(x / t_value for x in named.values())
    if _enabled:
        for (name, x), y in zip(named.items(), out, strict=True):
            if bool((torch.isinf(y) & torch.isfinite(x)).any()):
                raise ValueError(
                    f"{name} / temperature overflows (temperature={t_value:g}); use a larger temperature or "
                    "smaller logits"
                )
    return out
