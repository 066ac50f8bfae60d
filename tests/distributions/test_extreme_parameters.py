"""Distributions with infinite, huge and tiny parameters: the right value or a ValueError naming the argument.

References: the textbook closed forms (Penny 2001) in 60-digit mpmath. The survey test walks every pair of kldiv's
registry with each parameter set to inf, 1e300, 1e20, 1e-20 and 1e-300 in turn and requires a non-NaN tensor or
a ValueError that names the argument.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import mpmath as mp
import pytest
import torch
from torch.distributions import (
    Bernoulli,
    Beta,
    Binomial,
    Chi2,
    Dirichlet,
    Distribution,
    Exponential,
    Gamma,
    Geometric,
    Gumbel,
    HalfNormal,
    Laplace,
    LogNormal,
    NegativeBinomial,
    Normal,
    Poisson,
    StudentT,
    VonMises,
    Weibull,
)

import kldiv
from kldiv.distributions import registered_pairs
from kldiv.distributions.continuous import Chi, lgamma_bregman

mp.mp.dps = 60
F64 = torch.float64
INF = math.inf


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values[0] if len(values) == 1 else list(values), dtype=F64)


# --------------------------------------------------------------------------------------------------------------
# infinite parameters
# --------------------------------------------------------------------------------------------------------------
INFINITE_CASES: dict[str, tuple[Distribution, Distribution, str]] = {
    "exponential_both": (Exponential(t(INF)), Exponential(t(INF)), r"p\.rate = inf, q\.rate = inf"),
    "exponential_p": (Exponential(t(INF)), Exponential(t(1.0)), r"p\.rate = inf"),
    "gamma_both": (Gamma(t(INF), t(1.0)), Gamma(t(INF), t(1.0)), r"p\.concentration = inf, q\.concentration = inf"),
    "gamma_rate": (Gamma(t(2.0), t(1.0)), Gamma(t(2.0), t(INF)), r"q\.rate = inf"),
    "laplace_both": (Laplace(t(0.0), t(INF)), Laplace(t(0.0), t(INF)), r"p\.scale = inf, q\.scale = inf"),
    "normal_batch": (
        Normal(t(0.0, 1.0), t(1.0, INF)),
        Normal(t(0.0, 1.0), t(1.0, INF)),
        r"at batch index \(1,\) for p\.scale = inf, q\.scale = inf",
    ),
    "dirichlet": (Dirichlet(t(1.0, INF)), Dirichlet(t(1.0, INF)), r"p\.concentration = inf"),
    "von_mises": (VonMises(t(0.0), t(INF)), VonMises(t(0.0), t(INF)), r"p\.concentration = inf"),
    "student_t_df": (StudentT(t(INF)), Normal(t(0.0), t(1.0)), r"p\.df = inf"),
}


@pytest.mark.parametrize("case", sorted(INFINITE_CASES))
def test_infinite_parameters_raise_naming_the_argument(case: str) -> None:
    p, q, names = INFINITE_CASES[case]
    with pytest.raises(ValueError, match=rf"KL\({type(p).__name__} \|\| {type(q).__name__}\) is undefined.*{names}"):
        kldiv.kl(p, q)


def test_infinite_parameters_with_validation_off_give_the_raw_value() -> None:
    with kldiv.validation(False):
        assert torch.isnan(kldiv.kl(Exponential(t(INF)), Exponential(t(INF))))


# --------------------------------------------------------------------------------------------------------------
# huge concentrations: the generalized-gamma, Beta and Dirichlet formulas against mpmath
# --------------------------------------------------------------------------------------------------------------
def gamma_reference(a1: float, b1: float, a2: float, b2: float) -> Any:
    a1, b1, a2, b2 = (mp.mpf(v) for v in (a1, b1, a2, b2))
    return (
        (a1 - a2) * mp.digamma(a1)
        - mp.loggamma(a1)
        + mp.loggamma(a2)
        + a2 * (mp.log(b1) - mp.log(b2))
        + a1 * (b2 - b1) / b1
    )


def dirichlet_reference(a: list[float], b: list[float]) -> Any:
    a_mp, b_mp = [mp.mpf(v) for v in a], [mp.mpf(v) for v in b]
    a0, b0 = mp.fsum(a_mp), mp.fsum(b_mp)
    return (
        mp.loggamma(a0)
        - mp.loggamma(b0)
        - mp.fsum(mp.loggamma(x) - mp.loggamma(y) for x, y in zip(a_mp, b_mp, strict=True))
        + mp.fsum((x - y) * (mp.digamma(x) - mp.digamma(a0)) for x, y in zip(a_mp, b_mp, strict=True))
    )


HUGE: dict[str, tuple[Callable[[], torch.Tensor], Any]] = {
    "gamma_huge_vs_small": (
        lambda: kldiv.kl(Gamma(t(1e20), t(1.5)), Gamma(t(2.0), t(1.5))),
        gamma_reference(1e20, 1.5, 2.0, 1.5),
    ),
    "gamma_huge_equal": (lambda: kldiv.kl(Gamma(t(1e20), t(1.5)), Gamma(t(1e20), t(1.5))), mp.mpf(0)),
    "gamma_huge_near": (
        lambda: kldiv.kl(Gamma(t(1e20), t(1.0)), Gamma(t(1e20 * (1 + 1e-8)), t(1.0))),
        gamma_reference(1e20, 1.0, 1e20 * (1 + 1e-8), 1.0),
    ),
    "gamma_1e300_rate": (
        lambda: kldiv.kl(Gamma(t(1e300), t(2.0)), Gamma(t(1e300), t(2.0 * (1 + 1e-10)))),
        gamma_reference(1e300, 2.0, 1e300, 2.0 * (1 + 1e-10)),
    ),
    "chi2_huge": (
        lambda: kldiv.kl(Chi2(t(2e20)), Chi2(t(2e20 * (1 + 1e-6)))),
        gamma_reference(1e20, 0.5, 1e20 * (1 + 1e-6), 0.5),
    ),
    "beta_huge_near": (
        lambda: kldiv.kl(Beta(t(1e20), t(3e19)), Beta(t(1e20 * (1 + 1e-7)), t(3e19))),
        dirichlet_reference([1e20, 3e19], [1e20 * (1 + 1e-7), 3e19]),
    ),
    "beta_huge_both_far": (
        lambda: kldiv.kl(Beta(t(1e20), t(3e19)), Beta(t(2e20), t(1e19))),
        dirichlet_reference([1e20, 3e19], [2e20, 1e19]),
    ),
    "dirichlet_huge_equal": (
        lambda: kldiv.kl(Dirichlet(t(1e20, 1e20)), Dirichlet(t(1e20, 1e20))),
        mp.mpf(0),
    ),
    "dirichlet_huge_near": (
        lambda: kldiv.kl(Dirichlet(t(1e20, 1e20 * (1 + 1e-6))), Dirichlet(t(1e20, 1e20))),
        dirichlet_reference([1e20, 1e20 * (1 + 1e-6)], [1e20, 1e20]),
    ),
}


@pytest.mark.parametrize("case", sorted(HUGE))
def test_huge_concentrations_agree_with_mpmath(case: str) -> None:
    fn, reference = HUGE[case]
    got = float(fn())
    assert math.isfinite(got)
    assert abs(got - float(reference)) <= 1e-9 * abs(float(reference)) + 1e-300, (got, mp.nstr(reference, 17))


def test_dirichlet_with_huge_equal_concentrations_is_zero_like_torch() -> None:
    # float32, as in the report: torch gives 0, kldiv gave NaN
    p = Dirichlet(torch.tensor([1e20, 1e20]))
    assert float(kldiv.kl(p, p)) == 0.0
    assert float(torch.distributions.kl_divergence(p, p)) == 0.0


def test_huge_concentration_against_small_ones_raises_instead_of_losing_every_digit() -> None:
    # KL(Beta(1e20, 3) || Beta(2, 3)) = 132 (mpmath), but its log-gamma terms are ~4.6e21: float64 leaves ~1e6 of
    # rounding, so kldiv names the parameters instead of returning noise (torch returns an arbitrary number)
    assert float(dirichlet_reference([1e20, 3.0], [2.0, 3.0])) == pytest.approx(131.977, rel=1e-5)
    with pytest.raises(ValueError, match=r"KL\(Beta \|\| Beta\) cannot be evaluated for p\.concentration1 = 1e\+20"):
        kldiv.kl(Beta(t(1e20), t(3.0)), Beta(t(2.0), t(3.0)))
    with pytest.raises(ValueError, match=r"KL\(Dirichlet \|\| Dirichlet\) cannot be evaluated"):
        kldiv.kl(Dirichlet(t(1e20, 3.0)), Dirichlet(t(2.0, 3.0)))


@pytest.mark.parametrize("x", [1e5, 1e7, 1e20, 1e100, 1e300])
@pytest.mark.parametrize("r", [-0.5, -1e-3, 1e-9, 1e-2, 0.5, 10.0])
def test_lgamma_bregman_at_large_arguments_matches_mpmath(x: float, r: float) -> None:
    h = x * r
    if not math.isfinite(h) or x + h < 1e5:
        pytest.skip("outside the range")
    xm, hm = mp.mpf(x), mp.mpf(h)
    reference = mp.loggamma(xm + hm) - mp.loggamma(xm) - hm * mp.digamma(xm)
    got = float(lgamma_bregman(t(x), t(h), t(x + h)))
    # relative to the value; x + h is rounded to float64 (one ulp of x + h shifts the value by |log1p(r)| ulps)
    assert abs(got - float(reference)) <= 1e-13 * float(reference) + 4e-16 * abs(float(hm * mp.log1p(r))), (
        got,
        mp.nstr(reference, 17),
    )


# --------------------------------------------------------------------------------------------------------------
# series and finite sums beyond their length
# --------------------------------------------------------------------------------------------------------------
SERIES_CASES: dict[str, tuple[Distribution, Distribution, str]] = {
    "binomial_total_count": (Binomial(t(1e20), t(0.3)), Binomial(t(5.0), t(0.3)), r"p\.total_count = 1e\+20"),
    "poisson_geometric_rate": (Poisson(t(1e20)), Geometric(t(0.3)), r"p\.rate = 1e\+20"),
    "geometric_poisson_probs": (Geometric(t(1e-20)), Poisson(t(2.0)), r"p\.probs = 1e-20"),
    "negative_binomial_mean": (
        NegativeBinomial(t(1e20), t(0.4)),
        NegativeBinomial(t(3.0), t(0.4)),
        r"p's mean total_count \* probs / \(1 - probs\) = 6\.66667e\+19",
    ),
}


@pytest.mark.parametrize("case", sorted(SERIES_CASES))
def test_sums_beyond_the_term_limit_raise_naming_the_argument(case: str) -> None:
    p, q, message = SERIES_CASES[case]
    with pytest.raises(ValueError, match=rf"{message} needs a sum over about .* support points"):
        kldiv.kl(p, q)


# --------------------------------------------------------------------------------------------------------------
# the survey: every pair of kldiv's registry at extreme parameters
# --------------------------------------------------------------------------------------------------------------
FAMILIES: dict[type[Distribution], tuple[Callable[..., Distribution], list[float]]] = {
    Normal: (Normal, [0.3, 1.2]),
    Exponential: (Exponential, [1.3]),
    Gamma: (Gamma, [2.0, 1.5]),
    Chi2: (Chi2, [3.0]),
    Weibull: (Weibull, [1.2, 1.7]),
    HalfNormal: (HalfNormal, [1.1]),
    Chi: (Chi, [3.0, 1.1]),
    LogNormal: (LogNormal, [0.2, 0.8]),
    Laplace: (Laplace, [0.1, 0.9]),
    Gumbel: (Gumbel, [0.1, 0.9]),
    StudentT: (StudentT, [4.0, 0.1, 1.1]),
    VonMises: (VonMises, [0.1, 2.0]),
    Beta: (Beta, [2.0, 3.0]),
    Dirichlet: (lambda a: Dirichlet(torch.stack([a, a * 0 + 2.0, a * 0 + 3.0])), [1.5]),
    Poisson: (Poisson, [2.5]),
    Geometric: (Geometric, [0.3]),
    Binomial: (Binomial, [7.0, 0.3]),
    NegativeBinomial: (NegativeBinomial, [3.0, 0.4]),
    Bernoulli: (Bernoulli, [0.3]),
}
SPECIAL = [INF, 1e300, 1e20, 1e-20, 1e-300]
SURVEYED = [
    pair
    for pair in registered_pairs()
    if pair.source == "kldiv" and pair.method != "infinite" and pair.type_p in FAMILIES and pair.type_q in FAMILIES
]


@pytest.mark.parametrize("pair", SURVEYED, ids=[p.name for p in SURVEYED])
def test_no_pair_returns_nan_at_extreme_parameters(pair: Any) -> None:
    make_p, default_p = FAMILIES[pair.type_p]
    make_q, default_q = FAMILIES[pair.type_q]
    checked = 0
    for side in ("p", "q", "both"):
        if side == "both" and pair.type_p is not pair.type_q:
            continue
        for i in range(len(default_q if side == "q" else default_p)):
            for special in SPECIAL:
                args_p, args_q = list(default_p), list(default_q)
                if side in ("p", "both"):
                    args_p[i] = special
                if side in ("q", "both"):
                    args_q[i] = special
                try:
                    p, q = make_p(*(t(v) for v in args_p)), make_q(*(t(v) for v in args_q))
                except ValueError:
                    continue  # torch's own constraints reject the parameter
                checked += 1
                message = ""
                try:
                    value = kldiv.kl(p, q)
                except ValueError as exc:
                    message = str(exc)
                if message:
                    assert re.search(r"\b[pq]\b|p's mean", message), message
                    continue
                assert not torch.isnan(value).any(), f"{pair.name}: {side} parameter {i} = {special}: NaN"
    assert checked


def test_bernoulli_and_poisson_gradients_at_tiny_q_are_exact() -> None:
    # log_ratio carries its derivative (1/p, -1/q): no p/q**2 in the count families either
    from kldiv.distributions.counts import kl_poisson

    q = torch.tensor([1e-30], requires_grad=True)
    kldiv.kl_bernoulli(torch.tensor([0.5]), q).sum().backward()
    assert q.grad is not None
    torch.testing.assert_close(q.grad, torch.tensor([-0.5e30 + 0.5 / (1 - 1e-30)]), rtol=1e-6, atol=0.0)
    rate = torch.tensor([1e-30], requires_grad=True)
    kl_poisson(torch.tensor([0.5]), rate).sum().backward()
    assert rate.grad is not None
    torch.testing.assert_close(rate.grad, torch.tensor([1 - 0.5e30]), rtol=1e-6, atol=0.0)
