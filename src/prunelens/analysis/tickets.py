"""Comparing lottery tickets (docs/methods.md §11): overlap, Jaccard, per-layer densities, weight stability,
collapse — against chance levels at the tickets' per-layer densities.

Masks and weights are `{parameter name: tensor}` mappings over the prunable tensors (masks bool, True = kept);
every table is long format, with `layer` one tensor name or `"all"` (all tensors pooled: N = Σ_l n_l).
The functions at the bottom read finished runs through the run reader (`compare_runs` is `prunelens compare`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from prunelens.errors import PrunelensError
from prunelens.pruning.collapse import structural_collapse
from prunelens.runs import Run

Tensors = Mapping[str, torch.Tensor]
ALL = "all"


def _by_layer(tensors: Tensors) -> dict[str, torch.Tensor]:
    """Each tensor flattened, plus `ALL`: their concatenation."""
    flat = {name: t.reshape(-1) for name, t in tensors.items()}
    return {**flat, ALL: torch.cat(list(flat.values()))}


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _labels(names: Sequence[str] | None, count: int) -> list[str]:
    return list(names) if names is not None else [str(i) for i in range(count)]


def check_compatible(masks_list: Sequence[Tensors], names: Sequence[str] | None = None) -> None:
    """Raise unless every ticket has the parameter names and shapes of the first."""
    if not masks_list:
        raise PrunelensError("no tickets to compare")
    labels = _labels(names, len(masks_list))
    ref = {n: tuple(m.shape) for n, m in masks_list[0].items()}
    for label, masks in zip(labels[1:], masks_list[1:]):
        shapes = {n: tuple(m.shape) for n, m in masks.items()}
        if shapes != ref:
            first = sorted(n for n in ref.keys() | shapes.keys() if ref.get(n) != shapes.get(n))[0]
            raise PrunelensError(
                f"{label}: not the architecture of {labels[0]} (parameter {first!r}: {shapes.get(first)} vs {ref.get(first)})"
            )


def intersection(masks_list: Sequence[Tensors], names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """The common overlap O = ∩_t M^(t) of any number of tickets (`names` label them in errors)."""
    check_compatible(masks_list, names)
    return {n: torch.stack([m[n].bool() for m in masks_list]).all(0) for n in masks_list[0]}


def _chances(masks_list: Sequence[Tensors]) -> dict[str, float]:
    """E|O|/n for independent uniform masks at each ticket's own per-layer densities: per layer ∏_t d_{t,l};
    for `ALL`, Σ_l n_l ∏_t d_{t,l} / N (not ∏_t of pooled densities, which understates it when layers differ)."""
    sizes = {name: masks_list[0][name].numel() for name in masks_list[0]}
    per_layer = {name: math.prod(int(m[name].sum()) / n for m in masks_list) if n else math.nan for name, n in sizes.items()}
    total = sum(sizes.values())
    return {**per_layer, ALL: sum(sizes[name] * per_layer[name] for name in sizes) / total if total else math.nan}


def overlap(masks_list: Sequence[Tensors], names: Sequence[str] | None = None) -> pd.DataFrame:
    """Common overlap per (layer, ticket): `n` (entries), `kept` |M_t|, `density` d_t = |M_t|/n, `overlap` |O|,
    `frac_all` = |O|/n, `frac_kept` = |O|/|M_t|, `chance` = E|O|/n for independent uniform masks at the tickets'
    per-layer densities (`_chances`) and `ratio` = frac_all / chance. NaN where a denominator is 0."""
    labels = _labels(names, len(masks_list))
    common = _by_layer(intersection(masks_list, names))
    tickets = [_by_layer(m) for m in masks_list]
    chances = _chances(masks_list)
    rows = []
    for layer, shared in common.items():
        n, both = shared.numel(), int(shared.sum())
        kept = [int(t[layer].sum()) for t in tickets]
        chance = chances[layer]
        for label, k in zip(labels, kept):
            rows.append(
                {"layer": layer, "ticket": label, "n": n, "kept": k, "density": k / n, "overlap": both, "frac_all": both / n,
                 "frac_kept": _ratio(both, k), "chance": chance, "ratio": _ratio(both / n, chance)}
            )  # fmt: skip
    return pd.DataFrame(rows)


def pairwise_jaccard(masks_list: Sequence[Tensors], names: Sequence[str] | None = None) -> pd.DataFrame:
    """J(a, b) = |M^a ∩ M^b| / |M^a ∪ M^b| per pair a < b and layer (NaN for two empty masks), with `chance` =
    E|∩| / E|∪| for independent uniform masks at the two tickets' per-layer densities (n d_a d_b over
    n (d_a + d_b − d_a d_b), summed over layers for `ALL`) and `ratio` = jaccard / chance."""
    check_compatible(masks_list, names)
    labels = _labels(names, len(masks_list))
    tickets = [_by_layer({n: m.bool() for n, m in masks.items()}) for masks in masks_list]
    rows = []
    for (a, ma), (b, mb) in itertools.combinations(zip(labels, tickets), 2):
        expected = {}
        for layer in masks_list[0]:
            n, da, db = ma[layer].numel(), float(ma[layer].float().mean()), float(mb[layer].float().mean())
            expected[layer] = (n * da * db, n * (da + db - da * db))
        expected[ALL] = tuple(sum(e[i] for e in expected.values()) for i in (0, 1))
        for layer in ma:
            inter, union = int((ma[layer] & mb[layer]).sum()), int((ma[layer] | mb[layer]).sum())
            jaccard, chance = _ratio(inter, union), _ratio(*expected[layer])
            rows.append({"a": a, "b": b, "layer": layer, "intersection": inter, "union": union, "jaccard": jaccard,
                         "chance": chance, "ratio": _ratio(jaccard, chance)})  # fmt: skip
    return pd.DataFrame(rows, columns=["a", "b", "layer", "intersection", "union", "jaccard", "chance", "ratio"])


class Stability(NamedTuple):
    """Per-weight stability over the rounds 𝓛_j where weight j is alive (tensors shaped like the weight)."""

    alive: torch.Tensor  # |𝓛_j|
    std: torch.Tensor  # σ_j: population std of the trained values over 𝓛_j; NaN where |𝓛_j| < 2
    flips: torch.Tensor  # F_j = Σ_{L, L−1 ∈ 𝓛_j} 1[sign θ^(L) ≠ sign θ^(L−1)]


def weight_stability(weights_by_round: Sequence[Tensors], masks_by_round: Sequence[Tensors]) -> dict[str, Stability]:
    """`Stability` of every masked tensor from its trained values θ^(L) and masks M^(L), rounds in order."""
    if len(weights_by_round) != len(masks_by_round) or not masks_by_round:
        raise PrunelensError(f"weight_stability: {len(weights_by_round)} rounds of weights but {len(masks_by_round)} of masks")
    out = {}
    for name in masks_by_round[0]:
        values = torch.stack([w[name].detach().cpu().double() for w in weights_by_round])
        alive = torch.stack([m[name].cpu().bool() for m in masks_by_round])
        count = alive.sum(0)
        mean = (values * alive).sum(0) / count.clamp(min=1)
        var = ((values - mean) ** 2 * alive).sum(0) / count.clamp(min=1)
        std = torch.where(count >= 2, var.sqrt(), torch.nan)
        signs = values.sign()
        flips = ((signs[1:] != signs[:-1]) & alive[1:] & alive[:-1]).sum(0)
        out[name] = Stability(count, std, flips)
    return out


def _stats(prefix: str, values: torch.Tensor) -> dict[str, float]:
    array = values.double().numpy()
    if not array.size:
        return {f"{prefix}_mean": math.nan, f"{prefix}_median": math.nan}
    return {f"{prefix}_mean": float(np.mean(array)), f"{prefix}_median": float(np.median(array))}


def stability_summary(stability: Mapping[str, Stability], overlap_mask: Tensors) -> pd.DataFrame:
    """Weights in vs out of `overlap_mask`, per layer: `n_weights`, mean and median of σ_j and of F_j. Only weights
    alive in ≥ 2 rounds count (σ_j is undefined otherwise)."""
    std = _by_layer({n: s.std for n, s in stability.items()})
    flips = _by_layer({n: s.flips for n, s in stability.items()})
    defined = _by_layer({n: s.alive >= 2 for n, s in stability.items()})
    inside = _by_layer({n: overlap_mask[n].cpu().bool() for n in stability})
    rows = []
    for layer in std:
        for group, member in (("in", inside[layer]), ("out", ~inside[layer])):
            chosen = member & defined[layer]
            rows.append(
                {"layer": layer, "group": group, "n_weights": int(chosen.sum()), **_stats("std", std[layer][chosen]),
                 **_stats("flips", flips[layer][chosen])}
            )  # fmt: skip
    return pd.DataFrame(rows)


# --- runs ---------------------------------------------------------------------------------------------------


def layer_density_table(run: Run) -> pd.DataFrame:
    """Per finished round and masked tensor: `density` d_l and `global_density` d (prunable weights), from the
    stored masks."""
    rows = []
    for r in run.rounds():
        masks = run.round(r).masks()
        density = masks.density()
        rows += [{"round": r, "layer": n, "density": d, "global_density": density} for n, d in masks.layer_density().items()]
    if not rows:
        raise PrunelensError(f"{run.root}: no finished rounds")
    return pd.DataFrame(rows)


def collapse_table(run: Run, rounds: Sequence[int]) -> pd.DataFrame:
    """Per round: structural collapse recomputed from the stored masks and weights, and the functional flags
    the round recorded (absent in runs of format 1: NaN)."""
    rows = []
    for r in rounds:
        view = run.round(r)
        masks, record = view.masks(), view.record()
        report = structural_collapse(view.model(), masks, run.input_shape)
        rows.append({
            "round": r, "density": masks.density(), "empty_layers": ",".join(report["empty_layers"]), "path": report["path"],
            "collapsed_structural": bool(report["empty_layers"]) or not report["path"],
            "collapsed_functional": record.get("collapsed_functional", math.nan), "collapse": record.get("collapse", ""),
        })  # fmt: skip
    return pd.DataFrame(rows)


def stability_table(run: Run, rounds: Sequence[int], common: Tensors) -> pd.DataFrame:
    views = [run.round(r) for r in rounds]
    return stability_summary(weight_stability([v.weights() for v in views], [v.masks() for v in views]), common)


def compared_round(runs: Sequence[Run], round: int | None) -> int:
    """`round` if every run finished it, else (None) the last round all runs finished."""
    done = [set(run.rounds()) for run in runs]
    for run, rounds in zip(runs, done):
        if not rounds:
            raise PrunelensError(f"{run.root}: no finished rounds")
        if round is not None and round not in rounds:
            raise PrunelensError(f"{run.root}: round {round} is not finished (last finished: {max(rounds)})")
    common = set.intersection(*done)
    if not common:
        raise PrunelensError("the runs have no finished round in common")
    return max(common) if round is None else round


def run_labels(runs: Sequence[Run]) -> list[str]:
    """Each run named by the config fields in which the runs differ (`pruning.method=l1 seed=1`), or by its
    directory name when their configs agree."""
    shown = {"name", "output_dir", "threads", "lenses", "lens_images"}
    flat = [dict(_flatten(run.config.model_dump(mode="json", exclude=shown))) for run in runs]
    keys = sorted({k for f in flat for k in f if len({repr(g.get(k)) for g in flat}) > 1})
    labels = [" ".join(f"{k}={f.get(k)}" for k in keys) for f in flat]
    if keys and len(set(labels)) == len(labels):
        return labels
    names = [run.root.name for run in runs]
    return names if len(set(names)) == len(names) else [str(run.root) for run in runs]


def _flatten(data: Mapping[str, object], prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _per_run(labels: Sequence[str], frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat([f.assign(run=label)[["run", *f.columns]] for label, f in zip(labels, frames)], ignore_index=True)


def compare_runs(runs: Sequence[Run], round: int | None = None, labels: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """Compare the tickets of `runs` at `round` (default: the last round all runs finished).

    Tables: `overlap` and `jaccard` of the tickets at that round; per run, over its rounds 0…round:
    `stability` (weights in vs out of the common overlap O), `collapse` (structural and functional) and
    `density` (per-layer vs global density). Runs must share parameter names and shapes. `labels` name the
    runs in the tables (default: `run_labels`).
    """
    if not runs:
        raise PrunelensError("compare: no runs given")
    labels = list(labels) if labels is not None else run_labels(runs)
    r = compared_round(runs, round)
    tickets = [run.round(r).masks() for run in runs]
    common = intersection(tickets, [str(run.root) for run in runs])
    history = [[q for q in run.rounds() if q <= r] for run in runs]
    densities = [layer_density_table(run) for run in runs]
    return {
        "overlap": overlap(tickets, labels),
        "jaccard": pairwise_jaccard(tickets, labels),
        "stability": _per_run(labels, [stability_table(run, h, common) for run, h in zip(runs, history)]),
        "collapse": _per_run(labels, [collapse_table(run, h) for run, h in zip(runs, history)]),
        "density": _per_run(labels, [t[t["round"] <= r] for t in densities]),
    }
