"""The Monte Carlo predictive: hand-computed metrics and uncertainties, the laws of the decomposition, the stacked
draws against a loop over the draws, the regression mixture against NumPy and SciPy, and bad arguments."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from torch import Tensor, nn

from kldiv.bayes.objective import gaussian_nll
from kldiv.bayes.predict import (
    ClassPredictive,
    class_predictive,
    classification_metrics,
    mixture_nll,
    mutual_information,
    ood_auroc,
    predict_classes,
    predict_regression,
    predictive_log_probs,
    regression_predictive,
    sample_outputs,
    write_reliability_png,
)

PROPS = settings(max_examples=40, deadline=None)


def _logits_of(probs: list[list[list[float]]]) -> Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()


class NoiseTable(nn.Module):
    """A stochastic network with explicit noise: each forward call consumes the next rows of a fixed table, so a
    stacked run and a loop over the draws see the same noise exactly when they visit the rows in the same order."""

    def __init__(self, n_rows: int, d_in: int, hidden: int, n_out: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.first = nn.Linear(d_in, hidden).double()
        self.second = nn.Linear(hidden, n_out).double()
        self.noise = torch.randn(n_rows, hidden, generator=g, dtype=torch.float64)
        self.cursor = 0

    def forward(self, x: Tensor) -> Tensor:
        eps = self.noise[self.cursor : self.cursor + x.shape[0]]
        self.cursor += x.shape[0]
        out: Tensor = self.second(torch.tanh(self.first(x)) * (1 + 0.5 * eps))
        return out


class OneWeightPerCall(nn.Module):
    """A layer that draws one weight sample per forward call (as the tutorial's Bayesian linear layer does)."""

    def __init__(self) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return x @ (self.mean + torch.randn_like(self.mean))


# ---------------------------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------------------------

# Two draws per row averaging to (0.85, 0.15), (0.75, 0.25), (0.35, 0.65); labels 0, 1, 1.
HAND_DRAWS = [
    [[0.9, 0.1], [0.7, 0.3], [0.3, 0.7]],
    [[0.8, 0.2], [0.8, 0.2], [0.4, 0.6]],
]
HAND_LABELS = torch.tensor([0, 1, 1])


def test_metrics_of_the_mean_prediction_by_hand(tmp_path: Path) -> None:
    metrics = classification_metrics(class_predictive(_logits_of(HAND_DRAWS)), HAND_LABELS)
    # confidences 0.85, 0.75, 0.65 fall in three different bins of 15 (none on an edge): correct, wrong, correct
    assert metrics.ece == pytest.approx((0.15 + 0.75 + 0.35) / 3, rel=1e-12)
    assert metrics.brier == pytest.approx((2 * 0.15**2 + 2 * 0.75**2 + 2 * 0.35**2) / 3, rel=1e-12)
    assert metrics.nll == pytest.approx(-(math.log(0.85) + math.log(0.25) + math.log(0.65)) / 3, rel=1e-12)
    assert metrics.accuracy == pytest.approx(2 / 3, rel=1e-15)
    assert int(metrics.bins.count.sum()) == 3
    assert len(metrics.bins.count) == 15


def test_one_bin_ece_is_the_gap_between_accuracy_and_mean_confidence() -> None:
    metrics = classification_metrics(class_predictive(_logits_of(HAND_DRAWS)), HAND_LABELS, n_bins=1)
    assert metrics.ece == pytest.approx(abs(2 / 3 - (0.85 + 0.75 + 0.65) / 3), rel=1e-12)


def test_mutual_information_of_two_opposite_draws_by_hand() -> None:
    pred = class_predictive(_logits_of([[[0.9, 0.1]], [[0.1, 0.9]]]))
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert float(pred.predictive_entropy[0]) == pytest.approx(math.log(2), rel=1e-14)
    assert float(pred.expected_entropy[0]) == pytest.approx(h, rel=1e-14)
    assert float(pred.mutual_information[0]) == pytest.approx(math.log(2) - h, rel=1e-12)
    torch.testing.assert_close(pred.probs, torch.tensor([[0.5, 0.5]], dtype=torch.float64), rtol=1e-15, atol=0)


def test_mutual_information_reaches_log_c_for_certain_disagreeing_draws() -> None:
    # draw s puts all its mass on class s: the mean is uniform, every draw has zero entropy, so I = log C
    c = 4
    logits = torch.full((c, 1, c), -math.inf, dtype=torch.float64)
    for s in range(c):
        logits[s, 0, s] = 0.0
    pred = class_predictive(logits)
    assert float(pred.expected_entropy[0]) == 0.0
    assert float(pred.mutual_information[0]) == pytest.approx(math.log(c), rel=1e-15)


def test_ood_auroc_by_hand() -> None:
    # out-scores beat in-scores in 3 of the 4 pairs: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4)
    inside = torch.tensor([0.1, 0.4])
    outside = torch.tensor([0.35, 0.8])
    assert ood_auroc(inside, outside) == pytest.approx(0.75, abs=1e-15)
    # a tie counts one half: 1 of 2 pairs won, 1 tied
    assert ood_auroc(torch.tensor([0.2, 0.5]), torch.tensor([0.5])) == pytest.approx(0.75, abs=1e-15)
    assert ood_auroc(torch.tensor([0.0, 0.1]), torch.tensor([0.2, 0.3])) == 1.0


# ---------------------------------------------------------------------------------------------------------------
# Laws of the decomposition
# ---------------------------------------------------------------------------------------------------------------


@st.composite
def draws(draw: st.DrawFn) -> Tensor:
    s = draw(st.integers(1, 6))
    b = draw(st.integers(1, 4))
    c = draw(st.integers(2, 6))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(s, b, c, generator=g, dtype=torch.float64) * scale


@PROPS
@given(draws())
def test_mutual_information_is_the_entropy_difference_in_zero_to_log_c(logits: Tensor) -> None:
    pred = class_predictive(logits)
    c = logits.shape[-1]
    mi = pred.mutual_information
    assert bool((mi >= 0).all())
    # I <= H[pbar] <= log C; the mean KL is summed in another order than the entropies, so allow rounding
    assert bool((mi <= math.log(c) + 1e-12).all())
    # independently, in NumPy: H[mean p] - mean H[p]
    p = np.exp(logits.numpy() - logits.numpy().max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    pbar = p.mean(0)
    h_mean = -(pbar * np.log(pbar)).sum(-1)
    mean_h = -(p * np.log(p)).sum(-1).mean(0)
    np.testing.assert_allclose(pred.predictive_entropy.numpy(), h_mean, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(pred.expected_entropy.numpy(), mean_h, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(mi.numpy(), h_mean - mean_h, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(pred.probs.numpy(), pbar, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(mutual_information(torch.log_softmax(logits, -1)), mi, rtol=0, atol=0)


@PROPS
@given(draws(), st.integers(1, 7))
def test_identical_draws_have_zero_mutual_information_and_are_their_own_mean(logits: Tensor, s: int) -> None:
    same = logits[:1].expand(s, *logits.shape[1:])
    pred = class_predictive(same)
    lp = torch.log_softmax(logits[0], -1)
    assert bool((pred.mutual_information == 0).all())
    assert torch.equal(pred.log_probs, lp)
    assert torch.equal(predictive_log_probs(torch.log_softmax(same, -1)), lp)
    # the expected entropy averages S equal floats, which may round: equal to a few ulps
    torch.testing.assert_close(pred.predictive_entropy, pred.expected_entropy, rtol=8e-16 * s, atol=0)


def test_gradient_of_the_mutual_information_is_finite() -> None:
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(5, 3, 4, generator=g, dtype=torch.float64) * 20).requires_grad_()
    mi = mutual_information(torch.log_softmax(logits, -1)).sum()
    mi.backward()
    assert logits.grad is not None
    assert bool(torch.isfinite(logits.grad).all())
    assert float(logits.grad.abs().sum()) > 0


def _uncertainties(logits: Tensor) -> Tensor:
    pred = class_predictive(logits)
    return torch.cat([pred.probs.flatten(), pred.predictive_entropy, pred.expected_entropy, pred.mutual_information])


def test_gradients_of_the_predictive_pass_gradcheck() -> None:
    logits = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    assert torch.autograd.gradcheck(_uncertainties, (logits.requires_grad_(),))


@pytest.mark.parametrize("column_all_minus_inf", [True, False])
def test_gradient_at_a_minus_inf_logit_is_that_of_a_vanishing_class(column_all_minus_inf: bool) -> None:
    # a -inf logit is a class of probability 0; a logit of -1e4 has probability exp(-1e4) = 0 in float64 too
    base = [[[0.0, -math.inf, 1.0]], [[2.0, -math.inf if column_all_minus_inf else 0.5, -1.0]]]
    with_inf = torch.tensor(base, dtype=torch.float64, requires_grad=True)
    finite = torch.tensor(base, dtype=torch.float64).nan_to_num(neginf=-1e4).requires_grad_()
    _uncertainties(with_inf).sum().backward()
    _uncertainties(finite).sum().backward()
    assert with_inf.grad is not None
    assert finite.grad is not None
    assert bool(torch.isfinite(with_inf.grad).all())
    torch.testing.assert_close(with_inf.grad, finite.grad, rtol=1e-12, atol=1e-300)


# ---------------------------------------------------------------------------------------------------------------
# Drawing the samples
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_samples", "chunk_rows"), [(1, 4096), (5, 4096), (5, 7), (5, 1), (3, 10)])
def test_stacked_draws_equal_a_loop_over_the_draws(n_samples: int, chunk_rows: int) -> None:
    batch = 10
    x = torch.randn(batch, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    stacked_model = NoiseTable(n_samples * batch, 3, 8, 4)
    looped_model = NoiseTable(n_samples * batch, 3, 8, 4)
    looped_model.load_state_dict(stacked_model.state_dict())
    stacked = sample_outputs(stacked_model, x, n_samples, chunk_rows=chunk_rows)
    by_hand = torch.stack([looped_model(x) for _ in range(n_samples)])
    assert stacked.shape == (n_samples, batch, 4)
    torch.testing.assert_close(stacked, by_hand, rtol=1e-15, atol=1e-15)
    assert stacked_model.cursor == n_samples * batch


def test_looped_draws_equal_a_loop_over_the_draws() -> None:
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    model_a, model_b = NoiseTable(24, 3, 5, 2), NoiseTable(24, 3, 5, 2)
    model_b.load_state_dict(model_a.state_dict())
    looped = sample_outputs(model_a, x, 4, stack=False, chunk_rows=4)
    torch.testing.assert_close(looped, torch.stack([model_b(x) for _ in range(4)]), rtol=1e-15, atol=1e-15)
    model_c = NoiseTable(24, 3, 5, 2)
    model_c.load_state_dict(model_a.state_dict())
    pred = predict_classes(model_c, x, 4, stack=False)
    assert isinstance(pred, ClassPredictive)
    torch.testing.assert_close(pred.log_probs, class_predictive(looped).log_probs, rtol=0, atol=0)


def test_a_model_with_one_weight_draw_per_call_needs_the_loop() -> None:
    torch.manual_seed(0)
    model = OneWeightPerCall()
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match="identical.*stack=False"):
        stacked = sample_outputs(model, x, 4)
    assert torch.equal(stacked[0], stacked[1])  # one forward call, one weight: the copies agree
    looped = sample_outputs(model, x, 4, stack=False)
    assert not torch.equal(looped[0], looped[1])


def test_dropout_in_train_mode_gives_different_draws_per_copy() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4)).double().train()
    x = torch.randn(5, 3, dtype=torch.float64)
    pred = predict_classes(model, x, 16)
    assert bool((pred.mutual_information > 0).all())
    assert model.training
    model.eval()
    with pytest.warns(UserWarning, match="identical.*eval mode"):
        assert bool((predict_classes(model, x, 16, stack=False).mutual_information == 0).all())
    with pytest.warns(UserWarning, match="identical"):
        sample_outputs(model, x, 2)


def test_one_draw_or_different_draws_do_not_warn() -> None:
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 2)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample_outputs(model.eval(), x, 1)
        sample_outputs(model.train(), x, 8)


# ---------------------------------------------------------------------------------------------------------------
# Regression
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_draw_noise", [False, True])
def test_regression_variance_is_mean_of_variances_plus_variance_of_means(per_draw_noise: bool) -> None:
    g = torch.Generator().manual_seed(4)
    means = torch.randn(7, 5, 2, generator=g, dtype=torch.float64) * 3
    noise: Tensor | float = torch.rand(7, 5, 2, generator=g, dtype=torch.float64) + 0.1 if per_draw_noise else 0.7
    pred = regression_predictive(means, noise)
    mu = means.numpy()
    sigma = np.broadcast_to(noise.numpy() if isinstance(noise, Tensor) else noise, mu.shape)
    # the mixture's second moment minus its squared mean (another form of the law of total variance)
    variance = (sigma**2 + mu**2).mean(0) - mu.mean(0) ** 2
    np.testing.assert_allclose(pred.mean.numpy(), mu.mean(0), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(pred.variance.numpy(), variance, rtol=1e-11)
    np.testing.assert_allclose(pred.aleatoric.numpy(), (sigma**2).mean(0), rtol=1e-13)
    np.testing.assert_allclose(pred.epistemic.numpy(), mu.var(0), rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(pred.std.numpy(), np.sqrt(variance), rtol=1e-11)


def test_mixture_nll_against_scipy() -> None:
    g = torch.Generator().manual_seed(6)
    means = torch.randn(4, 6, generator=g, dtype=torch.float64)
    sigma = torch.rand(4, 6, generator=g, dtype=torch.float64) + 0.2
    y = torch.randn(6, generator=g, dtype=torch.float64)
    expected = -np.log(norm.pdf(y.numpy(), means.numpy(), sigma.numpy()).mean(0))
    np.testing.assert_allclose(mixture_nll(means, sigma, y, reduction="none").numpy(), expected, rtol=1e-12)
    assert float(mixture_nll(means, sigma, y)) == pytest.approx(expected.mean(), rel=1e-12)


def test_mixture_nll_of_one_draw_is_the_gaussian_nll() -> None:
    g = torch.Generator().manual_seed(13)
    means = torch.randn(1, 5, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64)
    per_output = mixture_nll(means, 0.6, y, reduction="none")
    torch.testing.assert_close(per_output.sum(1), gaussian_nll(means[0], y, 0.6), rtol=1e-14, atol=0)


def test_mixture_nll_stays_finite_far_in_the_tails() -> None:
    means = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([200.0], dtype=torch.float64)
    value = float(mixture_nll(means, 0.1, y))
    # the nearer component dominates: -log(0.5 N(200; 1, 0.01))
    assert value == pytest.approx(-(norm.logpdf(200.0, 1.0, 0.1) + math.log(0.5)), rel=1e-12)


def test_gradient_of_the_mixture_nll_is_finite() -> None:
    means = torch.tensor([[0.0, 2.0], [1.0, -3.0]], dtype=torch.float64, requires_grad=True)
    log_sigma = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    mixture_nll(means, log_sigma.exp(), torch.tensor([50.0, 0.5], dtype=torch.float64)).backward()
    assert means.grad is not None
    assert bool(torch.isfinite(means.grad).all())
    assert log_sigma.grad is not None
    assert math.isfinite(float(log_sigma.grad))


def test_predict_regression_draws_the_model() -> None:
    model = NoiseTable(30, 2, 4, 1)
    x = torch.randn(10, 2, dtype=torch.float64)
    pred = predict_regression(model, x, 3, 0.5)
    assert pred.mean.shape == (10, 1)
    assert bool((pred.epistemic > 0).all())
    torch.testing.assert_close(pred.aleatoric, torch.full((10, 1), 0.25, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------------
# Figure and bad arguments
# ---------------------------------------------------------------------------------------------------------------


def test_reliability_png_is_written(tmp_path: Path) -> None:
    metrics = classification_metrics(class_predictive(_logits_of(HAND_DRAWS)), HAND_LABELS)
    path = write_reliability_png(metrics, tmp_path, name="bnn")
    assert path == tmp_path / "bnn.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: sample_outputs(nn.Identity(), torch.ones(2, 1), 0), ValueError, "n_samples"),
        (lambda: sample_outputs(nn.Identity(), torch.ones(2, 1), 2.0), TypeError, "n_samples"),  # type: ignore[arg-type]
        (lambda: sample_outputs(nn.Identity(), torch.ones(2, 1), 2, chunk_rows=0), ValueError, "chunk_rows"),
        (lambda: sample_outputs(nn.Identity(), torch.ones(2, 1), 2, stack=1), TypeError, "stack"),  # type: ignore[arg-type]
        (lambda: sample_outputs("model", torch.ones(2, 1), 2), TypeError, "model"),  # type: ignore[arg-type]
        (lambda: sample_outputs(nn.Identity(), torch.ones(0, 1), 2), ValueError, "inputs"),
        (lambda: sample_outputs(nn.Identity(), [1.0], 2), TypeError, "inputs"),  # type: ignore[arg-type]
        (lambda: sample_outputs(lambda x: x[:1], torch.ones(2, 1), 2), ValueError, "model returned"),
        (lambda: class_predictive(torch.ones(3)), ValueError, "logits"),
        (lambda: class_predictive(torch.ones(2, 3, dtype=torch.int64)), TypeError, "logits"),
        (lambda: mutual_information(torch.zeros(2, 0, 3)), ValueError, "log_probs"),
        (lambda: mutual_information(torch.zeros(3)), ValueError, "log_probs"),
        (lambda: mutual_information(torch.zeros(2, 3)), ValueError, "log_probs.*not normalized"),
        (lambda: classification_metrics("p", HAND_LABELS), TypeError, "predictive"),  # type: ignore[arg-type]
        (lambda: regression_predictive(torch.ones(2, 3), -1.0), ValueError, "noise_std"),
        (lambda: regression_predictive(torch.ones(2, 3), torch.ones(4)), ValueError, "noise_std"),
        (lambda: regression_predictive(torch.ones(2, 3), "1"), TypeError, "noise_std"),  # type: ignore[arg-type]
        (lambda: mixture_nll(torch.ones(2, 3), 1.0, torch.ones(4)), ValueError, "targets"),
        (lambda: mixture_nll(torch.ones(2, 3), 1.0, torch.ones(3), reduction="sum"), ValueError, "reduction"),
        (lambda: ood_auroc(torch.ones(2, 2), torch.ones(2)), ValueError, "in_scores"),
        (lambda: ood_auroc(torch.ones(2), torch.tensor([1.0, math.nan])), ValueError, "out_scores"),
        (lambda: ood_auroc(torch.ones(2), [1.0]), TypeError, "out_scores"),  # type: ignore[arg-type]
        (lambda: ood_auroc(torch.ones(0), torch.ones(2)), ValueError, "in_scores"),
    ],
)
def test_bad_arguments_name_the_argument(call: object, error: type[Exception], words: str) -> None:
    assert callable(call)
    with pytest.raises(error, match=words):
        call()


def test_labels_are_checked_by_the_metrics() -> None:
    pred = class_predictive(_logits_of(HAND_DRAWS))
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(pred, torch.tensor([0, 1, 2]))
