"""Models: a small MLP and CNN for the 8x8 digits, torchvision architectures for ImageFolder."""

from __future__ import annotations

import math

from torch import nn


def mlp(input_shape: tuple[int, ...], num_classes: int, width: int = 512) -> nn.Module:
    """PAPER.md's 64-512-512-10 MLP (for digits)."""
    d = math.prod(input_shape)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_classes)
    )


def cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Two 3x3 convolutions, one 2x2 max-pool, two linear layers (about 0.15M parameters on 8x8)."""
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (h // 2) * (w // 2), 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def build(arch: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if arch == "mlp":
        return mlp(input_shape, num_classes)
    if arch == "cnn":
        return cnn(input_shape, num_classes)
    import torchvision.models as tvm

    if arch == "inception_v3":
        # As the official trainer: no auxiliary logits (one output, one loss).
        return tvm.inception_v3(weights=None, num_classes=num_classes, aux_logits=False, init_weights=True)
    return tvm.get_model(arch, weights=None, num_classes=num_classes)


def is_convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())
