"""Turn an existing network into a Bayesian one, and the KL term of a whole network."""

from __future__ import annotations

import copy
from typing import TypedDict

import torch
from torch import Tensor, nn

from kldiv._validate import check_scalar
from kldiv.bayes.layers import DEFAULT_INIT_STD, BayesianConv2d, BayesianLayer, BayesianLinear, Mode, Scale
from kldiv.bayes.priors import Prior

__all__ = ["bayesianize", "kl_loss"]


class _Options(TypedDict):
    prior: Prior | None
    mode: Mode
    scale: Scale
    init_std: float


def _convert(layer: nn.Module, path: str, keep_weights: bool, options: _Options) -> BayesianLayer | None:
    """The Bayesian counterpart of exactly ``nn.Linear`` or ``nn.Conv2d`` (subclasses are left alone), or None."""
    new: BayesianLayer
    if type(layer) is nn.Linear:
        new = BayesianLinear(
            layer.in_features,
            layer.out_features,
            layer.bias is not None,
            **options,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
    elif type(layer) is nn.Conv2d:
        if layer.padding_mode != "zeros":
            raise ValueError(
                f"model.{path} has padding_mode={layer.padding_mode!r}; only 'zeros' can be converted to BayesianConv2d"
            )
        new = BayesianConv2d(
            layer.in_channels,
            layer.out_channels,
            (layer.kernel_size[0], layer.kernel_size[1]),
            (layer.stride[0], layer.stride[1]),
            layer.padding if isinstance(layer.padding, str) else (layer.padding[0], layer.padding[1]),
            (layer.dilation[0], layer.dilation[1]),
            layer.groups,
            layer.bias is not None,
            **options,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
    else:
        return None
    if keep_weights:
        with torch.no_grad():
            new.posterior("weight")[0].copy_(layer.weight)
            if layer.bias is not None:
                new.posterior("bias")[0].copy_(layer.bias)
    new.train(layer.training)
    return new


def bayesianize(
    model: nn.Module,
    *,
    prior: Prior | None = None,
    mode: Mode = "reparam",
    scale: Scale = "softplus",
    init_std: float = DEFAULT_INIT_STD,
    keep_weights: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """A copy of ``model`` (or ``model`` itself with ``inplace=True``) whose ``nn.Linear`` and ``nn.Conv2d`` layers
    are replaced by :class:`BayesianLinear` and :class:`BayesianConv2d` with the given options.

    ``keep_weights=True`` starts the posterior means at the layers' trained weights and biases (then, with a
    small ``init_std``, the converted network computes what the original did); ``False`` initializes them
    afresh. Only exact ``nn.Linear`` / ``nn.Conv2d`` instances are converted: subclasses, such as the output
    projection of ``nn.MultiheadAttention`` (which reads its weight directly), are left as they are. Returns
    the converted module (a new :class:`BayesianLinear` / :class:`BayesianConv2d` when ``model`` is itself a
    layer).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, flag in (("keep_weights", keep_weights), ("inplace", inplace)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    check_scalar("init_std", init_std, low=0.0, low_open=True)
    options: _Options = {"prior": prior, "mode": mode, "scale": scale, "init_std": init_std}
    root = _convert(model, "", keep_weights, options)
    if root is not None:
        return root
    target = model if inplace else copy.deepcopy(model)
    converted: dict[int, nn.Module | None] = {}  # a layer used in two places stays one (shared) layer
    for path, parent in list(target.named_modules()):
        for child_name, child in list(parent._modules.items()):  # every slot, also a repeated child
            if child is None:
                continue
            if id(child) not in converted:
                full = f"{path}.{child_name}" if path else child_name
                converted[id(child)] = _convert(child, full, keep_weights, options)
            new = converted[id(child)]
            if new is not None:
                setattr(parent, child_name, new)
    return target


def kl_loss(model: nn.Module) -> Tensor:
    """``sum over the Bayesian layers of model of sum over their weights and biases of KL(q(w) || p(w))``.

    The one reduction of :mod:`kldiv.bayes`: a plain sum over every weight of every layer (no per-layer
    averaging, which would weigh a small layer's weights more than a large one's). Divide by the number of
    training examples to put it on the scale of a per-example data loss. Raises ``ValueError`` when ``model``
    has no Bayesian layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    terms = [m.kl_loss() for m in model.modules() if isinstance(m, BayesianLayer)]
    if not terms:
        raise ValueError(
            f"model ({type(model).__name__}) has no Bayesian layer; convert it with bayesianize(model) first"
        )
    return torch.stack(terms).sum()
