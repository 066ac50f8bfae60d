"""The registry and the dispatch of ``kldiv.kl`` on distribution objects."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch.distributions import Distribution, Exponential, Gamma, Normal, Weibull, constraints

import kldiv
from kldiv.distributions import Estimate, registered_pairs, registry
from kldiv.distributions.registry import lookup, register_kl


@pytest.fixture(autouse=True)
def _restore_registries() -> Iterator[None]:
    """Tests here register throwaway pairs (in kldiv and in torch); put both registries back afterwards."""
    ours = dict(registry._REGISTRY)
    theirs = dict(torch.distributions.kl._KL_REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(ours)
    registry._lookup.cache_clear()
    torch.distributions.kl._KL_REGISTRY.clear()
    torch.distributions.kl._KL_REGISTRY.update(theirs)
    torch.distributions.kl._KL_MEMOIZE.clear()


class _Base(Distribution):
    arg_constraints: dict[str, constraints.Constraint] = {}  # noqa: RUF012

    def __init__(self) -> None:
        super().__init__(torch.Size(), validate_args=False)


class _A(_Base):
    pass


class _B(_Base):
    pass


class _A2(_A):
    pass


class _B2(_B):
    pass


def test_most_specific_registered_pair_wins() -> None:
    @register_kl(_A, _B)
    def general(p: _A, q: _B) -> torch.Tensor:
        return torch.tensor(1.0)

    @register_kl(_A2, _B)
    def specific(p: _A2, q: _B) -> torch.Tensor:
        return torch.tensor(2.0)

    assert float(kldiv.kl(_A(), _B())) == 1.0
    assert float(kldiv.kl(_A2(), _B2())) == 2.0


def test_ambiguous_pairs_raise_naming_the_candidates() -> None:
    class _C(_Base):
        pass

    class _C2(_C):
        pass

    class _D(_Base):
        pass

    class _D2(_D):
        pass

    register_kl(_C2, _D)(lambda p, q: torch.tensor(1.0))
    register_kl(_C, _D2)(lambda p, q: torch.tensor(2.0))
    with pytest.raises(TypeError, match=r"ambiguous.*_C2, _D.*_C, _D2|ambiguous.*_C, _D2.*_C2, _D"):
        lookup(_C2, _D2)


def test_register_kl_rejects_non_distribution_types() -> None:
    with pytest.raises(TypeError, match=r"type_p must be a torch\.distributions\.Distribution subclass"):
        register_kl(int, Normal)  # type: ignore[arg-type]


def test_torch_pairs_are_reachable_through_kldiv() -> None:
    p, q = Gamma(torch.tensor(2.0), torch.tensor(1.5)), Exponential(torch.tensor(0.7))
    torch.testing.assert_close(kldiv.kl(p, q), torch.distributions.kl_divergence(p, q))


def test_missing_pair_raises_naming_both_types_and_the_monte_carlo_option() -> None:
    with pytest.raises(NotImplementedError, match=r"KL\(_Base \|\| _Base\).*kldiv\.kl_mc.*mc_samples"):
        kldiv.kl(_Base(), _Base())


def test_monte_carlo_value_only_when_asked_and_always_a_tensor() -> None:
    from torch.distributions import Cauchy, Laplace

    p, q = Laplace(torch.tensor(0.0), torch.tensor(1.0)), Cauchy(torch.tensor(0.5), torch.tensor(1.5))
    assert lookup(Laplace, Cauchy) is None
    assert registry.torch_lookup(Laplace, Cauchy) is None
    with pytest.raises(NotImplementedError, match=r"KL\(Laplace \|\| Cauchy\)"):
        kldiv.kl(p, q)
    value = kldiv.kl(p, q, mc_samples=1000, seed=0)
    assert isinstance(value, torch.Tensor)
    assert value.shape == ()
    est = kldiv.kl_mc(p, q, 1000, seed=0)
    assert isinstance(est, Estimate)
    assert est.n == 1000
    torch.testing.assert_close(value, est.value)


def test_different_event_shapes_raise() -> None:
    p = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    q = torch.distributions.MultivariateNormal(torch.zeros(3), torch.eye(3))
    with pytest.raises(ValueError, match="different event shapes"):
        kldiv.kl(p, q)


def test_batch_shapes_that_do_not_broadcast_raise() -> None:
    p = Normal(torch.zeros(3), torch.ones(3))
    q = Normal(torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match="do not broadcast"):
        kldiv.kl(p, q)


def test_registered_pairs_lists_kldiv_and_torch_entries_with_their_method() -> None:
    pairs = registered_pairs()
    methods = {p.method for p in pairs}
    assert methods <= {"closed form", "quadrature", "series", "bound", "infinite", "structural"}
    sources = {p.source for p in pairs}
    assert sources == {"kldiv", "torch"}
    names = {p.name for p in pairs}
    assert "Weibull || Weibull" in names
    assert len(names) == len(pairs)


def test_register_with_torch_gives_torch_the_missing_pairs() -> None:
    p, q = Weibull(torch.tensor(1.0), torch.tensor(2.0)), Weibull(torch.tensor(1.5), torch.tensor(2.5))
    with pytest.raises(NotImplementedError):
        torch.distributions.kl_divergence(p, q)
    count = kldiv.register_with_torch()
    assert count > 10
    torch.testing.assert_close(torch.distributions.kl_divergence(p, q), kldiv.kl(p, q))


def test_parameters_of_unvalidated_distributions_are_checked_against_torch_constraints() -> None:
    bad = [
        torch.distributions.Poisson(torch.tensor(-1.0), validate_args=False),
        torch.distributions.Bernoulli(torch.tensor(1.5), validate_args=False),
    ]
    for p in bad:
        with pytest.raises(ValueError, match=r"p: \w+ parameter \w+ violates its constraint"):
            kldiv.kl(p, type(p)(torch.tensor(0.5)))
    tril = torch.tensor([[1.0, 5.0], [0.0, 1.0]])
    p = torch.distributions.MultivariateNormal(torch.zeros(2), scale_tril=tril, validate_args=False)
    q = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match=r"scale_tril violates its constraint LowerCholesky"):
        kldiv.kl(p, q)
    with kldiv.validation(False):
        kldiv.kl(torch.distributions.Poisson(torch.tensor(-1.0), validate_args=False), bad[0])


def test_disjoint_real_line_and_positive_supports_give_inf() -> None:
    value = kldiv.kl(Normal(torch.zeros(3), torch.ones(3)), Weibull(torch.tensor(1.0), torch.tensor(2.0)))
    assert value.shape == (3,)
    assert bool(torch.isinf(value).all())


def test_kl_of_gaussian_mixtures_raises_pointing_to_the_bounds_or_returns_the_asked_monte_carlo_value() -> None:
    from torch.distributions import Categorical, MixtureSameFamily

    def mix(shift: float) -> MixtureSameFamily:
        return MixtureSameFamily(
            Categorical(torch.tensor([0.3, 0.7])), Normal(torch.tensor([0.0, 2.0]) + shift, torch.tensor([1.0, 0.5]))
        )

    with pytest.raises(NotImplementedError, match=r"kldiv\.kl_gaussian_mixture_bounds\(p, q\)"):
        kldiv.kl(mix(0.0), mix(0.5))
    value = kldiv.kl(mix(0.0), mix(0.5), mc_samples=20_000, seed=0)
    assert isinstance(value, torch.Tensor)
    result = kldiv.kl_gaussian_mixture_bounds(mix(0.0), mix(0.5), mc_samples=20_000, seed=0)
    assert result.mc is not None
    torch.testing.assert_close(value, result.mc.value)
    assert float(result.lower) <= float(result.mc.value) + 5 * float(result.mc.stderr)
    assert float(result.mc.value) - 5 * float(result.mc.stderr) <= float(result.upper)
