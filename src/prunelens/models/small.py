"""Small networks trained from scratch: LeNet-300-100, Conv-2/4/6 (Frankle & Carbin 2019), and OpenLTH's
CIFAR ResNet and VGG (`cifar_resnet_N`, `cifar_vgg_N`).

All use plain `nn.Conv2d`/`nn.Linear`/`nn.BatchNorm2d` (pruning masks their `.weight`), a separate
`nn.ReLU(inplace=False)` module per activation (for Grad-CAM hooks) and register the classifier `fc` last.
The ResNet and VGG parameter names match OpenLTH's, so its checkpoints load as they are.

This module also holds the helpers every model factory shares: `resolve_options` and `init_weights`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from prunelens.errors import PrunelensError
from prunelens.models.base import MODELS, check_min_size, load_into, load_state_file, resolve_options

MAX_WIDTH = 16.0
"""Largest width multiplier of the small networks (×16 is already a 1024-channel Conv-2)."""


def _positive(key: str, value: float, most: float = MAX_WIDTH) -> None:
    if not 0 < value <= most:
        raise PrunelensError(f"model.options.{key}: {value!r} is not in (0, {most:g}]")


def init_weights(model: nn.Module) -> nn.Module:
    """OpenLTH's `kaiming_normal` init for Conv/Linear weights, zero biases, BatchNorm weight 1 / bias 0."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear + ReLU for each consecutive pair in `sizes`."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers)


class LeNet(nn.Module):
    """Fully connected LeNet: flatten → hidden layers (ReLU) → `fc`; any input shape."""

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], hidden: Sequence[int] = (300, 100)):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc_layers = _mlp([in_channels * image_size[0] * image_size[1], *hidden])
        self.fc = nn.Linear(hidden[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.fc_layers(self.flatten(x)))


class ConvNet(nn.Module):
    """Frankle & Carbin's Conv-(2·blocks): per block two 3×3 convs (64·2^i channels, ReLU) and a 2×2
    max-pool, then fc 256 → 256 → classes; `width` scales every hidden width. The flatten size follows
    `image_size`, which must be ≥ 2^blocks."""

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], blocks: int, width: float = 1.0):
        super().__init__()
        _positive("width", width)
        check_min_size(f"conv{2 * blocks}", image_size, 2**blocks)
        layers: list[nn.Module] = []
        channels = in_channels
        for block in range(blocks):
            out = _scaled(64 * 2**block, width)
            for _ in range(2):
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU()]
                channels = out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        rows, cols = (side // 2**blocks for side in image_size)
        hidden = _scaled(256, width)
        self.fc_layers = _mlp([channels * rows * cols, hidden, hidden])
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.fc_layers(self.flatten(self.features(x))))


class BasicBlock(nn.Module):
    """OpenLTH's CIFAR ResNet block: two 3×3 conv-BN, shortcut 1×1 conv-BN when the shape changes."""

    def __init__(self, f_in: int, f_out: int, downsample: bool):
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(f_out, f_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(f_in, f_out, 1, stride=stride, bias=False), nn.BatchNorm2d(f_out))
            if downsample or f_in != f_out
            else nn.Sequential()
        )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """OpenLTH's `cifar_resnet_<depth>_<width>`: a 3×3 stem, three stages of (depth − 2) / 6 blocks with
    width, 2·width, 4·width channels (stride 2 at stages 2 and 3), global average pool, `fc`. Any input size."""

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], depth: int = 20, width: int = 16):
        super().__init__()
        if depth < 8 or depth > 1000 or (depth - 2) % 6:
            raise PrunelensError(f"model.options.depth: {depth} is not 6n+2 with 1 ≤ n ≤ 166 (e.g. 20, 32, 44, 56)")
        _positive("width", width, most=1024)
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        blocks, channels = [], width
        for stage in range(3):
            for index in range((depth - 2) // 6):
                blocks.append(BasicBlock(channels, width * 2**stage, downsample=stage > 0 and index == 0))
                channels = width * 2**stage
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.blocks(self.relu(self.bn(self.conv(x)))))))


VGG_PLANS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}
"""OpenLTH's `cifar_vgg` plans: conv widths, "M" = 2×2 max-pool."""


class ConvBN(nn.Module):
    """3×3 conv (with bias, as OpenLTH) → BatchNorm → ReLU."""

    def __init__(self, f_in: int, f_out: int):
        super().__init__()
        self.conv = nn.Conv2d(f_in, f_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(f_out)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class CifarVGG(nn.Module):
    """OpenLTH's `cifar_vgg_<depth>`: conv-BN-ReLU stacks with 4 max-pools, global average pool, one `fc`.
    `width` scales the channels. Inputs of at least 16×16 px (32×32 gives OpenLTH's network exactly)."""

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int], depth: int = 16, width: float = 1.0):
        super().__init__()
        if depth not in VGG_PLANS:
            raise PrunelensError(f"model.options.depth: {depth} is not one of {sorted(VGG_PLANS)}")
        _positive("width", width)
        check_min_size(f"cifar_vgg_{depth}", image_size, 16)
        layers: list[nn.Module] = []
        channels = in_channels
        for spec in VGG_PLANS[depth]:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(ConvBN(channels, _scaled(int(spec), width)))
                channels = _scaled(int(spec), width)
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.layers(x))))


def _register(name: str, build: Callable[..., nn.Module], defaults: Mapping[str, Any]) -> None:
    """Register `build(num_classes, in_channels, image_size, **options)`, initialised, then loading `weights` (strict)."""

    def factory(
        num_classes: int, in_channels: int, image_size: tuple[int, int], options: dict[str, Any], weights: Path | None
    ) -> nn.Module:
        model = init_weights(build(num_classes, in_channels, image_size, **resolve_options(name, options, defaults)))
        if weights is not None:
            load_into(model, load_state_file(weights), str(weights))
        return model

    MODELS.register(name)(factory)


_register("lenet_300_100", LeNet, {})
for _blocks in (1, 2, 3):
    _register(f"conv{2 * _blocks}", partial(ConvNet, blocks=_blocks), {"width": 1.0})
_register("cifar_resnet", CifarResNet, {"depth": 20, "width": 16})
_register("cifar_resnet_20", partial(CifarResNet, depth=20), {"width": 16})
_register("cifar_vgg", CifarVGG, {"depth": 16, "width": 1.0})
for _depth in (11, 16):
    _register(f"cifar_vgg_{_depth}", partial(CifarVGG, depth=_depth), {"width": 1.0})
