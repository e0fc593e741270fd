"""Figures of MIS (docs/methods.md §16): across runs from `analysis.mis_stats.collect`'s table (MIS against
density and against accuracy), and per run from the `mis` lens' stored results (`mis_lens_figures`: MIS against
density with its 5th–95th percentile band and the references' levels; per-layer distributions of the units'
MIS for the dense network, the last round and the references)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from prunelens.report.figures import REFERENCE_STYLE, LensView, density_axis, on_axis

GROUP_FACTORS = ("schedule", "epochs", "optimizer")
"""Besides the method, the factors that split `mis_vs_density`'s lines (colour: method; line style: the rest)
when they vary among the pruned models."""
LINESTYLES = ("-", "--", ":", "-.")


def _label(table: pd.DataFrame) -> str:
    return "MIS" if table.attrs.get("metric", "mis") == "mis" else str(table.attrs["metric"])


def _methods(table: pd.DataFrame) -> dict[str, str]:
    """Method → its colour (matplotlib's default cycle, in sorted order)."""
    return {m: f"C{i % 10}" for i, m in enumerate(sorted(table["method"].unique()))}


def mis_vs_density(table: pd.DataFrame) -> Figure:
    """MIS of the pruned models against density: one line per method (and per schedule, epochs and optimizer
    where those vary), through the mean MIS and density at each nominal rate (several runs — seeds — average;
    each model is a faint dot); the dense networks (round 0) as black stars."""
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.subplots()
    colours = _methods(table)
    models, dense = table[table["round"] > 0], table[table["round"] == 0]
    split = [f for f in GROUP_FACTORS if models[f].nunique() > 1]
    everything = list(table["density"]) or [1.0]
    zero = min(on_axis(everything))

    def drawn(densities: list[float]) -> list[float]:  # density 0 where `on_axis` puts it for the whole table
        return [d if d > 0 else zero for d in densities]

    styles = (
        {k: LINESTYLES[i % len(LINESTYLES)] for i, k in enumerate(sorted(set(zip(*(models[f] for f in split)))))} if split else {}
    )
    for key, group in models.groupby(["method", *split], sort=True):
        key = key if isinstance(key, tuple) else (key,)
        curve = (
            group.groupby("rate_nominal")
            .agg(density=("density", "mean"), mis=("mis", "mean"))
            .sort_values("density", ascending=False)
        )
        label = ", ".join([str(key[0]), *(f"{f} {v}" for f, v in zip(split, key[1:]))])
        ax.plot(drawn(list(curve["density"])), curve["mis"], marker="o", markersize=3, color=colours[key[0]],
                linestyle=styles.get(tuple(key[1:]), "-"), label=label)  # fmt: skip
        ax.plot(drawn(list(group["density"])), group["mis"], ".", color=colours[key[0]], alpha=0.3)
    if len(dense):
        ax.plot(drawn(list(dense["density"])), dense["mis"], "*", color="black", markersize=10, label="dense", linestyle="none")
    density_axis(ax, everything)
    ax.set(ylabel=_label(table), title=f"{_label(table)} against density")
    if len(table):
        ax.legend(fontsize="x-small")
    return fig


def mis_vs_accuracy(table: pd.DataFrame) -> Figure:
    """MIS against test top-1, a scatter per method over the pruned models; the dense networks as black stars."""
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.subplots()
    colours = _methods(table)
    models, dense = table[table["round"] > 0], table[table["round"] == 0]
    for method, group in models.groupby("method", sort=True):
        ax.scatter(group["accuracy"], group["mis"], s=14, color=colours[method], label=method)
    if len(dense):
        ax.plot(dense["accuracy"], dense["mis"], "*", color="black", markersize=10, label="dense", linestyle="none")
    ax.set(xlabel="test top-1", ylabel=_label(table), title=f"{_label(table)} against accuracy")
    if len(table):
        ax.legend(fontsize="x-small")
    return fig


def mis_density_figure(view: LensView) -> Figure:
    """The model's MIS (unit-weighted; its 5th–95th percentiles of units shaded) and the layer-weighted mean
    against density, with the references' levels dashed."""
    table, label = view.table, view.artefacts.get("label", "MIS")
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.subplots()
    rows = table[table["kind"] == "model"]
    curve = rows[rows["metric"] == "mis"].sort_values("round")
    x = on_axis(list(curve["density"]))
    ax.plot(x, curve["value"], marker="o", markersize=3, color="tab:blue", label=f"{label} (unit-weighted)")
    if {"p05", "p95"} <= set(curve.columns):
        ax.fill_between(x, curve["p05"], curve["p95"], color="tab:blue", alpha=0.15, label="units' 5th–95th percentile")
    weighted = rows[rows["metric"] == "mis_layer_weighted"].sort_values("round")
    if len(weighted):
        ax.plot(
            on_axis(list(weighted["density"])),
            weighted["value"],
            marker=".",
            linestyle=":",
            color="tab:blue",
            label="layer-weighted",
        )
    for ref, (colour, ref_label) in REFERENCE_STYLE.items():
        level = table[(table["kind"] == f"{ref}_model") & (table["metric"] == "mis")]["value"]
        if len(level) and math.isfinite(float(level.iloc[0])):
            ax.axhline(float(level.iloc[0]), color=colour, linestyle="--", linewidth=1, label=ref_label)
    density_axis(ax, list(curve["density"]) or [1.0])
    ax.set(ylabel=label, ylim=(-0.02, 1.02), title=f"{label} of the units against density ({view.artefacts.get('encoder', '')})")
    ax.legend(fontsize="x-small")
    return fig


def _finite(values: object) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def mis_layer_figure(view: LensView) -> Figure:
    """Per layer, boxplots of the units' MIS (excluded units left out) for the dense network, the last round and
    each reference network (the floor: random init)."""
    table, label = view.table, view.artefacts.get("label", "MIS")
    layers = [
        name.removeprefix("dense.").removesuffix(".mis")
        for name in view.setup
        if name.startswith("dense.") and name.endswith(".mis")
    ]
    last = int(table["round"].max()) if len(table) else 0
    series: list[tuple[str, str, dict[str, np.ndarray]]] = [
        ("dense", "tab:blue", {ly: _finite(view.setup[f"dense.{ly}.mis"]) for ly in layers})
    ]
    if last > 0:
        tensors = view.round_tensors(last)
        density = float(table[table["round"] == last]["density"].iloc[0])
        series.append(
            (
                f"round {last} (density {density:.2g})",
                "tab:orange",
                {ly: _finite(tensors[f"{ly}.mis"]) for ly in layers if f"{ly}.mis" in tensors},
            )
        )
    for ref, (colour, ref_label) in REFERENCE_STYLE.items():
        if any(f"{ref}.{ly}.mis" in view.setup for ly in layers):
            series.append(
                (
                    ref_label,
                    colour,
                    {ly: _finite(view.setup[f"{ref}.{ly}.mis"]) for ly in layers if f"{ref}.{ly}.mis" in view.setup},
                )
            )
    width = 0.8 / len(series)
    fig = Figure(figsize=(max(5.0, 0.35 * len(layers) * len(series) + 1.5), 4.2), layout="constrained")
    ax = fig.subplots()
    for s, (name, colour, values) in enumerate(series):
        at = [(i + (s - (len(series) - 1) / 2) * width, values[ly]) for i, ly in enumerate(layers) if len(values.get(ly, ()))]
        if at:
            ax.boxplot([v for _, v in at], positions=[p for p, _ in at], widths=width * 0.85, patch_artist=True, manage_ticks=False,
                       boxprops={"facecolor": colour, "alpha": 0.5}, medianprops={"color": "black"}, flierprops={"markersize": 2})  # fmt: skip
        ax.plot([], [], "s", color=colour, alpha=0.5, label=name)
    ax.set_xticks(range(len(layers)), layers, rotation=90 if len(layers) > 6 else 0, fontsize=7)
    ax.set(ylabel=f"{label} per unit", ylim=(-0.02, 1.02), title=f"{label} of the units per layer")
    ax.legend(fontsize="x-small")
    return fig


def mis_lens_figures(view: LensView) -> dict[str, Figure]:
    """MIS against density and the per-layer distributions."""
    return {"mis_density": mis_density_figure(view), "mis_layers": mis_layer_figure(view)}
