"""Mistakes that give a valid but useless loss get a warning, once: probabilities passed as logits, and
vocabularies of different sizes that make the loss +inf."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import pytest
import torch

from kldiv.losses import TopK, forward_kl, fused_linear_kl, options, reverse_kl

IMPLEMENTATIONS = ["naive", "chunked"]


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test sees the process as new: no warning given yet."""
    monkeypatch.setattr(options, "_WARNED", set())
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        yield


def _warnings(call: object) -> list[str]:
    assert callable(call)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_probabilities_passed_as_logits_warn_once_saying_what_to_pass(implementation: str) -> None:
    s = torch.randn(5, 20)
    p = torch.randn(5, 20).softmax(-1)
    messages = _warnings(lambda: forward_kl(s, p, implementation=implementation))
    assert len(messages) == 1
    assert "teacher_kind='probs'" in messages[0]
    assert _warnings(lambda: forward_kl(s, p, implementation=implementation)) == []  # once
    assert _warnings(lambda: forward_kl(s, p, teacher_kind="probs", implementation=implementation)) == []


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_logits_that_are_not_all_probabilities_do_not_warn(implementation: str) -> None:
    s = torch.randn(5, 20)
    looks_like = torch.randn(5, 20).softmax(-1)
    looks_like[3] = torch.randn(20)  # one row is not a distribution: these may be logits after all
    mask = torch.tensor([True, False, True, True, True])
    ignored_probs = torch.randn(5, 20)
    ignored_probs[1] = torch.randn(20).softmax(-1)  # the first row looks like probabilities but is ignored
    for teacher in (torch.randn(5, 20), looks_like, ignored_probs.abs()):
        assert _warnings(lambda t=teacher: forward_kl(s, t, mask=mask, implementation=implementation)) == []


def test_fused_linear_teacher_probabilities_passed_as_logits_warn() -> None:
    hidden, weight = torch.randn(6, 4), torch.randn(20, 4)
    messages = _warnings(lambda: fused_linear_kl(hidden, weight, torch.randn(6, 20).softmax(-1)))
    assert len(messages) == 1
    assert "teacher_kind='probs'" in messages[0]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_larger_teacher_vocabulary_that_makes_the_loss_infinite_warns_once(implementation: str) -> None:
    s, t = torch.randn(3, 10), torch.randn(3, 12)
    messages = _warnings(lambda: forward_kl(s, t, implementation=implementation))
    assert len(messages) == 1
    assert "teacher has 12 ids and the student 10" in messages[0]
    assert "teacher[..., :10]" in messages[0]
    assert _warnings(lambda: forward_kl(s, t, implementation=implementation)) == []  # once


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_smaller_teacher_vocabulary_that_makes_the_loss_infinite_warns(implementation: str) -> None:
    s, t = torch.randn(3, 10), torch.randn(3, 8)
    messages = _warnings(lambda: reverse_kl(s, t, reduction="none", implementation=implementation))
    assert len(messages) == 1
    assert "student_logits[..., :8]" in messages[0]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_topk_ids_beyond_the_vocabulary_that_make_the_loss_infinite_warn(implementation: str) -> None:
    s = torch.randn(3, 10)
    top = TopK(torch.tensor([[0, 1, 12]] * 3), torch.zeros(3, 3))
    messages = _warnings(lambda: forward_kl(s, top, implementation=implementation))
    assert len(messages) == 1
    assert "teacher has 13 ids and the student 10" in messages[0]


def test_fused_linear_vocabularies_that_make_the_loss_infinite_warn() -> None:
    hidden, weight = torch.randn(6, 4), torch.randn(10, 4)
    messages = _warnings(lambda: fused_linear_kl(hidden, weight, torch.randn(6, 12)))
    assert len(messages) == 1
    assert "teacher has 12 ids and the student 10" in messages[0]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_different_vocabularies_with_a_finite_loss_do_not_warn(implementation: str) -> None:
    s, t = torch.randn(3, 10), torch.randn(3, 12)
    t[:, 10:] = -math.inf  # no teacher mass beyond the student's ids
    value = forward_kl(s, t, implementation=implementation)
    assert bool(torch.isfinite(value))
    assert _warnings(lambda: forward_kl(s, t, implementation=implementation)) == []
