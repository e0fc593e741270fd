"""Structured selection: whole output filters or whole input channels per tensor (docs/methods.md §5).

A *group* is a slice of a ≥2-D weight along one dimension: an output filter / Linear row (dim 0, granularity
`filters`) or an input channel / Linear column (dim 1, granularity `channels`, the connection sparsity of
Seuffert & von Rad). A group is alive while any of its entries is kept.

Rate per layer: each tensor loses round(fraction · alive groups) of its *remaining* groups per call, so
repeated calls compound like repeated `torch.nn.utils.prune.ln_structured` calls (two calls at 0.5 leave
25 %); Python's `round` (half to even) is the rounding torch uses for a float amount. There is no global
structured ranking (`torch.nn.utils.prune` refuses it too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from prunelens.masks import MaskSet
from prunelens.modules import WEIGHT_LAYERS
from prunelens.pruning.select import own_fractions
from prunelens.seeding import generator, name_key

Granularity = Literal["filters", "channels"]
GROUP_DIM: dict[str, int] = {"filters": 0, "channels": 1}


def structured_weights(model: nn.Module, masks: MaskSet, granularity: Granularity) -> dict[str, torch.Tensor]:
    """The masked Conv/Linear weights `granularity` applies to.

    Grouped and depthwise convs are left out for `channels`: their dim 1 indexes the input channels *within
    a group*, so a "channel" there is not one input channel of the layer (docs/methods.md §5.3).
    """
    weights = {}
    for name, module in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        if key not in masks or not isinstance(module, WEIGHT_LAYERS):
            continue
        if granularity == "channels" and getattr(module, "groups", 1) > 1:
            continue
        weights[key] = module.weight.detach()
    return weights


def layer_rates(names: list[str], fraction: float, layer_fractions: dict[str, float]) -> dict[str, float]:
    """Per tensor: the rate of the first `layer_fractions` pattern matching its name, else `fraction`."""
    own = own_fractions(names, layer_fractions)
    return {n: own.get(n, fraction) for n in names}


def by_group(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """`tensor` as (groups along `dim`, entries per group)."""
    return tensor.transpose(0, dim).reshape(tensor.shape[dim], -1)


def group_alive(mask: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """Bool per group of a ≥2-D mask: True while any entry of the group is kept."""
    return by_group(mask, GROUP_DIM[granularity]).any(1)


def group_density(masks: MaskSet, granularity: Granularity) -> dict[str, float]:
    """Fraction of alive groups (filters or input channels) of every ≥2-D mask; 1-D masks are left out."""
    alive = {name: group_alive(m, granularity) for name, m in masks.items() if m.dim() >= 2}
    return {name: int(a.sum()) / a.numel() for name, a in alive.items()}


def _scores(name: str, weight: torch.Tensor, mask: torch.Tensor, dim: int, norm: float, random: bool, seed: int) -> torch.Tensor:
    """Per group: the Ln norm of the kept weights, or (random) a U(0, 1) draw fixed by (seed, name)."""
    if random:
        return torch.rand(weight.shape[dim], generator=generator(seed, "prune_groups", name_key(name)), dtype=torch.float64)
    kept = by_group(weight.detach().cpu().to(torch.float64) * mask.cpu(), dim)
    return kept.abs().pow(norm).sum(1).pow(1 / norm)


def _keep_groups(scores: torch.Tensor, alive: torch.Tensor, fraction: float) -> torch.Tensor:
    """`alive` minus its round(fraction · alive) lowest-scoring groups (ties: lower index removed first)."""
    idx = alive.nonzero().squeeze(1)
    k = round(fraction * idx.numel())
    drop = idx[torch.sort(scores[idx], stable=True).indices[:k]]
    keep = alive.clone()
    keep[drop] = False
    return keep


def _expand(keep: torch.Tensor, shape: torch.Size, dim: int) -> torch.Tensor:
    """A per-group bool broadcast to a mask of `shape` along `dim`."""
    view = [1] * len(shape)
    view[dim] = -1
    return keep.view(view).expand(shape)


def select_groups(
    weights: Mapping[str, torch.Tensor],
    masks: MaskSet,
    fraction: float | Mapping[str, float],
    granularity: Granularity,
    norm: float = 1.0,
    random: bool = False,
    seed: int = 0,
) -> MaskSet:
    """Remove, per tensor of `weights`, the round(fraction · alive groups) lowest-scoring alive groups.

    `fraction` is one rate for all tensors or a rate per name. Scores: the Ln norm (n = `norm`) of the kept
    weights of each group, or with `random` a fixed U(0, 1) draw per group from (`seed`, name), so later
    rounds remove the next groups of one random order. Masks of names not in `weights` and 1-D tensors
    stay unchanged, except for `filters`: when `<layer>.bias` is masked too (`include_bias`), the bias
    entries of removed filters are removed with them.
    """
    dim = GROUP_DIM[granularity]
    new = dict(masks)
    for name, weight in weights.items():
        mask = masks[name]
        if mask.dim() < 2:
            continue
        rate = fraction if isinstance(fraction, (int, float)) else fraction[name]
        scores = _scores(name, weight, mask, dim, norm, random, seed)
        keep = _keep_groups(scores, group_alive(mask, granularity).cpu(), rate).to(mask.device)
        new[name] = mask & _expand(keep, mask.shape, dim)
        bias = name.removesuffix("weight") + "bias"
        if granularity == "filters" and name.endswith("weight") and bias in masks:
            new[bias] = masks[bias] & keep
    return MaskSet(new)
