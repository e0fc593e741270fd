"""The round loop (docs/methods.md §6): dense training, then rounds of prune → rewind → retrain.

Every round restarts from θ_start (init, step k, or pretrained weights) — or, with `rewind: none`, from the
previous round's trained weights (prune + fine-tune) — with a fresh optimiser and LR schedule. IMP, one-shot
(`rounds: 1`) and iterative pruning (`rounds: n`, `rate: r`) are this one loop with different settings.

A round is resumable as a unit: its record is written last, and everything a round computes depends only on
stored files, the config and named seed streams, so a killed run resumes to the same masks and metrics. The
dense round 0 can come from a shared dense run (`dense`): runs that differ only in pruning settings train it once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
from torch import nn

from prunelens.batched import train_one
from prunelens.config import ExperimentConfig, TrainingConfig
from prunelens.data.base import DataBundle
from prunelens.data.loader import Loader
from prunelens.flops import FlopProfile, profile
from prunelens.interrupts import check_interrupt
from prunelens.masks import MaskSet, prunable_names
from prunelens.progress import Reporter
from prunelens.pruning import prune
from prunelens.pruning.collapse import collapse_report, functional_collapse, structural_collapse
from prunelens.runs import START, Run, round_file
from prunelens.seeding import seed_global
from prunelens.train import evaluate, make_loader, train


@dataclass(frozen=True)
class DenseRound:
    """What a run takes from its shared dense run: θ_start, the trained round-0 weights and their training record."""

    start: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]
    fit: dict[str, Any]


Dense = Callable[[], DenseRound]


@dataclass
class Context:
    """Everything the loop needs, built once by the experiment."""

    cfg: ExperimentConfig
    bundle: DataBundle
    model: nn.Module
    reporter: Reporter
    _loaders: dict[int, Loader] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        c, b = self.cfg, self.bundle
        self.eval_loaders = {
            split: make_loader(b, getattr(b, split), c.training.eval_batch_size, c.device, train=False) for split in ("val", "test")
        }
        p = c.pruning
        self.names = prunable_names(
            self.model, prune_classifier=p.prune_classifier, include_bias=p.include_bias, include_bn=p.include_bn, exclude=p.exclude
        )
        example = next(iter(self.eval_loaders["val"].epoch()))[0]
        self.input_shape = tuple(example.shape[1:])
        self.flops: FlopProfile = profile(self.model, example)

    def training(self, r: int) -> TrainingConfig:
        """Training settings of round `r`: `retraining` for pruned rounds when given."""
        return self.cfg.retraining if r > 0 and self.cfg.retraining is not None else self.cfg.training

    def loader(self, training: TrainingConfig) -> Loader:
        if training.batch_size not in self._loaders:
            c, b = self.cfg, self.bundle
            self._loaders[training.batch_size] = make_loader(
                b, b.train, training.batch_size, c.device, train=True, seed=c.noise_seed, augment=c.dataset.augment
            )
        return self._loaders[training.batch_size]

    def steps(self, r: int) -> int:
        training = self.training(r)
        return training.epochs * len(self.loader(training))


def start_state(ctx: Context, run: Run, dense: Dense | None) -> tuple[dict[str, torch.Tensor], int]:
    """θ_start and the step training starts from: stored, taken from the dense run, or (for the dense run
    itself) the initial weights after the k dense rewind steps."""
    p = ctx.cfg.pruning
    k = p.rewind_step if p.rewind == "step" else 0
    if run.store.has(START):
        return run.start(), k
    if dense is not None:
        state = dense().start
    else:
        if k:
            seed_global(ctx.cfg.noise_seed, "rewind")
            training = ctx.training(0)
            with ctx.reporter.task(f"rewind: {k} dense steps", total=k) as advance:
                train(ctx.model, ctx.loader(training), training, None, start_step=0, end_step=k, progress=advance, where="rewind")
        state = {n: t.detach().clone() for n, t in ctx.model.state_dict().items()}
    run.store.save_tensors(START, state)
    return state, k


def rewind(model: nn.Module, state: dict[str, torch.Tensor], masks: MaskSet) -> None:
    """Load `state` (parameters and buffers, e.g. BN statistics) and zero the pruned weights."""
    model.load_state_dict(state)
    masks.apply(model)


def measure(ctx: Context, model: nn.Module, masks: MaskSet) -> dict[str, Any]:
    """Accuracy, loss, densities (nominal from the masks, actual from the weights), parameters, effective FLOPs,
    and collapse: structural (an emptied layer, no input→output path) and functional (constant outputs, or
    test accuracy at chance). Top-5 is recorded only with more than 5 classes."""
    began = time.perf_counter()
    record: dict[str, Any] = {}
    evaluated = {split: evaluate(model, loader) for split, loader in ctx.eval_loaders.items()}
    for split, result in evaluated.items():
        keys = ("top1", "top5", "loss") if ctx.bundle.num_classes > 5 else ("top1", "loss")
        record.update({f"{split}_{k}": result[k] for k in keys})
    test = evaluated["test"]
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    unmasked = total - masks.total()
    nonzero_prunable = sum(int(params[n].count_nonzero()) for n in masks)
    functional = functional_collapse(test["top1"], test["n"], test["majority"], test["output_range"])
    record.update(
        density=masks.density(),
        density_actual=nonzero_prunable / max(masks.total(), 1),
        density_all=(masks.alive() + unmasked) / total,
        prunable_params=masks.total(),
        remaining_params=masks.alive(),
        nonzero_params=int(sum(int(p.count_nonzero()) for p in params.values())),
        total_params=total,
        flops_dense=ctx.flops.total,
        flops_effective=ctx.flops.effective(masks),
        output_range=test["output_range"],
        **collapse_report(structural_collapse(model, masks, ctx.input_shape), functional),
        eval_seconds=time.perf_counter() - began,
        layers=masks.layer_density(),
    )
    return record


def start_step(ctx: Context, r: int, k: int) -> int:
    """Step round `r` trains from: 0 when fine-tuning (`rewind: none`, r > 0), else the rewind step k."""
    return 0 if ctx.cfg.pruning.rewind == "none" and r > 0 else k


def lr_offset(ctx: Context, r: int, k: int) -> int:
    """0 when the LR schedule restarts each round; else the steps trained in rounds 0…r−1 minus round r's start,
    so the schedule continues where the previous round ended."""
    if ctx.cfg.pruning.lr_reset or r == 0:
        return 0
    trained = sum(ctx.steps(q) - start_step(ctx, q, k) for q in range(r))
    return trained - start_step(ctx, r, k)


def train_round(ctx: Context, r: int, masks: MaskSet, k: int, label: str | None = None) -> dict[str, float]:
    """Train round `r` with a fresh optimiser, enforcing `masks` if persistent (the `train` stream seeds dropout)."""
    training = ctx.training(r)
    seed_global(ctx.cfg.noise_seed, "train", r)
    start, end = start_step(ctx, r, k), ctx.steps(r)
    section = "retraining" if r > 0 and ctx.cfg.retraining is not None else "training"
    with ctx.reporter.task(label or f"round {r}/{ctx.cfg.pruning.rounds}", total=max(end - start, 0)) as advance:
        enforced = masks if ctx.cfg.pruning.persistent else None
        fit = train_one(
            ctx.model, ctx.loader(training), training, enforced,
            start_step=start, end_step=end, lr_offset=lr_offset(ctx, r, k), progress=advance, where=f"round {r} ({section})",
        )  # fmt: skip
    if ctx.cfg.pruning.persistent:
        masks.check_zero(ctx.model)
    return fit


class Rounds:
    """The round loop of one run (locked) as steps, so that several runs can advance in lockstep (lockstep.py):
    `begin(r)` sets the model up for round r (prune, rewind) and says whether it is still to do; a round with
    `fit` None then trains, and `finish(r, fit)` measures and stores it."""

    def __init__(self, ctx: Context, run: Run, dense: Dense | None = None) -> None:
        self.ctx, self.run = ctx, run
        self.dense = cache(dense) if dense is not None else None
        self.theta_start, self.k = start_state(ctx, run, self.dense)
        self.done = set(run.rounds())
        self.masks: MaskSet | None = None
        self.trained: dict[str, torch.Tensor] | None = None
        self.fit: dict[str, Any] | None = None
        self.prune_seconds = 0.0

    def begin(self, r: int) -> bool:
        """Prune and rewind for round `r`; False (and nothing done) when `r` finished earlier."""
        ctx, cfg, model = self.ctx, self.ctx.cfg, self.ctx.model
        if r in self.done:
            ctx.reporter.log(f"round {r}: finished earlier, skipped")
            return False
        if r > 0 and self.trained is None:  # resuming: only the last finished round's state is needed
            self.masks, self.trained = self.run.round(r - 1).masks(), self.run.round(r - 1).weights()
        began = time.perf_counter()
        if r == 0:
            self.masks = MaskSet.ones(model, ctx.names)
        else:
            model.load_state_dict(self.trained)
            self.masks = prune(model, self.masks, cfg.pruning, next(iter(ctx.loader(ctx.training(r)).epoch(0))), seed=cfg.seed)
        self.prune_seconds = time.perf_counter() - began
        self.fit = None
        if r == 0 and self.dense is not None:
            shared = self.dense()
            model.load_state_dict(shared.weights)
            self.fit = shared.fit
        else:
            rewind(model, self.trained if cfg.pruning.rewind == "none" and r > 0 else self.theta_start, self.masks)
        return True

    def finish(self, r: int, fit: dict[str, Any]) -> None:
        """Measure the trained round `r` and store its masks, weights and record (the record last)."""
        ctx, store = self.ctx, self.run.store
        nominal = 1 - (1 - ctx.cfg.pruning.round_fraction) ** r
        record = {"round": r, "rate_nominal": nominal, **measure(ctx, ctx.model, self.masks), **fit, "prune_seconds": self.prune_seconds}
        self.trained = {n: t.detach().clone() for n, t in ctx.model.state_dict().items()}
        store.save_tensors(round_file(r, "masks.pt"), self.masks.state_dict())
        store.save_tensors(round_file(r, "weights.pt"), self.trained)
        store.save_json(round_file(r, "metrics.json"), record)
        collapse = f"  collapsed: {record['collapse']}" if record["collapsed"] else ""
        source = f" (from {record['dense_run']})" if "dense_run" in record else ""
        ctx.reporter.log(f"round {r}{source}: density {record['density']:.3f}  test top-1 {record['test_top1']:.3f}{collapse}")


def run_rounds(ctx: Context, run: Run, dense: Dense | None = None) -> list[dict[str, Any]]:
    """Run (or resume, or extend) rounds 0…R in `run` (locked) and return every finished round's stored record."""
    rounds = Rounds(ctx, run, dense)
    for r in range(ctx.cfg.pruning.rounds + 1):
        check_interrupt()
        if rounds.begin(r):
            rounds.finish(r, rounds.fit or train_round(ctx, r, rounds.masks, rounds.k))
    return run.records()
