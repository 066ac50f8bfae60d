"""The chunked losses' worker threads: dynamic scheduling of the row tasks, results independent of the thread
count on every path, and no change to the thread count the rest of the process sees."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

from kldiv.losses import chunked, distillation_loss, generalized_jsd, reverse_kl

from .backends import BACKENDS, backend


@pytest.fixture
def threads() -> Iterator[None]:
    keep = torch.get_num_threads()
    yield
    torch.set_num_threads(keep)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_in_parallel_runs_every_task_once(workers: int, threads: None) -> None:
    del threads
    torch.set_num_threads(workers)
    done: list[int] = []
    states: list[object] = []

    def setup() -> object:
        state = object()
        states.append(state)
        return state

    chunked.in_parallel(lambda k, _: done.append(k), 50, setup, torch.device("cpu"))
    assert sorted(done) == list(range(50))
    assert 1 <= len(states) <= workers  # one setup per worker thread


def test_in_parallel_raises_what_a_task_raises(threads: None) -> None:
    del threads
    torch.set_num_threads(2)

    def task(k: int, _: None) -> None:
        if k == 7:
            raise ValueError("task 7")

    with pytest.raises(ValueError, match="task 7"):
        chunked.in_parallel(task, 20, lambda: None, torch.device("cpu"))


def test_worker_threads_leave_the_thread_count_of_other_threads_alone(threads: None) -> None:
    del threads
    torch.set_num_threads(2)
    chunked._pool.cache_clear()  # a fresh pool: its workers set their own thread count to 1 when they start
    chunked.in_parallel(lambda k, _: None, 4, lambda: None, torch.device("cpu"))
    seen: list[int] = []
    later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    later.start()
    later.join()
    assert torch.get_num_threads() == 2
    assert seen == [2]


@pytest.mark.parametrize("name", BACKENDS)
def test_results_do_not_depend_on_the_thread_count_with_many_tasks(
    name: str, threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    del threads
    monkeypatch.setattr(chunked, "NATIVE_TASK_ELEMENTS", 3 * 700)  # C kernel tasks of 3 rows
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(37, 700, generator=g), torch.randn(37, 700, generator=g)
    t[5, 3] = -torch.inf  # one row for the general path
    labels = torch.randint(0, 700, (37,), generator=g)
    results = []
    for k in (1, 2, 3):
        torch.set_num_threads(k)
        with backend(name):
            leaf = s.clone().requires_grad_()
            value = distillation_loss(leaf, t, labels, temperature=2.0, reduction="none", chunk_size=4)
            results.append((value, *torch.autograd.grad(value.sum(), leaf)))
    for value, grad in results[1:]:
        assert torch.equal(value, results[0][0])
        assert torch.equal(grad, results[0][1])


def test_general_path_results_do_not_depend_on_the_thread_count(threads: None) -> None:
    del threads
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(37, 300, generator=g), torch.randn(37, 300, generator=g)
    results = []
    for k in (1, 2):
        torch.set_num_threads(k)
        leaf, t_leaf = s.clone().requires_grad_(), t.clone().requires_grad_()
        value = generalized_jsd(leaf, t_leaf, beta=0.3, reduction="none", chunk_size=3)
        reverse = reverse_kl(leaf, t_leaf, reduction="none", chunk_size=3)  # a teacher gradient: general path
        results.append((value, reverse, *torch.autograd.grad((value + reverse).sum(), (leaf, t_leaf))))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
