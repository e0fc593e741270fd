"""Physical shrink and sparse kernels of a stored round: size, FLOPs and measured latency (docs/methods.md §5.4, §17).

`shrink_round` removes the zeroed filters / input channels of a finished round (Torch-Pruning), checks the
outputs equal the masked model's, times both models interleaved, and stores `rounds/NNN/shrink.json` and the
shrunk model as a `torch.export` program (`rounds/NNN/shrunk.pt2`, load with `torch.export.load`) — so
results say what is simulated (masked, effective FLOPs) and what is real (shrunk, measured latency).

Unstructured masks remove no filter; for them the `sparse` section of the report is what counts: the masked
dense model timed against the same weights in sparse CSR kernels (`pruning.sparse`), and a crossover of the
run's own layer shapes at random masks (`rounds/NNN/sparse_crossover.csv` and `.png`): below which density
sparse kernels win on this machine.
"""

from __future__ import annotations

import io
import os
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from prunelens.data import build_dataset
from prunelens.device import cores
from prunelens.errors import PrunelensError
from prunelens.lenses.data import LensData
from prunelens.masks import MaskSet
from prunelens.pruning.shrink import _timed, compare_latency, footprint, shrink
from prunelens.pruning.sparse import KERNEL, crossover, dense_reason, layers_of, semi_structured, sparsify
from prunelens.runs import Run, round_file

CROSSOVER_DENSITIES = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
"""Densities of the crossover in `shrink_round` (the run's own density is added)."""
CROSSOVER_CSV, CROSSOVER_PNG = "sparse_crossover.csv", "sparse_crossover.png"


def _ms(t: dict[str, float]) -> dict[str, float]:
    return {k: v * 1e3 for k, v in t.items()}


def crossover_figure(table: pd.DataFrame, density: float, batch: int) -> Figure:
    """Left: latency vs density of the layers together (dense line, sparse CSR points); right: speed-up per
    layer. Log axes, density decreasing to the right; the run's density and the crossover marked."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    if table.empty:
        left.text(0.5, 0.5, "no layer with a sparse kernel", ha="center", transform=left.transAxes)
    else:
        whole = "all" if "all" in set(table["layer"]) else table["layer"].iloc[0]
        total = table[table["layer"] == whole].sort_values("density")
        left.plot(total["density"], total["dense_ms"], "-", color="tab:blue", label="dense kernel (masked weights)")
        left.plot(total["density"], total["sparse_ms"], "o-", color="tab:orange", label="sparse CSR kernel")
        wins = total[total["speedup"] > 1]
        if not wins.empty:
            x = float(wins["density"].max())
            for ax in (left, right):
                ax.axvline(x, color="tab:green", ls="--", lw=1, label=f"crossover: sparse wins at ≤ {x:g}")
        left.set_ylabel(f"ms per batch of {batch} (median)")
        left.set_title(f"{'all sparse-kernel layers (sum)' if whole == 'all' else whole}")
        layers = [n for n in table["layer"].unique() if n != "all"]
        for name in layers:
            rows = table[table["layer"] == name].sort_values("density")
            right.plot(rows["density"], rows["speedup"], ".-", lw=1, alpha=0.8, label=name if len(layers) <= 8 else None)
        right.axhline(1.0, color="black", lw=0.8)
        right.set_yscale("log")
        right.set_ylabel("speed-up dense / sparse")
        right.set_title("per layer (> 1: sparse faster)")
    for ax in (left, right):
        ax.axvline(density, color="black", ls=":", lw=1.2, label=f"this round: density {density:.3g}")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("density (random unstructured mask)")
        ax.legend(fontsize=7)
    left.set_yscale("log")
    return figure


def sparse_section(
    model: nn.Module, masks: MaskSet, example: torch.Tensor, repeats: int, counts: dict[str, float]
) -> tuple[dict[str, Any], pd.DataFrame]:
    """The `sparse` part of the report (without file names) and the crossover table."""
    load = os.getloadavg()[0]
    sparse = sparsify(model, masks).eval()
    timed = _timed({"masked": model, "sparse": sparse}, example, repeats)
    with torch.no_grad():
        diff = float((model(example) - sparse(example)).abs().max())
    layers = layers_of(model, masks, example)
    density = masks.density()
    grid = sorted({*CROSSOVER_DENSITIES, *([round(density, 4)] if density > 0 else [])}, reverse=True)
    table, wins = crossover(layers, grid, example.shape[0], max(1, repeats // 4))
    named = dict(model.named_modules())
    masked = [n.removesuffix(".weight") for n in masks if n.endswith(".weight") and n.removesuffix(".weight") in named]
    section = {
        "kernel": KERNEL,
        "density": density,
        "layer_density": {layer.name: float(masks[f"{layer.name}.weight"].float().mean()) for layer in layers},
        "dense_layers": {n: dense_reason(named[n]) for n in masked if dense_reason(named[n]) is not None},
        "flops": counts["flops"],
        "flops_effective": counts["flops_effective"],
        "latency_ms": {
            "masked": _ms(timed["masked"]),
            "sparse": _ms(timed["sparse"]),
            "speedup": timed["masked"]["median"] / timed["sparse"]["median"],
        },
        "max_abs_diff": diff,
        "crossover": {
            "density": wins.get("all", next(iter(wins.values()), None)),
            "layers": wins,
            "densities": grid,
            "batch": int(example.shape[0]),
            "repeats": max(1, repeats // 4),
        },
        "semi_structured": semi_structured(layers, int(example.shape[0]), repeats),
    }
    section["faster"] = section["latency_ms"]["speedup"] > 1
    section.update(threads=torch.get_num_threads(), cores=cores(), load_average=[load, os.getloadavg()[0]])
    return section, table


def shrink_round(run: Run, r: int | None = None, batch: int = 32, repeats: int = 20) -> dict[str, Any]:
    """Shrink round `r` (default: the last finished) of a run and time its sparse kernels; returns and stores
    the comparison (`repeats` timed forwards per model; the crossover uses repeats ÷ 4, at least 1)."""
    from prunelens.report.figures import png

    if not run.rounds():
        raise PrunelensError(f"{run.root}: no finished rounds")
    r = run.rounds()[-1] if r is None else r
    view = run.round(r)
    model, masks = view.model("cpu"), view.masks()
    example = LensData(build_dataset(run.data_config), "cpu", batch).eval_batch.images
    small = shrink(model, masks, example).eval()
    report = {
        "round": r,
        "masked": footprint(model, example, masks),
        "shrunk": footprint(small, example),
        "latency": compare_latency(model, small, example, repeats),
        "batch": batch,
    }
    report["sparse"], table = sparse_section(model, masks, example, repeats, report["masked"])
    report["sparse"]["crossover"].update(table=round_file(r, CROSSOVER_CSV), figure=round_file(r, CROSSOVER_PNG))
    figure = png(crossover_figure(table, report["sparse"]["density"], batch))
    program = io.BytesIO()
    batch_dim = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(small, (example,), dynamic_shapes=({0: batch_dim},)), program)
    with run.writing():
        run.store.write(round_file(r, "shrunk.pt2"), program.getvalue())
        run.store.write(round_file(r, CROSSOVER_CSV), table.to_csv(index=False).encode())
        run.store.write(round_file(r, CROSSOVER_PNG), figure)
        run.store.save_json(round_file(r, "shrink.json"), report)
    return report
