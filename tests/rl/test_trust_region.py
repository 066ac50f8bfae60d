"""TRPO's pieces: conjugate gradient against a direct solve, the trust-region scaling, Fisher-vector products against
the explicit Hessian of the mean KL and the Fisher matrix computed by enumeration, and the natural-gradient step's
guarantee that an accepted step stays within max_kl."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector

from kldiv.rl.agents import CategoricalPolicy, GaussianPolicy, Policy
from kldiv.rl.trpo import TRPOConfig, natural_gradient_step
from kldiv.rl.trust_region import conjugate_gradient, fisher_vector_product, trust_region_step

DT = torch.float64


def _spd(n: int, seed: int) -> Tensor:
    """A random symmetric positive-definite matrix with eigenvalues in [1, 10] (condition number <= 10)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=DT, generator=gen))
    return q @ torch.diag(1 + 9 * torch.rand(n, dtype=DT, generator=gen)) @ q.T


# ----------------------------------------------------------------------------------------- conjugate gradient


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_conjugate_gradient_is_exact_after_n_iterations(n: int, seed: int) -> None:
    a = _spd(n, seed)
    b = torch.randn(n, dtype=DT, generator=torch.Generator().manual_seed(seed + 1))
    x = conjugate_gradient(lambda v: a @ v, b, iterations=n, tolerance=1e-300)
    expected = torch.linalg.solve(a, b)
    assert float((x - expected).norm() / expected.norm()) < 1e-12


def test_conjugate_gradient_error_in_the_a_norm_never_grows() -> None:
    a, b = _spd(10, 7), torch.linspace(-1, 1, 10, dtype=DT)
    exact = torch.linalg.solve(a, b)
    errors = []
    for k in range(11):
        e = conjugate_gradient(lambda v: a @ v, b, iterations=k, tolerance=1e-300) - exact
        errors.append(float(e @ a @ e))
    assert errors[0] == pytest.approx(float(exact @ a @ exact))  # zero iterations: x = 0
    assert all(later <= earlier * (1 + 1e-12) for earlier, later in itertools.pairwise(errors))
    assert errors[-1] < 1e-20 * errors[0]


def test_conjugate_gradient_stops_below_the_tolerance_without_a_product() -> None:
    calls: list[Tensor] = []

    def product(v: Tensor) -> Tensor:
        calls.append(v)
        return v

    assert torch.equal(conjugate_gradient(product, torch.zeros(4, dtype=DT)), torch.zeros(4, dtype=DT))
    assert calls == []


def test_conjugate_gradient_stays_finite_once_the_residual_is_exactly_zero() -> None:
    # the identity is solved exactly in one step; the next iterations must not divide 0 by 0
    b = torch.tensor([1.0, 2.0, 3.0], dtype=DT)
    x = conjugate_gradient(lambda v: v, b, iterations=3, tolerance=0.0)
    assert torch.equal(x, b), x


# ----------------------------------------------------------------------------------------- trust-region step


@pytest.mark.parametrize("max_kl", [1e-4, 0.01, 2.0])
def test_trust_region_step_puts_the_quadratic_model_on_the_boundary(max_kl: float) -> None:
    a = _spd(6, 11)
    direction = torch.randn(6, dtype=DT, generator=torch.Generator().manual_seed(12))
    step = trust_region_step(direction, lambda v: a @ v, max_kl)
    assert float(step @ a @ step) / 2 == pytest.approx(max_kl, rel=1e-10)
    scale = step / direction
    torch.testing.assert_close(scale, scale[0].expand(6), rtol=1e-12, atol=0)  # the same direction ...
    assert float(scale[0]) > 0  # ... not reversed


def test_trust_region_step_is_zero_without_a_direction_or_without_positive_curvature() -> None:
    a = _spd(3, 0)
    assert torch.equal(trust_region_step(torch.zeros(3, dtype=DT), lambda v: a @ v, 0.01), torch.zeros(3, dtype=DT))
    negative = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=DT))
    e0 = torch.tensor([1.0, 0.0, 0.0], dtype=DT)
    assert torch.equal(trust_region_step(e0, lambda v: negative @ v, 0.01), torch.zeros(3, dtype=DT))


# -------------------------------------------------------------------------------------- Fisher-vector products


OBS = torch.randn(7, 3, dtype=DT, generator=torch.Generator().manual_seed(5))


def _policy(kind: str, seed: int) -> Policy:
    """A small float64 policy with its parameters moved off the initialization (so nothing is special)."""
    torch.manual_seed(seed)
    policy: Policy = CategoricalPolicy(3, 4, (5,)) if kind == "categorical" else GaussianPolicy(3, 2, (4,))
    policy = policy.double()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return policy


def _flat_function(policy: Policy, fn: Callable[[Tensor], Tensor]) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """``theta -> fn(policy with the flat parameters theta)`` and the current ``theta``."""
    named = list(policy.named_parameters())
    theta = parameters_to_vector([p for _, p in named]).detach().clone()

    def of(flat: Tensor) -> Tensor:
        params, i = {}, 0
        for name, p in named:
            params[name] = flat[i : i + p.numel()].view_as(p)
            i += p.numel()
        return fn(functional_call(policy, params, (OBS,)))

    return of, theta


def _mean_kl_hessian(policy: Policy) -> Tensor:
    with torch.no_grad():
        old = policy(OBS)
    of, theta = _flat_function(policy, lambda new: policy.kl(old, new).mean())
    hessian: Tensor = torch.autograd.functional.hessian(of, theta)  # type: ignore[assignment]
    return hessian


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_fisher_vector_product_is_the_kl_hessian_times_v_plus_damping(kind: str, damping: float) -> None:
    policy = _policy(kind, seed=1)
    hessian = _mean_kl_hessian(policy)
    with torch.no_grad():
        old = policy(OBS)
    params = list(policy.parameters())
    product = fisher_vector_product(lambda: policy.kl(old, policy(OBS)).mean(), params, damping)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):  # the graph is reused for several products
        v = torch.randn(hessian.shape[0], dtype=DT, generator=gen)
        torch.testing.assert_close(product(v), hessian @ v + damping * v, rtol=1e-10, atol=1e-12)


def test_the_kl_hessian_is_the_fisher_matrix_by_enumeration_categorical() -> None:
    policy = _policy("categorical", seed=3)
    of, theta = _flat_function(policy, lambda logits: torch.log_softmax(logits, -1))
    jacobian: Tensor = torch.autograd.functional.jacobian(of, theta)  # type: ignore[assignment]  # (S, A, P)
    with torch.no_grad():
        probs = torch.softmax(policy(OBS), -1)
    fisher = torch.einsum("sa,sap,saq->pq", probs, jacobian, jacobian) / OBS.shape[0]
    torch.testing.assert_close(_mean_kl_hessian(policy), fisher, rtol=1e-10, atol=1e-12)
    assert torch.linalg.eigvalsh(fisher).min() > -1e-12  # positive semi-definite, as a Fisher matrix is


def test_the_kl_hessian_is_the_fisher_matrix_of_the_gaussian_policy() -> None:
    # for N(mu, sigma^2) the Fisher matrix in (mu, log sigma) is diag(1 / sigma^2, 2), per action dimension
    policy = _policy("gaussian", seed=4)
    assert isinstance(policy, GaussianPolicy)
    of, theta = _flat_function(policy, lambda params: torch.cat([params[0], params[1].log()], -1))
    jacobian: Tensor = torch.autograd.functional.jacobian(of, theta)  # type: ignore[assignment]  # (S, 2 D, P)
    std = policy.log_std.detach().exp()
    weights = torch.cat([std.pow(-2), torch.full_like(std, 2.0)])
    fisher = torch.einsum("k,skp,skq->pq", weights, jacobian, jacobian) / OBS.shape[0]
    torch.testing.assert_close(_mean_kl_hessian(policy), fisher, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------- the natural-gradient step


def _batch(policy: Policy, seed: int, n: int = 128) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 3, generator=gen)
    with torch.no_grad():
        params = policy(obs)
        torch.manual_seed(seed)
        actions = policy.sample(params)
        log_probs = policy.log_prob(params, actions)
    advantages = torch.randn(n, generator=gen)
    return obs, actions, log_probs, advantages


def _distribution(policy: Policy, obs: Tensor) -> torch.distributions.Distribution:
    with torch.no_grad():
        params = policy(obs)
    if isinstance(policy, CategoricalPolicy):
        return torch.distributions.Categorical(logits=params)
    return torch.distributions.Independent(torch.distributions.Normal(params[0], params[1]), 1)


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
@pytest.mark.parametrize("max_kl", [1e-3, 0.05])
def test_an_accepted_natural_gradient_step_is_within_max_kl_and_improves_the_surrogate(
    kind: str, max_kl: float
) -> None:
    for seed in range(3):
        torch.manual_seed(seed)
        policy: Policy = CategoricalPolicy(3, 4, (8,)) if kind == "categorical" else GaussianPolicy(3, 2, (8,))
        obs, actions, log_probs, advantages = _batch(policy, seed)
        before = _distribution(policy, obs)
        step = natural_gradient_step(policy, obs, actions, log_probs, advantages, TRPOConfig(max_kl=max_kl))
        after = _distribution(policy, obs)
        kl = float(torch.distributions.kl_divergence(before, after).mean())
        assert step.accepted
        assert step.kl == pytest.approx(kl, rel=1e-4, abs=1e-9)
        assert 0 < kl <= max_kl
        ratio = (after.log_prob(actions) - log_probs).exp()
        assert step.improvement == pytest.approx(float((ratio * advantages).mean() - advantages.mean()), abs=1e-6)
        assert step.improvement > 0


def _shrinking_case() -> tuple[GaussianPolicy, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Advantages that reward actions near the mean (the step shrinks the std). Without damping, the natural
    gradient is long in directions of small curvature, where the measured KL far exceeds its quadratic model."""
    torch.manual_seed(0)
    policy = GaussianPolicy(3, 1, (8,))
    obs, actions, log_probs, _ = _batch(policy, 0, n=256)
    with torch.no_grad():
        advantages = 1.0 - 2.0 * (actions - policy(obs)[0]).abs().squeeze(-1)
    return policy, (obs, actions, log_probs, advantages)


def _recording_kl(policy: Policy, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The mean KLs the step measures (outside autograd: the backtracking line search)."""
    measured: list[float] = []
    kl = policy.kl

    def recording(old: Tensor, new: Tensor) -> Tensor:
        out = kl(old, new)
        if not torch.is_grad_enabled():
            measured.append(float(out.mean()))
        return out

    monkeypatch.setattr(policy, "kl", recording)
    return measured


def test_a_step_beyond_max_kl_is_refused_and_leaves_the_policy_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    config = TRPOConfig(max_kl=0.05, damping=0.0, cg_iterations=50, backtracks=1)
    policy, batch = _shrinking_case()
    before = [p.detach().clone() for p in policy.parameters()]
    measured = _recording_kl(policy, monkeypatch)
    step = natural_gradient_step(policy, *batch, config)
    assert measured[0] > config.max_kl  # the full step overshoots the trust region ...
    assert not step.accepted  # ... so it is refused
    assert (step.kl, step.improvement, step.backtracks) == (0.0, 0.0, 1)
    for a, b in zip(before, policy.parameters(), strict=True):
        assert torch.equal(a, b)
    # with room to backtrack, a shorter step is taken, within the limit
    policy, batch = _shrinking_case()
    measured = _recording_kl(policy, monkeypatch)
    step = natural_gradient_step(policy, *batch, replace(config, backtracks=20))
    assert step.accepted
    assert step.backtracks == len(measured) - 1 >= 1
    assert step.kl == measured[-1] <= config.max_kl
    assert step.improvement > 0


@pytest.fixture
def warn_always() -> Iterator[None]:
    """torch's warn-once warnings on every occurrence (else only the first test of the process would see them)."""
    before = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(before)


@pytest.mark.usefixtures("warn_always")
def test_the_natural_gradient_step_warns_nothing() -> None:
    policy, batch = _shrinking_case()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        natural_gradient_step(policy, *batch, TRPOConfig(max_kl=0.01))  # accepted
        natural_gradient_step(policy, *batch, TRPOConfig(max_kl=0.05, damping=0.0, backtracks=1))  # refused
