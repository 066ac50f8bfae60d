"""Test-session settings: one torch thread per pytest-xdist worker.

`pytest -n 2` runs two workers on a 2-core machine; with torch's default of one thread per core each worker would
run two, and an OpenMP barrier whose thread has been descheduled stalls every parallel op (100x slower steps
were measured on a busy machine). Tests that are about thread counts set them explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

import kldiv

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # for the subprocesses the tests start
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _validation_back_on() -> Iterator[None]:
    """A test that switches kldiv's validation off must not leave it off for the tests after it."""
    yield
    kldiv.set_validation(True)


@pytest.fixture(autouse=True)
def _mpmath_precision_restored() -> Iterator[None]:
    """mpmath's working precision is global: a test that changes it must not lower it for the tests after it."""
    import mpmath

    precision = mpmath.mp.prec
    yield
    mpmath.mp.prec = precision
