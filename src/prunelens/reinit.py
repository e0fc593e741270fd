"""Partial re-initialisation (Vandersmissen & Oramas; METHODS §11): are the weights shared by several tickets
special because of their *values*?

Keep θ_start on the common overlap O of the tickets, draw every other prunable weight fresh from the init
distribution (a new seed), rerun the same schedule to the same round, and measure per layer how many overlap
weights survive: S_l = |O_l ∩ M'_l| / |O_l|, against chance d'_l (the new ticket's layer density): S_l/d'_l − 1.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import torch

from prunelens.experiment import load_run_config, run
from prunelens.lenses.tickets import intersection, run_model
from prunelens.masks import MaskSet
from prunelens.store import RunStore, atomic_write, round_dir

REINIT_SEED_OFFSET = 7919


def mixed_start(start: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """θ_start where `keep` is True, the fresh init elsewhere, for the tensors in `keep`; other tensors from θ_start."""
    return {n: torch.where(keep[n], t, fresh[n]) if n in keep else t for n, t in start.items()}


def survival(overlap: dict[str, torch.Tensor], masks: MaskSet) -> pd.DataFrame:
    """Per layer (and "all"): |O|, survivors |O ∩ M'|, survival S, chance d' and S/d' − 1."""
    rows = []
    for name in [*overlap, "all"]:
        names = list(overlap) if name == "all" else [name]
        size = sum(int(overlap[n].sum()) for n in names)
        kept = sum(int((overlap[n] & masks[n].cpu()).sum()) for n in names)
        chance = sum(int(masks[n].sum()) for n in names) / sum(masks[n].numel() for n in names)
        s = kept / size if size else float("nan")
        rows.append({"layer": name, "overlap": size, "survivors": kept, "survival": s, "chance": chance, "gain": s / chance - 1 if chance else float("nan")})
    return pd.DataFrame(rows)


def partial_reinit(run_dirs: list[Path], r: int, out: Path, quiet: bool = False) -> pd.DataFrame:
    """Rerun the first run's schedule from the mixed start and report the overlap's survival at round `r`."""
    overlap = intersection([RunStore(d).load_tensors(f"{round_dir(r)}/masks.pt") for d in run_dirs])
    cfg = load_run_config(run_dirs[0])
    start = RunStore(run_dirs[0]).load_tensors("start.pt")
    torch.manual_seed(cfg.seed + REINIT_SEED_OFFSET)
    fresh = run_model(run_dirs[0])[0].state_dict()
    weights = out / "reinit_start.pt"
    buffer = io.BytesIO()
    torch.save(mixed_start(start, fresh, overlap), buffer)
    atomic_write(weights, buffer.getvalue())
    rewind = "none" if cfg.pruning.rewind == "none" else "pretrained"
    rerun = cfg.with_overrides(
        name=f"{cfg.name}-reinit", model={"weights": str(weights.resolve())}, pruning={"rewind": rewind, "rounds": r}, lenses=[]
    )
    masks = MaskSet(RunStore(run(rerun, quiet=quiet).run_dir).load_tensors(f"{round_dir(r)}/masks.pt"))
    table = survival(overlap, masks)
    atomic_write(out / "reinit_survival.csv", table.to_csv(index=False).encode())
    return table
