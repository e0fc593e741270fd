"""Units and their activations for MIS (docs/methods.md §16.1, §16.5): channels of chosen layers, each image's
activation the spatial mean at a fixed tap point, collected with forward hooks in one batched pass.

Tap points: `conv` (the layer's output, the default), `post_bn` (the output of the first BatchNorm after the
layer, in module order, with as many channels), `post_relu` (ReLU applied to the post-BN value, or to the
layer's output where no BatchNorm follows; the network's own ReLU is not hooked, so an in-place ReLU is never
an issue). A layer without a matching BatchNorm is refused for `post_bn`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from prunelens.errors import PrunelensError
from prunelens.masks import MaskSet
from prunelens.modules import eval_mode

CONSTANT = 1e-8
"""A unit whose activation varies by less than this over the pool is constant (excluded)."""


def unit_layers(model: nn.Module, layers: list[str] | None, classifier: bool) -> list[str]:
    """The layers whose channels are units: `layers` (module names), by default every Conv2d; with
    `classifier`, also the last nn.Linear (its outputs: one unit per class)."""
    modules = dict(model.named_modules())
    if layers is not None:
        missing = [name for name in layers if name not in modules]
        if missing:
            raise PrunelensError(f"mis option layers: {type(model).__name__} has no module {missing[0]!r}")
        chosen = list(layers)
    else:
        chosen = [name for name, m in modules.items() if isinstance(m, nn.Conv2d)]
    if classifier:
        linears = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
        if not linears:
            raise PrunelensError(f"mis option classifier: {type(model).__name__} has no nn.Linear classifier")
        chosen.append(linears[-1])
    if not chosen:
        raise PrunelensError(f"mis: {type(model).__name__} has no Conv2d layer; name the unit layers (option layers)")
    return list(dict.fromkeys(chosen))


def _tap_modules(model: nn.Module, layers: list[str], tap: str) -> dict[str, nn.Module]:
    """Per unit layer the module whose output is hooked: the layer, or the BatchNorm after it."""
    named = list(model.named_modules())
    position = {name: i for i, (name, _) in enumerate(named)}
    out = {}
    for layer in layers:
        module = named[position[layer]][1]
        if tap == "conv" or isinstance(module, nn.Linear):
            out[layer] = module
            continue
        channels = getattr(module, "out_channels", None)
        follow = next((m for _, m in named[position[layer] + 1 :] if isinstance(m, nn.BatchNorm2d) and m.num_features == channels), None)
        if follow is None and tap == "post_bn":
            raise PrunelensError(f"mis option tap: no BatchNorm2d with {channels} channels after layer {layer!r}")
        out[layer] = follow or module
    return out


@torch.no_grad()
def activations(model: nn.Module, images: Iterable[Tensor], layers: list[str], tap: str) -> dict[str, Tensor]:
    """Per layer (images, channels) float32 activations on the CPU: spatial means at the tap point."""
    taps = _tap_modules(model, layers, tap)
    captured: dict[str, list[Tensor]] = {layer: [] for layer in layers}

    def hook(layer: str):
        def keep(_m: nn.Module, _a: tuple, out: Tensor) -> None:
            value = out.float()
            if tap == "post_relu":
                value = value.clamp_min(0)
            captured[layer].append((value.mean((2, 3)) if value.ndim == 4 else value.flatten(1)).cpu())

        return keep

    handles = [module.register_forward_hook(hook(layer)) for layer, module in taps.items()]
    try:
        with eval_mode(model):
            for x in images:
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {layer: torch.cat(values) for layer, values in captured.items()}


def exclusions(acts: dict[str, Tensor], model: nn.Module, masks: MaskSet | None) -> dict[str, Tensor]:
    """Per layer (channels,) int8 codes: 0 kept, 1 constant over the pool (max − min < 1e-8), 2 a filter removed
    by pruning (its weight mask all False: its output is a constant, too)."""
    modules = dict(model.named_modules())
    out = {}
    for layer, a in acts.items():
        code = torch.zeros(a.shape[1], dtype=torch.int8)
        code[(a.max(0).values - a.min(0).values) < CONSTANT] = 1
        name = f"{layer}.weight"
        if masks is not None and name in masks and isinstance(modules[layer], (nn.Conv2d, nn.Linear)):
            removed = ~masks[name].reshape(masks[name].shape[0], -1).any(1).cpu()
            code[removed] = 2
        out[layer] = code
    return out
