"""The Monte Carlo predictive of a stochastic network, its uncertainty decomposition and its metrics.

A stochastic network is any callable ``model(inputs) -> outputs`` whose outputs are random: a Bayesian layer
sampling its weights, dropout in train mode (Gal & Ghahramani 2016). Putting the model in its sampling mode is
the caller's choice (``model.train()`` also updates batch-norm statistics); nothing here changes it. With ``S``
draws ``f_s(x)``:

=====================  ======================================================================================
classification         ``pbar = (1/S) sum_s softmax(f_s(x))``; the log-probabilities averaged in log space:
                       ``log pbar = m + log((1/S) sum_s exp(log p_s - m))``, ``m = max_s log p_s``
predictive entropy     ``H[pbar]`` (total uncertainty)
expected entropy       ``(1/S) sum_s H[p_s]`` (aleatoric)
mutual information     ``H[pbar] - (1/S) sum_s H[p_s] = (1/S) sum_s KL(p_s || pbar)`` (epistemic; BALD,
                       Houlsby et al. 2011), in ``[0, log C]``
regression             a mixture of ``N(mu_s, sigma_s^2)``: mean ``(1/S) sum_s mu_s``, variance
                       ``(1/S) sum_s sigma_s^2 + (1/S) sum_s (mu_s - mean)^2`` (aleatoric + epistemic, the law
                       of total variance); NLL ``-log((1/S) sum_s N(y; mu_s, sigma_s^2))``
=====================  ======================================================================================

The mutual information is computed as the mean KL of each draw to the mixture (non-negative terms, no
cancellation between two entropies, no clamp), so it is exactly 0 when every draw agrees. The NLL, Brier score
and expected calibration error come from :mod:`kldiv.metrics`, the entropies and the KL from
:mod:`kldiv.discrete`, the Gaussian log-density from ``torch.distributions.Normal``.

References: Houlsby, Huszar, Ghahramani & Lengyel (2011), "Bayesian active learning for classification and
preference learning"; Gal & Ghahramani (2016), "Dropout as a Bayesian approximation"; Depeweg et al. (2018),
"Decomposition of uncertainty in Bayesian deep learning"; Kendall & Gal (2017), "What uncertainties do we need
in Bayesian deep learning for computer vision?".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

from kldiv.bayes.objective import float_tensor, gaussian_log_prob, noise_std_like
from kldiv.classify.plots import reliability_figure
from kldiv.discrete import entropy_from_log_probs, kl_from_log_probs
from kldiv.losses.options import check_choice
from kldiv.metrics import CalibrationBins, accuracy, brier_score, calibration_bins, negative_log_likelihood
from kldiv.report import write_pngs

__all__ = [
    "ClassMetrics",
    "ClassPredictive",
    "RegressionPredictive",
    "class_predictive",
    "classification_metrics",
    "mixture_nll",
    "mutual_information",
    "ood_auroc",
    "predict_classes",
    "predict_regression",
    "predictive_log_probs",
    "regression_predictive",
    "sample_outputs",
    "write_reliability_png",
]

Model = Callable[[Tensor], Tensor]
"""A stochastic network: ``model(inputs)`` maps a batch ``(B, ...)`` to one draw of its outputs ``(B, ...)``."""


def _count(name: str, value: object, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {low}, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value}")
    return value


def _shaped_tensor(name: str, x: object, *, min_dim: int, shape: str) -> Tensor:
    x = float_tensor(name, x)
    if x.dim() < min_dim or 0 in x.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {shape} with no empty dimension")
    return x


def sample_outputs(
    model: Model, inputs: Tensor, n_samples: int, *, stack: bool = True, chunk_rows: int = 4096
) -> Tensor:
    """``n_samples`` draws of ``model(inputs)``, stacked as ``(S, B, ...)``, without gradients.

    ``stack=True`` runs the ``S`` copies of the batch through the model together, sample-major (row ``s B + b``
    is input ``b`` of draw ``s``), in forward passes of at most ``chunk_rows`` rows; the copies are gathered per
    chunk, so at most ``chunk_rows`` copied inputs exist at once. It requires a model whose noise is independent
    across the rows of a batch (dropout, a layer with the local reparameterization trick). A layer that draws
    one weight sample per forward call gives ``S`` identical copies that way and needs ``stack=False``: a Python
    loop over the ``S`` draws, each batch in chunks of at most ``chunk_rows`` rows. Both consume the model's
    noise in the same order. Draws identical to rounding (for ``S > 1``) raise a ``UserWarning``: a model left
    in eval mode, or one weight draw per call stacked.
    """
    if not callable(model):
        raise TypeError(f"model must be a callable inputs -> outputs, got {type(model).__name__}")
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise ValueError(f"inputs has shape {tuple(inputs.shape)}; expected (B, ...) with B >= 1 rows")
    s = _count("n_samples", n_samples)
    rows = _count("chunk_rows", chunk_rows)
    if not isinstance(stack, bool):
        raise TypeError(f"stack must be a bool, got {type(stack).__name__}")
    batch = inputs.shape[0]

    def run(x: Tensor) -> Tensor:
        out = model(x)
        if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"model returned {got} for a batch of {x.shape[0]} rows; expected ({x.shape[0]}, ...)")
        return out

    with torch.no_grad():
        if stack:
            total = s * batch
            outs = [
                run(inputs.index_select(0, torch.arange(a, min(a + rows, total), device=inputs.device) % batch))
                for a in range(0, total, rows)
            ]
        else:
            outs = [run(inputs[a : a + rows]) for _ in range(s) for a in range(0, batch, rows)]
    out = torch.cat(outs).reshape(s, batch, *outs[0].shape[1:])
    if s > 1 and out.is_floating_point() and _all_alike(out):
        cause = "or draws its noise once per forward call (pass stack=False)" if stack else "(in eval mode?)"
        warnings.warn(
            f"the {s} draws of the model are identical: it is deterministic {cause}; the predictive has no "
            "epistemic part",
            UserWarning,
            stacklevel=2,
        )
    return out


def _all_alike(draws: Tensor) -> bool:
    """Whether every draw equals the first to ``sqrt(eps)`` of the largest output (rounding differs by the
    position of a row in a batch, so identical draws are not always equal bit for bit)."""
    tol = math.sqrt(torch.finfo(draws.dtype).eps) * float(draws.abs().amax())
    return bool(((draws - draws[:1]).abs() <= tol).all())


def _log_mean_exp(x: Tensor, dim: int) -> Tensor:
    """``log((1/S) sum_s exp(x_s))`` along ``dim`` as ``m + log((1/S) sum_s exp(x_s - m))``, ``m = max_s x_s``.

    Shifting by the maximum keeps it finite; averaging (not ``logsumexp - log S``) makes it exactly ``x`` when
    every ``x_s`` is equal. ``-inf`` where every ``x_s`` is ``-inf`` (with a zero gradient, not NaN).
    """
    m = x.detach().amax(dim, keepdim=True)  # the shift cancels: no gradient flows through it
    some = torch.isfinite(m)
    shift = torch.where(some, m, 0.0)
    mean = torch.exp(x - shift).mean(dim, keepdim=True)
    return torch.where(some, shift + torch.log(torch.where(some, mean, 1.0)), m).squeeze(dim)


def _sample_log_probs(log_probs: object) -> Tensor:
    return _shaped_tensor("log_probs", log_probs, min_dim=2, shape="(S, ..., C): the draws first, the classes last")


def predictive_log_probs(log_probs: Tensor) -> Tensor:
    """``log pbar`` ``(..., C)``: the log of the mean of the ``S`` draws' probabilities, from their
    log-probabilities ``(S, ..., C)`` (see the module docstring); exactly the draw when all ``S`` agree."""
    return _log_mean_exp(_sample_log_probs(log_probs), 0)


def mutual_information(log_probs: Tensor) -> Tensor:
    """``I = H[pbar] - (1/S) sum_s H[p_s] = (1/S) sum_s KL(p_s || pbar)`` ``(...)``, the BALD score, from the
    draws' log-probabilities ``(S, ..., C)``.

    The mean KL form (:func:`kldiv.kl_from_log_probs`) sums non-negative terms: ``I >= 0``, exactly 0 for
    identical draws, and ``I <= H[pbar] <= log C``. Reference: Houlsby et al. (2011), eq. 3.
    """
    lp = _sample_log_probs(log_probs)
    try:
        return _mean_kl_to_mixture(lp, _log_mean_exp(lp, 0))
    except ValueError as err:
        raise ValueError(f"log_probs (the draws' log-probabilities, read as log_p): {err}") from None


def _mean_kl_to_mixture(log_probs: Tensor, log_pbar: Tensor) -> Tensor:
    return kl_from_log_probs(log_probs, log_pbar.unsqueeze(0)).mean(0)


@dataclass(frozen=True)
class ClassPredictive:
    """The Monte Carlo predictive of a classifier: ``log_probs`` ``(B, C)``, the log of the mean probabilities;
    per row ``(B,)``: ``predictive_entropy`` ``H[pbar]``, ``expected_entropy`` ``(1/S) sum_s H[p_s]`` and
    ``mutual_information`` (their difference, computed as a mean KL). float64, nats."""

    log_probs: Tensor
    predictive_entropy: Tensor
    expected_entropy: Tensor
    mutual_information: Tensor

    @property
    def probs(self) -> Tensor:
        """``pbar`` ``(B, C)``, the mean of the draws' probabilities."""
        return self.log_probs.exp()


def class_predictive(logits: Tensor) -> ClassPredictive:
    """The predictive and its uncertainty decomposition from ``S`` draws of logits ``(S, ..., C)``, in float64."""
    lp = torch.log_softmax(_shaped_tensor("logits", logits, min_dim=2, shape="(S, ..., C)").double(), -1)
    log_pbar = _log_mean_exp(lp, 0)
    return ClassPredictive(
        log_probs=log_pbar,
        predictive_entropy=entropy_from_log_probs(log_pbar),
        expected_entropy=entropy_from_log_probs(lp).mean(0),
        mutual_information=_mean_kl_to_mixture(lp, log_pbar),
    )


def predict_classes(
    model: Model, inputs: Tensor, n_samples: int, *, stack: bool = True, chunk_rows: int = 4096
) -> ClassPredictive:
    """:func:`class_predictive` of ``n_samples`` draws of the logits ``model(inputs)`` (:func:`sample_outputs`)."""
    return class_predictive(sample_outputs(model, inputs, n_samples, stack=stack, chunk_rows=chunk_rows))


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of a :class:`ClassPredictive` on labelled rows: accuracy, NLL (nats per row), Brier score, ECE with
    its reliability bins, and the batch means of the three uncertainties (nats)."""

    accuracy: float
    nll: float
    brier: float
    ece: float
    predictive_entropy: float
    expected_entropy: float
    mutual_information: float
    bins: CalibrationBins


def classification_metrics(predictive: ClassPredictive, labels: Tensor, *, n_bins: int = 15) -> ClassMetrics:
    """Accuracy, NLL, Brier score and ECE (``n_bins`` equal-width bins) of the predictive ``pbar`` by
    :mod:`kldiv.metrics`, and the mean uncertainties."""
    if not isinstance(predictive, ClassPredictive):
        raise TypeError(f"predictive must be a ClassPredictive, got {type(predictive).__name__}")
    probs = predictive.probs
    bins = calibration_bins(probs, labels, n_bins=n_bins)
    return ClassMetrics(
        accuracy=float(accuracy(predictive.log_probs, labels)),
        nll=float(negative_log_likelihood(predictive.log_probs, labels, kind="log_probs")),
        brier=float(brier_score(probs, labels)),
        ece=float(bins.ece),
        predictive_entropy=float(predictive.predictive_entropy.mean()),
        expected_entropy=float(predictive.expected_entropy.mean()),
        mutual_information=float(predictive.mutual_information.mean()),
        bins=bins,
    )


def write_reliability_png(
    metrics: ClassMetrics, out_dir: Path, *, name: str = "reliability", title: str = "predictive"
) -> Path:
    """The reliability diagram of ``metrics.bins`` as ``out_dir/<name>.png``."""
    return write_pngs({name: reliability_figure(metrics.bins, title=title)}, Path(out_dir))[0]


@dataclass(frozen=True)
class RegressionPredictive:
    """The predictive mixture of ``S`` Gaussians, per output ``(B, ...)``: ``mean``, ``aleatoric`` (the mean of
    the noise variances), ``epistemic`` (the variance of the means, ``1/S``), ``variance`` (their sum) and
    ``std``."""

    mean: Tensor
    aleatoric: Tensor
    epistemic: Tensor

    @property
    def variance(self) -> Tensor:
        return self.aleatoric + self.epistemic

    @property
    def std(self) -> Tensor:
        return self.variance.sqrt()


def regression_predictive(means: Tensor, noise_std: Tensor | float) -> RegressionPredictive:
    """The mean and the variance split ``(1/S) sum_s sigma_s^2 + (1/S) sum_s (mu_s - mean)^2`` of the mixture of
    ``N(mu_s, sigma_s^2)``, from the draws' ``means`` ``(S, B, ...)`` and ``noise_std`` (a float, or a tensor
    broadcastable to ``means``: homoscedastic or per draw and point). Reference: the law of total variance."""
    mu = _shaped_tensor("means", means, min_dim=2, shape="(S, B, ...)")
    std = noise_std_like(noise_std, mu)
    return RegressionPredictive(mean=mu.mean(0), aleatoric=std.square().mean(0), epistemic=mu.var(0, correction=0))


def mixture_nll(
    means: Tensor, noise_std: Tensor | float, targets: Tensor, *, reduction: Literal["mean", "none"] = "mean"
) -> Tensor:
    """``-log((1/S) sum_s N(y; mu_s, sigma_s^2))`` per output, by log-mean-exp over the draws of
    ``Normal(mu_s, sigma_s).log_prob(y)``: the NLL of the predictive mixture. ``means`` ``(S, B, ...)``,
    ``targets`` ``(B, ...)``; each output coordinate is scored by its own mixture. ``reduction="mean"`` averages
    over every output, ``"none"`` keeps ``(B, ...)``."""
    check_choice("reduction", reduction, ("mean", "none"))
    mu = _shaped_tensor("means", means, min_dim=2, shape="(S, B, ...)")
    y = _shaped_tensor("targets", targets, min_dim=1, shape="(B, ...)")
    if y.shape != mu.shape[1:]:
        raise ValueError(f"targets has shape {tuple(y.shape)}; expected {tuple(mu.shape[1:])}, the means' without S")
    log_density = gaussian_log_prob(mu, noise_std_like(noise_std, mu), y.to(mu.dtype).unsqueeze(0))
    nll = -_log_mean_exp(log_density, 0)
    return nll.mean() if reduction == "mean" else nll


def predict_regression(
    model: Model,
    inputs: Tensor,
    n_samples: int,
    noise_std: Tensor | float,
    *,
    stack: bool = True,
    chunk_rows: int = 4096,
) -> RegressionPredictive:
    """:func:`regression_predictive` of ``n_samples`` draws of the means ``model(inputs)`` (:func:`sample_outputs`)."""
    means = sample_outputs(model, inputs, n_samples, stack=stack, chunk_rows=chunk_rows)
    return regression_predictive(means, noise_std)


def ood_auroc(in_scores: Tensor, out_scores: Tensor) -> float:
    """The area under the ROC curve of a score that should be higher on out-of-distribution inputs: the
    probability that a random OOD score exceeds a random in-distribution one (ties count 1/2), by
    ``sklearn.metrics.roc_auc_score``. 1: perfect separation, 0.5: none. Use e.g. the predictive entropy or the
    mutual information as the score."""
    parts = []
    for name, x in (("in_scores", in_scores), ("out_scores", out_scores)):
        v = _shaped_tensor(name, x, min_dim=1, shape="(N,)")
        if v.dim() != 1:
            raise ValueError(f"{name} has shape {tuple(v.shape)}; expected (N,), one score per input")
        if not bool(torch.isfinite(v).all()):
            i = int((~torch.isfinite(v)).nonzero()[0, 0])
            raise ValueError(f"{name} holds {float(v[i])} at index {i}; scores must be finite")
        parts.append(v.detach().double().cpu())
    scores = torch.cat(parts).numpy()
    is_out = [0] * parts[0].shape[0] + [1] * parts[1].shape[0]
    return float(roc_auc_score(is_out, scores))
