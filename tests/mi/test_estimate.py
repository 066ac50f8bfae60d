"""estimate_mi: a short training recovers a known mutual information; its arguments are checked."""

from __future__ import annotations

import pytest
import torch

from kldiv.mi import SeparableCritic, correlated_gaussians, estimate_mi


def _sampler(b: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return correlated_gaussians(b, mi=1.0, dim=2, generator=g)


@pytest.mark.parametrize("bound", ["infonce", "smile"])
def test_a_short_training_recovers_one_nat_within_015(bound: str) -> None:
    torch.manual_seed(0)
    critic = SeparableCritic(2, 2, hidden=(64,), embedding=16)
    result = estimate_mi(_sampler, bound=bound, steps=400, batch_size=128, critic=critic, lr=2e-3, seed=0)
    assert abs(result.estimate - 1.0) < 0.15, result.estimate
    assert len(result.trajectory) == 400
    assert result.trajectory[0] < 0.5  # it learned: an untrained critic scores near 0


def test_a_fixed_dataset_is_sampled_without_replacement_per_step() -> None:
    x, y = correlated_gaussians(512, mi=1.0, dim=2, generator=torch.Generator().manual_seed(1))
    critic = SeparableCritic(2, 2, hidden=(32,), embedding=8)
    result = estimate_mi((x, y), bound="dv", steps=20, batch_size=64, critic=critic, average=5)
    assert len(result.trajectory) == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bound": "tuba"}, "bound"),
        ({"steps": 0}, "steps"),
        ({"batch_size": 1}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"critic": "bilinear"}, "critic"),
        ({"batch_size": 1000}, "batch_size"),
    ],
)
def test_bad_arguments_name_themselves(kwargs: dict[str, object], message: str) -> None:
    x, y = correlated_gaussians(100, mi=1.0, dim=2)
    with pytest.raises(ValueError, match=message):
        estimate_mi((x, y), steps=kwargs.pop("steps", 1), **kwargs)  # type: ignore[arg-type]


def test_mismatched_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="same N"):
        estimate_mi((torch.zeros(10, 2), torch.zeros(9, 2)), steps=1, batch_size=4)
    with pytest.raises(TypeError, match="pair of tensors"):
        estimate_mi((torch.zeros(10, 2),), steps=1)  # type: ignore[arg-type]
