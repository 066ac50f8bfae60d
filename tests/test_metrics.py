"""Classification metrics: hand-built cases, plain per-sample reference loops, laws (hypothesis), bad input."""

from __future__ import annotations

import math
from collections.abc import Callable

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from torch import Tensor

import kldiv
from kldiv.metrics import (
    accuracy,
    brier_score,
    calibration_bins,
    expected_calibration_error,
    negative_log_likelihood,
)

DT = torch.float64
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _probs(n: int, c: int, seed: int = 0, scale: float = 2.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(n, c, dtype=DT, generator=g), -1)


def _labels(n: int, c: int, seed: int = 1) -> Tensor:
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------------------
# accuracy, negative log-likelihood, Brier score
# --------------------------------------------------------------------------------------------------------------
def test_accuracy_hand_case_and_ties_take_the_first_class() -> None:
    scores = torch.tensor([[0.1, 2.0, -1.0], [3.0, 3.0, 0.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]], dtype=DT)
    labels = torch.tensor([1, 1, 2, 2])  # right, wrong (tie -> class 0), right, wrong
    assert accuracy(scores, labels).item() == 0.5
    assert accuracy(scores.float()[None], labels[None]).item() == 0.5  # any batch shape, float32


def test_accuracy_skips_its_value_checks_only_with_validation_off() -> None:
    scores = torch.tensor([[0.1, 2.0, -1.0], [3.0, 1.0, 0.0]], dtype=DT)
    labels = torch.tensor([1, 7])  # 7 is no class id
    with pytest.raises(ValueError, match="outside the class ids"):
        accuracy(scores, labels)
    with pytest.raises(ValueError, match="NaN in row 1"):
        accuracy(torch.tensor([[0.0, 1.0], [math.nan, 0.0]]), torch.tensor([1, 0]))
    with kldiv.validation(False):  # as in a training step: an id that is no class is never the top class
        assert accuracy(scores, labels).item() == 0.5


def test_negative_log_likelihood_against_a_loop() -> None:
    p, y = _probs(9, 4), _labels(9, 4)
    expected = [-math.log(p[i, int(y[i])].item()) for i in range(9)]
    got = negative_log_likelihood(p, y, reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected, dtype=DT), rtol=1e-14, atol=0)
    assert negative_log_likelihood(p, y).item() == pytest.approx(math.fsum(expected) / 9, rel=1e-14)
    assert negative_log_likelihood(p, y, reduction="sum").item() == pytest.approx(math.fsum(expected), rel=1e-14)
    from_log = negative_log_likelihood(p.log(), y, kind="log_probs", reduction="none")
    torch.testing.assert_close(from_log, got, rtol=1e-14, atol=0)


def test_negative_log_likelihood_is_inf_for_a_label_of_probability_zero() -> None:
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=DT)
    values = negative_log_likelihood(p, torch.tensor([1, 0]), reduction="none")
    assert values[0].item() == math.inf
    assert values[1].item() == pytest.approx(math.log(2), rel=1e-15)
    log_p = torch.tensor([[0.0, -math.inf]], dtype=DT)
    assert negative_log_likelihood(log_p, torch.tensor([1]), kind="log_probs").item() == math.inf
    assert negative_log_likelihood(log_p, torch.tensor([0]), kind="log_probs").item() == 0.0


def test_brier_score_hand_cases_and_a_loop() -> None:
    certain = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=DT)
    assert brier_score(certain, torch.tensor([0, 0]), reduction="none").tolist() == [0.0, 2.0]
    p, y = _probs(7, 5), _labels(7, 5)
    expected = [math.fsum((p[i, c].item() - (1.0 if c == int(y[i]) else 0.0)) ** 2 for c in range(5)) for i in range(7)]
    torch.testing.assert_close(brier_score(p, y, reduction="none"), torch.tensor(expected, dtype=DT))
    assert brier_score(p, y).item() == pytest.approx(math.fsum(expected) / 7, rel=1e-14)


@given(st.integers(1, 12), st.integers(1, 8), st.integers(0, 2**31 - 1), st.floats(0.0, 20.0))
@PROPS
def test_metric_ranges(n: int, c: int, seed: int, scale: float) -> None:
    p, y = _probs(n, c, seed, scale), _labels(n, c, seed + 1)
    assert 0.0 <= accuracy(p, y).item() <= 1.0
    assert negative_log_likelihood(p, y).item() >= 0.0
    assert 0.0 <= brier_score(p, y).item() <= 2.0 + 1e-15
    assert 0.0 <= expected_calibration_error(p, y).item() <= 1.0 + 1e-15


# --------------------------------------------------------------------------------------------------------------
# expected calibration error
# --------------------------------------------------------------------------------------------------------------
def _row(confidence: float, top: int, classes: int = 4) -> list[float]:
    rest = (1.0 - confidence) / (classes - 1)
    return [confidence if c == top else rest for c in range(classes)]


def test_ece_hand_built_case_with_confidences_on_bin_edges() -> None:
    # 10 bins; confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.3 (right): each on the right edge of its bin
    probs = torch.tensor([_row(0.9, 0), _row(0.9, 1), _row(0.6, 2), _row(0.3, 3)], dtype=DT)
    labels = torch.tensor([0, 0, 2, 3])
    bins = calibration_bins(probs, labels, n_bins=10)
    assert bins.count.tolist() == [0, 0, 1, 0, 0, 1, 0, 0, 2, 0]
    assert bins.accuracy[[2, 5, 8]].tolist() == [1.0, 1.0, 0.5]
    torch.testing.assert_close(bins.confidence[[2, 5, 8]], torch.tensor([0.3, 0.6, 0.9], dtype=DT))
    assert bool(bins.accuracy[[0, 1, 3, 4, 6, 7, 9]].isnan().all())
    # (2/4)|0.5 - 0.9| + (1/4)|1 - 0.6| + (1/4)|1 - 0.3| = 0.2 + 0.1 + 0.175
    assert expected_calibration_error(probs, labels, n_bins=10).item() == pytest.approx(0.475, rel=1e-14)
    assert bins.ece.item() == expected_calibration_error(probs, labels, n_bins=10).item()
    torch.testing.assert_close(bins.edges, torch.tensor([m / 10 for m in range(11)], dtype=DT), rtol=0, atol=0)


def test_ece_is_zero_when_confidence_matches_accuracy_in_every_bin() -> None:
    probs = torch.tensor([_row(0.75, 0)] * 4, dtype=DT)
    assert expected_calibration_error(probs, torch.tensor([0, 0, 0, 1])).item() == pytest.approx(0.0, abs=1e-15)


def _reference_bins(probs: Tensor, labels: Tensor, n_bins: int) -> tuple[list[int], list[float], list[float], float]:
    """A plain loop: each sample into the bin (m/M, (m+1)/M] holding its confidence."""
    count = [0] * n_bins
    right = [0.0] * n_bins
    conf = [0.0] * n_bins
    for row, label in zip(probs.tolist(), labels.tolist(), strict=True):
        c = max(row)
        pred = row.index(c)
        for m in range(n_bins):
            if m / n_bins < c <= (m + 1) / n_bins:
                count[m] += 1
                right[m] += pred == label
                conf[m] += c
                break
    n = len(labels)
    ece = math.fsum(abs(right[m] - conf[m]) / n for m in range(n_bins) if count[m])
    acc = [right[m] / count[m] if count[m] else math.nan for m in range(n_bins)]
    mean_conf = [conf[m] / count[m] if count[m] else math.nan for m in range(n_bins)]
    return count, acc, mean_conf, ece


@pytest.mark.parametrize("n_bins", [1, 3, 10, 15, 40])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_bins_match_a_reference_loop(n_bins: int, seed: int) -> None:
    probs, labels = _probs(200, 6, seed, scale=1.5 + seed), _labels(200, 6, seed + 10)
    count, acc, conf, ece = _reference_bins(probs, labels, n_bins)
    bins = calibration_bins(probs, labels, n_bins=n_bins)
    assert bins.count.tolist() == count
    torch.testing.assert_close(bins.accuracy, torch.tensor(acc, dtype=DT), equal_nan=True, rtol=1e-14, atol=0)
    torch.testing.assert_close(bins.confidence, torch.tensor(conf, dtype=DT), equal_nan=True, rtol=1e-14, atol=0)
    assert bins.ece.item() == pytest.approx(ece, rel=1e-12, abs=1e-15)


def test_calibration_bins_flatten_the_batch_and_accept_float32() -> None:
    probs, labels = _probs(24, 5), _labels(24, 5)
    flat = calibration_bins(probs, labels)
    nested = calibration_bins(probs.float().reshape(2, 3, 4, 5), labels.reshape(2, 3, 4))
    assert nested.count.tolist() == flat.count.tolist()
    assert nested.ece.dtype == DT
    assert nested.ece.item() == pytest.approx(flat.ece.item(), abs=1e-6)


# --------------------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------------------
P = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=DT)
Y = torch.tensor([0, 2])

BAD: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    (
        "labels_out_of_range",
        lambda: accuracy(P, torch.tensor([0, 3])),
        ValueError,
        "labels holds 3 at index (1,), outside the class ids [0, 3)",
    ),
    (
        "labels_negative",
        lambda: brier_score(P[None], torch.tensor([[0, -1]])),
        ValueError,
        "labels holds -1 at index (0, 1)",
    ),
    ("labels_float", lambda: negative_log_likelihood(P, torch.tensor([0.0, 2.0])), TypeError, "labels has dtype"),
    (
        "labels_shape",
        lambda: expected_calibration_error(P, torch.tensor([0, 1, 2])),
        ValueError,
        "labels has shape (3,); expected (2,)",
    ),
    ("labels_not_tensor", lambda: accuracy(P, [0, 2]), TypeError, "labels must be a torch.Tensor"),
    (
        "probs_negative",
        lambda: brier_score(torch.tensor([[1.1, -0.1]], dtype=DT), torch.tensor([0])),
        ValueError,
        "probs has -0.1",
    ),
    (
        "probs_not_normalized",
        lambda: expected_calibration_error(torch.tensor([[1.5, 0.5, 0.0]], dtype=DT), Y[:1]),
        ValueError,
        "probs sums to 2.0 in row 0",
    ),
    (
        "log_probs_not_normalized",
        lambda: negative_log_likelihood(P, Y, kind="log_probs"),
        ValueError,
        "exp(probs) (log-probabilities given) sums to",
    ),
    ("probs_integer", lambda: brier_score(torch.tensor([[1, 0]]), torch.tensor([0])), TypeError, "probs has dtype"),
    ("probs_scalar", lambda: accuracy(torch.tensor(1.0), torch.tensor(0)), ValueError, "scores has shape ()"),
    (
        "no_sample",
        lambda: expected_calibration_error(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64)),
        ValueError,
        "holds no sample",
    ),
    (
        "scores_nan",
        lambda: accuracy(torch.tensor([[0.0, math.nan]]), torch.tensor([0])),
        ValueError,
        "scores holds NaN in row 0",
    ),
    ("n_bins_zero", lambda: calibration_bins(P, Y, n_bins=0), ValueError, "n_bins must be >= 1, got 0"),
    ("n_bins_float", lambda: expected_calibration_error(P, Y, n_bins=10.0), TypeError, "n_bins must be an int"),
    ("n_bins_bool", lambda: expected_calibration_error(P, Y, n_bins=True), TypeError, "n_bins must be an int"),
    ("reduction", lambda: brier_score(P, Y, reduction="batchmean"), ValueError, "reduction must be one of"),
    ("kind", lambda: negative_log_likelihood(P, Y, kind="logits"), ValueError, "kind must be one of"),
]


@pytest.mark.parametrize(("case", "call", "error", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_naming_the_argument(
    case: str, call: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value), str(info.value)
