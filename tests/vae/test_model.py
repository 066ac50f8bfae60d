"""VAE models: the tutorial's layer sizes, shapes and gradients of both models for both likelihoods, input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kldiv
from kldiv.vae import MLPVAE, VAE, ConvVAE, build_model, elbo_terms, vae_loss
from kldiv.vae.model import check_images, reparameterize

SHAPES = [(1, 28, 28), (1, 8, 8)]


def test_mlp_has_the_seeds_784_400_400_20_layers() -> None:
    model = MLPVAE()
    layers = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert layers == [(784, 400), (400, 400), (400, 20), (400, 20), (20, 400), (400, 400), (400, 784)]
    # By hand: encoder 784*400+400 + 400*400+400, heads 2 (400*20+20), decoder 20*400+400 + 400*400+400 + 400*784+784
    hand = (784 * 400 + 400) + (400 * 400 + 400) + 2 * (400 * 20 + 20) + (20 * 400 + 400) + (400 * 400 + 400)
    hand += 400 * 784 + 784
    assert hand == 973_624
    assert sum(p.numel() for p in model.parameters()) == hand


def test_gaussian_likelihood_adds_one_scalar_log_sigma_initialized_at_zero() -> None:
    bern = MLPVAE(likelihood="bernoulli")
    gauss = MLPVAE(likelihood="gaussian")
    assert bern.log_sigma is None
    assert gauss.log_sigma is not None
    assert gauss.log_sigma.shape == ()
    assert float(gauss.log_sigma.detach()) == 0.0
    assert sum(p.numel() for p in gauss.parameters()) == sum(p.numel() for p in bern.parameters()) + 1
    assert "log_sigma" in dict(gauss.named_parameters())


@pytest.mark.parametrize("name", ["mlp", "conv"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_shapes_and_gradients(name: str, shape: tuple[int, int, int], likelihood: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, z_dim=5, likelihood=likelihood)  # type: ignore[arg-type]
    assert isinstance(model, MLPVAE if name == "mlp" else ConvVAE)
    x = torch.rand(4, *shape)
    mu, log_var = model.encode(x)
    assert mu.shape == log_var.shape == (4, 5)
    decoded = model.decode(torch.randn(3, 4, 5))  # several samples per image
    assert decoded.shape == (3, 4, *shape)
    if likelihood == "gaussian":
        assert bool(((decoded >= 0) & (decoded <= 1)).all())  # sigmoid means
    terms = elbo_terms(model, x, generator=torch.Generator().manual_seed(1))
    assert terms.reconstruction.shape == (4,)
    assert terms.kl_per_dim.shape == (4, 5)
    assert terms.kl.shape == (4,)
    vae_loss(terms, beta=0.5).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert bool(torch.isfinite(p.grad).all()), pname
        assert float(p.grad.abs().sum()) > 0, f"{pname} gets no gradient"


@pytest.mark.parametrize("shape", [(1, 5, 7), (2, 9, 4), (1, 1, 1)])
def test_conv_restores_odd_image_sizes(shape: tuple[int, int, int]) -> None:
    model = ConvVAE(shape, z_dim=3, channels=(4, 8, 8))
    decoded = model.decode(model.encode(torch.rand(2, *shape))[0])
    assert decoded.shape == (2, *shape)


def test_forward_uses_the_given_noise() -> None:
    torch.manual_seed(0)
    model = MLPVAE((1, 8, 8), hidden=(16,), z_dim=3)
    x = torch.rand(5, 1, 8, 8)
    eps = torch.randn(5, 3)
    decoded, mu, log_var = model(x, eps=eps)
    torch.testing.assert_close(decoded, model.decode(mu + torch.exp(0.5 * log_var) * eps))
    torch.testing.assert_close(reparameterize(mu, log_var, eps), mu + torch.sqrt(torch.exp(log_var)) * eps)
    # The generator path draws the same noise as torch.randn with that generator.
    drawn, _, _ = model(x, generator=torch.Generator().manual_seed(3))
    expected, _, _ = model(x, eps=torch.randn(5, 3, generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(drawn, expected)
    with pytest.raises(ValueError, match=r"eps must have shape \(5, 3\) \(batch, z_dim\), got \(5, 4\)"):
        model(x, eps=torch.randn(5, 4))


def test_images_of_the_wrong_shape_are_rejected_with_both_shapes() -> None:
    model = MLPVAE((1, 8, 8), hidden=(16,), z_dim=2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\) .* got \(4, 64\)"):
        check_images(model, torch.rand(4, 64))
    with pytest.raises(ValueError, match=r"got \(4, 1, 28, 28\)"):
        elbo_terms(model, torch.rand(4, 1, 28, 28))
    with pytest.raises(TypeError, match="floating-point"):
        check_images(model, torch.ones(4, 1, 8, 8, dtype=torch.uint8))


def test_bernoulli_needs_values_in_unit_interval_and_names_the_first_bad_one() -> None:
    model = MLPVAE((1, 8, 8), hidden=(16,), z_dim=2)
    x = torch.rand(3, 1, 8, 8)
    x[1, 0, 2, 5] = 1.5
    with pytest.raises(ValueError, match=r"\[0, 1\] for the Bernoulli likelihood, got 1.5 at index \(1, 0, 2, 5\)"):
        elbo_terms(model, x)
    with kldiv.validation(False):
        check_images(model, x)  # value checks off
    gaussian = MLPVAE((1, 8, 8), hidden=(16,), z_dim=2, likelihood="gaussian")
    check_images(gaussian, x - 2.0)  # a Gaussian likelihood takes any real pixels


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="model must be one of \\['conv', 'mlp'\\], got 'resnet'"):
        build_model("resnet", (1, 8, 8))
    with pytest.raises(ValueError, match="likelihood must be one of"):
        MLPVAE(likelihood="laplace")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="z_dim must be a positive integer, got 0"):
        MLPVAE(z_dim=0)
    with pytest.raises(ValueError, match="image_shape must be three positive integers"):
        MLPVAE((28, 28))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hidden must be a non-empty sequence"):
        MLPVAE(hidden=())
    with pytest.raises(ValueError, match="channels must be a non-empty sequence"):
        ConvVAE(channels=(32, 0))


def test_base_class_asks_subclasses_for_encode_and_decode() -> None:
    model = VAE((1, 2, 2), 2)
    with pytest.raises(NotImplementedError, match="VAE must implement encode"):
        model.encode(torch.rand(1, 1, 2, 2))
    with pytest.raises(NotImplementedError, match="VAE must implement decode"):
        model.decode(torch.rand(1, 2))
