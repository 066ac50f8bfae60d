"""The negative ELBO of a Bayesian network, per training example, and its likelihoods.

With ``N`` training examples, a variational posterior ``q(w)`` and a prior ``p(w)``, the negative ELBO
(Graves 2011; Blundell et al. 2015, eq. 1-2) is

    -ELBO = sum_{i=1..N} E_q[-log p(y_i | x_i, w)] + KL(q || p).

Convention: the loss of a minibatch ``b`` of ``B`` examples is the negative ELBO per training example,

    loss_b = (1/B) sum_{i in b} NLL_i + beta KL(q || p) / N,

with ``NLL_i = -log p(y_i | x_i, w)`` at one draw of ``w`` (the reparameterized Monte Carlo estimate) and the
KL weight ``beta`` (1 for the ELBO; a schedule of :mod:`kldiv.schedules` for KL annealing, ``beta =
schedule(step)``). For a batch drawn uniformly, ``loss_b`` is an unbiased estimate of ``-ELBO / N`` at
``beta = 1``; over an epoch whose batches partition the data, ``sum_b (B_b / N) loss_b = -ELBO / N`` exactly
(for equal batches: the mean of the batch losses), value and gradient, for the same ``w``. Its scale does not
depend on ``B`` or ``N``, so a learning rate carries over between data sets, and the NLL part reads as nats per
example.

Blundell et al.'s minibatch weighting ``F_b = pi_b KL + sum_{i in b} NLL_i`` with ``sum_b pi_b = 1`` (their
eq. 8-9) is this loss times ``B`` with ``beta = M pi_b`` (``M = N / B`` batches); their uniform ``pi_b = 1/M`` is
``beta = 1``.

Likelihoods: categorical, ``NLL_i = -log softmax(f(x_i))_{y_i}`` (``torch.nn.functional.cross_entropy``);
Gaussian with a homoscedastic noise std ``sigma``, fixed or learned, ``NLL_i = -sum_d log N(y_id; f_d(x_i),
sigma^2)`` (``torch.distributions.Normal.log_prob``).

References: Graves (2011), "Practical variational inference for neural networks"; Blundell, Cornebise,
Kavukcuoglu & Wierstra (2015), "Weight uncertainty in neural networks", section 3.4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Normal

from kldiv._validate import check_scalar
from kldiv.losses.options import check_label_tensor

__all__ = [
    "ElboTerms",
    "GaussianNoise",
    "classification_nll",
    "gaussian_log_prob",
    "gaussian_nll",
    "negative_elbo",
]


def float_tensor(name: str, x: object) -> Tensor:
    """``x``, checked to be a floating-point tensor (a TypeError naming ``name`` otherwise)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} has dtype {x.dtype}; a floating-point dtype is required")
    return x


def classification_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """``NLL_i = -log softmax(logits_i)_{y_i}`` per example ``(B,)``, from ``logits`` ``(B, C)`` and ``labels``
    ``(B,)`` (class ids in ``[0, C)``), by ``torch.nn.functional.cross_entropy``."""
    z = float_tensor("logits", logits)
    if z.dim() != 2 or 0 in z.shape:
        raise ValueError(f"logits has shape {tuple(z.shape)}; expected (B, C) with B >= 1 and C >= 1")
    y = check_label_tensor(labels, z.shape[:1], ids="class ids", expected=f"({z.shape[0]},), one label per row")
    outside = (y < 0) | (y >= z.shape[1])
    if bool(outside.any()):
        i = int(outside.nonzero()[0, 0])
        raise ValueError(f"labels holds {int(y[i])} at index {i}, outside the class ids [0, {z.shape[1]})")
    return F.cross_entropy(z, y, reduction="none")


def gaussian_log_prob(mean: Tensor, std: Tensor, targets: Tensor) -> Tensor:
    """``log N(y; mean, std^2)`` elementwise (broadcasting), by ``torch.distributions.Normal.log_prob``."""
    out: Tensor = Normal(mean, std).log_prob(targets)  # type: ignore[no-untyped-call]
    return out


def noise_std_like(noise_std: Tensor | float, like: Tensor) -> Tensor:
    """``noise_std`` as a tensor of ``like``'s shape, dtype and device, checked to be finite and ``> 0``."""
    if isinstance(noise_std, bool) or not isinstance(noise_std, Tensor | float | int):
        raise TypeError(f"noise_std must be a float or a tensor, got {type(noise_std).__name__}")
    std = torch.as_tensor(noise_std, dtype=like.dtype, device=like.device)
    try:
        std = std.expand_as(like)
    except RuntimeError:
        raise ValueError(
            f"noise_std has shape {tuple(std.shape)}; expected a shape broadcastable to {tuple(like.shape)}"
        ) from None
    bad = ~((std > 0) & torch.isfinite(std))
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"noise_std must be finite and > 0, got {float(std[where])} at index {where}")
    return std


def gaussian_nll(mean: Tensor, targets: Tensor, noise_std: Tensor | float) -> Tensor:
    """``NLL_i = -sum_d log N(y_id; mean_id, sigma^2)`` per example ``(B,)``: ``mean`` and ``targets`` ``(B, ...)``
    of the same shape, ``noise_std`` ``sigma > 0`` a float or a tensor broadcastable to them (a scalar for
    homoscedastic noise)."""
    mu = float_tensor("mean", mean)
    y = float_tensor("targets", targets)
    if mu.dim() == 0 or mu.shape[0] == 0:
        raise ValueError(f"mean has shape {tuple(mu.shape)}; expected (B, ...) with B >= 1")
    if y.shape != mu.shape:
        raise ValueError(f"targets has shape {tuple(y.shape)}; expected {tuple(mu.shape)}, the shape of mean")
    sigma = noise_std_like(noise_std, mu)
    return -gaussian_log_prob(mu, sigma, y).reshape(mu.shape[0], -1).sum(1)


class GaussianNoise(nn.Module):
    """A homoscedastic Gaussian likelihood: ``forward(mean, targets)`` is :func:`gaussian_nll` with the noise std
    ``sigma``. ``learn=True`` makes ``log sigma`` a parameter (initialized at ``log std``), trained with the
    network by the same loss; otherwise ``sigma = std`` is a fixed buffer. ``dtype`` (default: torch's) is the
    dtype ``log std`` is rounded to; ``.double()`` after construction keeps a float32 rounding."""

    log_std: Tensor

    def __init__(self, std: float = 1.0, *, learn: bool = False, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not isinstance(learn, bool):
            raise TypeError(f"learn must be a bool, got {type(learn).__name__}")
        value = torch.tensor(math.log(check_scalar("std", std, low=0.0, low_open=True)), dtype=dtype)
        if learn:
            self.log_std = nn.Parameter(value)
        else:
            self.register_buffer("log_std", value)

    @property
    def std(self) -> Tensor:
        """``sigma = exp(log_std)``, a scalar tensor."""
        return self.log_std.exp()

    def forward(self, mean: Tensor, targets: Tensor) -> Tensor:
        return gaussian_nll(mean, targets, self.std.to(mean.dtype))


@dataclass(frozen=True)
class ElboTerms:
    """A minibatch's ``loss = nll + kl_weight * kl / dataset_size`` (a scalar carrying the gradient), its mean
    NLL ``nll`` (nats per example), the unweighted ``kl`` of the whole network, and ``kl_weight``."""

    loss: Tensor
    nll: Tensor
    kl: Tensor
    kl_weight: float


def negative_elbo(nll: Tensor, kl: Tensor, *, dataset_size: int, kl_weight: float = 1.0) -> ElboTerms:
    """The negative ELBO per training example of a minibatch (see the module docstring):
    ``loss = mean(nll) + kl_weight * kl / dataset_size``.

    ``nll`` ``(B,)``: the examples' negative log-likelihoods (:func:`classification_nll`, :func:`gaussian_nll`);
    ``kl``: ``KL(q || p)`` of the whole network, a scalar tensor; ``dataset_size``: ``N >= B``, the number of
    training examples; ``kl_weight``: ``beta >= 0``, e.g. ``schedule(step)`` of a :mod:`kldiv.schedules`
    schedule. Reference: Blundell et al. (2015), eq. 2 and 8.
    """
    per_example = float_tensor("nll", nll)
    if per_example.dim() != 1 or per_example.shape[0] == 0:
        raise ValueError(f"nll has shape {tuple(per_example.shape)}; expected (B,) with B >= 1, one value per example")
    divergence = float_tensor("kl", kl)
    if divergence.numel() != 1:
        raise ValueError(f"kl has shape {tuple(divergence.shape)}; expected a scalar, the KL of the whole network")
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, int):
        raise TypeError(f"dataset_size must be an int, got {type(dataset_size).__name__} {dataset_size!r}")
    if dataset_size < per_example.shape[0]:
        raise ValueError(
            f"dataset_size must be >= the batch size {per_example.shape[0]} (the number of training examples), "
            f"got {dataset_size}"
        )
    beta = check_scalar("kl_weight", kl_weight, low=0.0)
    mean_nll = per_example.mean()
    kl_scalar = divergence.reshape(())
    return ElboTerms(loss=mean_nll + beta * kl_scalar / dataset_size, nll=mean_nll, kl=kl_scalar, kl_weight=beta)
