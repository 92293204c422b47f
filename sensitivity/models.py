"""Models, each shaped by its dataset: ``build(name, input_shape, num_classes, model_args)``.

- ``logreg``: one linear layer on the flattened input.
- ``mlp``: ReLU layers of ``hidden`` sizes (default [100, 100]).
- ``lenet5``: conv(6, 5x5) - pool - conv(16, 5x5) - pool - 120 - 84 - classes, ReLU and max-pool;
  inputs under 32 px get 2 px of padding in the first conv (MNIST's 28x28 then sees LeNet's 32x32).
- ``vgg16``: the CIFAR VGG-16 with batch norm (13 conv3x3-BN-ReLU, 5 max-pools, one linear layer).
- ``resnet18``, ``resnet34``: torchvision's ResNet with the CIFAR stem (3x3 conv, stride 1, no max-pool).

Weights come from the global torch RNG: the trainer seeds it before calling :func:`build`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from torch import nn

from .spec import MODELS, check_input, check_model_args

__all__ = ["MODELS", "check_model_args", "check_input", "build"]

def _mlp(dim: int, hidden: list[int], classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(dim, width), nn.ReLU(inplace=True)]
        dim = width
    layers.append(nn.Linear(dim, classes))
    return nn.Sequential(*layers)


def _lenet5(shape: tuple[int, ...], classes: int) -> nn.Module:
    c, h, w = shape
    pad = 2 if min(h, w) < 32 else 0
    side = lambda s: ((s + 2 * pad - 4) // 2 - 4) // 2  # noqa: E731  conv5, pool2, conv5, pool2
    return nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side(h) * side(w), 120), nn.ReLU(inplace=True),
        nn.Linear(120, 84), nn.ReLU(inplace=True),
        nn.Linear(84, classes),
    )


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _vgg16(channels: int, classes: int) -> nn.Module:
    layers: list[nn.Module] = []
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            channels = v
    # 32x32 inputs are 1x1 here; the average makes larger inputs fit the same classifier
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


def _resnet(depth: int, channels: int, classes: int) -> nn.Module:
    import torchvision.models as tvm

    model = (tvm.resnet18 if depth == 18 else tvm.resnet34)(weights=None, num_classes=classes)
    # CIFAR stem: a 3x3 stride-1 conv and no max-pool keep the 32x32 resolution in the first stage
    model.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's convs
    model.maxpool = nn.Identity()
    return model


def build(name: str, input_shape: tuple[int, ...], num_classes: int, model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """Model `name` for inputs of `input_shape` and `num_classes` outputs (logits)."""
    args = check_model_args(name, model_args)
    input_shape = tuple(int(s) for s in input_shape)
    check_input(name, input_shape)
    dim = math.prod(input_shape)
    if name == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(dim, num_classes))
    if name == "mlp":
        return _mlp(dim, args["hidden"], num_classes)
    if name == "lenet5":
        return _lenet5(input_shape, num_classes)
    if name == "vgg16":
        return _vgg16(input_shape[0], num_classes)
    return _resnet(18 if name == "resnet18" else 34, input_shape[0], num_classes)
