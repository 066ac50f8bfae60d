"""The thread count chosen per epoch by timing its first steps (:class:`kldiv.runs.loop.ThreadChoice`)."""

from __future__ import annotations

import pytest
import torch

from kldiv.runs import loop
from kldiv.runs.loop import ThreadChoice


class FakeClock:
    """A clock whose steps take ``cost[threads]`` seconds."""

    def __init__(self, cost: dict[int, float]) -> None:
        self.now, self.cost = 0.0, cost

    def perf_counter(self) -> float:
        return self.now

    def step(self) -> None:
        self.now += self.cost[torch.get_num_threads()]


def _run(clock: FakeClock, candidates: list[int], steps: int = 40) -> list[int]:
    choice = ThreadChoice(candidates)
    used = []
    for _ in range(steps):
        choice.before_step()
        used.append(torch.get_num_threads())
        clock.step()
        choice.after_step()
    return used


@pytest.fixture(autouse=True)
def _restore_threads() -> object:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("cost", "expected"), [({2: 0.01, 1: 0.013}, 2), ({2: 0.6, 1: 0.013}, 1)])
def test_the_faster_count_runs_the_rest_of_the_epoch(
    monkeypatch: pytest.MonkeyPatch, cost: dict[int, float], expected: int
) -> None:
    clock = FakeClock(cost)
    monkeypatch.setattr(loop.time, "perf_counter", clock.perf_counter)
    used = _run(clock, [2, 1])
    probe = ThreadChoice.WARMUP + 4 * ThreadChoice.ROUNDS
    assert set(used[ThreadChoice.WARMUP : probe]) == {1, 2}  # both were tried
    assert used[probe:] == [expected] * (len(used) - probe)


def test_one_candidate_is_used_for_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock({1: 0.01, 2: 0.01})
    monkeypatch.setattr(loop.time, "perf_counter", clock.perf_counter)
    assert _run(clock, [1]) == [1] * 40


def test_the_default_stays_unless_another_count_is_clearly_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock({2: 0.0100, 1: 0.0095})
    monkeypatch.setattr(loop.time, "perf_counter", clock.perf_counter)
    assert _run(clock, [2, 1])[-1] == 2


def test_a_machine_that_becomes_busy_mid_epoch_is_timed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quiet at the start (2 threads chosen), then another process takes a core: 2 threads become 40x slower."""
    clock = FakeClock({2: 0.010, 1: 0.013})
    monkeypatch.setattr(loop.time, "perf_counter", clock.perf_counter)
    choice = ThreadChoice([2, 1])
    used = []
    for step in range(120):
        if step == 60:
            clock.cost = {2: 0.4, 1: 0.014}
        choice.before_step()
        used.append(torch.get_num_threads())
        clock.step()
        choice.after_step()
    assert used[40:60] == [2] * 20
    assert used[-20:] == [1] * 20
    assert used[60:].count(2) <= ThreadChoice.SLOW_STEPS + 2 * ThreadChoice.ROUNDS  # the slow steps, then the probe
