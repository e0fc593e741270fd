"""Layer-collapse detection (METHODS §11): an empty layer, or no path from the input to the output.

Path test: forward an all-ones input through a copy of the model in which every masked weight is its mask
(0/1), every other weight its non-zero pattern 1[w ≠ 0], every bias 0, norms and zero-preserving activations
are identities and max-pooling is average pooling. All signals are then non-negative, and an output entry is
non-zero exactly when some input→output path of non-zero weights reaches it: output sum 0 ⇔ collapse.

The output of every Conv/Linear layer is binarised, x ↦ 1[x ≠ 0]. That keeps the zero pattern (all the test
reads) and keeps the signal bounded: raw path counts of deep nets overflow float32, and the next layer's
inf · 0 = NaN would then read as collapse.

Only modules are swapped; functional ops in `forward` (`F.relu`, `F.max_pool2d`, `torch.flatten`, adaptive
pooling, residual sums) stay. On a non-negative signal they are harmless: ReLU is the identity, and a max-pool
window is zero exactly when its average is. Gating activations with f(0) > 0 (Sigmoid, Hardsigmoid, e.g. in
squeeze-excitation) are kept as they are: their gate stays open even when the gating branch is pruned away,
as in the real network, so only the main path decides.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

_WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_ZERO_PRESERVING = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardtanh, nn.Tanh, nn.Softsign,
)  # fmt: skip
_MAX_POOLS = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}
_ADAPTIVE_MAX_POOLS = {
    nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool3d: nn.AdaptiveAvgPool3d,
}


def empty_layers(masks: Mapping[str, torch.Tensor]) -> list[str]:
    """Masked tensors with no kept entry: |A_l| = 0."""
    return [name for name, mask in masks.items() if not bool(mask.any())]


def _path_module(module: nn.Module) -> nn.Module | None:
    """The replacement of `module` in the path network, or None to keep it (a max-pool's dilation is dropped)."""
    if isinstance(module, _NORMS + _ZERO_PRESERVING):
        return nn.Identity()
    if type(module) in _MAX_POOLS:
        return _MAX_POOLS[type(module)](module.kernel_size, module.stride, module.padding, ceil_mode=module.ceil_mode)
    if type(module) in _ADAPTIVE_MAX_POOLS:
        return _ADAPTIVE_MAX_POOLS[type(module)](module.output_size)
    return None


def _swap_modules(model: nn.Module) -> None:
    """Replace, in place, every module `_path_module` maps to something else."""
    for name, module in list(model.named_modules()):
        new = _path_module(module) if name else None
        if new is not None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, new)


def _binarise(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    return output.ne(0).to(output.dtype)


def path_network(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """A float32 copy of `model` computing input→output reachability (module docstring); `model` is untouched."""
    net = copy.deepcopy(model).float().eval()
    _swap_modules(net)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name in masks:
                param.copy_(masks[name].to(param.device))
            elif name.rpartition(".")[2] == "bias":
                param.zero_()
            else:
                param.copy_(param.ne(0))
    for module in net.modules():
        if isinstance(module, _WEIGHT_LAYERS):
            module.register_forward_hook(_binarise)
    return net


def has_path(model: nn.Module, masks: Mapping[str, torch.Tensor], input_shape: Sequence[int]) -> bool:
    """Whether a path of kept weights leads from the input to the output; `input_shape` excludes the batch."""
    net = path_network(model, masks)
    device = next(net.parameters()).device
    with torch.no_grad():
        output = net(torch.ones(1, *input_shape, device=device))
    return bool(output.sum() > 0)


def collapse_report(model: nn.Module, masks: Mapping[str, torch.Tensor], input_shape: Sequence[int]) -> dict[str, Any]:
    """`{"collapsed": bool, "empty_layers": [names], "path": bool}`; collapsed = an empty layer or no path."""
    empty = empty_layers(masks)
    path = has_path(model, masks, input_shape)
    return {"collapsed": bool(empty) or not path, "empty_layers": empty, "path": path}
