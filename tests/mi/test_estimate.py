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


def test_the_sampler_is_called_once_per_step_and_batches_have_no_repeated_rows() -> None:
    calls: list[int] = []

    def counting(b: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(b)
        return correlated_gaussians(b, mi=1.0, dim=2, generator=g)

    estimate_mi(counting, bound="infonce", steps=3, batch_size=8, critic="separable")
    assert calls == [8, 8, 8]
    ids = torch.arange(64, dtype=torch.float32)[:, None]
    seen: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            seen.append(x[:, 0].detach().clone())
            return self.w * (x @ y.T)

    estimate_mi((ids, ids.clone()), bound="dv", steps=5, batch_size=16, critic=Spy(), average=1)
    assert len(seen) == 5
    for rows in seen:
        assert len(set(rows.tolist())) == 16  # drawn without replacement within a step
    assert len({tuple(r.tolist()) for r in seen}) > 1  # and anew each step


def test_diverging_scores_raise_a_floating_point_error() -> None:
    class Exploding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(1.0))

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.w * torch.full((x.shape[0], y.shape[0]), float("inf"))

    with pytest.raises(FloatingPointError, match="step 0"):
        estimate_mi(_sampler, bound="dv", steps=2, batch_size=4, critic=Exploding())
