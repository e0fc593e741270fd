"""Scores → masks: remove exactly k = ⌈p · alive⌉ lowest-scoring alive entries per group (METHODS §3.3).

Ties break deterministically by position (stable sort over (score, flat index) in mask order), so the same
scores always give the same mask.
"""

from __future__ import annotations

import fnmatch
import math

import torch

from prunelens.errors import PrunelensError
from prunelens.masks import MaskSet


def remove_lowest(scores: dict[str, torch.Tensor], masks: MaskSet, names: list[str], fraction: float) -> dict[str, torch.Tensor]:
    """New masks for `names` with the ⌈fraction · alive⌉ lowest-scoring alive entries (pooled over `names`) removed."""
    alive = [masks[n].reshape(-1) for n in names]
    pooled = torch.cat([scores[n].reshape(-1).to(torch.float64)[a.to(scores[n].device)].cpu() for n, a in zip(names, alive)])
    k = math.ceil(fraction * pooled.numel())
    drop = torch.sort(pooled, stable=True).indices[:k]
    keep = torch.ones(pooled.numel(), dtype=torch.bool)
    keep[drop] = False
    out, offset = {}, 0
    for name, a in zip(names, alive):
        flat = a.clone().cpu()
        idx = flat.nonzero().squeeze(1)
        flat[idx] = keep[offset : offset + idx.numel()]
        offset += idx.numel()
        out[name] = flat.view(masks[name].shape).to(masks[name].device)
    return out


def groups(names: list[str], scope: str, fraction: float, layer_fractions: dict[str, float]) -> list[tuple[list[str], float]]:
    """Partition tensors into selection groups: one per tensor (`layerwise`), or one pool (`global`);
    tensors matched by a `layer_fractions` pattern always form their own group at that fraction."""
    for pattern in layer_fractions:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise PrunelensError(f"pruning.layer_fractions: pattern {pattern!r} matches no prunable parameter")
    own, pooled = [], []
    for name in names:
        rate = next((f for p, f in layer_fractions.items() if fnmatch.fnmatchcase(name, p)), None)
        if rate is not None or scope == "layerwise":
            own.append(([name], fraction if rate is None else rate))
        else:
            pooled.append(name)
    return own + ([(pooled, fraction)] if pooled else [])


def select(
    scores: dict[str, torch.Tensor],
    masks: MaskSet,
    fraction: float,
    scope: str = "global",
    layer_fractions: dict[str, float] | None = None,
) -> MaskSet:
    """Prune `fraction` of the *remaining* entries, globally or per tensor."""
    new = dict(masks)
    for names, rate in groups(list(masks), scope, fraction, layer_fractions or {}):
        new.update(remove_lowest(scores, masks, names, rate))
    return MaskSet(new)
