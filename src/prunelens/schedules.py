"""Lottery-ticket IMP (METHODS §5.1): dense training, then rounds of prune → rewind → retrain.

Every round restarts from θ_start (init, step k, or pretrained weights) — or, with `rewind: none`, from the
previous round's trained weights (prune + fine-tune) — with a fresh optimiser and LR schedule. A round is
resumable as a unit: its record is written last, and everything a round computes depends only on stored
files and the config, so a killed run resumes to the same masks and metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunelens.config import ExperimentConfig
from prunelens.data.base import DataBundle
from prunelens.data.loader import Loader, generator
from prunelens.flops import FlopProfile, profile
from prunelens.masks import MaskSet, prunable_names
from prunelens.progress import Reporter
from prunelens.pruning import prune
from prunelens.store import RunStore, round_dir
from prunelens.train import evaluate, make_loader, train

START = "start.pt"


@dataclass
class Context:
    """Everything a schedule needs, built once by the experiment."""

    cfg: ExperimentConfig
    bundle: DataBundle
    model: nn.Module
    reporter: Reporter

    def __post_init__(self) -> None:
        c, b = self.cfg, self.bundle
        self.train_loader = make_loader(b, b.train, c.training.batch_size, c.device, train=True, seed=c.seed, augment=c.dataset.augment)
        self.eval_loaders = {
            split: make_loader(b, getattr(b, split), c.training.eval_batch_size, c.device, train=False) for split in ("val", "test")
        }
        self.total_steps = c.training.epochs * len(self.train_loader)
        p = c.pruning
        self.names = prunable_names(
            self.model, prune_classifier=p.prune_classifier, include_bias=p.include_bias, include_bn=p.include_bn, exclude=p.exclude
        )
        self.flops: FlopProfile = profile(self.model, next(iter(self.eval_loaders["val"].epoch()))[0])


REWIND_PHASE = 10**6  # pseudo round number of the k dense rewind steps


def round_seed(seed: int, r: int) -> int:
    """Seed of the global torch RNG during round `r` (dropout etc.), independent of what ran before."""
    return int(generator(seed, r, 7).initial_seed())


def start_state(ctx: Context, store: RunStore) -> tuple[dict[str, torch.Tensor], int]:
    """θ_start and the step training starts from; trains the k dense rewind steps once and stores them."""
    p = ctx.cfg.pruning
    k = p.rewind_step if p.rewind == "step" else 0
    if store.has(START):
        return store.load_tensors(START), k
    if k:
        torch.manual_seed(round_seed(ctx.cfg.seed, REWIND_PHASE))
        with ctx.reporter.task(f"rewind: {k} dense steps", total=k) as advance:
            train(ctx.model, ctx.train_loader, ctx.cfg.training, None, start_step=0, end_step=k, progress=advance)
    state = {n: t.detach().clone() for n, t in ctx.model.state_dict().items()}
    store.save_tensors(START, state)
    return state, k


def rewind(model: nn.Module, state: dict[str, torch.Tensor], masks: MaskSet) -> None:
    """Load `state` (parameters and buffers, e.g. BN statistics) and zero the pruned weights."""
    model.load_state_dict(state)
    masks.apply(model)


def measure(ctx: Context, model: nn.Module, masks: MaskSet) -> dict[str, Any]:
    """Accuracy, loss, densities, non-zeros and effective FLOPs of a trained round."""
    began = time.perf_counter()
    record: dict[str, Any] = {}
    for split, loader in ctx.eval_loaders.items():
        record.update({f"{split}_{k}": v for k, v in evaluate(model, loader).items()})
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    unmasked = total - masks.total()
    record.update(
        density=masks.density(),
        density_all=(masks.alive() + unmasked) / total,
        prunable_params=masks.total(),
        remaining_params=masks.alive(),
        nonzero_params=int(sum(int(p.count_nonzero()) for p in params)),
        total_params=total,
        flops_dense=ctx.flops.total,
        flops_effective=ctx.flops.effective(masks),
        eval_seconds=time.perf_counter() - began,
        layers=masks.layer_density(),
    )
    return record


def run_imp(ctx: Context, store: RunStore, on_round: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Run (or resume, or extend) rounds 0…R in `store` and return their records; `on_round(records so far)`
    is called after each newly computed round."""
    cfg, model = ctx.cfg, ctx.model
    theta_start, k = start_state(ctx, store)
    done = set(store.rounds_done())
    records: list[dict[str, Any]] = []
    masks = trained = None
    for r in range(cfg.pruning.rounds + 1):
        here = round_dir(r)
        if r in done:
            masks = MaskSet(store.load_tensors(f"{here}/masks.pt"))
            trained = store.load_tensors(f"{here}/weights.pt")
            records.append(store.load_json(f"{here}/metrics.json"))
            ctx.reporter.log(f"round {r}: finished earlier, skipped")
        else:
            began = time.perf_counter()
            if r == 0:
                masks = MaskSet.ones(model, ctx.names)
            else:
                model.load_state_dict(trained)
                masks = prune(model, masks, cfg.pruning, next(iter(ctx.train_loader.epoch(0))))
            prune_seconds = time.perf_counter() - began
            rewind(model, trained if cfg.pruning.rewind == "none" and r > 0 else theta_start, masks)
            torch.manual_seed(round_seed(cfg.seed, r))
            first = 0 if cfg.pruning.rewind == "none" else k
            with ctx.reporter.task(f"round {r}/{cfg.pruning.rounds}", total=ctx.total_steps - first) as advance:
                fit = train(model, ctx.train_loader, cfg.training, masks, start_step=first, end_step=ctx.total_steps, progress=advance)
            masks.check_zero(model)
            record = {"round": r, **measure(ctx, model, masks), **fit, "prune_seconds": prune_seconds}
            trained = {n: t.detach().clone() for n, t in model.state_dict().items()}
            store.save_tensors(f"{here}/masks.pt", masks.state_dict())
            store.save_tensors(f"{here}/weights.pt", trained)
            store.save_json(f"{here}/metrics.json", record)
            records.append(record)
            ctx.reporter.log(f"round {r}: density {record['density']:.3f}  test top-1 {record['test_top1']:.3f}")
            if on_round:
                on_round(records)
    return records
