"""The MI bounds: at the optimal critic of correlated Gaussians (known in closed form) each equals its analytic
value within Monte Carlo error; the laws between them; MINE's and SMILE's gradients against their formulas; the
tutorial's estimator shown to be no bound."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kldiv.mi import (
    MineState,
    correlated_gaussians,
    dv,
    gaussian_log_density_ratio,
    infonce,
    js,
    mine,
    nwj,
    rho_for_mi,
    smile,
)

MI, DIM, BATCH, REPEATS = 1.0, 2, 256, 200


@pytest.fixture(scope="module")
def optimal() -> dict[str, torch.Tensor]:
    """Each bound at the optimal critic on ``REPEATS`` independent batches (NWJ's optimal critic is shifted by 1)."""
    g = torch.Generator().manual_seed(0)
    values: dict[str, list[float]] = {"dv": [], "nwj": [], "infonce": [], "smile": [], "mine": []}
    state = MineState(None)
    for _ in range(REPEATS):
        x, y = correlated_gaussians(BATCH, mi=MI, dim=DIM, generator=g)
        scores = gaussian_log_density_ratio(x.double(), y.double(), mi=MI)
        values["dv"].append(float(dv(scores)))
        values["nwj"].append(float(nwj(scores + 1.0)))
        values["infonce"].append(float(infonce(scores)))
        values["smile"].append(float(smile(scores, tau=5.0)))
        value, state = mine(scores, state)
        values["mine"].append(float(value))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}


def test_the_generator_holds_the_asked_mutual_information() -> None:
    # I = -(d/2) log(1 - rho^2), with rho measured from 200k samples (standard error ~ 4e-4)
    x, y = correlated_gaussians(200_000, mi=2.0, dim=4, generator=torch.Generator().manual_seed(1))
    rho = float((x * y).mean() / (x.std() * y.std()))
    assert rho == pytest.approx(rho_for_mi(2.0, 4), abs=0.01)
    assert -2.0 * math.log(1 - rho**2) == pytest.approx(2.0, abs=0.05)


def test_the_optimal_critic_is_the_log_density_ratio() -> None:
    from scipy import stats

    g = torch.Generator().manual_seed(2)
    x, y = correlated_gaussians(40, mi=MI, dim=DIM, generator=g)
    rho = rho_for_mi(MI, DIM)
    xs, ys = x.double().numpy(), y.double().numpy()
    conditional = stats.norm.logpdf(ys[None, :, :], loc=rho * xs[:, None, :], scale=math.sqrt(1 - rho**2)).sum(-1)
    expected = conditional - stats.norm.logpdf(ys).sum(-1)[None, :]
    got = gaussian_log_density_ratio(x.double(), y.double(), mi=MI).numpy()
    assert abs(got - expected).max() < 1e-10
    # and E_Q[e^{T*}] = 1: the density ratio has mean 1 under the product of the marginals (1.6M pairs)
    x, y = correlated_gaussians(1265, mi=MI, dim=DIM, generator=g)
    ratio = gaussian_log_density_ratio(x.double(), y.double(), mi=MI).exp()
    off = ratio[~torch.eye(len(x), dtype=torch.bool)]
    assert float(off.mean()) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("bound", ["dv", "nwj", "mine", "smile"])
def test_each_bound_at_the_optimal_critic_equals_the_mi_within_four_standard_errors(
    optimal: dict[str, torch.Tensor], bound: str
) -> None:
    values = optimal[bound]
    se = float(values.std()) / math.sqrt(REPEATS)
    # dv's (and mine's, smile's) log of a mean has a bias of order var / B^2; smile's clipping at 5 rarely acts here
    assert abs(float(values.mean()) - MI) < 4 * se + 0.002


def test_infonce_at_the_optimal_critic_is_below_the_mi_by_its_small_bias(optimal: dict[str, torch.Tensor]) -> None:
    values = optimal["infonce"]
    se = float(values.std()) / math.sqrt(REPEATS)
    # E[InfoNCE] <= I; at the optimal critic the gap is E log(mean_j p(y_j|x_i)/p(y_j)) ~ (e^I - 1) / B (small here)
    assert float(values.mean()) < MI + 4 * se
    assert float(values.mean()) > MI - 4 * (math.exp(MI) - 1) / BATCH - 4 * se


square = st.integers(2, 12).flatmap(
    lambda b: arrays("float64", (b, b), elements=st.floats(-30, 30, allow_nan=False, allow_infinity=False))
)


@settings(max_examples=200, deadline=None)
@given(square)
def test_infonce_never_exceeds_log_batch_and_dv_is_at_least_nwj(values: object) -> None:
    scores = torch.as_tensor(values)
    b = scores.shape[0]
    assert float(infonce(scores)) <= math.log(b) + 1e-12
    assert float(dv(scores)) >= float(nwj(scores)) - 1e-9 * (1 + abs(float(dv(scores))))  # log z <= z / e


@settings(max_examples=100, deadline=None)
@given(square, st.floats(-20, 20))
def test_dv_and_infonce_ignore_a_constant_shift_of_the_critic(values: object, c: float) -> None:
    scores = torch.as_tensor(values)
    assert float(dv(scores + c)) == pytest.approx(float(dv(scores)), abs=1e-9)
    assert float(infonce(scores + c)) == pytest.approx(float(infonce(scores)), abs=1e-9)


def test_mine_gradient_divides_by_the_moving_average() -> None:
    torch.manual_seed(0)
    b, momentum = 6, 0.9
    previous = torch.tensor(0.3, dtype=torch.float64)  # log of the average so far
    scores = torch.randn(b, b, dtype=torch.float64, requires_grad=True)
    value, state = mine(scores, MineState(previous), momentum=momentum)
    value.backward()
    off = ~torch.eye(b, dtype=torch.bool)
    batch_mean = float(scores.detach()[off].exp().mean())
    average = momentum * math.exp(0.3) + (1 - momentum) * batch_mean
    assert state.log_average is not None
    assert float(state.log_average) == pytest.approx(math.log(average), rel=1e-12)
    expected = torch.where(off, -scores.detach().exp() / (b * (b - 1) * average), torch.eye(b, dtype=torch.float64) / b)
    assert scores.grad is not None
    torch.testing.assert_close(scores.grad, expected, rtol=1e-12, atol=1e-15)
    assert float(value.detach()) == pytest.approx(float(dv(scores.detach())), rel=1e-12)  # the value is DV's


def test_mine_first_batch_starts_the_average_and_then_equals_dv_gradient() -> None:
    scores = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    value, _ = mine(scores, MineState(None))
    (grad_mine,) = torch.autograd.grad(value, scores)
    (grad_dv,) = torch.autograd.grad(dv(scores), scores)
    torch.testing.assert_close(grad_mine, grad_dv)


def test_smile_value_is_clipped_dv_and_its_gradient_is_js() -> None:
    scores = (4 * torch.randn(8, 8, dtype=torch.float64)).requires_grad_()
    value = smile(scores, tau=2.0)
    off = ~torch.eye(8, dtype=torch.bool)
    clipped = scores.detach().clamp(-2, 2)
    expected = scores.detach().diagonal().mean() - torch.log(clipped[off].exp().mean())
    assert float(value.detach()) == pytest.approx(float(expected), rel=1e-12)
    (grad_smile,) = torch.autograd.grad(value, scores)
    (grad_js,) = torch.autograd.grad(js(scores), scores)
    torch.testing.assert_close(grad_smile, grad_js)
    assert float(smile(scores.detach(), tau=None)) == pytest.approx(float(dv(scores.detach())), rel=1e-12)


@pytest.mark.parametrize(
    ("scores", "error"),
    [
        (torch.zeros(3, 4), ValueError),
        (torch.zeros(1, 1), ValueError),
        (torch.zeros(3, 3, dtype=torch.int64), TypeError),
        (torch.tensor([[0.0, math.nan], [0.0, 0.0]]), ValueError),
        (torch.tensor([[0.0, 0.0], [math.inf, 0.0]]), ValueError),
    ],
)
def test_bad_scores_are_refused(scores: torch.Tensor, error: type[Exception]) -> None:
    for bound in (dv, nwj, infonce, js, smile, lambda s: mine(s, MineState(None))[0]):
        with pytest.raises(error, match="scores"):
            bound(scores)


def test_js_against_an_explicit_sigmoid_computation() -> None:
    scores = 3 * torch.randn(7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    off = ~torch.eye(7, dtype=torch.bool)
    p = torch.sigmoid(scores)
    expected = torch.log(p.diagonal()).mean() + torch.log(1 - p[off]).mean()
    assert float(js(scores)) == pytest.approx(float(expected), rel=1e-12)


def test_the_generator_refuses_what_float32_cannot_hold_and_mismatched_pairs() -> None:
    with pytest.raises(ValueError, match="mi / dim"):
        correlated_gaussians(10, mi=100.0, dim=2)
    x, y = correlated_gaussians(4, mi=1.0, dim=2)
    with pytest.raises(ValueError, match=r"\(B, d\)"):
        gaussian_log_density_ratio(x[:, :1], y, mi=1.0)


def _tutorial_estimate(joint: torch.Tensor, marginal: torch.Tensor, features: object) -> torch.Tensor:
    """The tutorial's estimator, as written there: the features are averaged over the batch first."""
    joint_logits = features(joint).mean(dim=0)  # type: ignore[operator]
    marginal_logits = features(marginal).mean(dim=0)  # type: ignore[operator]
    return torch.mean(joint_logits) - torch.log(torch.mean(torch.exp(marginal_logits)))


def test_the_tutorials_estimator_is_not_a_bound() -> None:
    # X, Y with 0.5 nats of mutual information; the critic T(x, y) = a x y. The tutorial's formula averages T over
    # the batch before exponentiating, which gives a (E_P[xy] - E_Q[xy]) = a rho: any value, far above the truth.
    # The DV bound with the same critic stays below the mutual information (here a < 1, so E_Q[e^T] is finite).
    g = torch.Generator().manual_seed(3)
    x, y = correlated_gaussians(100_000, mi=0.5, dim=1, generator=g)
    joint = torch.cat((x, y), 1)
    marginal = torch.cat((x, y[torch.randperm(len(y), generator=g)]), 1)
    rho = rho_for_mi(0.5, 1)
    for a in (10.0, 100.0):
        estimate = float(_tutorial_estimate(joint, marginal, lambda s, a=a: a * s[:, :1] * s[:, 1:]))
        assert estimate == pytest.approx(a * rho, rel=0.05)
        assert estimate > 5 * 0.5
    a = 0.5
    scores = a * x[:2000] @ y[:2000].T
    assert float(dv(scores)) < 0.5
