"""Image classifiers: the tutorial's small CNN (for any image size) and an MLP student.

The models only map images ``(B, C, H, W)`` to logits ``(B, num_classes)``; the loss and its regularizer come from
:mod:`kldiv.losses`, the metrics from :mod:`kldiv.metrics`.

- :class:`KLRegularizedCNN`: two 3x3 convolutions (32 and 64 channels, padding 1), each followed by a ReLU and a
  2x2 max-pool, then a 256-unit hidden layer. The flatten size is ``64 * (H // 4) * (W // 4)``: 3136 for 28x28
  MNIST (the tutorial's ``7 * 7 * 64``), 256 for 8x8 digits.
- :class:`MLPClassifier`: a fully connected network (a small student for distillation). With one hidden layer of
  :data:`STUDENT_HIDDEN` units it has about a tenth of the CNN's parameters: 784-100-10 has 79,510 against the
  CNN's 824,458 on 28x28 MNIST (10.4x); 64-116-10 has 8,710 against 87,178 on the 8x8 digits (10.0x).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor, nn

__all__ = [
    "MODELS",
    "STUDENT_HIDDEN",
    "Classifier",
    "KLRegularizedCNN",
    "MLPClassifier",
    "build_model",
    "parameter_count",
]

MODELS = ("cnn", "mlp")
"""The names :func:`build_model` accepts."""

STUDENT_HIDDEN: dict[tuple[int, int, int], int] = {(1, 28, 28): 100, (1, 8, 8): 116}
"""The default hidden width of the MLP per image shape: about a tenth of the CNN's parameters."""
DEFAULT_HIDDEN = 128
"""The MLP's hidden width for other image shapes."""


def _check_shape(image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"image_shape must be three positive integers (channels, height, width), got {image_shape!r}")
    return (shape[0], shape[1], shape[2])


def _check_positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class Classifier(nn.Module):
    """Base class: ``forward(x)`` maps images ``(B, *image_shape)`` to logits ``(B, num_classes)``."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.image_shape = _check_shape(image_shape)
        self.num_classes = _check_positive("num_classes", num_classes)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (a classifier chooses between classes), got {num_classes}")

    def check_images(self, x: object, name: str = "x") -> Tensor:
        """``x`` as a floating tensor of shape ``(B, *image_shape)`` (``TypeError``/``ValueError`` otherwise)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of images, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor of images, got dtype {x.dtype}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            expected = "(B, " + ", ".join(map(str, self.image_shape)) + ")"
            raise ValueError(f"{name} must have shape {expected} for this model, got {tuple(x.shape)}")
        return x


class KLRegularizedCNN(Classifier):
    """The tutorial's CNN: conv(32)-ReLU-pool, conv(64)-ReLU-pool, linear(256)-ReLU, linear(num_classes).

    Each max-pool runs before its ReLU: ``relu(maxpool(x)) = maxpool(relu(x))`` exactly, because ReLU is
    nondecreasing, so the function (and its weights' names) is the tutorial's while the ReLU touches a quarter of
    the values; with channels-last activations a training step on CPU takes about half the time of the tutorial's
    layout. Works for any image of at least 4x4 pixels; the regularizer is not part of the model (it is chosen in
    :mod:`kldiv.classify.train`).
    """

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__(image_shape, num_classes)
        channels, height, width = self.image_shape
        if height < 4 or width < 4:
            raise ValueError(
                f"image_shape {self.image_shape}: the CNN pools twice by 2, so height and width must be >= 4"
            )
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, kernel_size=3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * (height // 4) * (width // 4), 256),
            nn.ReLU(),
            nn.Linear(256, self.num_classes),
        )

        # channels-last activations: on CPU the convolutions and max-pools run faster in this layout
        self.features.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        return self.classifier(self.features(x).flatten(1))  # type: ignore[no-any-return]


class MLPClassifier(Classifier):
    """A fully connected classifier: flatten, ``hidden`` ReLU layers, linear(num_classes)."""

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        *,
        hidden: tuple[int, ...] = (128,),
    ) -> None:
        super().__init__(image_shape, num_classes)
        sizes = tuple(hidden)
        for i, size in enumerate(sizes):
            _check_positive(f"hidden[{i}]", size)
        channels, height, width = self.image_shape
        widths = (channels * height * width, *sizes)
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], self.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def parameter_count(model: nn.Module) -> int:
    """The number of trainable scalars of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(
    name: str, image_shape: tuple[int, int, int], num_classes: int = 10, *, hidden: int | None = None
) -> Classifier:
    """The classifier called ``name`` (one of :data:`MODELS`) for images of ``image_shape``; ``hidden`` is the
    MLP's one hidden width (default: :data:`STUDENT_HIDDEN` for the shape, else 128) and is refused for the CNN."""
    if name == "cnn":
        if hidden is not None:
            raise ValueError(f"hidden is a width of the 'mlp' model; the CNN has fixed widths, got hidden={hidden!r}")
        return KLRegularizedCNN(image_shape, num_classes)
    if name == "mlp":
        width = STUDENT_HIDDEN.get(image_shape, DEFAULT_HIDDEN) if hidden is None else hidden
        return MLPClassifier(image_shape, num_classes, hidden=(width,))
    raise ValueError(f"model must be one of {', '.join(map(repr, MODELS))}, got {name!r}")
