"""One type per function: ``kldiv.kl(p, q)`` of every registered pair is a tensor of the broadcast batch shape.

The idea of PyTorch's ``test_kl_shape`` (every pair of its registry, instances with a batch shape, the KL's shape
equals it), applied to every pair kldiv resolves (``kldiv.registered_pairs()``: kldiv's own and torch's), with
equal batch shapes and with batch shapes that broadcast. Abstract registered types (torch's structural rules for
exponential families and transformed distributions) are represented by a concrete family they apply to.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Beta,
    Binomial,
    Categorical,
    Cauchy,
    Chi2,
    ContinuousBernoulli,
    Dirichlet,
    Distribution,
    Exponential,
    ExponentialFamily,
    ExpTransform,
    Gamma,
    Geometric,
    Gumbel,
    HalfNormal,
    Independent,
    Laplace,
    LogNormal,
    LowRankMultivariateNormal,
    MixtureSameFamily,
    Multinomial,
    MultivariateNormal,
    NegativeBinomial,
    Normal,
    OneHotCategorical,
    Pareto,
    Poisson,
    StudentT,
    TransformedDistribution,
    Uniform,
    VonMises,
    Weibull,
    Wishart,
)

import kldiv
from kldiv.distributions import registered_pairs
from kldiv.distributions.continuous import Chi

Shape = tuple[int, ...]
Make = Callable[[Shape, torch.Generator], Distribution]
K = 4  # categories / event size


def _pos(shape: Shape, g: torch.Generator, low: float = 0.5, high: float = 2.0) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64)


def _real(shape: Shape, g: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _unit(shape: Shape, g: torch.Generator) -> Tensor:
    return 0.1 + 0.8 * torch.rand(shape, generator=g, dtype=torch.float64)


def _probs(shape: Shape, g: torch.Generator) -> Tensor:
    return torch.softmax(_real((*shape, K), g), -1)


def _tril(shape: Shape, g: torch.Generator) -> Tensor:
    a = _real((*shape, K, K), g)
    return torch.linalg.cholesky(a @ a.mT + K * torch.eye(K, dtype=torch.float64))


def _mixture(shape: Shape, g: torch.Generator) -> Distribution:
    return MixtureSameFamily(Categorical(_probs(shape, g)), Normal(_real((*shape, K), g), _pos((*shape, K), g)))


def _transformed(shape: Shape, g: torch.Generator) -> Distribution:
    return TransformedDistribution(Normal(_real(shape, g), _pos(shape, g)), [ExpTransform()])


def _wishart(shape: Shape, g: torch.Generator) -> Distribution:
    # an exponential family with no pair of its own: torch's generic exponential-family rule applies
    return Wishart(df=K + _pos(shape, g), scale_tril=_tril(shape, g))


MAKERS: dict[type[Distribution], Make] = {
    Bernoulli: lambda s, g: Bernoulli(_unit(s, g)),
    Beta: lambda s, g: Beta(_pos(s, g), _pos(s, g)),
    Binomial: lambda s, g: Binomial(torch.full(s, 5.0, dtype=torch.float64), _unit(s, g)),
    Categorical: lambda s, g: Categorical(_probs(s, g)),
    Cauchy: lambda s, g: Cauchy(_real(s, g), _pos(s, g)),
    Chi: lambda s, g: Chi(_pos(s, g), _pos(s, g)),
    Chi2: lambda s, g: Chi2(_pos(s, g)),
    ContinuousBernoulli: lambda s, g: ContinuousBernoulli(_unit(s, g)),
    Dirichlet: lambda s, g: Dirichlet(_pos((*s, K), g)),
    Exponential: lambda s, g: Exponential(_pos(s, g)),
    ExponentialFamily: _wishart,
    Gamma: lambda s, g: Gamma(_pos(s, g), _pos(s, g)),
    Geometric: lambda s, g: Geometric(_unit(s, g)),
    Gumbel: lambda s, g: Gumbel(_real(s, g), _pos(s, g)),
    HalfNormal: lambda s, g: HalfNormal(_pos(s, g)),
    Independent: lambda s, g: Independent(Normal(_real((*s, K), g), _pos((*s, K), g)), 1),
    Laplace: lambda s, g: Laplace(_real(s, g), _pos(s, g)),
    LogNormal: lambda s, g: LogNormal(_real(s, g), _pos(s, g)),
    LowRankMultivariateNormal: lambda s, g: LowRankMultivariateNormal(
        _real((*s, K), g), _real((*s, K, 2), g), _pos((*s, K), g)
    ),
    MixtureSameFamily: _mixture,
    Multinomial: lambda s, g: Multinomial(5, _probs(s, g)),
    MultivariateNormal: lambda s, g: MultivariateNormal(_real((*s, K), g), scale_tril=_tril(s, g)),
    NegativeBinomial: lambda s, g: NegativeBinomial(_pos(s, g), _unit(s, g)),
    Normal: lambda s, g: Normal(_real(s, g), _pos(s, g)),
    OneHotCategorical: lambda s, g: OneHotCategorical(_probs(s, g)),
    Pareto: lambda s, g: Pareto(_pos(s, g), _pos(s, g, 2.5, 4.0)),
    Poisson: lambda s, g: Poisson(_pos(s, g)),
    StudentT: lambda s, g: StudentT(_pos(s, g, 3.0, 6.0), _real(s, g), _pos(s, g)),
    TransformedDistribution: _transformed,
    Uniform: lambda s, g: Uniform(-_pos(s, g), _pos(s, g)),
    VonMises: lambda s, g: VonMises(_real(s, g), _pos(s, g)),
    Weibull: lambda s, g: Weibull(_pos(s, g), _pos(s, g)),
}

PAIRS = registered_pairs()


def test_every_registered_type_has_an_example() -> None:
    missing = {t.__name__ for pair in PAIRS for t in (pair.type_p, pair.type_q) if t not in MAKERS}
    assert not missing


@pytest.mark.parametrize(
    ("p_shape", "q_shape"), [((2, 3), (2, 3)), ((3,), (2, 3)), ((2, 1), (1, 3))], ids=["equal", "q_wider", "outer"]
)
@pytest.mark.parametrize("pair", PAIRS, ids=[p.name for p in PAIRS])
def test_kl_of_every_registered_pair_is_a_tensor_of_the_batch_shape(
    pair: object, p_shape: Shape, q_shape: Shape
) -> None:
    from kldiv.distributions.registry import Pair

    assert isinstance(pair, Pair)
    g = torch.Generator().manual_seed(0)
    p, q = MAKERS[pair.type_p](p_shape, g), MAKERS[pair.type_q](q_shape, g)
    shape = torch.broadcast_shapes(p_shape, q_shape)
    if pair.method == "bound":
        # bounds are not a value: kldiv.kl raises, pointing to them, unless a Monte-Carlo value is asked for
        with pytest.raises(NotImplementedError, match="kl_gaussian_mixture_bounds"):
            kldiv.kl(p, q)
        value = kldiv.kl(p, q, mc_samples=100, seed=0)
    else:
        value = kldiv.kl(p, q)
    assert type(value) is Tensor
    assert value.shape == shape
    assert value.dtype == torch.float64
    assert not torch.isnan(value).any()
    value.sum().item()  # usable as a number and in arithmetic, like torch.distributions.kl_divergence
