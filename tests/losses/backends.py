"""Run a test on either fast backend of the chunked losses: the C kernel or the torch ops."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from kldiv.losses import chunked

BACKENDS = ["native", "torch"]


@contextmanager
def backend(name: str) -> Iterator[None]:
    """Select the C kernel (``"native"``) or the torch ops (``"torch"``) via ``KLDIV_NATIVE``.

    ``"native"`` skips when the extension was not built, unless ``KLDIV_REQUIRE_NATIVE=1`` (CI), where it fails;
    it also fails unless the block called the kernel at least once (so a routing change cannot make a "native"
    test silently test something else).
    """
    if name == "native" and chunked.kernel is None:
        if os.environ.get("KLDIV_REQUIRE_NATIVE") == "1":
            pytest.fail("KLDIV_REQUIRE_NATIVE=1 but the C kernel kldiv._kernels is not built")
        pytest.skip("the C kernel kldiv._kernels is not built (no C compiler at install time)")
    old = os.environ.get("KLDIV_NATIVE")
    os.environ["KLDIV_NATIVE"] = "1" if name == "native" else "0"
    kernel, calls = chunked.kernel, []

    def counted(*args: Any) -> None:
        calls.append(1)
        assert kernel is not None
        kernel(*args)

    if kernel is not None:
        chunked.kernel = counted
    try:
        yield
    finally:
        chunked.kernel = kernel
        if old is None:
            del os.environ["KLDIV_NATIVE"]
        else:
            os.environ["KLDIV_NATIVE"] = old
    if name == "native":
        assert calls, "the C kernel was not called in a block run with backend('native')"
    else:
        assert not calls, "the C kernel was called in a block run with backend('torch')"
