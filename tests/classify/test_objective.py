"""The regularized loss against float64 computations written out independently, and the evaluation's metrics
against NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kldiv.classify.model import build_model
from kldiv.classify.objective import evaluate, predict_logits, regularized_loss


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(16, 10, generator=g, dtype=torch.float64) * 2, torch.randint(0, 10, (16,), generator=g)


def _probs(logits: torch.Tensor) -> np.ndarray:
    x = logits.numpy()
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)  # type: ignore[no-any-return]


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    p = _probs(logits)
    return float(-np.mean(np.log(p[np.arange(len(p)), labels.numpy()])))


def test_no_regularizer_is_the_cross_entropy(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = batch
    terms = regularized_loss(logits, labels, reg="none")
    assert float(terms.total) == pytest.approx(_ce(logits, labels), rel=1e-12)
    assert float(terms.regularizer) == 0.0


def test_kl_uniform_is_beta_times_kl_of_the_batch_average_to_uniform(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = batch
    pbar = _probs(logits).mean(0)
    expected = 0.3 * float(np.sum(pbar * np.log(pbar * 10)))
    terms = regularized_loss(logits, labels, reg="kl-uniform", beta=0.3)
    assert float(terms.regularizer) == pytest.approx(expected, rel=1e-10)
    assert float(terms.total) == pytest.approx(_ce(logits, labels) + expected, rel=1e-12)


def test_kl_target_is_beta_times_the_mean_kl_from_the_target(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = batch
    t = np.array([0.3, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.0])
    p = _probs(logits)
    inner = np.where(t > 0, t * np.log(np.where(t > 0, t, 1.0) / p), 0.0)  # 0 log 0 = 0
    expected = 2.0 * float(np.mean(inner.sum(-1)))
    terms = regularized_loss(logits, labels, reg="kl-target", beta=2.0, target=torch.tensor(t))
    assert float(terms.regularizer) == pytest.approx(expected, rel=1e-10)


def test_confidence_is_minus_beta_times_the_mean_entropy(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = batch
    p = _probs(logits)
    expected = -0.5 * float(np.mean(-(p * np.log(p)).sum(-1)))
    terms = regularized_loss(logits, labels, reg="confidence", beta=0.5)
    assert float(terms.regularizer) == pytest.approx(expected, rel=1e-10)


def test_label_smoothing_mixes_the_label_and_uniform_cross_entropies(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = batch
    log_p = np.log(_probs(logits))
    hard = -log_p[np.arange(16), labels.numpy()]
    uniform = -log_p.mean(-1)
    expected = float(np.mean(0.8 * hard + 0.2 * uniform))
    terms = regularized_loss(logits, labels, reg="label-smoothing", eps=0.2)
    assert float(terms.total) == pytest.approx(expected, rel=1e-12)
    assert float(terms.cross_entropy + terms.regularizer) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("reg", ["none", "kl-uniform", "kl-target", "confidence", "label-smoothing"])
def test_gradients_are_finite(reg: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = batch
    logits = logits.clone().requires_grad_()
    target = torch.full((10,), 0.1, dtype=torch.float64)
    regularized_loss(logits, labels, reg=reg, beta=0.5, target=target, eps=0.1).total.backward()  # type: ignore[no-untyped-call]
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()


def test_bad_regularizer_and_missing_target_are_named(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = batch
    with pytest.raises(ValueError, match="reg must be one of"):
        regularized_loss(logits, labels, reg="mixup")
    with pytest.raises(ValueError, match="needs target"):
        regularized_loss(logits, labels, reg="kl-target", beta=1.0)


def test_evaluate_matches_metrics_written_out_in_numpy() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8))
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(50, 1, 8, 8, generator=g), torch.randint(0, 10, (50,), generator=g)
    ev = evaluate(model, x, y, batch_size=7, n_bins=5)
    logits = predict_logits(model, x, batch_size=50).double()
    p = _probs(logits)
    labels = y.numpy()
    assert ev.accuracy == pytest.approx(float(np.mean(p.argmax(-1) == labels)), abs=0)
    assert ev.nll == pytest.approx(float(-np.mean(np.log(p[np.arange(50), labels]))), rel=1e-6)
    onehot = np.eye(10)[labels]
    assert ev.brier == pytest.approx(float(np.mean(((p - onehot) ** 2).sum(-1))), rel=1e-6)
    confidence, correct = p.max(-1), (p.argmax(-1) == labels)
    ece = 0.0
    for m in range(5):
        inside = (confidence > m / 5) & (confidence <= (m + 1) / 5)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    assert ev.ece == pytest.approx(ece, rel=1e-6, abs=1e-12)
    assert int(ev.bins.count.sum()) == 50
    assert math.isfinite(ev.nll)


def test_evaluate_refuses_no_images() -> None:
    model = build_model("mlp", (1, 8, 8))
    with pytest.raises(ValueError, match="no image"):
        evaluate(model, torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64))
