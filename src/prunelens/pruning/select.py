"""Scores → masks: every selection group loses exactly its computed number of lowest-scoring alive entries
(docs/methods.md §4).

Scopes, with p the per-round fraction and alive counts taken before the round:
- `global`: one pool, k = ⌈p · Σ_l alive_l⌉ (OpenLTH `sparse_global`);
- `layerwise`: each tensor on its own, k_l = ⌈p · alive_l⌉;
- `uniform_plus`, `erk`: the global count k = ⌈p · Σ_l alive_l⌉ is allocated over the tensors (LAMP repo
  allocations, `_uniform_plus`, `_erk`), then each tensor loses its share on its own.
Tensors matched by a `layer_fractions` pattern always form their own group, k = ⌈rate · alive⌉, and are left
out of the pool and of any allocation.

Layer-shape assumption of `uniform_plus` and `erk`: masks come in model order (as `prunable_names` lists them)
and have their parameter's shape (Conv O×I×k_h×k_w, Linear O×I); of the ≥ 2-D masks, the first is the input
layer and the last the classifier (with `prune_classifier=False` that is the last pruned layer instead).

Only alive entries are ranked, so dead ones are never revived. Ties break deterministically by position
(stable sort over (score, flat index) in mask order), so the same scores always give the same mask.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable

import torch

from prunelens.errors import PrunelensError
from prunelens.masks import MaskSet

CLASSIFIER_KEEP = 0.2
"""`uniform_plus` keeps at least ⌈20 %⌉ of the classifier's weights (LAMP repo `unifplus`)."""


def ceil_count(fraction: float, n: int) -> int:
    """⌈fraction · n⌉, immune to float noise (0.2 · 15 = 3.0000000000000004 gives 3, not 4)."""
    return math.ceil(round(fraction * n, 9))


def remove_lowest(scores: dict[str, torch.Tensor], masks: MaskSet, names: list[str], count: int) -> dict[str, torch.Tensor]:
    """New masks for `names` with the `count` lowest-scoring alive entries (pooled over `names`) removed."""
    alive = [masks[n].reshape(-1) for n in names]
    pooled = torch.cat([scores[n].reshape(-1).to(torch.float64)[a.to(scores[n].device)].cpu() for n, a in zip(names, alive)])
    drop = torch.sort(pooled, stable=True).indices[:count]
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


def _alive(masks: MaskSet, names: list[str]) -> dict[str, int]:
    return {n: int(masks[n].sum()) for n in names}


def _apportion(targets: dict[str, float], total: int) -> dict[str, int]:
    """Integers summing to `total` (= Σ targets up to float error), each ⌊target⌋ or ⌈target⌉: the largest
    fractional parts are rounded up, ties in order (largest-remainder method)."""
    counts = {n: math.floor(t) for n, t in targets.items()}
    for name in sorted(targets, key=lambda n: counts[n] - targets[n])[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def _spread(alive: dict[str, int], total: int, scope: str) -> dict[str, int]:
    """Remove `total` from the tensors in `alive` at one common rate (rounded to exact counts)."""
    pool = sum(alive.values())
    if total > pool:
        raise PrunelensError(f"pruning.scope: {scope!r} cannot remove {total} weights from the {pool} it may prune")
    return _apportion({n: total * a / pool for n, a in alive.items()}, total) if total else dict.fromkeys(alive, 0)


def _uniform_plus(masks: MaskSet, names: list[str], fraction: float) -> dict[str, int]:
    """Uniform+ (LAMP repo `unifplus`): the global count ⌈p · alive⌉ is removed at one common rate, except
    that the first layer stays dense and the classifier keeps ≥ ⌈20 %⌉ of its weights; what the classifier
    cannot give is taken from the layers in between at their own common rate. Raises if they cannot supply it.
    (The LAMP repo exempts the first layer only when it is a conv; here any first Conv/Linear layer.)"""
    alive = _alive(masks, names)
    total = ceil_count(fraction, sum(alive.values()))
    layers = [n for n in masks if masks[n].dim() >= 2] or list(masks)
    first, last = layers[0], layers[-1]
    fixed = {first: 0} if first in alive else {}
    rest = {n: a for n, a in alive.items() if n not in fixed}
    floor = ceil_count(CLASSIFIER_KEEP, masks[last].numel())
    if last in rest and rest[last] * (1 - total / max(sum(rest.values()), 1)) < floor:
        fixed[last] = max(rest.pop(last) - floor, 0)
    return fixed | _spread(rest, total - sum(fixed.values()), "uniform_plus")


def _erk(masks: MaskSet, names: list[str], fraction: float) -> dict[str, int]:
    """ERK (Evci et al. 2020; LAMP repo `erk`): tensor l keeps ε · Σ_dims shape_l entries, i.e. density
    d_l = ε (n_out + n_in + k_h + k_w) / (n_out · n_in · k_h · k_w) (Linear: no kernel terms; a 1-D tensor: ε),
    with ε solved so that Σ_l kept_l = alive − ⌈p · alive⌉. A tensor that would keep more than its alive
    entries is kept dense and ε is re-solved for the others, until none exceeds its alive count."""
    alive = _alive(masks, names)
    keep = sum(alive.values()) - ceil_count(fraction, sum(alive.values()))
    raw = {n: float(sum(masks[n].shape)) for n in names}
    dense: set[str] = set()
    while True:
        eps = (keep - sum(alive[n] for n in dense)) / max(sum(raw[n] for n in names if n not in dense), 1.0)
        over = {n for n in names if n not in dense and eps * raw[n] > alive[n]}
        if not over:
            break
        dense |= over
    kept = {n: alive[n] if n in dense else eps * raw[n] for n in names}
    return _apportion({n: alive[n] - kept[n] for n in names}, sum(alive.values()) - keep)


ALLOCATIONS: dict[str, Callable[[MaskSet, list[str], float], dict[str, int]]] = {"uniform_plus": _uniform_plus, "erk": _erk}
"""Per-tensor removal counts of the allocation scopes, for (masks, pooled tensors, fraction)."""


def own_fractions(names: list[str], layer_fractions: dict[str, float]) -> dict[str, float]:
    """The tensors matched by a `layer_fractions` pattern → the fraction of the first matching pattern; a
    pattern matching nothing is an error (a typo would otherwise silently prune at the common rate)."""
    for pattern in layer_fractions:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise PrunelensError(f"pruning.layer_fractions: pattern {pattern!r} matches no prunable parameter")
    rates = {n: next((f for p, f in layer_fractions.items() if fnmatch.fnmatchcase(n, p)), None) for n in names}
    return {n: rate for n, rate in rates.items() if rate is not None}


def groups(masks: MaskSet, scope: str, fraction: float, layer_fractions: dict[str, float]) -> list[tuple[list[str], int]]:
    """Selection groups and how many alive entries each loses: one pool (`global`), one group per tensor
    (`layerwise` and the allocation scopes); tensors matched by a `layer_fractions` pattern always form their
    own group at that fraction."""
    names = list(masks)
    alive = _alive(masks, names)
    own = own_fractions(names, layer_fractions)
    pooled = [n for n in names if n not in own]
    out = [([n], ceil_count(rate, alive[n])) for n, rate in own.items()]
    if not pooled:
        return out
    if scope == "global":
        return out + [(pooled, ceil_count(fraction, sum(alive[n] for n in pooled)))]
    if scope == "layerwise":
        return out + [([n], ceil_count(fraction, alive[n])) for n in pooled]
    if scope not in ALLOCATIONS:
        raise PrunelensError(f"pruning.scope: unknown scope {scope!r}; known: global, layerwise, {', '.join(ALLOCATIONS)}")
    return out + [([n], k) for n, k in ALLOCATIONS[scope](masks, pooled, fraction).items()]


def select(
    scores: dict[str, torch.Tensor],
    masks: MaskSet,
    fraction: float,
    scope: str = "global",
    layer_fractions: dict[str, float] | None = None,
) -> MaskSet:
    """Prune `fraction` of the *remaining* entries with the given scope (module docstring)."""
    new = dict(masks)
    for names, count in groups(masks, scope, fraction, layer_fractions or {}):
        new.update(remove_lowest(scores, masks, names, count))
    return MaskSet(new)
