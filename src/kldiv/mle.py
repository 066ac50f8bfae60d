"""Maximum likelihood is KL minimization, measured at every step of gradient descent.

For samples ``x_1..x_n`` with empirical distribution ``P_n`` and a model ``Q``, the mean negative log-likelihood is

    NLL(Q) = -(1/n) sum_i log q(x_i) = -sum_x P_n(x) log q(x) = H(P_n, Q) = H(P_n) + KL(P_n || Q),

so lowering the NLL lowers ``KL(P_n || Q)`` by exactly the same amount; ``H(P_n)`` does not depend on the model.
Reference: Cover & Thomas (2006), *Elements of Information Theory*, Theorem 11.1.2 (the probability of a sequence
from its type).

Two fits show it, each by plain gradient descent on the NLL, logging at every step the NLL, a KL computed by
kldiv and ``NLL - H``:

- :func:`fit_categorical`: a softmax over free logits fitted to draws from a discrete source (by default the Zipf
  law :func:`zipf_probs`, K = 10). Here ``P_data`` is ``P_n`` itself, so ``KL(P_n || Q) = NLL - H(P_n)`` holds
  exactly (to float64 rounding) at every step.
- :func:`fit_gaussian`: a Normal with free mean and log-std fitted to draws from a known Normal ``P``. ``P_n``
  has no density, so the KL logged is the population one, ``KL(P || Q)`` in closed form, and the entropy is
  ``H(P)``. The sample NLL is the sample mean of ``-log q(x_i)``, whose expectation is
  ``H(P, Q) = H(P) + KL(P || Q)``: ``NLL - H(P)`` equals ``KL(P || Q)`` only up to sampling error, one standard
  error being ``sd(-log q(x_i)) / sqrt(n)`` (logged as ``nll_se``). Along the fit the parameters depend on the
  samples, which adds a bias of order ``1/n`` (``NLL`` at the MLE is optimistic), far below the standard error
  ``~1/sqrt(n)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.distributions import Distribution, Normal

from kldiv.discrete import entropy, kl_from_log_probs
from kldiv.distributions.gaussian import kl_normal
from kldiv.runs import TrainingDivergedError
from kldiv.runs import options as check

__all__ = [
    "CATEGORICAL_LR",
    "GAUSSIAN_LR",
    "MODELS",
    "CategoricalFit",
    "GaussianFit",
    "MLEConfig",
    "Trace",
    "categorical_kl_bound",
    "categorical_nll",
    "empirical_distribution",
    "fit_categorical",
    "fit_gaussian",
    "gaussian_nll_terms",
    "run_categorical",
    "run_gaussian",
    "sample_categorical",
    "zipf_probs",
]

F64 = torch.float64
MODELS = ("categorical", "gaussian")

CATEGORICAL_LR = 2.0
"""The categorical's default step: ``1/L`` for the smoothness constant ``L = 1/2`` of the softmax NLL in the
logits (its Hessian ``diag(q) - q q^T`` is at most ``(I - 11^T/K) / 2``, Böhning (1992), "Multinomial logistic
regression algorithm"), the largest step with the guarantee of :func:`categorical_kl_bound`."""

GAUSSIAN_LR = 0.5
"""The Gaussian's default step: at the MLE the NLL's curvature in ``log std`` is 2, so a step of 1/2 is Newton's
step in that coordinate (a step of 1 or more would oscillate there without converging)."""


# ---------------------------------------------------------------------------------------------------- sources


def zipf_probs(categories: int, exponent: float = 1.0) -> Tensor:
    """The Zipf law on ``K`` categories: ``p_k = k^(-s) / sum_j j^(-s)``, ``k = 1..K`` (float64).

    Reference: Zipf (1949), *Human Behavior and the Principle of Least Effort*; the finite form as in Newman
    (2005), "Power laws, Pareto distributions and Zipf's law". ``s = 0`` is uniform; larger ``s`` is more skewed.
    """
    k = check.integer("categories", categories, low=2)
    s = check.number("exponent", exponent, low=0.0)
    weights = torch.arange(1, k + 1, dtype=F64).pow(-s)
    return weights / weights.sum()


def sample_categorical(probs: Tensor, samples: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``samples`` independent draws (int64 category indices) from the probability vector ``probs``."""
    n = check.integer("samples", samples, low=1)
    p = _probability_vector(probs)
    return torch.multinomial(p, n, replacement=True, generator=generator)


def empirical_distribution(samples: Tensor, categories: int) -> Tensor:
    """``P_n(k) = #{i : x_i = k} / n`` for integer samples in ``[0, K)`` (float64)."""
    k = check.integer("categories", categories, low=2)
    x = _category_samples(samples, k)
    return torch.bincount(x, minlength=k).to(F64) / x.numel()


# ---------------------------------------------------------------------------------------------------- checks


def _probability_vector(probs: Tensor) -> Tensor:
    if not isinstance(probs, Tensor):
        raise TypeError(f"probs must be a torch.Tensor, got {type(probs).__name__}")
    if probs.dim() != 1 or probs.numel() < 2:
        raise ValueError(f"probs must be a vector of K >= 2 probabilities, got shape {tuple(probs.shape)}")
    p = probs.to(F64)
    bad = ~(torch.isfinite(p) & (p >= 0))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"probs must be finite and >= 0, got {p[i].item()!r} at index {i}")
    if abs(float(p.sum()) - 1.0) > 1e-9:
        raise ValueError(f"probs must sum to 1, got a sum of {float(p.sum())!r}")
    return p


def _category_samples(samples: Tensor, categories: int) -> Tensor:
    if not isinstance(samples, Tensor):
        raise TypeError(f"samples must be a torch.Tensor of category indices, got {type(samples).__name__}")
    if samples.dtype.is_floating_point or samples.dtype.is_complex or samples.dtype == torch.bool:
        raise TypeError(f"samples must hold integer category indices, got dtype {samples.dtype}")
    if samples.dim() != 1 or samples.numel() < 1:
        raise ValueError(f"samples must be a non-empty vector, got shape {tuple(samples.shape)}")
    bad = (samples < 0) | (samples >= categories)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"samples must be categories in [0, {categories}), got {samples[i].item()} at index {i}")
    return samples.long()


def _real_samples(samples: Tensor) -> Tensor:
    if not isinstance(samples, Tensor):
        raise TypeError(f"samples must be a torch.Tensor of real numbers, got {type(samples).__name__}")
    if not samples.dtype.is_floating_point:
        raise TypeError(f"samples must be a floating-point tensor, got dtype {samples.dtype}")
    if samples.dim() != 1 or samples.numel() < 2:
        raise ValueError(f"samples must be a vector of at least 2 values, got shape {tuple(samples.shape)}")
    x = samples.to(F64)
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"samples must be finite, got {x[i].item()!r} at index {i}")
    return x


# ---------------------------------------------------------------------------------------------------- NLLs


def categorical_nll(logits: Tensor, samples: Tensor) -> Tensor:
    """The mean negative log-likelihood ``-(1/n) sum_i log softmax(logits)[x_i]`` of category samples."""
    return -torch.log_softmax(logits, -1).index_select(-1, samples).mean()


def gaussian_nll_terms(mean: Tensor, log_std: Tensor, samples: Tensor) -> Tensor:
    """``-log N(x_i; mean, exp(log_std)^2)`` per sample (torch's Normal log-density)."""
    model: Distribution = Normal(mean, log_std.exp(), validate_args=False)
    return -model.log_prob(samples)


# ---------------------------------------------------------------------------------------------------- the fits


@dataclass(frozen=True)
class Trace:
    """What a fit logged, one entry per step ``t = 0..steps`` (the parameters after ``t`` updates).

    ``entropy`` is the model-free term subtracted from the NLL (``H(P_n)`` or ``H(P)``); ``kl`` is
    ``KL(P_data || Q_t)`` computed by kldiv; ``nll_se`` the standard error of the NLL as an estimate of
    ``H(P, Q_t)`` (Gaussian only); ``grad_norm`` the Euclidean norm of the NLL's gradient.
    """

    model: str
    nll: npt.NDArray[np.float64]
    entropy: float
    kl: npt.NDArray[np.float64]
    grad_norm: npt.NDArray[np.float64]
    nll_se: npt.NDArray[np.float64] | None = None

    @property
    def steps(self) -> int:
        """The number of gradient steps taken (one fewer than the logged entries)."""
        return len(self.nll) - 1

    @property
    def nll_minus_entropy(self) -> npt.NDArray[np.float64]:
        """``NLL - H`` per step."""
        return self.nll - self.entropy

    @property
    def gap(self) -> npt.NDArray[np.float64]:
        """``KL - (NLL - H)`` per step: rounding for the categorical, sampling error for the Gaussian."""
        return self.kl - self.nll_minus_entropy

    @property
    def max_gap(self) -> float:
        """``max_t |KL_t - (NLL_t - H)|``."""
        return float(np.abs(self.gap).max())

    @property
    def max_gap_in_standard_errors(self) -> float | None:
        """``max_t |KL_t - (NLL_t - H)| / SE_t`` (Gaussian only; None without standard errors)."""
        return None if self.nll_se is None else float((np.abs(self.gap) / self.nll_se).max())

    def rows(self) -> list[dict[str, object]]:
        """One dict per step (for a CSV)."""
        out: list[dict[str, object]] = []
        for t in range(len(self.nll)):
            row: dict[str, object] = {
                "model": self.model,
                "step": t,
                "nll": float(self.nll[t]),
                "entropy": self.entropy,
                "kl": float(self.kl[t]),
                "nll_minus_entropy": float(self.nll_minus_entropy[t]),
                "gap": float(self.gap[t]),
                "grad_norm": float(self.grad_norm[t]),
            }
            if self.nll_se is not None:
                row["nll_se"] = float(self.nll_se[t])
            out.append(row)
        return out


@dataclass(frozen=True)
class CategoricalFit:
    """A softmax model fitted to category samples: the initial and final logits, ``P_n`` and the trace."""

    init_logits: Tensor
    logits: Tensor
    empirical: Tensor
    trace: Trace

    @property
    def probs(self) -> Tensor:
        """The fitted model's probabilities ``softmax(logits)``."""
        return torch.softmax(self.logits, -1)


@dataclass(frozen=True)
class GaussianFit:
    """A Normal fitted to real samples: the final mean and standard deviation, the source and the trace."""

    mean: float
    std: float
    source_mean: float
    source_std: float
    trace: Trace


@dataclass(frozen=True)
class _Path:
    """The parameters after each of ``t = 0..steps`` updates (stacked along dim 0), the NLL there and the norm of
    its gradient."""

    params: tuple[Tensor, ...]
    nll: npt.NDArray[np.float64]
    grad_norm: npt.NDArray[np.float64]


def _descend(
    params: tuple[Tensor, ...], nll_fn: Callable[[tuple[Tensor, ...]], Tensor], *, steps: int, lr: float
) -> _Path:
    """Gradient descent ``theta <- theta - lr grad NLL(theta)`` for ``steps`` updates, recording every iterate.

    A non-finite NLL or gradient raises :class:`~kldiv.runs.TrainingDivergedError` naming the step."""
    theta = tuple(p.detach().to(F64).clone().requires_grad_(True) for p in params)
    history: list[tuple[Tensor, ...]] = []
    nll = np.empty(steps + 1)
    norms = np.empty(steps + 1)
    for t in range(steps + 1):
        value = nll_fn(theta)
        grads = torch.autograd.grad(value, theta)
        nll[t] = float(value.detach())
        norms[t] = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        if not (math.isfinite(nll[t]) and math.isfinite(norms[t])):
            raise TrainingDivergedError(
                f"gradient descent diverged at step {t} (NLL {nll[t]}, gradient norm {norms[t]}) with the step "
                f"size lr = {lr:g}; use a smaller one"
            )
        history.append(tuple(p.detach().clone() for p in theta))
        if t < steps:
            with torch.no_grad():
                for p, g in zip(theta, grads, strict=True):
                    p.sub_(lr * g)
    stacked = tuple(torch.stack(column) for column in zip(*history, strict=True))
    return _Path(stacked, nll, norms)


def fit_categorical(
    samples: Tensor,
    categories: int,
    *,
    steps: int = 200,
    lr: float = CATEGORICAL_LR,
    init_logits: Tensor | None = None,
) -> CategoricalFit:
    """Fit ``Q = softmax(theta)`` to category samples by gradient descent on the mean NLL.

    Logs, at every step, the NLL on the samples (:func:`categorical_nll`), ``KL(P_n || Q)`` by
    :func:`kldiv.kl_from_log_probs` and ``H(P_n)`` by :func:`kldiv.entropy`; ``NLL - H(P_n) = KL(P_n || Q)``
    exactly (module docstring). The MLE is ``Q = P_n`` (logits ``log P_n`` up to a constant; at -inf for an
    unobserved category). ``init_logits`` defaults to zeros (the uniform model).
    """
    k = check.integer("categories", categories, low=2)
    n_steps = check.integer("steps", steps, low=1)
    rate = check.number("lr", lr, low=0.0, low_open=True)
    x = _category_samples(samples, k)
    if init_logits is None:
        theta0 = torch.zeros(k, dtype=F64)
    else:
        if not isinstance(init_logits, Tensor) or tuple(init_logits.shape) != (k,):
            got = tuple(init_logits.shape) if isinstance(init_logits, Tensor) else type(init_logits).__name__
            raise ValueError(f"init_logits must be a tensor of shape ({k},), got {got}")
        if not bool(torch.isfinite(init_logits).all()):
            raise ValueError("init_logits must be finite")
        theta0 = init_logits.to(F64)
    path = _descend((theta0,), lambda th: categorical_nll(th[0], x), steps=n_steps, lr=rate)
    (logits,) = path.params
    p_n = empirical_distribution(x, k)
    kl = kl_from_log_probs(torch.log(p_n).expand_as(logits), torch.log_softmax(logits, -1))
    trace = Trace("categorical", path.nll, float(entropy(p_n)), kl.numpy(), path.grad_norm)
    return CategoricalFit(init_logits=theta0, logits=logits[-1], empirical=p_n, trace=trace)


def fit_gaussian(
    samples: Tensor,
    *,
    source_mean: float,
    source_std: float,
    steps: int = 200,
    lr: float = GAUSSIAN_LR,
    init_mean: float = 0.0,
    init_std: float = 1.0,
) -> GaussianFit:
    """Fit ``Q = N(mu, exp(log_std)^2)`` to real samples from ``P = N(source_mean, source_std^2)`` by gradient
    descent on the mean NLL.

    Logs, at every step, the NLL on the samples, its standard error ``sd_i(-log q(x_i)) / sqrt(n)``, the
    population ``KL(P || Q)`` by :func:`kldiv.kl_normal` and ``H(P) = log(source_std sqrt(2 pi e))`` (torch's
    Normal entropy). ``NLL - H(P)`` tracks ``KL(P || Q)`` up to sampling error (module docstring).
    The MLE is the sample mean and the biased sample standard deviation ``sqrt(mean((x - mean(x))^2))``
    (Bishop (2006), *Pattern Recognition and Machine Learning*, §2.3.4).
    """
    x = _real_samples(samples)
    m = check.number("source_mean", source_mean)
    s = check.number("source_std", source_std, low=0.0, low_open=True)
    n_steps = check.integer("steps", steps, low=1)
    rate = check.number("lr", lr, low=0.0, low_open=True)
    mu0 = check.number("init_mean", init_mean)
    sd0 = check.number("init_std", init_std, low=0.0, low_open=True)
    theta0 = (torch.tensor(mu0, dtype=F64), torch.tensor(math.log(sd0), dtype=F64))
    path = _descend(theta0, lambda th: gaussian_nll_terms(th[0], th[1], x).mean(), steps=n_steps, lr=rate)
    mean, log_std = path.params
    src_mean, src_std = torch.tensor(m, dtype=F64), torch.tensor(s, dtype=F64)
    terms = gaussian_nll_terms(mean.unsqueeze(-1), log_std.unsqueeze(-1), x)
    se = terms.std(-1) / math.sqrt(x.numel())
    kl = kl_normal(src_mean, src_std, mean, log_std.exp())
    source: Distribution = Normal(src_mean, src_std)
    h = float(source.entropy())
    trace = Trace("gaussian", path.nll, h, np.asarray(kl), path.grad_norm, se.numpy())
    return GaussianFit(float(mean[-1]), float(log_std[-1].exp()), m, s, trace)


# ---------------------------------------------------------------------------------------------------- the demo


@dataclass(frozen=True)
class MLEConfig:
    """The demonstration's settings: the sources, the sample size and the descent (``lr=None``: each model's
    default, :data:`CATEGORICAL_LR` and :data:`GAUSSIAN_LR`)."""

    steps: int = 200
    lr: float | None = None
    samples: int = 1000
    seed: int = 0
    categories: int = 10
    zipf_exponent: float = 1.0
    source_mean: float = 1.0
    source_std: float = 1.5

    def __post_init__(self) -> None:
        check.integer("steps", self.steps, low=1, high=1_000_000)
        if self.lr is not None:
            check.number("lr", self.lr, low=0.0, low_open=True)
        check.integer("samples", self.samples, low=2, high=10_000_000)
        check.seed("seed", self.seed)
        check.integer("categories", self.categories, low=2, high=100_000)
        check.number("zipf_exponent", self.zipf_exponent, low=0.0)
        check.number("source_mean", self.source_mean)
        check.number("source_std", self.source_std, low=0.0, low_open=True)


def run_categorical(config: MLEConfig) -> CategoricalFit:
    """Draw ``config.samples`` categories from the Zipf source (seeded) and fit the softmax model."""
    probs = zipf_probs(config.categories, config.zipf_exponent)
    x = sample_categorical(probs, config.samples, generator=torch.Generator().manual_seed(config.seed))
    lr = CATEGORICAL_LR if config.lr is None else config.lr
    return fit_categorical(x, config.categories, steps=config.steps, lr=lr)


def run_gaussian(config: MLEConfig) -> GaussianFit:
    """Draw ``config.samples`` values from ``N(source_mean, source_std^2)`` (seeded) and fit a Normal."""
    g = torch.Generator().manual_seed(config.seed)
    x = config.source_mean + config.source_std * torch.randn(config.samples, generator=g, dtype=F64)
    lr = GAUSSIAN_LR if config.lr is None else config.lr
    return fit_gaussian(x, source_mean=config.source_mean, source_std=config.source_std, steps=config.steps, lr=lr)


def categorical_kl_bound(fit: CategoricalFit, lr: float) -> float:
    """An upper bound on the final ``KL(P_n || Q_T)`` of a fit with step ``lr <= 2`` when every category was
    observed: ``KL_T <= ||theta* - theta_0||^2 / (2 lr T)``.

    The NLL is convex and 1/2-smooth in the logits (:data:`CATEGORICAL_LR`), ``KL_T = NLL_T - min NLL``, and
    gradient descent with step ``lr <= 1/L`` satisfies ``f(theta_T) - f* <= ||theta_0 - theta*||^2 / (2 lr T)``
    (Garrigos & Gower (2023), "Handbook of convergence theorems for (stochastic) gradient methods", Thm 3.4).
    Every gradient sums to 0, so the iterates keep the mean of ``theta_0``; the minimizer they approach is
    ``theta* = log P_n`` shifted to that mean.
    """
    rate = check.number("lr", lr, low=0.0, low_open=True, high=2.0)
    if bool((fit.empirical == 0).any()):
        raise ValueError("the bound needs every category observed (the MLE is at infinity otherwise)")
    target = torch.log(fit.empirical)
    distance = (target - target.mean()) - (fit.init_logits - fit.init_logits.mean())
    return float(distance.pow(2).sum()) / (2.0 * rate * fit.trace.steps)
