"""Lottery-ticket controls (METHODS §5.5; OpenLTH's `randomly_reinitialize` and `randomly_prune` branches).

For every pruned round of a finished run, train a control network with the run's schedule and compare its
accuracy with the ticket's:
- `random_reinit`: the ticket's masks, but weights drawn fresh from the init distribution (another seed);
- `random_prune`: the ticket's start weights, but masks drawn at random with the same per-layer densities.
A winning ticket beats both. Results are cached per round under `controls/<kind>/` and tabulated in
`controls_<kind>.{csv,parquet}`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from prunelens.data.loader import generator
from prunelens.errors import PrunelensError
from prunelens.experiment import load_run_config, open_store, prepare
from prunelens.masks import MaskSet
from prunelens.progress import Reporter
from prunelens.schedules import Context, measure, rewind, start_state, train_round
from prunelens.store import round_dir
from prunelens.train import seed_everything

KINDS = ("random_reinit", "random_prune")
CONTROL_SEED_OFFSET = 104_729


def random_masks(masks: MaskSet, seed: int) -> MaskSet:
    """Masks with the same number of kept entries per tensor, at uniformly random positions."""
    out = {}
    for i, (name, mask) in enumerate(masks.items()):
        order = torch.randperm(mask.numel(), generator=generator(seed, i))
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[order[: int(mask.sum())]] = True
        out[name] = flat.view(mask.shape).to(mask.device)
    return MaskSet(out)


def run_controls(run_dir: Path, kind: str, quiet: bool = False) -> pd.DataFrame:
    """Train the `kind` control of every pruned round of `run_dir` (cached) and return ticket vs control."""
    if kind not in KINDS:
        raise PrunelensError(f"control: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    cfg = load_run_config(run_dir)
    if cfg.pruning.rewind == "none":
        raise PrunelensError(f"{run_dir}: controls compare rewound tickets; this run fine-tunes (pruning.rewind: none)")
    bundle, build = prepare(cfg)
    seed_everything(cfg.seed)
    with Reporter(quiet) as reporter, open_store(cfg, write_config=False) as store:
        ctx = Context(cfg, bundle, build(), reporter)
        theta_start, k = start_state(ctx, store)
        rows: list[dict[str, Any]] = []
        for r in [q for q in store.rounds_done() if q > 0]:
            stem = f"controls/{kind}/round_{r:03d}.json"
            if not store.has(stem):
                masks = MaskSet(store.load_tensors(f"{round_dir(r)}/masks.pt")).to(cfg.device)
                start = theta_start
                if kind == "random_prune":
                    masks = random_masks(masks, cfg.seed + CONTROL_SEED_OFFSET + r)
                else:
                    seed_everything(cfg.seed + CONTROL_SEED_OFFSET + r)
                    start = build().state_dict()
                rewind(ctx.model, start, masks)
                fit = train_round(ctx, r, masks, k)
                record = {**measure(ctx, ctx.model, masks), **fit}
                store.save_json(stem, {key: v for key, v in record.items() if key != "layers"})
            control = store.load_json(stem)
            ticket = store.load_json(f"{round_dir(r)}/metrics.json")
            rows.append({"round": r, "density": ticket["density"], "ticket_test_top1": ticket["test_top1"],
                         f"{kind}_test_top1": control["test_top1"]})  # fmt: skip
        table = pd.DataFrame(rows)
        store.save_table(f"controls_{kind}", table)
    return table
