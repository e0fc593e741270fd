"""Lottery-ticket controls (docs/methods.md §11.7; OpenLTH's `randomly_reinitialize` and `randomly_prune`).

For every pruned round of a finished run, train a control network with the run's schedule and compare its
accuracy with the ticket's:
- `random_reinit`: the ticket's masks, but weights drawn fresh from the init distribution (`control` stream);
- `random_prune`: the ticket's start weights, but masks drawn at random with the same per-layer counts.
A winning ticket beats both. Results are cached per round under `controls/<kind>/` and tabulated in
`controls_<kind>.{csv,parquet}`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from prunelens.data import build_dataset
from prunelens.errors import PrunelensError
from prunelens.experiment import prepare
from prunelens.masks import MaskSet
from prunelens.progress import Reporter
from prunelens.rounds import Context, measure, rewind, train_round
from prunelens.runs import Run, control_file
from prunelens.seeding import generator, name_key

KINDS = ("random_reinit", "random_prune")


def random_masks(masks: MaskSet, seed: int, *keys: int) -> MaskSet:
    """Masks with the same number of kept entries per tensor, at uniformly random positions drawn from the
    (seed, "control", *keys, tensor) stream."""
    out = {}
    for name, mask in masks.items():
        order = torch.randperm(mask.numel(), generator=generator(seed, "control", *keys, name_key(name)))
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[order[: int(mask.sum())]] = True
        out[name] = flat.view(mask.shape).to(mask.device)
    return MaskSet(out)


def run_controls(run: Run, kind: str, quiet: bool = False) -> pd.DataFrame:
    """Train the `kind` control of every pruned round of `run` (cached) and return ticket vs control."""
    if kind not in KINDS:
        raise PrunelensError(f"control: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    cfg = run.config.with_overrides(lenses=[])
    if cfg.pruning.rewind == "none":
        raise PrunelensError(f"{run.root}: controls compare rewound tickets; this run fine-tunes (pruning.rewind: none)")
    with Reporter(quiet) as reporter:
        p = prepare(cfg, build_dataset(run.data_config), reporter)
        with run.writing(on_wait=reporter.notice):
            ctx = Context(cfg, p.bundle, p.build(), reporter)
            theta_start, k = run.start(), cfg.pruning.rewind_step if cfg.pruning.rewind == "step" else 0
            rows: list[dict[str, Any]] = []
            for r in [q for q in run.rounds() if q > 0]:
                where = control_file(kind, r)
                if not run.store.has(where):
                    masks, start = run.round(r).masks().to(cfg.device), theta_start
                    if kind == "random_prune":
                        masks = random_masks(masks, cfg.seed, r)
                    else:
                        start = p.random_init("control", r).state_dict()
                    rewind(ctx.model, start, masks)
                    fit = train_round(ctx, r, masks, k, label=f"control {kind}: round {r}")
                    record = {**measure(ctx, ctx.model, masks), **fit}
                    run.store.save_json(where, {key: v for key, v in record.items() if key != "layers"})
                control, ticket = run.store.load_json(where), run.round(r).record()
                rows.append({"round": r, "density": ticket["density"], "ticket_test_top1": ticket["test_top1"],
                             f"{kind}_test_top1": control["test_top1"]})  # fmt: skip
            table = pd.DataFrame(rows)
            run.store.save_table(f"controls_{kind}", table)
    return table
