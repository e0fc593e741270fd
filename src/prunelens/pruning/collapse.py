"""Layer collapse (docs/methods.md §12). Structural: an empty layer, or no path from the input to the output.
Functional: constant outputs, or accuracy at chance — a network can compute nothing with every layer alive.

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

from prunelens.modules import NORMS, WEIGHT_LAYERS

_ZERO_PRESERVING = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardtanh, nn.Tanh, nn.Softsign,
)  # fmt: skip
CONSTANT_OUTPUTS = 1e-6
"""Relative logit spread at or below which outputs count as constant."""
CHANCE_ALPHA = 0.01
"""Significance level of the binomial test of accuracy against the majority-class share."""
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
    if isinstance(module, NORMS + _ZERO_PRESERVING):
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
            if name.rpartition(".")[2] == "bias":  # a bias opens no path from the input, masked or not
                param.zero_()
            elif name in masks:
                param.copy_(masks[name].to(param.device))
            else:
                param.copy_(param.ne(0))
    for module in net.modules():
        if isinstance(module, WEIGHT_LAYERS):
            module.register_forward_hook(_binarise)
    return net


def has_path(model: nn.Module, masks: Mapping[str, torch.Tensor], input_shape: Sequence[int]) -> bool:
    """Whether a path of kept weights leads from the input to the output; `input_shape` excludes the batch."""
    net = path_network(model, masks)
    device = next(net.parameters()).device
    with torch.no_grad():
        output = net(torch.ones(1, *input_shape, device=device))
    return bool(output.sum() > 0)


def structural_collapse(model: nn.Module, masks: Mapping[str, torch.Tensor], input_shape: Sequence[int]) -> dict[str, Any]:
    """`{"empty_layers": [names], "path": bool}`: an emptied layer, or no input→output path of kept weights."""
    return {"empty_layers": empty_layers(masks), "path": has_path(model, masks, input_shape)}


def functional_collapse(top1: float, n: int, majority: float, output_range: float) -> dict[str, Any]:
    """`constant_outputs`: the logits do not vary over the evaluation set (relative spread ≤ 1e-6);
    `at_chance`: top-1 accuracy is not significantly above the majority-class share (one-sided binomial test,
    p > 0.01; `chance_p`). Either one means the network computes nothing useful, whatever its structure."""
    from scipy.stats import binomtest

    p = float(binomtest(round(top1 * n), n, min(majority, 1.0), alternative="greater").pvalue) if n else 1.0
    return {"constant_outputs": output_range <= CONSTANT_OUTPUTS, "at_chance": p > CHANCE_ALPHA, "chance_top1": majority, "chance_p": p}


def collapse_report(structural: dict[str, Any], functional: dict[str, Any]) -> dict[str, Any]:
    """Both checks, `collapsed` if either fired, and `collapse`: which ones fired (comma-separated, "" if none)."""
    fired = [
        name for name, hit in (("empty layer", bool(structural["empty_layers"])), ("no path", not structural["path"]),
                               ("constant outputs", functional["constant_outputs"]), ("at chance", functional["at_chance"]))
        if hit
    ]  # fmt: skip
    return {
        **structural, **functional, "collapse": ", ".join(fired), "collapsed": bool(fired),
        "collapsed_structural": bool(structural["empty_layers"]) or not structural["path"],
        "collapsed_functional": functional["constant_outputs"] or functional["at_chance"],
    }  # fmt: skip
