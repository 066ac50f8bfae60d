"""KL coefficient controllers for KL-penalized policy optimization (PPO with a KL penalty, RLHF).

:class:`AdaptiveKLController` is the proportional controller of Ziegler et al. (2019), "Fine-tuning language
models from human preferences", section 2.2: after a batch whose measured KL is ``KL_t``, over ``n`` steps,

    e_t = clip(KL_t / target - 1, -0.2, 0.2)          beta <- beta * (1 + K_beta e_t n)         K_beta = 1 / horizon

so the coefficient grows while the KL is above its target and shrinks below it, by at most 20% of ``n / horizon``
per update. :class:`FixedKLController` keeps its coefficient.
"""

from __future__ import annotations

from dataclasses import dataclass

from kldiv._validate import check_scalar

__all__ = ["PROPORTIONAL_CLIP", "AdaptiveKLController", "FixedKLController"]

PROPORTIONAL_CLIP = 0.2
"""The bound of the proportional error ``KL / target - 1`` (Ziegler et al. 2019)."""


def _steps(n_steps: object) -> int:
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"n_steps must be an integer >= 0, got {n_steps!r}")
    return n_steps


@dataclass
class FixedKLController:
    """A constant KL coefficient ``value`` (``>= 0``); :meth:`update` checks its arguments and changes nothing."""

    value: float

    def __post_init__(self) -> None:
        self.value = check_scalar("value", self.value, low=0.0)

    def update(self, current_kl: float, n_steps: int) -> float:
        """The coefficient (unchanged)."""
        check_scalar("current_kl", current_kl, allow_inf=True)
        _steps(n_steps)
        return self.value


@dataclass
class AdaptiveKLController:
    """Ziegler et al.'s adaptive KL coefficient (see the module docstring): starts at ``value`` (``> 0``), aims the
    measured KL at ``target`` (``> 0``) with the gain ``1 / horizon`` per step (``horizon > 0``)."""

    value: float
    target: float
    horizon: float

    def __post_init__(self) -> None:
        self.value = check_scalar("value", self.value, low=0.0, low_open=True)
        self.target = check_scalar("target", self.target, low=0.0, low_open=True)
        self.horizon = check_scalar("horizon", self.horizon, low=0.0, low_open=True)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Update the coefficient after ``n_steps`` steps whose measured KL was ``current_kl``; return it."""
        kl = check_scalar("current_kl", current_kl, allow_inf=True)
        n = _steps(n_steps)
        error = min(max(kl / self.target - 1.0, -PROPORTIONAL_CLIP), PROPORTIONAL_CLIP)
        multiplier = 1.0 + error * n / self.horizon
        if multiplier <= 0:
            raise ValueError(
                f"n_steps / horizon = {n / self.horizon:g} is too large for one update: the coefficient would become "
                f"{self.value * multiplier:g}; use a horizon larger than n_steps / {PROPORTIONAL_CLIP}"
            )
        self.value *= multiplier
        return self.value
