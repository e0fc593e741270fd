"""Partial re-initialisation (Vandersmissen & Oramas; docs/methods.md §11.6): are the weights shared by several
tickets special because of their *values*?

Keep θ_start on the common overlap O of the tickets, draw every other prunable weight fresh from the init
distribution (the `reinit` stream), rerun the same schedule to the same round, and measure per layer how many
overlap weights survive, S_l = |O_l ∩ M'_l| / |O_l|, against chance d'_l (the new ticket's layer density):
S_l/d'_l − 1. Pooled over layers, chance is Σ_l |O_l| d'_l / |O| (the expected survivors of an independent
ticket at the new per-layer densities).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
import torch

from prunelens.analysis.tickets import intersection
from prunelens.experiment import run as run_experiment
from prunelens.masks import MaskSet
from prunelens.runs import Run
from prunelens.seeding import forked
from prunelens.store import atomic_write


def mixed_start(start: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """θ_start where `keep` is True, the fresh init elsewhere, for the tensors in `keep`; other tensors from θ_start."""
    return {n: torch.where(keep[n], t, fresh[n]) if n in keep else t for n, t in start.items()}


def survival(overlap: dict[str, torch.Tensor], masks: MaskSet) -> pd.DataFrame:
    """Per layer (and "all"): |O|, survivors |O ∩ M'|, survival S, chance (d'_l; pooled Σ_l |O_l| d'_l / |O|)
    and S/chance − 1."""
    sizes = {n: int(overlap[n].sum()) for n in overlap}
    kept = {n: int((overlap[n] & masks[n].cpu()).sum()) for n in overlap}
    density = {n: float(masks[n].float().mean()) for n in overlap}
    total = sum(sizes.values())
    rows = [(n, sizes[n], kept[n], density[n]) for n in overlap]
    pooled = sum(sizes[n] * density[n] for n in overlap) / total if total else math.nan
    rows.append(("all", total, sum(kept.values()), pooled))
    out = []
    for name, size, survivors, chance in rows:
        s = survivors / size if size else math.nan
        gain = s / chance - 1 if chance else math.nan
        out.append({"layer": name, "overlap": size, "survivors": survivors, "survival": s, "chance": chance, "gain": gain})
    return pd.DataFrame(out)


def partial_reinit(runs: list[Run], r: int, out: Path, quiet: bool = False) -> pd.DataFrame:
    """Rerun the first run's schedule from the mixed start and report the overlap's survival at round `r`."""
    overlap = intersection([run.round(r).masks() for run in runs])
    first = runs[0]
    cfg, start = first.config, first.start()
    with forked(cfg.seed, "reinit"):
        fresh = first.build_model().state_dict()
    weights = out / "reinit_start.pt"
    buffer = io.BytesIO()
    torch.save(mixed_start(start, fresh, overlap), buffer)
    atomic_write(weights, buffer.getvalue())
    rewind = "none" if cfg.pruning.rewind == "none" else "pretrained"
    rerun = cfg.with_overrides(
        name=f"{cfg.name}-reinit", model={"weights": str(weights.resolve())}, pruning={"rewind": rewind, "rounds": r}, lenses=[]
    )
    masks = Run(run_experiment(rerun, quiet=quiet).run_dir).round(r).masks()
    table = survival(overlap, masks)
    atomic_write(out / "reinit_survival.csv", table.to_csv(index=False).encode())
    return table
