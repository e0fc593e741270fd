"""Model registry: `build_model(cfg, ...)` looks a network up by name in `MODELS` and builds it.

Importing this package registers the small networks (`small`) and the ImageNet architectures (`zoo`).
"""

from __future__ import annotations

from torch import nn

from prunelens.config import ModelConfig
from prunelens.masks import classifier_name
from prunelens.models import small, zoo
from prunelens.models.base import MODELS, load_into, load_state_file, resolve_options
from prunelens.models.zoo import EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD

__all__ = [
    "EFFICIENTNET_LITE_MEAN",
    "EFFICIENTNET_LITE_STD",
    "MODELS",
    "build_model",
    "build_untrained",
    "classifier_name",
    "load_into",
    "load_state_file",
    "resolve_options",
    "small",
    "zoo",
]


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int, image_size: tuple[int, int]) -> nn.Module:
    """Build `cfg.name` for `num_classes` outputs and (in_channels, *image_size) inputs, loading `cfg.weights`
    if set. Unknown names, bad options and unreadable weights raise a one-line PrunelensError."""
    factory = MODELS.get(cfg.name)
    return factory(num_classes, in_channels, tuple(image_size), dict(cfg.options), cfg.weights)


def build_untrained(cfg: ModelConfig, num_classes: int, in_channels: int, image_size: tuple[int, int]) -> nn.Module:
    """The architecture at a random initialisation: no weights file, and built-in pretrained weights (e.g.
    EfficientNet-Lite0's) re-drawn with each module's `reset_parameters`."""
    model = build_model(cfg.model_copy(update={"weights": None}), num_classes, in_channels, image_size)
    if getattr(model, "is_pretrained", False):
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        model.is_pretrained = False
    return model
