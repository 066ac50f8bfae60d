"""The classification regularizers: values against 50-digit mpmath sums written from the definitions, the laws
(hypothesis), agreement with ``F.cross_entropy``'s label smoothing, gradients (gradcheck, -inf logits), the
modules, the tutorial's expressions, and bad input."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import hypothesis.strategies as st
import mpmath as mp
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from torch import Tensor
from torch.autograd import gradcheck, gradgradcheck

import kldiv
from kldiv.losses import (
    ConfidencePenaltyLoss,
    KLToTargetLoss,
    LabelSmoothingLoss,
    MarginalKLToUniformLoss,
    confidence_penalty,
    kl_model_to_target,
    kl_target_to_model,
    label_smoothing_loss,
    marginal_kl_to_uniform,
)

DT = torch.float64
INF = math.inf
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

mp.mp.dps = 50


# --------------------------------------------------------------------------------------------------------------
# references: 50-digit sums over the classes, written from the definitions
# --------------------------------------------------------------------------------------------------------------
def _softmax_mp(row: Sequence[float]) -> list[Any]:
    finite = [mp.mpf(x) for x in row if x != -INF]
    top = max(finite)
    total = mp.fsum(mp.exp(x - top) for x in finite)
    return [mp.mpf(0) if x == -INF else mp.exp(mp.mpf(x) - top) / total for x in row]


def _kl_mp(p: Sequence[Any], q: Sequence[Any]) -> Any:
    """sum p log(p/q) with 0 log(0/q) = 0 and p log(p/0) = +inf for p > 0."""
    total = mp.mpf(0)
    for a, b in zip(p, q, strict=True):
        if a == 0:
            continue
        if b == 0:
            return mp.inf
        total += a * mp.log(a / b)
    return total


def _entropy_mp(p: Sequence[Any]) -> Any:
    return -mp.fsum(a * mp.log(a) for a in p if a != 0)


def _target_rows(target: Tensor, batch: int) -> list[list[Any]]:
    rows = target.expand(batch, target.shape[-1]).tolist()
    return [[mp.mpf(x) for x in row] for row in rows]


def _as_float(x: Any) -> float:
    return math.inf if x == mp.inf else float(x)


def _close(actual: Tensor, expected: Sequence[float], rtol: float = 1e-13, atol: float = 1e-15) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=DT), rtol=rtol, atol=atol)


def _logits(*shape: int, seed: int = 0) -> Tensor:
    return 3 * torch.randn(*shape, dtype=DT, generator=torch.Generator().manual_seed(seed))


def _with_neg_inf(x: Tensor, where: Sequence[tuple[int, int]]) -> Tensor:
    x = x.clone()
    for i, j in where:
        x[i, j] = -INF
    return x


MASKED = [(0, 1), (2, 0), (2, 3), (3, 4)]
"""-inf logits used throughout (row 2 keeps three classes, row 3 four)."""


# --------------------------------------------------------------------------------------------------------------
# KL to a fixed target, both directions
# --------------------------------------------------------------------------------------------------------------
def _targets() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(7)
    dense = torch.softmax(torch.randn(4, 5, dtype=DT, generator=g), -1)
    return {
        "uniform": torch.full((5,), 0.2, dtype=DT),
        "prior": torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625], dtype=DT),
        "per_sample": dense,
        "one_hot": F.one_hot(torch.tensor([3, 3, 1, 2]), 5).to(DT),
        "zeros_where_masked": torch.tensor(
            [[0.5, 0.0, 0.5, 0.0, 0.0], [0.2] * 5, [0.0, 0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25, 0.0]],
            dtype=DT,
        ),
    }


@pytest.mark.parametrize("target_name", sorted(_targets()))
@pytest.mark.parametrize("masked", [False, True], ids=["finite", "neg_inf_logits"])
def test_kl_both_directions_match_mpmath(target_name: str, masked: bool) -> None:
    target = _targets()[target_name]
    x = _logits(4, 5)
    if masked:
        x = _with_neg_inf(x, MASKED)
    p_rows = [_softmax_mp(row) for row in x.tolist()]
    t_rows = _target_rows(target, 4)
    forward = [_as_float(_kl_mp(p, t)) for p, t in zip(p_rows, t_rows, strict=True)]
    backward = [_as_float(_kl_mp(t, p)) for p, t in zip(p_rows, t_rows, strict=True)]
    _close(kl_model_to_target(x, target, reduction="none"), forward)
    _close(kl_target_to_model(x, target, reduction="none"), backward)
    _close(kl_model_to_target(x, target, reduction="sum"), math.fsum(forward))
    _close(kl_target_to_model(x, target), math.fsum(backward) / 4)


def test_kl_edge_semantics_rows() -> None:
    # one row per case of the semantics table; target t, p = softmax(logits)
    x = torch.tensor([[0.0, -INF, 1.0], [0.0, -INF, 1.0], [0.0, 0.5, 1.0], [-INF, -INF, 2.0]], dtype=DT)
    t = torch.tensor([[0.5, 0.0, 0.5], [0.4, 0.3, 0.3], [0.5, 0.0, 0.5], [0.0, 0.0, 1.0]], dtype=DT)
    forward = kl_model_to_target(x, t, reduction="none")
    backward = kl_target_to_model(x, t, reduction="none")
    # masked where the target is 0: both finite
    assert torch.isfinite(forward[0])
    assert torch.isfinite(backward[0])
    # masked where the target has mass: KL(t||p) = +inf, KL(p||t) finite
    assert torch.isfinite(forward[1])
    assert backward[1] == INF
    # the model has mass where the target has none: KL(p||t) = +inf, KL(t||p) finite
    assert forward[2] == INF
    assert torch.isfinite(backward[2])
    # equal one-hot distributions: exactly 0 in both directions
    assert forward[3] == 0.0
    assert backward[3] == 0.0


@given(
    st.integers(1, 6),
    st.integers(1, 12),
    st.integers(0, 2**31 - 1),
    st.booleans(),
)
@PROPS
def test_kl_is_nonnegative_and_zero_iff_equal(batch: int, classes: int, seed: int, same: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    x = 4 * torch.randn(batch, classes, dtype=DT, generator=g)
    target = torch.softmax(x if same else 4 * torch.randn(batch, classes, dtype=DT, generator=g), -1)
    for fn in (kl_model_to_target, kl_target_to_model):
        values = fn(x, target, reduction="none")
        assert bool((values >= 0).all())
        if same:
            assert float(values.abs().max()) <= 1e-14
        else:
            differ = (torch.softmax(x, -1) - target).abs().amax(-1) > 1e-6
            assert bool((values[differ] > 0).all())


def test_kl_dim_and_broadcasting() -> None:
    x = _logits(3, 6, 4)  # classes along dim 1
    target = torch.softmax(_logits(6, 1, seed=2), 0)  # (C, 1): broadcasts against (3, C, 4) with dim=1
    moved = x.movedim(1, -1)
    flat_target = target[:, 0]
    for fn in (kl_model_to_target, kl_target_to_model):
        torch.testing.assert_close(
            fn(x, target, dim=1, reduction="none"), fn(moved, flat_target, reduction="none"), rtol=1e-14, atol=0
        )
        torch.testing.assert_close(fn(x, target, dim=-2), fn(moved, flat_target), rtol=1e-14, atol=0)


def test_kl_float32_is_computed_in_float32_and_matches_float64() -> None:
    x, target = _logits(5, 7), torch.softmax(_logits(7, seed=1), -1)
    value32 = kl_model_to_target(x.float(), target.float())
    assert value32.dtype == torch.float32
    torch.testing.assert_close(value32.double(), kl_model_to_target(x, target), rtol=1e-5, atol=1e-7)
    assert kl_model_to_target(x.float(), target).dtype == DT  # a float64 input makes the result float64


# --------------------------------------------------------------------------------------------------------------
# the batch marginal against the uniform distribution
# --------------------------------------------------------------------------------------------------------------
def _marginal_mp(rows: list[list[float]]) -> tuple[Any, list[Any]]:
    probs = [_softmax_mp(r) for r in rows]
    classes = len(rows[0])
    marginal = [mp.fsum(p[c] for p in probs) / len(probs) for c in range(classes)]
    return _kl_mp(marginal, [mp.mpf(1) / classes] * classes), marginal


@pytest.mark.parametrize(
    "case",
    ["random", "neg_inf_logits", "class_absent_everywhere", "single_sample", "large_logits"],
)
def test_marginal_kl_to_uniform_matches_mpmath(case: str) -> None:
    x = _logits(4, 5)
    if case == "neg_inf_logits":
        x = _with_neg_inf(x, MASKED)
    elif case == "class_absent_everywhere":
        x[:, 2] = -INF
    elif case == "single_sample":
        x = x[:1]
    elif case == "large_logits":
        x = 200 * x
    expected, marginal = _marginal_mp(x.tolist())
    _close(marginal_kl_to_uniform(x), float(expected))
    # the identity KL(pbar || U) = log C - H(pbar), in the reference itself
    assert abs(expected - (mp.log(5) - _entropy_mp(marginal))) < mp.mpf(10) ** -40


def test_marginal_kl_to_uniform_extremes() -> None:
    confident_same = torch.tensor([[0.0, -INF, -INF]] * 4, dtype=DT)
    assert marginal_kl_to_uniform(confident_same).item() == pytest.approx(math.log(3), rel=1e-15)
    balanced_confident = torch.tensor([[0.0, -INF, -INF], [-INF, 0.0, -INF], [-INF, -INF, 0.0]], dtype=DT)
    assert abs(marginal_kl_to_uniform(balanced_confident).item()) <= 1e-16
    # near uniform (KL ~ 1e-11): log C - H(pbar) would cancel to a relative error of about 1e-5; the error left
    # is that of log pbar, a few eps absolute, times the deviation from uniform (~ 1e-6): ~ 1e-10 relative
    x = 1e-6 * _logits(8, 4)
    expected, _ = _marginal_mp(x.tolist())
    _close(marginal_kl_to_uniform(x), float(expected), rtol=1e-9, atol=0)


def test_marginal_kl_runs_over_every_dimension_but_dim() -> None:
    x = _logits(2, 3, 5)
    _close(marginal_kl_to_uniform(x), float(_marginal_mp(x.reshape(6, 5).tolist())[0]))
    _close(marginal_kl_to_uniform(x.movedim(-1, 0), dim=0), float(_marginal_mp(x.reshape(6, 5).tolist())[0]))


@given(st.integers(1, 8), st.integers(1, 10), st.integers(0, 2**31 - 1), st.floats(0.01, 30.0))
@PROPS
def test_marginal_kl_to_uniform_lies_in_zero_log_c(batch: int, classes: int, seed: int, scale: float) -> None:
    x = scale * torch.randn(batch, classes, dtype=DT, generator=torch.Generator().manual_seed(seed))
    value = float(marginal_kl_to_uniform(x))
    assert 0.0 <= value <= math.log(classes) * (1 + 1e-15)
    pbar = torch.softmax(x, -1).mean(0)
    assert value == pytest.approx(math.log(classes) + float((pbar * pbar.log()).sum()), abs=1e-12)


# --------------------------------------------------------------------------------------------------------------
# confidence penalty
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("masked", [False, True], ids=["finite", "neg_inf_logits"])
def test_confidence_penalty_matches_mpmath(masked: bool) -> None:
    x = _logits(4, 5)
    if masked:
        x = _with_neg_inf(x, MASKED)
    expected = [-0.3 * float(_entropy_mp(_softmax_mp(row))) for row in x.tolist()]
    _close(confidence_penalty(x, beta=0.3, reduction="none"), expected)
    _close(confidence_penalty(x, beta=0.3), math.fsum(expected) / 4)
    _close(confidence_penalty(x, beta=0.3, reduction="sum"), math.fsum(expected))


@given(st.integers(1, 6), st.integers(1, 12), st.integers(0, 2**31 - 1), st.floats(0.0, 5.0))
@PROPS
def test_confidence_penalty_is_at_most_zero_and_minus_beta_log_c_at_uniform(
    batch: int, classes: int, seed: int, beta: float
) -> None:
    x = 5 * torch.randn(batch, classes, dtype=DT, generator=torch.Generator().manual_seed(seed))
    assert bool((confidence_penalty(x, beta=beta, reduction="none") <= 0).all())
    uniform = torch.full((batch, classes), 1.7, dtype=DT)
    assert float(confidence_penalty(uniform, beta=beta)) == pytest.approx(-beta * math.log(classes), abs=1e-14)


# --------------------------------------------------------------------------------------------------------------
# label smoothing
# --------------------------------------------------------------------------------------------------------------
SHAPES = [((6, 5), -1), ((1, 1), -1), ((4, 3, 7), 1), ((2, 4, 3, 2), 1), ((3, 2, 6), -1)]


def _labels(logits_shape: tuple[int, ...], dim: int, classes: int, seed: int, ignored: bool) -> Tensor:
    batch = [s for i, s in enumerate(logits_shape) if i != dim % len(logits_shape)]
    labels = torch.randint(0, classes, batch, generator=torch.Generator().manual_seed(seed))
    if ignored and labels.numel() > 1:
        labels.view(-1)[::3] = -100
    return labels


@pytest.mark.parametrize(("shape", "dim"), SHAPES)
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("ignored", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_label_smoothing_equals_torch_cross_entropy(
    shape: tuple[int, ...], dim: int, eps: float, ignored: bool, reduction: str
) -> None:
    x = _logits(*shape).requires_grad_()
    classes = shape[dim]
    labels = _labels(shape, dim, classes, seed=1, ignored=ignored)
    torch_x = x if dim in (1, -len(shape) + 1) else x.movedim(dim, 1)
    ref = F.cross_entropy(torch_x, labels, label_smoothing=eps, reduction=reduction)
    ours = label_smoothing_loss(x, labels, eps=eps, dim=dim, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    g = torch.randn(ref.shape, dtype=DT, generator=torch.Generator().manual_seed(2))
    (g_ref,) = torch.autograd.grad(ref, x, g)
    (g_ours,) = torch.autograd.grad(ours, x, g)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-11, atol=1e-14)


@given(st.integers(1, 6), st.integers(1, 9), st.integers(0, 2**31 - 1), st.floats(0.0, 1.0), st.booleans())
@PROPS
def test_label_smoothing_identity_against_torch_and_the_kl(
    batch: int, classes: int, seed: int, eps: float, ignored: bool
) -> None:
    g = torch.Generator().manual_seed(seed)
    x = 6 * torch.randn(batch, classes, dtype=DT, generator=g)
    labels = torch.randint(0, classes, (batch,), generator=g)
    if ignored:
        labels[0] = -100
    ours = label_smoothing_loss(x, labels, eps=eps, reduction="none")
    ref = F.cross_entropy(x, labels, label_smoothing=eps, reduction="none")
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-13)
    # (1 - eps) CE(y, p) + eps (KL(U || p) + log C), with the KL of the discrete core
    kl_u = kldiv.kl_from_logits(torch.zeros(batch, classes, dtype=DT), x)
    ce = -torch.log_softmax(x, -1).gather(1, labels.clamp_min(0)[:, None])[:, 0]
    expected = torch.where(labels != -100, (1 - eps) * ce + eps * (kl_u + math.log(classes)), 0.0)
    torch.testing.assert_close(ours, expected, rtol=1e-11, atol=1e-12)


def test_label_smoothing_ignored_rows_may_hold_anything_and_all_ignored_gives_zero() -> None:
    x = _logits(3, 4).requires_grad_()
    poisoned = torch.where(torch.tensor([[False], [True], [False]]), torch.nan, x)
    labels = torch.tensor([1, -100, 2])
    value = label_smoothing_loss(poisoned, labels, eps=0.2)
    expected = F.cross_entropy(x[[0, 2]], labels[[0, 2]], label_smoothing=0.2)
    torch.testing.assert_close(value, expected, rtol=1e-13, atol=0)
    (grad,) = torch.autograd.grad(value, x)
    assert bool(torch.isfinite(grad).all())
    assert bool((grad[1] == 0).all())
    nothing = label_smoothing_loss(x, torch.full((3,), -100), eps=0.2)
    assert nothing.item() == 0.0
    (grad,) = torch.autograd.grad(nothing, x)
    assert bool((grad == 0).all())


def test_label_smoothing_at_neg_inf_logit() -> None:
    x = torch.tensor([[0.0, -INF, 1.0]], dtype=DT, requires_grad=True)
    labels = torch.tensor([2])
    assert label_smoothing_loss(x, labels, eps=0.1).item() == INF  # the uniform target has mass on class 1
    value = label_smoothing_loss(x, labels, eps=0.0)
    expected = -math.log(math.e / (1 + math.e))
    assert value.item() == pytest.approx(expected, rel=1e-15)
    (grad,) = torch.autograd.grad(value, x)
    assert grad[0, 1].item() == 0.0
    assert bool(torch.isfinite(grad).all())


# --------------------------------------------------------------------------------------------------------------
# gradients: gradcheck in float64, -inf logits held fixed while the finite ones move
# --------------------------------------------------------------------------------------------------------------
def _scatter(theta: Tensor, finite: Tensor) -> Tensor:
    """Logits equal to theta on ``finite`` and -inf elsewhere."""
    out = torch.full(finite.shape, -INF, dtype=theta.dtype)
    return out.index_put(finite.nonzero(as_tuple=True), theta)


FINITE = torch.tensor(
    [[True, False, True, True, True], [True] * 5, [False, True, True, False, True], [True, True, True, True, False]]
)
# a target that is 0 wherever a logit is -inf but not only there, so that both KLs stay finite in float64
SPARSE_TARGET = torch.tensor(
    [[0.3, 0.0, 0.0, 0.3, 0.4], [0.1, 0.2, 0.3, 0.2, 0.2], [0.0, 0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25, 0.0]],
    dtype=DT,
)

GRAD_FUNCS: dict[str, Callable[[Tensor], Tensor]] = {
    "kl_model_to_target_dense": lambda x: kl_model_to_target(x, torch.softmax(_logits(5, seed=3), -1)),
    "kl_target_to_model_sparse": lambda x: kl_target_to_model(x, SPARSE_TARGET, reduction="sum"),
    "marginal_kl_to_uniform": lambda x: marginal_kl_to_uniform(x),
    "confidence_penalty": lambda x: confidence_penalty(x, beta=0.7, reduction="none"),
    "label_smoothing": lambda x: label_smoothing_loss(x, torch.tensor([0, 2, 1, 3]), eps=0.0),
}


@pytest.mark.parametrize("name", sorted(GRAD_FUNCS))
@pytest.mark.parametrize("masked", [False, True], ids=["finite", "neg_inf_logits"])
def test_gradcheck(name: str, masked: bool) -> None:
    fn = GRAD_FUNCS[name]
    finite = FINITE if masked else torch.ones_like(FINITE)
    theta = _logits(int(finite.sum()), seed=4).requires_grad_()

    def f(t: Tensor) -> Tensor:
        return fn(_scatter(t, finite))

    assert bool(torch.isfinite(f(theta)).all())
    assert gradcheck(f, (theta,))


def test_marginal_kl_gradient_with_a_class_no_sample_can_take() -> None:
    # column 2 is -inf in every row: pbar_2 = 0, whose log is -inf; the closed-form gradient stays finite
    finite = torch.ones(4, 5, dtype=torch.bool)
    finite[:, 2] = False
    finite[1, 0] = False
    theta = _logits(int(finite.sum()), seed=8).requires_grad_()

    def f(t: Tensor) -> Tensor:
        return marginal_kl_to_uniform(_scatter(t, finite))

    assert gradcheck(f, (theta,))
    assert gradgradcheck(f, (theta,))


@pytest.mark.parametrize("dim", [-1, 0])
def test_marginal_kl_second_derivatives_and_any_class_dimension(dim: int) -> None:
    x = _logits(2, 3, 4, seed=9).requires_grad_()
    assert gradcheck(lambda t: marginal_kl_to_uniform(t, dim=dim), (x,))
    assert gradgradcheck(lambda t: marginal_kl_to_uniform(t, dim=dim), (x,))


def test_gradcheck_label_smoothing_interior() -> None:
    theta = _logits(4, 5, seed=5).requires_grad_()
    assert gradcheck(lambda t: label_smoothing_loss(t, torch.tensor([0, 2, -100, 4]), eps=0.3), (theta,))


def test_gradcheck_kl_model_to_target_with_zero_target_entries_on_masked_classes() -> None:
    # KL(p || t) is finite when p = 0 wherever t = 0
    theta = _logits(int(FINITE.sum()), seed=6).requires_grad_()
    target = torch.where(FINITE, 1.0, 0.0).to(DT)
    target = target / target.sum(-1, keepdim=True)
    assert gradcheck(lambda t: kl_model_to_target(_scatter(t, FINITE), target), (theta,))


@pytest.mark.parametrize("fn", [kl_model_to_target, kl_target_to_model])
def test_gradcheck_with_respect_to_a_positive_target(fn: Callable[..., Tensor]) -> None:
    x = _logits(4, 5, seed=11)
    w = torch.rand(4, 5, dtype=DT, generator=torch.Generator().manual_seed(12)).add_(0.1).requires_grad_()
    assert gradcheck(lambda u: fn(x, u / u.sum(-1, keepdim=True), reduction="none"), (w,))


@pytest.mark.parametrize("name", sorted(GRAD_FUNCS))
def test_gradient_is_zero_at_neg_inf_logits(name: str) -> None:
    x = _scatter(_logits(int(FINITE.sum()), seed=4), FINITE).requires_grad_()
    (grad,) = torch.autograd.grad(GRAD_FUNCS[name](x).sum(), x)
    assert bool(torch.isfinite(grad).all())
    assert bool((grad[~FINITE] == 0).all())


def test_infinite_rows_leave_finite_gradients_on_the_others() -> None:
    x = torch.tensor([[0.0, -INF, 1.0], [0.3, 0.2, 0.1]], dtype=DT, requires_grad=True)
    t = torch.tensor([0.4, 0.3, 0.3], dtype=DT)
    value = kl_target_to_model(x, t, reduction="none")
    assert value[0].item() == INF
    (grad,) = torch.autograd.grad(value[1], x)
    assert bool(torch.isfinite(grad).all())
    expected = torch.softmax(x[1].detach(), -1) - t  # d KL(t || softmax(x)) / dx = p - t
    torch.testing.assert_close(grad[1], expected, rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------------------------
def test_modules_equal_the_functions() -> None:
    x = _logits(4, 5)
    t = torch.softmax(_logits(5, seed=8), -1)
    labels = torch.tensor([0, 4, -100, 2])
    module = KLToTargetLoss(t, direction="model_to_target", reduction="sum")
    assert module(x).item() == kl_model_to_target(x, t, reduction="sum").item()
    assert KLToTargetLoss(t, direction="target_to_model")(x).item() == kl_target_to_model(x, t).item()
    assert MarginalKLToUniformLoss()(x).item() == marginal_kl_to_uniform(x).item()
    assert ConfidencePenaltyLoss(beta=0.4)(x).item() == confidence_penalty(x, beta=0.4).item()
    assert LabelSmoothingLoss(eps=0.1)(x, labels).item() == label_smoothing_loss(x, labels, eps=0.1).item()
    assert "target" in dict(module.named_buffers())
    assert "direction='model_to_target'" in repr(module)
    assert "eps=0.1" in repr(LabelSmoothingLoss(eps=0.1))
    assert "beta=0.4" in repr(ConfidencePenaltyLoss(beta=0.4))
    assert module.to(torch.float32).target.dtype == torch.float32


# --------------------------------------------------------------------------------------------------------------
# the tutorial's expressions
# --------------------------------------------------------------------------------------------------------------
def test_tutorial_kl_regularized_term_is_kl_target_to_model_and_saturates_at_tiny_probabilities() -> None:
    # F.kl_div(input, target) is sum target (log target - input): with input = log(softmax + 1e-10) it is the
    # KL from the target to the model, close to ours while every probability is far above 1e-10 ...
    t = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=DT)
    x = _logits(3, 4, seed=9) / 3
    tutorial = F.kl_div(torch.log(torch.softmax(x, -1) + 1e-10), t.expand(3, 4), reduction="batchmean")
    assert tutorial.item() == pytest.approx(kl_target_to_model(x, t).item(), rel=1e-7)
    assert tutorial.item() != pytest.approx(kl_model_to_target(x, t).item(), rel=1e-2)
    # ... but where the model gives a class with target mass a probability below 1e-10, the epsilon caps the
    # penalty (near -log 1e-10 = 23 per unit of target mass) while the true KL keeps growing
    x = torch.tensor([[0.0, 0.0, 0.0, -60.0]], dtype=DT)
    tutorial = F.kl_div(torch.log(torch.softmax(x, -1) + 1e-10), t[None], reduction="batchmean")
    exact = float(_kl_mp([mp.mpf(v) for v in t.tolist()], _softmax_mp(x[0].tolist())))
    assert kl_target_to_model(x, t).item() == pytest.approx(exact, rel=1e-14)
    assert exact - tutorial.item() > 3.0
    # ... and a masked class is +inf, not about 2.3
    masked = torch.tensor([[0.0, 0.0, 0.0, -INF]], dtype=DT)
    assert kl_target_to_model(masked, t).item() == INF
    assert math.isfinite(F.kl_div(torch.log(torch.softmax(masked, -1) + 1e-10), t[None], reduction="batchmean"))


def test_tutorial_cnn_term_is_the_marginal_kl_to_uniform_with_a_bias() -> None:
    x = _logits(16, 10, seed=10)
    pbar = torch.softmax(x, -1).mean(0)
    tutorial = (pbar * torch.log(pbar * 10 + 1e-10)).sum()
    assert tutorial.item() == pytest.approx(marginal_kl_to_uniform(x).item(), rel=1e-6)


# --------------------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------------------
X = torch.zeros(2, 3, dtype=DT)
T = torch.full((3,), 1 / 3, dtype=DT)
LABELS = torch.tensor([0, 2])

BAD: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    ("eps_above_one", lambda: label_smoothing_loss(X, LABELS, eps=1.5), ValueError, "eps must be in"),
    ("eps_negative", lambda: label_smoothing_loss(X, LABELS, eps=-0.1), ValueError, "eps must be in"),
    ("eps_nan", lambda: label_smoothing_loss(X, LABELS, eps=math.nan), ValueError, "eps must be"),
    ("eps_string", lambda: label_smoothing_loss(X, LABELS, eps="0.1"), TypeError, "eps must be a real number"),
    ("beta_negative", lambda: confidence_penalty(X, beta=-1.0), ValueError, "beta must be in"),
    (
        "target_negative",
        lambda: kl_model_to_target(X, torch.tensor([1.2, -0.2, 0.0], dtype=DT)),
        ValueError,
        "target has -0.2",
    ),
    (
        "target_not_normalized",
        lambda: kl_target_to_model(X, torch.tensor([0.5, 0.5, 0.5], dtype=DT)),
        ValueError,
        "target sums to 1.5",
    ),
    (
        "target_nan",
        lambda: kl_target_to_model(X, torch.tensor([0.5, math.nan, 0.5], dtype=DT)),
        ValueError,
        "target has nan",
    ),
    ("target_not_tensor", lambda: kl_model_to_target(X, [0.5, 0.5, 0.0]), TypeError, "target must be a torch.Tensor"),
    ("target_integer", lambda: kl_model_to_target(X, torch.tensor([1, 0, 0])), TypeError, "target has dtype"),
    (
        "target_classes_differ",
        lambda: kl_model_to_target(X, torch.full((4,), 0.25, dtype=DT)),
        ValueError,
        "logits has 3, target has 4",
    ),
    (
        "target_batch_mismatch",
        lambda: kl_model_to_target(X, torch.full((3, 3), 1 / 3, dtype=DT)),
        ValueError,
        "do not broadcast",
    ),
    (
        "logits_nan",
        lambda: confidence_penalty(torch.tensor([[0.0, math.nan]]), beta=1.0),
        ValueError,
        "logits has nan at index (0, 1)",
    ),
    ("logits_pos_inf", lambda: marginal_kl_to_uniform(torch.tensor([[0.0, INF]])), ValueError, "+inf is not allowed"),
    (
        "logits_all_neg_inf",
        lambda: kl_model_to_target(torch.tensor([[-INF, -INF, -INF]], dtype=DT), T),
        ValueError,
        "logits is -inf everywhere",
    ),
    ("logits_scalar", lambda: confidence_penalty(torch.tensor(1.0), beta=1.0), ValueError, "logits is a scalar"),
    ("logits_not_tensor", lambda: marginal_kl_to_uniform([[0.0, 1.0]]), TypeError, "logits must be a torch.Tensor"),
    ("logits_integer", lambda: confidence_penalty(torch.tensor([[1, 2]]), beta=1.0), TypeError, "logits has dtype"),
    ("marginal_no_sample", lambda: marginal_kl_to_uniform(torch.zeros(0, 3)), ValueError, "hold no sample"),
    ("dim_out_of_range", lambda: confidence_penalty(X, beta=1.0, dim=2), ValueError, "dim=2 is out of range"),
    (
        "labels_out_of_range",
        lambda: label_smoothing_loss(X, torch.tensor([0, 3]), eps=0.1),
        ValueError,
        "labels holds 3 at index 1, outside [0, 3)",
    ),
    (
        "labels_negative",
        lambda: label_smoothing_loss(X, torch.tensor([-1, 0]), eps=0.1),
        ValueError,
        "labels holds -1 at index 0",
    ),
    (
        "labels_float",
        lambda: label_smoothing_loss(X, torch.tensor([0.0, 1.0]), eps=0.1),
        TypeError,
        "labels has dtype torch.float32",
    ),
    (
        "labels_shape",
        lambda: label_smoothing_loss(X, torch.tensor([0, 1, 2]), eps=0.1),
        ValueError,
        "labels has shape (3,); expected the logits' batch shape (2,)",
    ),
    (
        "reduction",
        lambda: kl_model_to_target(X, T, reduction="batchmean"),
        ValueError,
        "reduction must be one of 'mean', 'sum', 'none'; got 'batchmean'",
    ),
    (
        "module_direction",
        lambda: KLToTargetLoss(T, direction="forward"),
        ValueError,
        "direction must be one of 'model_to_target', 'target_to_model'",
    ),
    ("module_beta", lambda: ConfidencePenaltyLoss(beta=-2.0), ValueError, "beta must be in"),
    ("module_eps", lambda: LabelSmoothingLoss(eps=2.0), ValueError, "eps must be in"),
]


@pytest.mark.parametrize(("case", "call", "error", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_naming_the_argument(
    case: str, call: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value), str(info.value)
