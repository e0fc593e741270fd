"""Comparing lottery tickets (METHODS §11): overlap, Jaccard, per-layer densities, weight stability, collapse.

Masks and weights are `{parameter name: tensor}` mappings over the prunable tensors (masks bool, True = kept);
every table is long format, with `layer` one tensor name or `"all"` (all tensors pooled: N = Σ_l n_l).
The helpers at the bottom read finished runs from their run store (`compare_runs` is `prunelens compare`).
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn

from prunelens import config
from prunelens.data import build_dataset
from prunelens.errors import PrunelensError
from prunelens.masks import MaskSet
from prunelens.models import build_model
from prunelens.pruning.collapse import collapse_report
from prunelens.store import RunStore, atomic_write, round_dir

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


def overlap(masks_list: Sequence[Tensors], names: Sequence[str] | None = None) -> pd.DataFrame:
    """Common overlap per (layer, ticket): `n` (entries), `kept` |M_t|, `density` d_t = |M_t|/n, `overlap` |O|,
    `frac_all` = |O|/n, `frac_kept` = |O|/|M_t|, `chance` = ∏_t d_t (E|O|/n for independent uniform masks)
    and `ratio` = frac_all / chance. NaN where a denominator is 0."""
    labels = _labels(names, len(masks_list))
    common = _by_layer(intersection(masks_list, names))
    tickets = [_by_layer(m) for m in masks_list]
    rows = []
    for layer, shared in common.items():
        n, both = shared.numel(), int(shared.sum())
        kept = [int(t[layer].sum()) for t in tickets]
        chance = math.prod(k / n for k in kept)
        for label, k in zip(labels, kept):
            rows.append(
                {"layer": layer, "ticket": label, "n": n, "kept": k, "density": k / n, "overlap": both, "frac_all": both / n,
                 "frac_kept": _ratio(both, k), "chance": chance, "ratio": _ratio(both / n, chance)}
            )  # fmt: skip
    return pd.DataFrame(rows)


def pairwise_jaccard(masks_list: Sequence[Tensors], names: Sequence[str] | None = None) -> pd.DataFrame:
    """J(a, b) = |M^a ∩ M^b| / |M^a ∪ M^b| per pair a < b and layer (NaN for two empty masks)."""
    check_compatible(masks_list, names)
    labels = _labels(names, len(masks_list))
    tickets = [_by_layer({n: m.bool() for n, m in masks.items()}) for masks in masks_list]
    rows = []
    for (a, ma), (b, mb) in itertools.combinations(zip(labels, tickets), 2):
        for layer in ma:
            inter, union = int((ma[layer] & mb[layer]).sum()), int((ma[layer] | mb[layer]).sum())
            rows.append({"a": a, "b": b, "layer": layer, "intersection": inter, "union": union, "jaccard": _ratio(inter, union)})
    return pd.DataFrame(rows, columns=["a", "b", "layer", "intersection", "union", "jaccard"])


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


def _masks(store: RunStore, r: int) -> MaskSet:
    return MaskSet(store.load_tensors(f"{round_dir(r)}/masks.pt"))


def layer_density_table(run_dir: Path) -> pd.DataFrame:
    """Per finished round and masked tensor: `density` d_l and `global_density` d (prunable weights), from the
    stored masks."""
    store = RunStore(Path(run_dir))
    rows = []
    for r in store.rounds_done():
        masks = _masks(store, r)
        density = masks.density()
        rows += [{"round": r, "layer": n, "density": d, "global_density": density} for n, d in masks.layer_density().items()]
    if not rows:
        raise PrunelensError(f"{run_dir}: no finished rounds")
    return pd.DataFrame(rows)


def plot_layer_density(table: pd.DataFrame, path: Path) -> Path:
    """Layer sparsity s_l = 1 − d_l against global sparsity s = 1 − d, one curve per layer (and per `run`, if the
    table has that column); the diagonal is uniform pruning. Written atomically as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state or backend switch

    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    keys = [c for c in ("run", "layer") if c in table.columns]
    for key, curve in table.sort_values("round", kind="stable").groupby(keys, sort=False):
        ax.plot(1 - curve["global_density"], 1 - curve["density"], marker="o", markersize=3, label=": ".join(map(str, key)))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="global sparsity 1 − d (prunable weights)", ylabel="layer sparsity 1 − d_l", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize="x-small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write(Path(path), buffer.getvalue())
    return Path(path)


def run_model(run_dir: Path) -> tuple[nn.Module, tuple[int, ...]]:
    """The run's architecture, built from its `config.yaml` (the dataset only gives the shapes; `model.weights`
    is not loaded), and its input shape (C, H, W)."""
    store = RunStore(Path(run_dir))
    cfg = config.from_dict(yaml.safe_load(store.read("config.yaml")) or {}, source=str(store.root / "config.yaml"))
    bundle = build_dataset(cfg.dataset, cfg.seed)
    model = build_model(cfg.model.model_copy(update={"weights": None}), bundle.num_classes, bundle.in_channels, bundle.image_size)
    return model.eval(), (bundle.in_channels, *bundle.image_size)


def _load_round(store: RunStore, model: nn.Module, r: int) -> MaskSet:
    """Load round `r`'s trained weights into `model`; return its masks."""
    model.load_state_dict(store.load_tensors(f"{round_dir(r)}/weights.pt"))
    return _masks(store, r)


def load_round_model(run_dir: Path, round: int) -> tuple[nn.Module, MaskSet]:
    """The trained model of `round` (eval mode) and its masks."""
    model, _ = run_model(run_dir)
    return model, _load_round(RunStore(Path(run_dir)), model, round)


def _collapse_table(run_dir: Path, rounds: Sequence[int]) -> pd.DataFrame:
    model, shape = run_model(run_dir)
    store = RunStore(Path(run_dir))
    rows = []
    for r in rounds:
        masks = _load_round(store, model, r)
        report = collapse_report(model, masks, shape)
        rows.append({"round": r, "density": masks.density(), "collapsed": report["collapsed"], "path": report["path"],
                     "empty_layers": ",".join(report["empty_layers"])})  # fmt: skip
    return pd.DataFrame(rows)


def _stability_table(store: RunStore, rounds: Sequence[int], common: Tensors) -> pd.DataFrame:
    weights = [store.load_tensors(f"{round_dir(r)}/weights.pt") for r in rounds]
    return stability_summary(weight_stability(weights, [_masks(store, r) for r in rounds]), common)


def compared_round(stores: Sequence[RunStore], round: int | None) -> int:
    """`round` if every run finished it, else (None) the last round all runs finished."""
    done = [set(s.rounds_done()) for s in stores]
    for store, rounds in zip(stores, done):
        if not rounds:
            raise PrunelensError(f"{store.root}: no finished rounds")
        if round is not None and round not in rounds:
            raise PrunelensError(f"{store.root}: round {round} is not finished (last finished: {max(rounds)})")
    common = set.intersection(*done)
    if not common:
        raise PrunelensError("the runs have no finished round in common")
    return max(common) if round is None else round


def _run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Directory names, or full paths where names repeat."""
    names = [Path(d).name for d in run_dirs]
    return names if len(set(names)) == len(names) else [str(d) for d in run_dirs]


def _per_run(labels: Sequence[str], frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat([f.assign(run=label)[["run", *f.columns]] for label, f in zip(labels, frames)], ignore_index=True)


def compare_runs(run_dirs: Sequence[Path], round: int | None = None, labels: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """Compare the tickets of `run_dirs` at `round` (default: the last round all runs finished).

    Tables: `overlap` and `jaccard` of the tickets at that round; per run, over its rounds 0…round:
    `stability` (weights in vs out of the common overlap O), `collapse` (empty layers, path test) and
    `density` (per-layer vs global density, for `plot_layer_density`). Runs must share parameter names and shapes.
    `labels` name the runs in the tables (default: their directory names).
    """
    if not run_dirs:
        raise PrunelensError("compare: no runs given")
    stores = [RunStore(Path(d)) for d in run_dirs]
    labels = list(labels) if labels is not None else _run_labels(run_dirs)
    r = compared_round(stores, round)
    tickets = [_masks(s, r) for s in stores]
    common = intersection(tickets, [str(s.root) for s in stores])
    history = [[q for q in s.rounds_done() if q <= r] for s in stores]
    densities = [layer_density_table(d) for d in run_dirs]
    return {
        "overlap": overlap(tickets, labels),
        "jaccard": pairwise_jaccard(tickets, labels),
        "stability": _per_run(labels, [_stability_table(s, h, common) for s, h in zip(stores, history)]),
        "collapse": _per_run(labels, [_collapse_table(d, h) for d, h in zip(run_dirs, history)]),
        "density": _per_run(labels, [t[t["round"] <= r] for t in densities]),
    }
