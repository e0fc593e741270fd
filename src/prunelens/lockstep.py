"""Rounds of several runs in lockstep, each round's training batched over the runs (batched.py).

A sweep's points that train the same architecture on the same data with the same schedule differ only in what
`Rounds` does between trainings (pruning scores, seeds, masks): `train_groups` advances such a group round by
round — every member prunes and rewinds, then all members train as one batch, then every member measures and
stores its round. The stored rounds are those `run_rounds` writes (which trains such a run as a batch of one,
`batched.train_one`), so the sweep then executes each point as usual and finds its rounds finished. `sweep.batch: false` (or `--no-batch`) turns
it off.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from prunelens.batched import train_batched, unbatchable
from prunelens.data.loader import Loader
from prunelens.experiment import Prepared, dense_source
from prunelens.interrupts import check_interrupt
from prunelens.progress import Reporter
from prunelens.rounds import Context, Rounds, lr_offset, start_step, train_round
from prunelens.runs import Run, data_info

TRAINING_PRUNING_FIELDS = ("rounds", "rewind", "rewind_step", "lr_reset", "persistent")
"""The pruning settings that fix a round's training steps and schedule: equal within a group."""


def group_key(p: Prepared) -> str | None:
    """What members of one group share (data, architecture, training, the rounds' steps), or None when `p`
    is not batched (masks not persistent, or `batched.unbatchable`)."""
    cfg = p.cfg
    retraining = cfg.retraining or cfg.training
    model = p.build()
    if not cfg.pruning.persistent or any(unbatchable(model, cfg.device, t) for t in (cfg.training, retraining)):
        return None
    pruning = cfg.pruning.model_dump(mode="json", include=set(TRAINING_PRUNING_FIELDS))
    parts = {k: getattr(cfg, k) for k in ("dataset", "model", "training", "retraining")}
    shared = {k: v.model_dump(mode="json") if v is not None else None for k, v in parts.items()}
    return json.dumps({**shared, "device": cfg.device, "threads": cfg.threads, "pruning": pruning}, sort_keys=True)


def groups(runs: Sequence[Prepared]) -> list[list[Prepared]]:
    """The runs with unfinished rounds that can train together, in groups of at least two (sweep order)."""
    found: dict[str, list[Prepared]] = {}
    for p in runs:
        run = Run(p.cfg.run_dir)
        if run.exists() and set(range(p.cfg.pruning.rounds + 1)) <= set(run.rounds()):
            continue
        key = group_key(p)
        if key is not None:
            found.setdefault(key, []).append(p)
    return [members for members in found.values() if len(members) > 1]


def train_groups(runs: Sequence[Prepared], reporter: Reporter) -> int:
    """Train the unfinished rounds of every group of `runs` in lockstep; returns how many runs were batched."""
    batched = 0
    for members in groups(runs):
        reporter.log(f"{len(members)} runs train together as one batch of tickets: {', '.join(p.cfg.run_dir.name for p in members)}")
        train_group(members, reporter)
        batched += len(members)
    return batched


def train_group(members: Sequence[Prepared], reporter: Reporter) -> None:
    """Rounds 0…R of `members` (one group), each run locked while the group trains."""
    with ExitStack() as stack:
        steps = []
        for p in members:
            run = stack.enter_context(Run(p.cfg.run_dir).writing(on_wait=reporter.notice))
            run.initialise(p.cfg, data_info(p.bundle))
            steps.append(Rounds(Context(p.cfg, p.bundle, p.build(), reporter), run, dense_source(p, reporter)))
        loaders: dict[int, Loader] = {}
        for r in range(max(p.cfg.pruning.rounds for p in members) + 1):
            check_interrupt()
            active = [s for s in steps if r <= s.ctx.cfg.pruning.rounds and s.begin(r)]
            todo = [s for s in active if s.fit is None]
            fits = dict(zip(map(id, todo), train_together(todo, r, loaders)))
            for s in active:
                s.finish(r, s.fit or fits[id(s)])


def train_together(members: Sequence[Rounds], r: int, loaders: dict[int, Loader]) -> list[dict[str, Any]]:
    """Round `r`'s training of `members` as one batch (a lone member trains as usual). Members with the same
    data order share one loader (`loaders`, by noise seed), so their batches are drawn once."""
    if len(members) < 2:
        return [train_round(s.ctx, r, s.masks, s.k) for s in members]
    first = members[0].ctx
    training = first.training(r)
    start, offset = start_step(first, r, members[0].k), lr_offset(first, r, members[0].k)
    if any((start_step(s.ctx, r, s.k), lr_offset(s.ctx, r, s.k)) != (start, offset) for s in members):
        raise ValueError("batched members must train the same steps")
    member_loaders = [loaders.setdefault(s.ctx.cfg.noise_seed, s.ctx.loader(training)) for s in members]
    label = f"round {r}/{first.cfg.pruning.rounds}: {len(members)} tickets at once"
    with first.reporter.task(label, total=max(first.steps(r) - start, 0)) as advance:
        fits = train_batched(
            [s.ctx.model for s in members], member_loaders, training, [s.masks for s in members],
            start_step=start, end_step=first.steps(r), lr_offset=offset, progress=advance,
            where=[f"{s.run.root.name} round {r}" for s in members],
        )  # fmt: skip
    for s in members:
        s.masks.check_zero(s.ctx.model)
    return [{**fit, "batched": len(members)} for fit in fits]
