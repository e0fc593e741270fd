"""Figures of the `pcbm` lens, drawn from its long table: top-k concepts per class × round, consistency with
the dense PCBM (with the references' levels), PCBM accuracy next to the network's, and correctness."""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from prunelens.report.figures import REFERENCE_STYLE, LensView, density_axis, density_figure, on_axis

MAX_CLASSES_SHOWN = 20
MAX_ROUNDS_SHOWN = 8


def topk_figure(table: pd.DataFrame, title: str) -> Figure:
    """Rows: classes; columns: rounds (the first, the last and evenly spaced ones between). Each cell lists the
    class's top-k concepts, shaded by the Jaccard of that set with the dense network's (white: 1)."""
    top = table[table["kind"] == "topk"]
    rounds = sorted(top["round"].unique())
    if len(rounds) > MAX_ROUNDS_SHOWN:
        step = (len(rounds) - 1) / (MAX_ROUNDS_SHOWN - 1)
        rounds = sorted({rounds[round(i * step)] for i in range(MAX_ROUNDS_SHOWN)})
    classes = list(dict.fromkeys(top["class"]))[:MAX_CLASSES_SHOWN]
    sets = {(r, c): list(g.sort_values("rank")["concept"]) for (r, c), g in top.groupby(["round", "class"])}
    density = top.drop_duplicates("round").set_index("round")["density"]
    fig = Figure(figsize=(1.9 * len(rounds) + 1.6, 0.55 * len(classes) + 1.0), layout="constrained")
    ax = fig.subplots()
    ax.set(xlim=(0, len(rounds)), ylim=(len(classes), 0), xticks=[i + 0.5 for i in range(len(rounds))],
           yticks=[i + 0.5 for i in range(len(classes))])  # fmt: skip
    ax.set_xticklabels([f"round {r}\ndensity {density[r]:.2g}" for r in rounds], fontsize=7)
    ax.set_yticklabels(classes, fontsize=7)
    ax.tick_params(length=0)
    for j, r in enumerate(rounds):
        for i, c in enumerate(classes):
            current, dense = set(sets.get((r, c), [])), set(sets.get((rounds[0], c), []))
            union = current | dense
            jaccard = len(current & dense) / len(union) if union else math.nan
            shade = 1.0 if math.isnan(jaccard) else 0.55 + 0.45 * jaccard
            ax.add_patch(Rectangle((j, i), 1, 1, facecolor=(1.0, shade, shade), edgecolor="white"))
            ax.text(j + 0.5, i + 0.5, "\n".join(sets.get((r, c), ["—"])), ha="center", va="center", fontsize=5.5)
    ax.set_title(title, fontsize=9)
    return fig


def accuracy_figure(table: pd.DataFrame, title: str) -> Figure:
    """Left: the network's, the PCBM's and the PCBM-h's test accuracy against density, with the floor's PCBM
    accuracy; right: the concept bank's validation accuracy (mean and 10th percentile over concepts)."""
    fig = Figure(figsize=(8.4, 3.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    for ax, kind, metrics in ((left, "accuracy", ("black_box", "pcbm", "pcbm_h")), (right, "bank", ("val_acc_mean", "val_acc_q10"))):
        rows = table[table["kind"] == kind]
        for metric in metrics:
            curve = rows[rows["metric"] == metric].sort_values("round")
            if len(curve):
                ax.plot(on_axis(list(curve["density"])), curve["value"], marker="o", markersize=3, label=metric)
        for ref, (colour, label) in REFERENCE_STYLE.items():
            level = table[(table["kind"] == f"{kind}_{ref}") & (table["metric"] == metrics[1])]["value"]
            if len(level) and math.isfinite(float(level.iloc[0])):
                ax.axhline(float(level.iloc[0]), color=colour, linestyle="--", linewidth=1, label=f"{label} ({metrics[1]})")
        density_axis(ax, list(rows["density"]) or [1.0])
        ax.legend(fontsize="x-small")
    left.set(ylabel="test accuracy", title="network and PCBM")
    right.set(ylabel="validation accuracy", title="concept bank")
    fig.suptitle(title, fontsize=9)
    return fig


def pcbm_figures(view: LensView) -> dict[str, Figure]:
    """Top-k concepts per class × round, consistency, accuracy and (with ground truth) correctness."""
    table = view.table
    head = str(table["head"].iloc[0]) if "head" in table and len(table) else ""
    refs = {k: k for k in REFERENCE_STYLE if k in set(table["kind"])}
    figures = {
        "topk": topk_figure(table, f"PCBM ({head} head): top-{table[table['kind'] == 'topk']['rank'].max():.0f} concepts per class"),
        "consistency": density_figure(table, ["pruned_vs_dense"], "PCBM: consistency with the dense network's concept weights", refs),
        "accuracy": accuracy_figure(table, "PCBM accuracy next to the network's"),
    }
    if (table["kind"] == "correctness").any():
        correct = {k: f"correctness_{k}" for k in refs}
        figures["correctness"] = density_figure(table, ["correctness"], "PCBM: are the top concepts the class's own?", correct)
    return figures
