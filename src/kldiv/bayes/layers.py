"""Bayesian linear and 2-D convolution layers with a factorized Gaussian posterior over weights and biases.

Every weight has a posterior ``N(mu, std^2)``. In training mode (or with ``sample=True``) a forward pass draws
from it in one of three ways, chosen per layer by ``mode``; all three give every example the same output
distribution, they differ in how the noise is shared across a batch and so in the variance of the gradients:

- ``"reparam"``: one weight sample ``W = mu + std * eps`` per forward pass, shared by the batch (the tutorial's
  layer; Blundell et al. 2015, "Weight Uncertainty in Neural Networks").
- ``"local"``: the local reparameterization trick (Kingma, Salimans & Welling 2015, "Variational Dropout and
  the Local Reparameterization Trick"): sample the pre-activations, which are Gaussian given the input, with
  independent noise per example (:func:`local_reparam`).
- ``"flipout"``: one perturbation ``dW = std * eps`` per pass, decorrelated across examples by random signs
  (Wen et al. 2018, "Flipout: Efficient Pseudo-Independent Weight Perturbations on Mini-Batches";
  :func:`flipout`).

In evaluation mode the layers use the posterior means, unless ``sample`` is set. ``kl_loss()`` is the sum over
all weights and biases of the layer of ``KL(q(w) || p(w))`` (:mod:`kldiv.bayes.priors`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from kldiv._validate import check_scalar
from kldiv.bayes.priors import GaussianPrior, Prior, kl_terms

Mode = Literal["reparam", "local", "flipout"]
Scale = Literal["softplus", "log_var"]
MODES: tuple[Mode, ...] = ("reparam", "local", "flipout")
SCALES: tuple[Scale, ...] = ("softplus", "log_var")
DEFAULT_INIT_STD = 1e-3
"""Initial posterior standard deviation of every weight and bias (see :class:`BayesianLayer`)."""

Op = Callable[[Tensor, Tensor, Tensor | None], Tensor]
"""The layer's deterministic map ``(input, weight, bias) -> output`` (``F.linear``, ``F.conv2d`` with options)."""

__all__ = [
    "DEFAULT_INIT_STD",
    "MODES",
    "SCALES",
    "BayesianConv2d",
    "BayesianLayer",
    "BayesianLinear",
    "Mode",
    "Scale",
    "flipout",
    "local_reparam",
    "posterior_std",
    "raw_scale",
]


def posterior_std(raw: Tensor, scale: Scale) -> Tensor:
    """The posterior standard deviation from its unconstrained parameter.

    ``"softplus"``: ``std = log(1 + exp(rho))`` (Blundell et al. 2015, sec. 3.2); ``"log_var"``:
    ``std = exp(log_var / 2)`` (the tutorial's parameterization).
    """
    return F.softplus(raw) if scale == "softplus" else torch.exp(0.5 * raw)


def raw_scale(std: float, scale: Scale) -> float:
    """Inverse of :func:`posterior_std` for a number: ``rho = log(expm1(std)) = std + log(-expm1(-std))``
    (the second form does not overflow for large ``std``), or ``log_var = 2 log std``."""
    if scale == "softplus":
        return std + math.log(-math.expm1(-std))
    return 2.0 * math.log(std)


def local_reparam(op: Op, x: Tensor, w_mu: Tensor, w_std: Tensor, b_mu: Tensor | None, b_std: Tensor | None) -> Tensor:
    """A sample of the output ``op(x, W, b)`` for ``W ~ N(w_mu, w_std^2)``, ``b ~ N(b_mu, b_std^2)`` independent,
    drawn directly from its Gaussian distribution (Kingma, Salimans & Welling 2015, sec. 2.3):

    ``out = op(x, w_mu, b_mu) + sqrt(op(x^2, w_std^2, b_std^2)) * eps``, with ``eps ~ N(0, 1)`` independent per
    output element. Each output element has the exact marginal distribution; for a linear map the outputs of
    one example are also jointly exact, for a convolution the correlation between positions that share a
    weight is dropped (as in the paper). The variance is clamped at the smallest normal number before the
    square root, so an exactly zero variance (zero input and no bias) has a zero, finite gradient.
    """
    mean = op(x, w_mu, b_mu)
    var = op(x * x, w_std * w_std, None if b_std is None else b_std * b_std)
    tiny = torch.finfo(var.dtype).tiny
    return mean + torch.sqrt(var.clamp_min(tiny)) * torch.randn_like(mean)


def _signs(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Independent Rademacher signs (+1 or -1 with probability 1/2) of ``like``'s dtype and device."""
    return torch.randint(0, 2, shape, device=like.device).to(like.dtype).mul_(2).sub_(1)


def _example_shape(t: Tensor, spatial_dims: int) -> tuple[int, ...]:
    """``t``'s shape with its trailing ``spatial_dims`` dimensions set to 1 (one sign per example and channel)."""
    return (*t.shape[: t.dim() - spatial_dims], *(1,) * spatial_dims)


def flipout(
    op: Op,
    x: Tensor,
    w_mu: Tensor,
    b_mu: Tensor | None,
    w_delta: Tensor,
    b_delta: Tensor | None,
    *,
    spatial_dims: int,
) -> Tensor:
    """Flipout (Wen et al. 2018, eq. 4): ``out_n = op(x_n, w_mu, b_mu) + r_n * op(x_n * s_n, w_delta, b_delta)``.

    ``w_delta = W - w_mu`` is the sampled PERTURBATION (shared by the batch), never the sampled weight itself;
    ``s_n`` (input channels) and ``r_n`` (output channels) are independent random signs for each example ``n``,
    constant over the trailing ``spatial_dims`` dimensions (0 for a linear layer, 2 for a 2-D convolution).
    Example ``n`` then sees the weight ``w_mu + w_delta * (r_n s_n^T)``, which has the distribution of ``W``
    when the perturbation is symmetric and independent across weights, as a Gaussian perturbation is. The bias
    perturbation is flipped by ``r_n`` too (a bias is a weight on a constant input).
    """
    mean = op(x, w_mu, b_mu)
    s = _signs(_example_shape(x, spatial_dims), x)
    perturbation = op(x * s, w_delta, b_delta)
    return mean + _signs(_example_shape(perturbation, spatial_dims), x) * perturbation


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        expected = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {expected}, got {value!r}")


def _check_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


class BayesianLayer(nn.Module):
    """Shared base: the posterior parameters of a weight and an optional bias, sampling, and the KL.

    Parameters: ``weight_mu`` and ``bias_mu`` (means), and ``weight_rho`` / ``bias_rho`` (``scale="softplus"``)
    or ``weight_log_var`` / ``bias_log_var`` (``scale="log_var"``) for the standard deviations.

    Initialization: the means as ``torch.nn``'s own layers (Kaiming-uniform weights, biases uniform in
    ``+-1/sqrt(fan_in)``), the standard deviations at ``init_std`` (default 1e-3). Why so small: a Kaiming-uniform
    weight has standard deviation ``1/sqrt(3 fan_in)``, so the weight noise adds to a pre-activation a noise
    with ``sqrt(3 fan_in) * init_std`` times the standard deviation of its signal: 5% at ``fan_in = 784`` with
    1e-3, 48% with 1e-2. The network starts out as its deterministic counterpart and the standard deviations grow
    where the data allow (the KL pulls them towards the prior's). The KL at initialization is about
    ``log(sigma_prior / init_std) - 1/2`` per weight whatever small value is chosen (6.4 nats at 1e-3 against
    N(0, 1); 4.5 at the tutorial's ``log_var = -10``, i.e. ``std = 6.7e-3``); its weight against the data term
    is set by the objective (scale it by the number of training examples), not by the initialization.
    """

    def __init__(
        self,
        weight_shape: tuple[int, ...],
        bias: bool,
        *,
        prior: Prior | None,
        mode: Mode,
        scale: Scale,
        init_std: float,
        sample: bool,
        spatial_dims: int,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__()
        prior = GaussianPrior() if prior is None else prior
        if not isinstance(prior, Prior):
            raise TypeError(f"prior must have a log_prob(w) method (e.g. GaussianPrior), got {type(prior).__name__}")
        _check_choice("scale", scale, SCALES)
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
        self.prior = prior
        self.mode = mode
        self.scale: Scale = scale
        self.sample = sample
        self.init_std = check_scalar("init_std", init_std, low=0.0, low_open=True)
        self._spatial_dims = spatial_dims
        self._eps: dict[str, Tensor] = {}
        self._names = ("weight", "bias") if bias else ("weight",)
        self._suffix = "rho" if scale == "softplus" else "log_var"
        for name in ("weight", "bias"):
            shape = weight_shape if name == "weight" else weight_shape[:1]
            for part in ("mu", self._suffix):
                param = nn.Parameter(torch.empty(shape, device=device, dtype=dtype)) if name in self._names else None
                self.register_parameter(f"{name}_{part}", param)
        self.reset_parameters()

    @property
    def mode(self) -> Mode:
        """How a forward pass samples: ``"reparam"``, ``"local"`` or ``"flipout"`` (settable)."""
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        _check_choice("mode", value, MODES)
        self._mode = value

    @property
    def sample(self) -> bool:
        """Whether evaluation mode samples too (training mode always samples)."""
        return self._sample

    @sample.setter
    def sample(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"sample must be a bool, got {type(value).__name__}")
        self._sample = value

    def reset_parameters(self) -> None:
        """Means as ``torch.nn``'s layers initialize weights and biases; standard deviations at ``init_std``."""
        weight_mu = self._param("weight", "mu")
        fan_in = weight_mu[0].numel()
        with torch.no_grad():
            nn.init.kaiming_uniform_(weight_mu, a=math.sqrt(5))
            if "bias" in self._names:
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(self._param("bias", "mu"), -bound, bound)
            for name in self._names:
                self._param(name, self._suffix).fill_(raw_scale(self.init_std, self.scale))
        self._eps = {}

    def _param(self, name: str, part: str) -> Tensor:
        return cast(Tensor, getattr(self, f"{name}_{part}"))

    def posterior(self, name: str) -> tuple[Tensor, Tensor]:
        """``(mean, std)`` of the posterior of ``"weight"`` or ``"bias"``."""
        if name not in self._names:
            raise ValueError(f"name must be one of {', '.join(map(repr, self._names))} for this layer, got {name!r}")
        return self._param(name, "mu"), posterior_std(self._param(name, self._suffix), self.scale)

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _check_input(self, x: Tensor) -> None:
        raise NotImplementedError

    def forward(self, x: Tensor, sample: bool | None = None) -> Tensor:
        """The output with weights drawn from the posterior (training mode, or ``sample`` / ``self.sample``
        set), otherwise with the posterior means. ``sample`` overrides ``self.sample`` for this call."""
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a Tensor, got {type(x).__name__}")
        self._check_input(x)
        b_mu = self._param("bias", "mu") if "bias" in self._names else None
        if not (self.training or (self.sample if sample is None else sample)):
            return self._op(x, self._param("weight", "mu"), b_mu)
        w_mu, w_std = self.posterior("weight")
        b_std = self.posterior("bias")[1] if "bias" in self._names else None
        if self.mode == "local":
            self._eps = {}
            return local_reparam(self._op, x, w_mu, w_std, b_mu, b_std)
        eps = {name: torch.randn_like(self._param(name, "mu")) for name in self._names}
        self._eps = {} if isinstance(self.prior, GaussianPrior) else eps  # kept for a Monte Carlo kl_loss()
        w_delta = w_std * eps["weight"]
        b_delta = None if b_std is None else b_std * eps["bias"]
        if self.mode == "reparam":
            return self._op(x, w_mu + w_delta, None if b_mu is None or b_delta is None else b_mu + b_delta)
        return flipout(self._op, x, w_mu, b_mu, w_delta, b_delta, spatial_dims=self._spatial_dims)

    def kl_loss(self) -> Tensor:
        """``sum over the weights and biases of KL(q(w) || p(w))``.

        Exact for a :class:`GaussianPrior`; otherwise a one-sample Monte Carlo estimate
        (:func:`kldiv.bayes.priors.kl_mc_terms`) at the weights sampled by the last forward pass in
        ``"reparam"`` or ``"flipout"`` mode (as in Blundell et al. 2015), or at a fresh sample when there is none
        (``"local"`` mode samples no weights).
        """
        exact = isinstance(self.prior, GaussianPrior)
        terms = []
        for name in self._names:
            mu, std = self.posterior(name)
            eps = None if exact else self._eps.get(name)
            if not exact and (eps is None or eps.shape != mu.shape):
                eps = torch.randn_like(mu)
            terms.append(kl_terms(self.prior, mu, std, None if eps is None else eps.to(mu)).sum())
        return torch.stack(terms).sum()

    def extra_repr(self) -> str:
        return f"bias={'bias' in self._names}, mode={self.mode!r}, scale={self.scale!r}, prior={self.prior}"


class BayesianLinear(BayesianLayer):
    """``y = x W^T + b`` with ``W`` (``out_features x in_features``) and ``b`` drawn from their posteriors.

    The tutorial's layer, with a choice of sampling ``mode`` and posterior ``scale``, any prior, and ``sample``
    for drawing in evaluation mode. See :class:`BayesianLayer` for the parameters and their initialization.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        prior: Prior | None = None,
        mode: Mode = "reparam",
        scale: Scale = "softplus",
        init_std: float = DEFAULT_INIT_STD,
        sample: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.in_features = _check_size("in_features", in_features)
        self.out_features = _check_size("out_features", out_features)
        super().__init__(
            (self.out_features, self.in_features),
            bias,
            prior=prior,
            mode=mode,
            scale=scale,
            init_std=init_std,
            sample=sample,
            spatial_dims=0,
            device=device,
            dtype=dtype,
        )

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            got = "a scalar" if x.dim() == 0 else f"{x.shape[-1]} in its last dimension (shape {tuple(x.shape)})"
            raise ValueError(
                f"input must have in_features={self.in_features} features in its last dimension, got {got}"
            )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {super().extra_repr()}"


class BayesianConv2d(BayesianLayer):
    """A 2-D convolution (as ``torch.nn.Conv2d``, zero padding) whose kernel and bias are drawn from their posteriors.

    ``stride``, ``padding`` (int, pair, ``"same"`` or ``"valid"``), ``dilation`` and ``groups`` mean what they mean
    for ``torch.nn.Conv2d``. In ``"local"`` mode each output element gets its own noise (exact marginals; the
    correlation between positions that share a weight is dropped); in ``"flipout"`` mode the signs are per example
    and channel. See :class:`BayesianLayer` for the parameters and their initialization.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        prior: Prior | None = None,
        mode: Mode = "reparam",
        scale: Scale = "softplus",
        init_std: float = DEFAULT_INIT_STD,
        sample: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.in_channels = _check_size("in_channels", in_channels)
        self.out_channels = _check_size("out_channels", out_channels)
        self.groups = _check_size("groups", groups)
        for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
            if channels % groups:
                raise ValueError(f"{name}={channels} must be divisible by groups={groups}")
        self.kernel_size = _pairs("kernel_size", kernel_size, low=1)
        self.stride = _pairs("stride", stride, low=1)
        self.dilation = _pairs("dilation", dilation, low=1)
        self.padding: tuple[int, int] | str
        if isinstance(padding, str):
            _check_choice("padding", padding, ("same", "valid"))
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride={self.stride}")
            self.padding = padding
        else:
            self.padding = _pairs("padding", padding, low=0)
        super().__init__(
            (self.out_channels, self.in_channels // groups, *self.kernel_size),
            bias,
            prior=prior,
            mode=mode,
            scale=scale,
            init_std=init_std,
            sample=sample,
            spatial_dims=2,
            device=device,
            dtype=dtype,
        )

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() not in (3, 4):
            raise ValueError(f"input must be (N, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
        if x.shape[-3] != self.in_channels:
            raise ValueError(
                f"input must have in_channels={self.in_channels} channels in dimension {x.dim() - 3}, "
                f"got {x.shape[-3]} (shape {tuple(x.shape)})"
            )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, {super().extra_repr()}"
        )


def _pairs(name: str, value: object, *, low: int) -> tuple[int, int]:
    pair = _pair(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if any(v < low for v in pair):
        raise ValueError(f"{name} must be >= {low} in both dimensions, got {value!r}")
    return (int(pair[0]), int(pair[1]))
