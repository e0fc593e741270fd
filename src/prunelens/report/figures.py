"""Figures drawn from stored results (tables and tensors), never inside a lens or the round loop.

Every function returns a matplotlib `Figure` (no pyplot: no global state, no backend switch, no warnings
about open figures); `png(figure)` turns one into bytes. `prunelens.report.LENS_FIGURES[name](view)` draws a lens' figures.
Density axes are logarithmic, decreasing to the right, with at most `MAX_TICKS` labelled rounds; an emptied
network (density 0) sits a decade below the smallest density, labelled "0". Where every map of a round is
degenerate (no value) an × marks the round on the axis; partial counts are written next to the points.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor

from prunelens.lenses import similarity as sim
from prunelens.lenses.cam import upsample

MAX_TICKS = 6
REFERENCE_STYLE = {"floor": ("tab:red", "floor: random init"), "same_init": ("tab:green", "same-init reference"),
                   "other_seed": ("tab:purple", "other-seed reference")}  # fmt: skip


def png(figure: Figure, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def zero_position(densities: Sequence[float]) -> float:
    """Where density 0 (an emptied network) is drawn on the log axis: a decade below the smallest positive one."""
    positive = [d for d in densities if d > 0]
    return min(positive, default=1.0) / 10


def on_axis(densities: Sequence[float]) -> list[float]:
    """Densities as drawn: 0 moved to `zero_position` (log scales have no 0)."""
    zero = zero_position(densities)
    return [d if d > 0 else zero for d in densities]


def density_ticks(densities: Sequence[float]) -> list[float]:
    """At most `MAX_TICKS` of the (drawn) densities, spread evenly in log space (labels never overlap)."""
    values = sorted(set(on_axis(densities)), reverse=True)
    if len(values) <= MAX_TICKS:
        return values
    logs = np.log10(values)
    wanted = np.linspace(logs[0], logs[-1], MAX_TICKS)
    return sorted({values[int(np.abs(logs - w).argmin())] for w in wanted}, reverse=True)


def tick_label(density: float) -> str:
    """Short labels: 0.64, 0.1, 3e-4."""
    return f"{density:.2g}" if density >= 0.01 else f"{density:.0e}".replace("e-0", "e-")


def density_axis(ax: Any, densities: Sequence[float]) -> None:
    """A logarithmic density axis, decreasing to the right; density 0, if present, is labelled "0"."""
    ticks = density_ticks(densities)
    zero = zero_position(densities) if min(densities, default=1.0) <= 0 else None
    ax.set_xscale("log")
    ax.set_xticks(ticks, ["0" if d == zero else tick_label(d) for d in ticks], fontsize=7)
    ax.minorticks_off()
    if len(ticks) > 1:
        ax.set_xlim(max(ticks) * 1.15, min(ticks) / 1.15)
    ax.set_xlabel("density (log scale)")


@dataclass(frozen=True)
class LensView:
    """A lens' stored results as figures need them: its long `table`, the `setup` tensors and artefacts, and
    `round_tensors(r)` loading a round's tensors."""

    table: pd.DataFrame
    setup: Mapping[str, Tensor]
    artefacts: Mapping[str, Any]
    round_tensors: Callable[[int], Mapping[str, Tensor]]


def _image(pixels: Tensor) -> np.ndarray:
    """(C, H, W) uint8 or 0–1 → (H, W, 3) for imshow (grey images replicated)."""
    img = pixels.detach().float().cpu()
    img = (img / 255 if pixels.dtype == torch.uint8 else img).clamp(0, 1)
    return (img.expand(3, -1, -1) if img.shape[0] == 1 else img[:3]).permute(1, 2, 0).numpy()


def grid_figure(pixels: Tensor, dense: Mapping[str, Tensor], current: Mapping[str, Tensor], title: str) -> Figure:
    """Columns: the first images. Rows: the jet overlay on the dense map's per-image colour scale (a weaker map
    looks fainter) and the mask 1[L > 0.75 · max L], for the dense network and this round's."""
    n = len(pixels)
    size = tuple(pixels.shape[-2:])
    rows = [("dense", dense)] + ([("this round", current)] if current is not dense else [])
    fig = Figure(figsize=(1.4 * n, 1.5 * 2 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(2 * len(rows), n, squeeze=False)
    scale = dense["maps"][:n].flatten(1).amax(1).clamp_min(1e-12).cpu()
    for r, (label, result) in enumerate(rows):
        up = upsample(result["maps"][:n], size).cpu()
        masks = sim.threshold_mask(up)
        for i in range(n):
            overlay, binary = axes[2 * r, i], axes[2 * r + 1, i]
            overlay.imshow(_image(pixels[i]))
            overlay.imshow(up[i].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=float(scale[i]))
            binary.imshow(masks[i].numpy(), cmap="gray", vmin=0, vmax=1)
            overlay.set_title(f"c={int(result['targets'][i])}", fontsize=7)
        axes[2 * r, 0].set_ylabel(f"{label}\noverlay", fontsize=7)
        axes[2 * r + 1, 0].set_ylabel(f"{label}\nmask > 0.75·max", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    return fig


def density_figure(table: pd.DataFrame, kinds: list[str], title: str, references: Mapping[str, str]) -> Figure:
    """One panel per (kind, metric): the value against density, the reference levels as dashed lines
    (`references`: reference kind → the table kind holding its level), and the number of degenerate maps
    written next to every point that has some."""
    rows = table[table["kind"].isin(kinds)]
    keys = list(dict.fromkeys(zip(rows["kind"], rows["metric"])))
    cols = max(1, min(4, len(keys)))
    fig = Figure(figsize=(3.2 * cols, 2.6 * max(1, math.ceil(len(keys) / cols))), layout="constrained")
    axes = fig.subplots(max(1, math.ceil(len(keys) / cols)), cols, squeeze=False).ravel()
    for ax, (kind, metric) in zip(axes, keys):
        curve = rows[(rows["kind"] == kind) & (rows["metric"] == metric)].sort_values("round")
        x = on_axis(list(curve["density"]))
        ax.plot(x, curve["value"], marker="o", markersize=3, label=kind)
        empty = [at for at, value in zip(x, curve["value"]) if not math.isfinite(value)]
        if empty:
            ax.plot(empty, [0.0] * len(empty), "x", color="black", markersize=4, transform=ax.get_xaxis_transform(), label="all maps degenerate")
        if "degenerate" in curve:
            for at, (_, point) in zip(x, curve.iterrows()):
                if point["degenerate"] > 0 and math.isfinite(point["value"]):
                    ax.annotate(f"{int(point['degenerate'])} deg.", (at, point["value"]), fontsize=6, color="grey")
        for ref, ref_kind in references.items():
            level = table[(table["kind"] == ref_kind) & (table["metric"] == metric)]["value"]
            if len(level) and math.isfinite(float(level.iloc[0])):
                colour, label = REFERENCE_STYLE[ref]
                ax.axhline(float(level.iloc[0]), color=colour, linestyle="--", linewidth=1, label=label)
        density_axis(ax, list(curve["density"]))
        ax.set_title(metric if len(kinds) == 1 else f"{kind}: {metric}", fontsize=8)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    if keys:
        axes[0].legend(fontsize="x-small")
    fig.suptitle(title, fontsize=9)
    return fig


def mprt_figure(rows: pd.DataFrame, method: str) -> Figure:
    """Similarity to the trained dense maps as layers are re-initialised from the logits downward; a step where
    every map is degenerate (no value) is marked × on the axis, with the share of degenerate maps below."""
    fig = Figure(figsize=(max(5.0, 0.25 * rows["step"].nunique()), 4.2), layout="constrained")
    ax, share = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    for metric, curve in rows.groupby("metric", sort=False):
        curve = curve.sort_values("step")
        ax.plot(curve["step"], curve["value"], marker="o", markersize=3, label=metric)
    steps = rows.drop_duplicates("step").sort_values("step")
    empty = steps[steps["n"] == 0]
    if len(empty):
        ax.plot(empty["step"], [0.0] * len(empty), "x", color="black", label="all maps degenerate")
    total = steps["n"] + steps["nan"]
    share.bar(steps["step"], steps["degenerate"] / total.where(total > 0, 1), color="grey")
    share.set(ylabel="degenerate", ylim=(0, 1))
    share.set_xticks(steps["step"], steps["randomised"], rotation=90, fontsize=6)
    ax.set(ylabel="similarity to dense maps", title=f"Cascading randomisation (MPRT), Grad-CAM ({method})")
    ax.legend(fontsize="x-small")
    return fig


def gradcam_figures(view: LensView) -> dict[str, Figure]:
    """Per round an image grid; across rounds consistency (with the references), correctness and faithfulness
    (with the references' correctness), and the MPRT series."""
    table, method = view.table, view.artefacts.get("method", "")
    figures: dict[str, Figure] = {}
    pixels = view.setup.get("figure_pixels")
    if pixels is not None:
        for r, density in table.drop_duplicates("round")[["round", "density"]].itertuples(index=False):
            title = f"Grad-CAM ({method}), layer {view.artefacts.get('layer')}: round {r}, density {density:.3g}"
            current = view.setup if r == 0 else view.round_tensors(int(r))
            figures[f"round_{int(r):03d}_grid"] = grid_figure(pixels, view.setup, current, title)
    refs = {k: k for k in REFERENCE_STYLE if k in set(table["kind"])}
    figures["consistency"] = density_figure(table, ["pruned_vs_dense"], f"Grad-CAM ({method}): consistency with the dense maps", refs)
    if table["kind"].isin(["correctness", "faithfulness"]).any():
        correct = {k: f"correctness_{k}" for k in refs}
        title = f"Grad-CAM ({method}): correctness and faithfulness"
        figures["correctness_faithfulness"] = density_figure(table, ["correctness", "faithfulness"], title, correct)
    if (table["kind"] == "mprt").any():
        figures["mprt"] = mprt_figure(table[table["kind"] == "mprt"], method)
    return figures


def layer_density_figure(table: pd.DataFrame) -> Figure:
    """Layer sparsity s_l = 1 − d_l against global sparsity s = 1 − d, one curve per layer (and per `run`, if the
    table has that column); the diagonal is uniform pruning."""
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    keys = [c for c in ("run", "layer") if c in table.columns]
    for key, curve in table.sort_values("round", kind="stable").groupby(keys, sort=False):
        ax.plot(1 - curve["global_density"], 1 - curve["density"], marker="o", markersize=3, label=": ".join(map(str, key)))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="global sparsity 1 − d (prunable weights)", ylabel="layer sparsity 1 − d_l", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize="x-small")
    return fig
