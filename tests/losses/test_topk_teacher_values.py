"""A top-k teacher's values are validated like a dense teacher's, and ids far beyond the student's vocabulary
keep their meaning without memory in proportion to the id."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from kldiv.losses import TopK, distillation_loss, forward_kl, generalized_jsd, reverse_kl, symmetric_kl

from .probes import Allocations

DT = torch.float64
INF = math.inf
N, V, K = 4, 10, 3
IMPLEMENTATIONS = ["naive", "chunked", "auto"]
REDUCTIONS = ["batchmean", "sum", "mean", "none"]
LABELS = torch.tensor([1, 2, 3, 4])

Loss = Callable[..., torch.Tensor]
LOSSES: dict[str, Loss] = {
    "forward": forward_kl,
    "reverse": reverse_kl,
    "symmetric": lambda s, t, **kw: symmetric_kl(s, t, weight=0.3, **kw),
    "jsd": lambda s, t, **kw: generalized_jsd(s, t, beta=0.4, **kw),
    "distillation": lambda s, t, **kw: distillation_loss(s, t, kw.pop("labels", LABELS), alpha=0.6, **kw),
}


def _values(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(N, K, generator=g, dtype=DT)
    if kind == "probs":
        return 0.9 * logits.softmax(-1)
    return logits.log_softmax(-1) if kind == "log_probs" else logits


def _bad(kind: str, defect: str) -> torch.Tensor:
    """Row 1 of the top-k values made bad: one NaN or +inf entry, no mass at all, or too large for T = 0.5."""
    values = _values(kind)
    if defect == "nan":
        values[1, 1] = math.nan
    elif defect == "inf":
        values[1, 1] = INF
    elif defect == "empty":
        values[1] = 0.0 if kind == "probs" else -INF
    else:
        values[1, 1] = 1e308
    return values


CASES = [
    ("logits", "nan", r"TopK.values \(logits\) has nan at index \(1, 1\)"),
    ("logits", "inf", r"TopK.values \(logits\) has inf at index \(1, 1\)"),
    ("logits", "empty", r"TopK.values \(logits\) is -inf everywhere (along dim -1 )?in the row at batch index \(1,\)"),
    ("logits", "overflow", r"TopK.values \(logits\) / temperature overflows in row 1"),
    ("log_probs", "nan", r"TopK.values \(log_probs\) has nan at index \(1, 1\)"),
    ("log_probs", "inf", r"TopK.values \(log_probs\) has inf at index \(1, 1\)"),
    (
        "log_probs",
        "empty",
        r"TopK.values \(log_probs\) is -inf everywhere (along dim -1 )?in the row at batch index \(1,\)",
    ),
    ("log_probs", "overflow", r"TopK.values \(log_probs\) / temperature overflows in row 1"),
    ("probs", "nan", r"TopK.values \(probs\) has nan in row 1, entry 1; probabilities must be finite"),
    ("probs", "inf", r"TopK.values \(probs\) has inf in row 1, entry 1; probabilities must be finite"),
    ("probs", "empty", r"TopK.values \(probs\) is 0 everywhere in row 1: no teacher mass"),
]


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize(("kind", "defect", "match"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_topk_values_raise_naming_the_row(
    loss: str, implementation: str, kind: str, defect: str, match: str
) -> None:
    s = torch.randn(N, V, dtype=DT, requires_grad=True)
    top = TopK(torch.tensor([[0, 4, 7]] * N), _bad(kind, defect), kind=kind)  # type: ignore[arg-type]
    temperature = 0.5 if defect == "overflow" else 1.0
    for reduction in REDUCTIONS:
        with pytest.raises(ValueError, match=match):
            LOSSES[loss](s, top, temperature=temperature, reduction=reduction, implementation=implementation)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize(("kind", "defect", "match"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_topk_values_of_ignored_rows_are_fine(implementation: str, kind: str, defect: str, match: str) -> None:
    del match
    s = torch.randn(N, V, dtype=DT, requires_grad=True)
    top = TopK(torch.tensor([[0, 4, 7]] * N), _bad(kind, defect), kind=kind)  # type: ignore[arg-type]
    mask = torch.tensor([True, False, True, True])
    temperature = 0.5 if defect == "overflow" else 1.0
    for loss in LOSSES.values():
        value = loss(s, top, temperature=temperature, mask=mask, implementation=implementation)
        (grad,) = torch.autograd.grad(value, s)
        assert bool(torch.isfinite(grad).all())
        assert bool((grad[1] == 0).all())


@pytest.mark.parametrize("kind", ["probs", "log_probs"])
def test_topk_mass_teacher_may_keep_all_its_mass_in_the_rest(kind: str) -> None:
    # with rest="mass" a row of k zero probabilities is a valid teacher: all of its mass is outside the top k
    s = torch.randn(N, V, dtype=DT)
    values = _values(kind)
    values[1] = 0.0 if kind == "probs" else -INF
    top = TopK(torch.tensor([[0, 4, 7]] * N), values, kind=kind, rest="mass")  # type: ignore[arg-type]
    assert bool(torch.isfinite(forward_kl(s, top, reduction="none")).all())


def _far_teacher() -> tuple[TopK, torch.Tensor]:
    """A top-k teacher with ids 2^24 and 2^40 beyond a vocabulary of 10, and the same teacher as dense logits
    over V + 2 ids (those two ids at V and V + 1). Row 2 gives the far ids no mass (finite forward KL)."""
    g = torch.Generator().manual_seed(1)
    values = torch.randn(N, 4, generator=g, dtype=DT)
    values[2, 2:] = -INF
    indices = torch.tensor([[0, 3, 2**24, 2**40]] * N)
    dense = torch.full((N, V + 2), -INF, dtype=DT)
    dense[:, [0, 3, V, V + 1]] = values
    return TopK(indices, values), dense


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_topk_ids_far_beyond_the_vocabulary_are_teacher_mass_the_student_lacks(loss: str, implementation: str) -> None:
    top, dense = _far_teacher()
    s0 = torch.randn(N, V, dtype=DT)
    for reduction in REDUCTIONS:
        results = []
        for teacher in (top, dense):
            s = s0.clone().requires_grad_()
            t_values = (teacher.values if isinstance(teacher, TopK) else teacher).detach().clone().requires_grad_()
            t: Any = TopK(top.indices, t_values) if isinstance(teacher, TopK) else t_values
            value = LOSSES[loss](s, t, temperature=1.5, reduction=reduction, implementation=implementation)
            finite = torch.isfinite(value)
            g_s, g_t = torch.autograd.grad(value[finite].sum(), (s, t_values), allow_unused=True)
            g_t = torch.zeros_like(t_values) if g_t is None else g_t
            if not isinstance(teacher, TopK):
                g_t = g_t[:, [0, 3, V, V + 1]]
            results.append((value, g_s, g_t))
        (value, g_s, g_t), (ref, ref_s, ref_t) = results
        torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(g_s, ref_s, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(g_t, ref_t, rtol=1e-10, atol=1e-14)
        if loss == "forward" and reduction == "none":
            assert value[2] < INF
            assert bool((value[[0, 1, 3]] == INF).all())


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_topk_ids_far_beyond_the_vocabulary_allocate_nothing_in_proportion(implementation: str) -> None:
    top, _ = _far_teacher()
    s = torch.randn(N, V, dtype=DT, requires_grad=True)
    for loss in LOSSES.values():
        probe = Allocations()
        with probe:
            value = loss(s, top, reduction="none", implementation=implementation)
            torch.autograd.grad(value[torch.isfinite(value)].sum(), s)
        largest = max(size for _, size in probe.allocated)
        assert largest <= 16 * N * (V + 2), largest
