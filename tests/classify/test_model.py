"""The classifiers: the tutorial's CNN at 28x28 (its parameter count), any image size, bad arguments."""

from __future__ import annotations

import pytest
import torch

from kldiv.classify.model import KLRegularizedCNN, MLPClassifier, build_model


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_cnn_at_28x28_has_the_tutorials_layers_and_parameter_count() -> None:
    model = KLRegularizedCNN((1, 28, 28), 10)
    # conv 1->32 (3x3), conv 32->64 (3x3), linear 7*7*64 -> 256, linear 256 -> 10
    expected = (9 * 32 + 32) + (9 * 32 * 64 + 64) + (7 * 7 * 64 * 256 + 256) + (256 * 10 + 10)
    assert _count(model) == expected
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 9, 13), (1, 4, 4)])
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_every_model_maps_images_of_its_shape_to_logits(name: str, shape: tuple[int, int, int]) -> None:
    model = build_model(name, shape, num_classes=7)
    logits = model(torch.rand(5, *shape))
    assert logits.shape == (5, 7)
    assert torch.isfinite(logits).all()


def _tutorial_order(model: KLRegularizedCNN, x: torch.Tensor) -> torch.Tensor:
    """The CNN's function with the tutorial's order (ReLU, then max-pool), NCHW layout, same weights."""
    conv1, conv2 = model.features[0], model.features[3]
    h = torch.nn.functional.max_pool2d(torch.relu(conv1(x.contiguous())), 2)
    h = torch.nn.functional.max_pool2d(torch.relu(conv2(h)), 2)
    return model.classifier(h.reshape(h.shape[0], -1))  # type: ignore[no-any-return]


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (1, 9, 13)])
def test_cnn_is_the_tutorials_function_with_its_gradients(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = KLRegularizedCNN(shape, 10).double()
    x = torch.randn(6, *shape, dtype=torch.float64)
    ours = model(x)
    grads = torch.autograd.grad(ours.square().sum(), list(model.parameters()))
    theirs = _tutorial_order(model, x)
    expected = torch.autograd.grad(theirs.square().sum(), list(model.parameters()))
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_cnn_flatten_size_follows_the_image_shape() -> None:
    model = KLRegularizedCNN((1, 8, 8), 10)
    first = model.classifier[0]
    assert isinstance(first, torch.nn.Linear)
    assert first.in_features == 64 * 2 * 2


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: KLRegularizedCNN((1, 3, 8)), "height and width must be >= 4"),
        (lambda: KLRegularizedCNN((1, 8)), "image_shape"),  # type: ignore[arg-type]
        (lambda: KLRegularizedCNN((1, 8, 8), num_classes=1), "num_classes must be >= 2"),
        (lambda: MLPClassifier((1, 8, 8), hidden=(16, 0)), r"hidden\[1\]"),
        (lambda: build_model("resnet", (1, 8, 8)), "model must be one of 'cnn', 'mlp', got 'resnet'"),
    ],
)
def test_bad_arguments_name_the_argument(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_check_images_names_expected_and_received_shape() -> None:
    model = build_model("mlp", (1, 8, 8))
    with pytest.raises(ValueError, match=r"shape \(B, 1, 8, 8\) .* got \(2, 1, 28, 28\)"):
        model.check_images(torch.rand(2, 1, 28, 28))
    with pytest.raises(TypeError, match="floating-point"):
        model.check_images(torch.zeros(2, 1, 8, 8, dtype=torch.int64))
