"""Converting a network with bayesianize, and the KL of a whole network."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from kldiv.bayes import BayesianConv2d, BayesianLinear, GaussianPrior, ScaleMixturePrior, bayesianize, kl_loss

F64 = torch.float64


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding="same", dilation=2, bias=False),
        nn.Flatten(),
        nn.Sequential(nn.Linear(4 * 4 * 4, 8), nn.Tanh(), nn.Linear(8, 3)),
    )


def test_conversion_preserves_outputs_when_variances_vanish() -> None:
    torch.manual_seed(0)
    model = _cnn()
    x = torch.randn(5, 2, 8, 8)
    expected = model(x)
    for mode in ("reparam", "local", "flipout"):
        bnn = bayesianize(model, mode=mode, init_std=1e-9)  # type: ignore[arg-type]
        assert sum(isinstance(m, BayesianConv2d | BayesianLinear) for m in bnn.modules()) == 4
        assert not any(type(m) in (nn.Linear, nn.Conv2d) for m in bnn.modules())
        assert torch.equal(bnn.eval()(x), expected)
        torch.testing.assert_close(bnn.train()(x), expected, rtol=0, atol=1e-6)
    assert all(type(m) is not BayesianLinear for m in model.modules())  # the original is untouched


def test_eval_outputs_are_identical_after_conversion() -> None:
    torch.manual_seed(1)
    model = _cnn().eval()
    x = torch.randn(3, 2, 8, 8)
    assert torch.equal(bayesianize(model)(x), model(x))


def test_options_dtype_and_training_flag_carry_over() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).to(F64).eval()
    prior = ScaleMixturePrior()
    bnn = bayesianize(model, prior=prior, mode="flipout", scale="log_var", init_std=0.01)
    for layer in (bnn[0], bnn[1]):
        assert isinstance(layer, BayesianLinear)
        assert layer.prior is prior
        assert layer.mode == "flipout"
        assert layer.scale == "log_var"
        assert layer.weight_mu.dtype == F64
        assert not layer.training
        torch.testing.assert_close(layer.posterior("weight")[1], torch.full_like(layer.weight_mu, 0.01))


def test_keep_weights_false_initializes_afresh() -> None:
    torch.manual_seed(2)
    model = nn.Linear(6, 5)
    with torch.no_grad():
        model.weight.fill_(7.0)
    fresh = bayesianize(model, keep_weights=False)
    assert isinstance(fresh, BayesianLinear)
    assert fresh.weight_mu.abs().max() < 1
    assert torch.equal(bayesianize(model).weight_mu, model.weight)


def test_inplace_shared_layers_and_subclasses() -> None:
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.MultiheadAttention(3, 1))
    out = bayesianize(model, inplace=True)
    assert out is model
    assert isinstance(model[0], BayesianLinear)
    assert model[0] is model[2]
    assert type(model[3].out_proj) is not BayesianLinear  # a subclass of nn.Linear, read directly by attention


def test_reflect_padding_is_refused_with_the_layer_path() -> None:
    model = nn.Sequential(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")))
    with pytest.raises(ValueError, match=r"model.0.0 has padding_mode='reflect'"):
        bayesianize(model)


def test_kl_loss_sums_over_every_weight_of_every_layer() -> None:
    """Sum over all weights, not a per-layer mean: against torch.distributions' Normal KL, weight by weight."""
    torch.manual_seed(3)
    prior = GaussianPrior(0.5)
    bnn = bayesianize(nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 1)).to(F64), prior=prior, init_std=0.1)
    terms = [
        kl_divergence(Normal(*m.posterior(name)), Normal(0.0, 0.5)).flatten()
        for m in bnn.modules()
        if isinstance(m, BayesianLinear)
        for name in ("weight", "bias")
    ]
    torch.testing.assert_close(kl_loss(bnn), torch.cat(terms).sum(), rtol=1e-12, atol=0)
    torch.testing.assert_close(kl_loss(bnn), bnn[0].kl_loss() + bnn[2].kl_loss(), rtol=1e-12, atol=0)


def test_kl_loss_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"model \(Sequential\) has no Bayesian layer"):
        kl_loss(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got dict"):
        kl_loss({})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "net"}, TypeError, r"model must be a torch\.nn\.Module, got str"),
        ({"mode": "exact"}, ValueError, "mode must be one of"),
        ({"init_std": -1.0}, ValueError, "init_std must be in"),
        ({"keep_weights": 1}, TypeError, "keep_weights must be a bool"),
        ({"prior": "normal"}, TypeError, "prior must have a log_prob"),
    ],
)
def test_bayesianize_bad_arguments_are_named(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    kwargs = {"model": nn.Sequential(nn.Linear(2, 2)), **kwargs}
    with pytest.raises(error, match=match):
        bayesianize(**kwargs)  # type: ignore[arg-type]
