"""The token losses the chunked-path tests run, by name (one definition for every test module)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kldiv.losses import forward_kl, generalized_jsd, reverse_kl, symmetric_kl

LOSSES: dict[str, Callable[..., Any]] = {
    "forward": forward_kl,
    "reverse": reverse_kl,
    "symmetric": lambda s, t, **kw: symmetric_kl(s, t, weight=0.3, **kw),
    "jsd": lambda s, t, **kw: generalized_jsd(s, t, beta=0.4, **kw),
    "jsd0": lambda s, t, **kw: generalized_jsd(s, t, beta=0.0, normalized=True, **kw),
    "jsd1": lambda s, t, **kw: generalized_jsd(s, t, beta=1.0, normalized=True, **kw),
    "jsd_norm": lambda s, t, **kw: generalized_jsd(s, t, beta=0.7, normalized=True, **kw),
}

FAST_LOSSES = {name: LOSSES[name] for name in ("forward", "reverse", "symmetric")}
"""The losses of the fast kernels (the C kernel and its torch counterpart)."""
