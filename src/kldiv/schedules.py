"""KL weight schedules and the free-bits objective, shared by VAE and Bayesian-NN training.

A schedule is any callable ``step -> beta``: the weight of the KL term, ``loss = recon + beta(step) * KL``, at
optimizer step ``step >= 0`` (an ``int``; ``bool`` and floats are refused). The schedules are small frozen
dataclasses that check their fields when built and compose by wrapping (``Scaled(LinearWarmup(...), 4.0)`` is a
beta-VAE with warm-up). All weights are non-negative floats.

============  ============================================================  ==============================
schedule      beta(step)                                                    reference
============  ============================================================  ==============================
Constant      ``value``                                                     Higgins et al. 2017 (beta-VAE)
LinearWarmup  ``start`` before ``d = delay_steps``; then                    Bowman et al. 2016 (annealing)
              ``start + (end - start) (step - d) / warmup_steps``;
              exactly ``end`` from ``d + warmup_steps`` on
Logistic      ``end / (1 + exp(-steepness (step - midpoint)))``             Bowman et al. 2016
Cyclical      ``start + (end - start) min(1, tau / ratio)``, where          Fu et al. 2019
              ``tau = (step mod T) / T``, ``T = total_steps / n_cycles``;
              ``end`` from ``total_steps`` on
Scaled        ``factor * schedule(step)``                                   Higgins et al. 2017 (beta-VAE)
============  ============================================================  ==============================

``free_bits`` (Kingma et al. 2016) is the per-dimension floor ``sum_j max(lam, mean_batch KL_j)``; it replaces the
KL term rather than weighting it, so it is a function of the KL terms, not a schedule.

References:

- Bowman, Vilnis, Vinyals, Dai, Jozefowicz, Bengio (2016), "Generating Sentences from a Continuous Space", CoNLL.
- Fu, Li, Liu, Gao, Celikyilmaz, Carin (2019), "Cyclical Annealing Schedule: A Simple Approach to Mitigating KL
  Vanishing", NAACL.
- Higgins, Matthey, Pal, Burgess, Glorot, Botvinick, Mohamed, Lerchner (2017), "beta-VAE: Learning Basic Visual
  Concepts with a Constrained Variational Framework", ICLR.
- Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling (2016), "Improved Variational Inference with Inverse
  Autoregressive Flow", NeurIPS (the "free bits" objective).

Not provided: KL balancing (Hafner et al. 2021, DreamerV2). It mixes ``KL(sg(q) || p)`` and ``KL(q || sg(p))``
with weights ``alpha`` and ``1 - alpha``, so it needs the two distributions (or their parameters), not a tensor of
KL terms; it belongs next to the distribution KLs, not here.

Errors name the field or argument, what was expected and the value received: ``ValueError`` for a bad value,
including a step or count that is not an ``int`` (``2.0``, ``True``); ``TypeError`` for a non-number where a real
is expected, a non-callable ``schedule``, a non-string spec or a non-tensor ``kl_per_dim``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from kldiv._validate import check_scalar

__all__ = [
    "Constant",
    "Cyclical",
    "LinearWarmup",
    "Logistic",
    "Scaled",
    "Schedule",
    "epochs",
    "free_bits",
    "parse_schedule",
    "tutorial_kl_weight",
]


class Schedule(Protocol):
    """A KL weight schedule: ``schedule(step)`` is the weight beta at optimizer step ``step >= 0``."""

    def __call__(self, step: int) -> float: ...


def _count(name: str, value: object, *, low: int) -> int:
    """An integer count ``>= low`` (``bool`` is not an integer here), or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int >= {low}, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value}")
    return int(value)


def _step(step: object) -> int:
    return _count("step", step, low=0)


def _weight(name: str, value: float) -> float:
    """A KL weight: a finite float >= 0."""
    return check_scalar(name, value, low=0.0)


def _set(obj: object, name: str, value: object) -> None:
    """Store a normalized field of a frozen dataclass (ints as ``int``, reals as ``float``)."""
    object.__setattr__(obj, name, value)


def _between(value: float, a: float, b: float) -> float:
    """``value`` clamped to the interval spanned by ``a`` and ``b`` (guards against rounding past the ends)."""
    return min(max(value, min(a, b)), max(a, b))


@dataclass(frozen=True)
class Constant:
    """``beta(step) = value``: a fixed KL weight.

    ``value = 1`` is the plain ELBO; ``value > 1`` the beta-VAE of Higgins et al. 2017 (``value`` must be a finite
    float ``>= 0``).
    """

    value: float = 1.0

    def __post_init__(self) -> None:
        _set(self, "value", _weight("value", self.value))

    def __call__(self, step: int) -> float:
        _step(step)
        return self.value


@dataclass(frozen=True)
class LinearWarmup:
    """Linear KL annealing (Bowman et al. 2016): ``start``, then a linear ramp to ``end``, then ``end``.

    ``beta(step) = start`` for ``step < delay_steps``;
    ``start + (end - start) (step - delay_steps) / warmup_steps`` for ``delay_steps <= step < delay_steps +
    warmup_steps``; exactly ``end`` from ``delay_steps + warmup_steps`` on. ``warmup_steps = 0`` is a step from
    ``start`` to ``end`` at ``delay_steps``. ``end < start`` ramps down. Monotone between ``start`` and ``end``.
    """

    warmup_steps: int
    start: float = 0.0
    end: float = 1.0
    delay_steps: int = 0

    def __post_init__(self) -> None:
        _set(self, "warmup_steps", _count("warmup_steps", self.warmup_steps, low=0))
        _set(self, "start", _weight("start", self.start))
        _set(self, "end", _weight("end", self.end))
        _set(self, "delay_steps", _count("delay_steps", self.delay_steps, low=0))

    def __call__(self, step: int) -> float:
        s = _step(step) - self.delay_steps
        if s < 0:
            return self.start
        if s >= self.warmup_steps:
            return self.end
        return _between(self.start + (self.end - self.start) * (s / self.warmup_steps), self.start, self.end)


@dataclass(frozen=True)
class Logistic:
    """Logistic KL annealing (Bowman et al. 2016): ``beta(step) = end / (1 + exp(-steepness (step - midpoint)))``.

    Increases from about 0 to ``end``; exactly ``end / 2`` at ``step = midpoint`` and (to float precision) ``end``
    once ``steepness (step - midpoint) > 37``. ``steepness > 0`` is per step; ``midpoint`` any finite step.
    """

    midpoint: float
    steepness: float
    end: float = 1.0

    def __post_init__(self) -> None:
        _set(self, "midpoint", check_scalar("midpoint", self.midpoint))
        _set(self, "steepness", check_scalar("steepness", self.steepness, low=0.0, low_open=True))
        _set(self, "end", _weight("end", self.end))

    def __call__(self, step: int) -> float:
        z = -self.steepness * (_step(step) - self.midpoint)
        if z > 709.0:  # exp(z) overflows a double; the weight is below end * 1e-308
            return 0.0
        return self.end / (1.0 + math.exp(z))


@dataclass(frozen=True)
class Cyclical:
    """Cyclical KL annealing (Fu et al. 2019): ``n_cycles`` linear ramps from ``start`` to ``end`` over ``total_steps``.

    With period ``T = total_steps / n_cycles`` and position ``tau = (step mod T) / T`` in ``[0, 1)``:
    ``beta(step) = start + (end - start) min(1, tau / ratio)``: a linear rise while ``tau <= ratio``, exactly ``end``
    for the rest of the cycle, and ``end`` for ``step >= total_steps``. ``tau`` is computed exactly in integers, so
    ``beta`` has period ``T`` whenever ``n_cycles`` divides ``total_steps``. If ``T`` is not an integer, a cycle
    starts at the first step ``>= c T`` (Fu et al.'s reference code uses ``floor(c T)``).
    ``1 <= n_cycles <= total_steps``, ``0 < ratio <= 1``.
    """

    total_steps: int
    n_cycles: int = 4
    ratio: float = 0.5
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        total = _count("total_steps", self.total_steps, low=1)
        n = _count("n_cycles", self.n_cycles, low=1)
        if n > total:
            raise ValueError(
                f"n_cycles must be <= total_steps (a cycle needs a step), got n_cycles={n}, total_steps={total}"
            )
        _set(self, "total_steps", total)
        _set(self, "n_cycles", n)
        _set(self, "ratio", check_scalar("ratio", self.ratio, low=0.0, high=1.0, low_open=True))
        _set(self, "start", _weight("start", self.start))
        _set(self, "end", _weight("end", self.end))

    def __call__(self, step: int) -> float:
        s = _step(step)
        if s >= self.total_steps:
            return self.end
        # tau = (s mod T) / T = ((s n_cycles) mod total_steps) / total_steps, exact in integers
        rising = self.ratio * self.total_steps
        position = (s * self.n_cycles) % self.total_steps
        if position >= rising:
            return self.end
        return _between(self.start + (self.end - self.start) * (position / rising), self.start, self.end)


@dataclass(frozen=True)
class Scaled:
    """``beta(step) = factor * schedule(step)``: e.g. a beta-VAE (Higgins et al. 2017) with warm-up.

    ``factor`` is a finite float ``>= 0``; ``schedule`` any ``Schedule``.
    """

    schedule: Schedule
    factor: float

    def __post_init__(self) -> None:
        if not callable(self.schedule):
            raise TypeError(f"schedule must be a callable step -> float, got {type(self.schedule).__name__}")
        _set(self, "factor", _weight("factor", self.factor))

    def __call__(self, step: int) -> float:
        return self.factor * float(self.schedule(_step(step)))


def epochs(n_epochs: float, steps_per_epoch: int) -> int:
    """The number of steps in ``n_epochs`` epochs: ``n_epochs * steps_per_epoch`` rounded to nearest (halves up).

    ``n_epochs`` is a finite float ``>= 0`` (fractional epochs allowed); ``steps_per_epoch`` an int ``>= 1``.
    """
    n = check_scalar("n_epochs", n_epochs, low=0.0)
    spe = _count("steps_per_epoch", steps_per_epoch, low=1)
    steps = n * spe + 0.5
    if not math.isfinite(steps):
        raise ValueError(f"n_epochs = {n:g} epochs of {spe} steps is more steps than can be counted")
    return math.floor(steps)


def tutorial_kl_weight(epoch: int, num_epochs: int) -> float:
    """The tutorial's ``kl_weight_scheduler``, fixed: a linear warm-up over the first half of training.

    ``W = num_epochs // 2`` warm-up epochs; ``beta(epoch) = min(1, epoch / W)`` for ``W >= 1``, so epoch 0 gives
    0 and epochs ``>= W`` give exactly 1. The tutorial divided by ``W = 0`` when ``num_epochs < 2``; here a
    one-epoch run has no warm-up (``beta = 1``, like ``LinearWarmup(warmup_steps=0)``): a run at weight 0 only
    would never train the KL term. Equals ``LinearWarmup(num_epochs // 2)(epoch)``.
    ``num_epochs >= 1``; ``0 <= epoch < num_epochs`` (0-based, as in ``for epoch in range(num_epochs)``).
    """
    n = _count("num_epochs", num_epochs, low=1)
    e = _count("epoch", epoch, low=0)
    if e >= n:
        raise ValueError(f"epoch must be in [0, num_epochs) = [0, {n}) (0-based), got {e}")
    return LinearWarmup(warmup_steps=n // 2)(e)


_GRAMMAR = (
    "expected one of: 'constant' (beta = 1), 'constant:B' (beta = B), 'linear:E' (linear warm-up 0 -> 1 over E "
    "epochs, E may be fractional), 'logistic:E:K' (midpoint at E epochs, steepness K per step), 'cyclical:N:R' "
    "(N cycles over the whole run, rising for a fraction R of each)"
)


def _parse_number(text: str, name: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"schedule {spec!r}: {name} must be a number, got {text!r}; {_GRAMMAR}") from None


def _parse_int(text: str, name: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"schedule {spec!r}: {name} must be an integer, got {text!r}; {_GRAMMAR}") from None


def parse_schedule(spec: str, *, total_steps: int, steps_per_epoch: int) -> Schedule:
    """A schedule from a command-line spec; epochs are converted to steps with ``steps_per_epoch``.

    ========================  =====================================================================
    spec                      schedule
    ========================  =====================================================================
    ``constant``              ``Constant(1.0)``
    ``constant:B``            ``Constant(B)``
    ``linear:E``              ``LinearWarmup(warmup_steps=epochs(E, steps_per_epoch))``
    ``logistic:E:K``          ``Logistic(midpoint=E * steps_per_epoch, steepness=K)``
    ``cyclical:N:R``          ``Cyclical(total_steps, n_cycles=N, ratio=R)``
    ========================  =====================================================================

    The name is case-insensitive and spaces around fields are ignored. Anything else raises ``ValueError``
    with the grammar.
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a str, got {type(spec).__name__}")
    total = _count("total_steps", total_steps, low=1)
    spe = _count("steps_per_epoch", steps_per_epoch, low=1)
    name, *args = (part.strip() for part in spec.split(":"))
    name = name.lower()
    arity = {"constant": (0, 1), "linear": (1,), "logistic": (2,), "cyclical": (2,)}
    if name not in arity:
        raise ValueError(f"unknown schedule {spec!r}; {_GRAMMAR}")
    if len(args) not in arity[name]:
        raise ValueError(f"schedule {spec!r} has {len(args)} field(s) after {name!r}; {_GRAMMAR}")
    try:
        if name == "constant":
            return Constant(_parse_number(args[0], "B", spec)) if args else Constant()
        if name == "linear":
            return LinearWarmup(warmup_steps=epochs(_parse_number(args[0], "E", spec), spe))
        if name == "logistic":
            e = check_scalar("E", _parse_number(args[0], "E", spec), low=0.0)
            return Logistic(midpoint=e * spe, steepness=_parse_number(args[1], "K", spec))
        n = _parse_int(args[0], "N", spec)
        return Cyclical(total, n_cycles=n, ratio=_parse_number(args[1], "R", spec))
    except ValueError as err:
        if str(err).startswith("schedule "):
            raise
        raise ValueError(f"schedule {spec!r}: {err}; {_GRAMMAR}") from None


def free_bits(kl_per_dim: Tensor, lam: float) -> Tensor:
    """The free-bits KL term of Kingma et al. 2016: ``sum_j max(lam, mean_i KL_ij)``, a scalar tensor.

    ``kl_per_dim`` has shape ``(batch, z_dim)``: the KL term of latent dimension ``j`` for example ``i`` (nats).
    The floor ``lam >= 0`` (nats per dimension) applies to each dimension's batch mean, so a dimension whose mean
    is below ``lam`` contributes the constant ``lam`` and gets no gradient; above (and at equality, as
    ``torch.clamp``) each entry gets gradient ``1 / batch``. ``lam = 0`` gives the plain ``kl.sum(1).mean()``, value
    and gradient, whenever the batch means are ``>= 0`` (always, for exact KL terms; a Monte Carlo estimate with a
    negative mean is raised to 0).
    """
    if not isinstance(kl_per_dim, Tensor):
        raise TypeError(f"kl_per_dim must be a torch.Tensor, got {type(kl_per_dim).__name__}")
    if kl_per_dim.dim() != 2 or kl_per_dim.shape[0] == 0 or kl_per_dim.shape[1] == 0:
        raise ValueError(
            f"kl_per_dim must have shape (batch, z_dim) with batch >= 1 and z_dim >= 1, "
            f"got shape {tuple(kl_per_dim.shape)}"
        )
    if not kl_per_dim.is_floating_point():
        raise ValueError(f"kl_per_dim must be a floating-point tensor, got dtype {kl_per_dim.dtype}")
    floor = check_scalar("lam", lam, low=0.0)
    return torch.clamp(kl_per_dim.mean(0), min=floor).sum()
