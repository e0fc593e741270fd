"""Model registry and construction from a `ModelConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from prunelens.errors import PrunelensError
from prunelens.registry import Registry


class ModelFactory(Protocol):
    def __call__(
        self, num_classes: int, in_channels: int, image_size: tuple[int, int], options: dict[str, Any], weights: Path | None
    ) -> nn.Module: ...


MODELS: Registry[ModelFactory] = Registry("model")
"""name → factory(num_classes, in_channels, image_size, options, weights) → nn.Module.

A factory receives `weights` (a local file or None) because some models (torchvision, EfficientNet-Lite)
must load pretrained backbones *before* their head is replaced; others leave it to `load_state_file`.
"""


def load_state_file(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a state_dict saved with `torch.save` (`weights_only=True`); unwraps `{"state_dict": ...}`/`{"model": ...}`."""
    path = Path(path)
    if not path.is_file():
        raise PrunelensError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise PrunelensError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PrunelensError(f"{path}: expected a state_dict of tensors")
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True) -> None:
    """`load_state_dict` with a one-line error naming `source` on missing/unexpected keys or shape mismatch."""
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise PrunelensError(f"{source}: shape mismatch for {bad[0]}: {tuple(state[bad[0]].shape)} vs model {tuple(own[bad[0]].shape)}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        what = f"missing keys {missing[:3]}" if missing else f"unexpected keys {unexpected[:3]}"
        raise PrunelensError(f"{source}: does not match the model ({what})")


def resolve_options(model: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`defaults` overridden by `options`; an unknown key or a value whose type differs from its default's
    raises a PrunelensError naming `model.options.<key>` (an int is accepted for a float option)."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise PrunelensError(f"model.options.{unknown[0]}: unknown option for model {model!r} (known: {known})")
    return {key: _typed(key, options.get(key, default), default) for key, default in defaults.items()}


def _typed(key: str, value: Any, default: Any) -> Any:
    kind = type(default)
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:
        raise PrunelensError(f"model.options.{key}: expected {kind.__name__}, got {value!r}")
    return value


def check_min_size(model: str, image_size: tuple[int, int], minimum: int) -> None:
    """PrunelensError naming `model` and `minimum` if either side of `image_size` is below `minimum` px."""
    if min(image_size) < minimum:
        raise PrunelensError(f"model {model!r} needs images of at least {minimum}×{minimum} px, got {image_size[0]}×{image_size[1]}")
