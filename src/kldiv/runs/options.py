"""Checks of the options of a training configuration, each raising :class:`OptionError` naming the option.

The configurations of every training command use these, so the command line reports every bad value the same
way (``error: --batch-size: must be an int >= 1, got 0``) before any work starts.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from kldiv.data import ImageDataset, load_dataset
from kldiv.runs.errors import OptionError

MAX_SEED = 2**63 - 1 - 2**20  # room for the offsets a run adds to its seed (per epoch, per generator)


def integer(name: str, value: object, *, low: int = 0, high: int | None = None) -> int:
    """An int in ``[low, high]`` (``bool`` is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(name, f"must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise OptionError(name, f"must be an integer {bounds}, got {value}")
    return value


def seed(name: str, value: object) -> int:
    """A random seed: an int in ``[0, MAX_SEED]``."""
    return integer(name, value, low=0, high=MAX_SEED)


def number(
    name: str, value: object, *, low: float | None = None, high: float | None = None, low_open: bool = False
) -> float:
    """A finite real number ``>= low`` (``> low`` when ``low_open``) and ``<= high``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionError(name, f"must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise OptionError(name, f"must be a finite number, got {x}")
    if low is not None and (x < low or (low_open and x == low)):
        raise OptionError(name, f"must be {'>' if low_open else '>='} {low:g}, got {x:g}")
    if high is not None and x > high:
        raise OptionError(name, f"must be <= {high:g}, got {x:g}")
    return x


def widths(name: str, text: object) -> tuple[int, ...]:
    """Layer widths from ``"400,400"`` (one or more ints >= 1)."""
    if not isinstance(text, str):
        raise OptionError(name, f"must be comma-separated widths such as '400,400', got {text!r}")
    out = []
    for i, part in enumerate(text.split(",")):
        try:
            width = int(part.strip())
        except ValueError:
            raise OptionError(name, f"entry {i} is {part.strip()!r}, not an integer (e.g. '400,400')") from None
        if width < 1:
            raise OptionError(name, f"entry {i} is {width}; widths are >= 1")
        out.append(width)
    return tuple(out)


def choice(name: str, value: object, choices: Collection[str]) -> str:
    """One of ``choices``."""
    if value not in choices:
        raise OptionError(name, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
    assert isinstance(value, str)
    return value


def dataset(name: str, data_dir: str | None, *, val_size: int) -> ImageDataset:
    """The dataset ``name`` (:func:`kldiv.data.load_dataset`); a missing or bad file raises :class:`OptionError`
    naming ``data_dir``, a hold-out larger than the training set one naming ``val_size``."""
    try:
        return load_dataset(name, data_dir, val_size=val_size)
    except (FileNotFoundError, ValueError) as e:
        raise OptionError("val_size" if "val_size" in str(e) else "data_dir", str(e)) from None
