"""Batched tickets: K networks of one architecture trained at once (docs/scale.md).

Each parameter of the K members is stacked along a new leading dimension and one `torch.func.vmap` of
`functional_call` runs the K forward and backward passes as batched kernels (bmm, grouped convolutions). The
loss is the sum of the members' mean losses, so member k's gradient is exactly its own; one optimizer over the
stacked tensors keeps a separate state per member, because SGD, momentum, weight decay and Adam act element by
element. Each member keeps its own masks (one fused multiply per step for all of them) and its own data order
(its loader; members sharing a loader share the batch, which vmap then broadcasts). Results equal K trainings
one after another with `train` within float tolerance (tests/test_batched.py), and bit for bit what the same
member gives in a batch of one (`train_one`, how every batchable round trains).

Only networks without batch-norm or dropout are batched: running statistics are updated in place, and dropout
would draw other numbers than a sequential run. `precision: bf16` applies as in `train`; `channels_last` and
`compile` do not (the stacked weights are not a module).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from prunelens import distributed
from prunelens.config import TrainingConfig
from prunelens.data.loader import Loader
from prunelens.masks import MaskSet
from prunelens.modules import NORMS
from prunelens.train import Progress, autocast, build_optimizer, check_finite, set_lr, train

MAX_PARAMS = 5_000_000
"""Largest network batched automatically: above it one member already keeps the cores busy."""


def unbatchable(model: nn.Module, device: str = "cpu", cfg: TrainingConfig | None = None) -> str | None:
    """Why `model` is not trained in a batch on `device` (a layer with in-place state or its own randomness, a
    size that fills the machine alone, convolutions on a CPU, `cfg` asking for channels-last or torch.compile,
    data-parallel training), or None."""
    if cfg is not None and (cfg.channels_last or cfg.compile):
        return "training.channels_last / training.compile act on a module, not on stacked weights"
    if distributed.active():
        return "data-parallel training (torchrun)"
    for name, module in model.named_modules():
        if isinstance(module, NORMS) or isinstance(module, nn.modules.dropout._DropoutNd):
            return f"{name or 'the model'} is a {type(module).__name__}"
        if isinstance(module, nn.Conv2d) and torch.device(device).type == "cpu":
            return f"{name} is a convolution: on a CPU, batched (grouped) convolutions are slower than one network at a time"
    if any(True for _ in model.buffers()):
        return "the model has buffers"
    if sum(p.numel() for p in model.parameters()) > MAX_PARAMS:
        return f"more than {MAX_PARAMS:,} parameters"
    return None


def train_one(model: nn.Module, loader: Loader, cfg: TrainingConfig, masks: MaskSet | None, **steps: Any) -> dict[str, float]:
    """`train` one network (same arguments) — through the batched path as a batch of one when it can be batched,
    so a run's numbers do not depend on whether it trained alone or with others: a member's arithmetic does not
    depend on K or on the other members (tests/test_batched.py; observed bit for bit with this CPU's BLAS)."""
    if unbatchable(model, str(loader.device), cfg) is not None:
        return train(model, loader, cfg, masks, **steps)
    where = steps.pop("where", "training")
    return train_batched([model], [loader], cfg, [masks], **steps, where=[where])[0]


class Stack:
    """The parameters of `models` stacked member-first, with the members' masks stacked alike."""

    def __init__(self, models: Sequence[nn.Module], masks: Sequence[MaskSet | None]) -> None:
        self.models = list(models)
        self.names = [n for n, p in models[0].named_parameters() if p.requires_grad]
        members = [dict(m.named_parameters()) for m in models]
        self.params = {n: torch.stack([p[n].detach() for p in members]).requires_grad_() for n in self.names}
        masked = sorted({n for m in masks if m is not None for n in m if not bool(m[n].all())})
        ones = {n: torch.ones_like(self.params[n][0], dtype=torch.bool) for n in masked}
        self.targets = [self.params[n] for n in masked]
        self.factors = [
            torch.stack([(m[n] if m is not None and n in m else ones[n]).to(self.params[n]) for m in masks]) for n in masked
        ]

    @torch.no_grad()
    def enforce(self) -> None:
        """W ← W ⊙ M for every member and masked parameter, in one call."""
        if self.targets:
            torch._foreach_mul_(self.targets, self.factors)

    @torch.no_grad()
    def unstack(self) -> None:
        """Copy member k's trained parameters back into `models[k]`."""
        for k, model in enumerate(self.models):
            params = dict(model.named_parameters())
            for n in self.names:
                params[n].copy_(self.params[n][k])


def train_batched(
    models: Sequence[nn.Module],
    loaders: Sequence[Loader],
    cfg: TrainingConfig,
    masks: Sequence[MaskSet | None],
    *,
    start_step: int,
    end_step: int,
    lr_offset: int = 0,
    progress: Progress | None = None,
    where: Sequence[str] = (),
) -> list[dict[str, float]]:
    """`train` for K members at once: member k is `models[k]` on `loaders[k]` with `masks[k]`, all with the same
    settings and steps; the trained weights are written back into the models. Returns per member the mean
    training loss over the last epoch and the wall time of the batch divided by K (its share)."""
    if len({len(loader) for loader in loaders}) != 1:
        raise ValueError("batched members need loaders of the same length")
    k_models, base = len(models), models[0]
    stack = Stack(models, masks)
    shared = all(loader is loaders[0] for loader in loaders)
    forward = vmap(lambda p, x: functional_call(base, p, (x,)), in_dims=(0, None if shared else 0))
    optimizer = build_optimizer(list(stack.params.values()), cfg, fused=False)
    steps_per_epoch = len(loaders[0])
    total = cfg.epochs * steps_per_epoch
    stack.enforce()
    for model in models:
        model.train()
    step, losses, began = start_step, [], time.perf_counter()
    while step < end_step:
        epoch, first = divmod(step, steps_per_epoch)
        losses = []
        batches = [loaders[0].epoch(epoch, start=first)] if shared else [loader.epoch(epoch, start=first) for loader in loaders]
        for parts in zip(*batches):
            set_lr(optimizer, cfg, step + lr_offset, steps_per_epoch, total)
            x = parts[0][0] if shared else torch.stack([p[0] for p in parts])
            y = parts[0][1].repeat(k_models) if shared else torch.cat([p[1] for p in parts])
            with autocast(cfg, x.device):
                logits = forward(stack.params, x)
                member_loss = F.cross_entropy(logits.flatten(0, 1), y, reduction="none").view(k_models, -1).mean(1)
            optimizer.zero_grad(set_to_none=True)
            member_loss.sum().backward()
            optimizer.step()
            stack.enforce()
            losses.append(member_loss.detach())
            step += 1
            if progress:
                progress(1)
            if step >= end_step:
                break
        for k in range(k_models):
            check_finite([loss[k] for loss in losses], cfg, epoch, where[k] if where else f"batched member {k}")
    stack.unstack()
    share = (time.perf_counter() - began) / k_models
    means = [float(torch.stack([loss[k] for loss in losses]).mean()) if losses else float("nan") for k in range(k_models)]
    return [{"train_loss": mean, "train_seconds": share} for mean in means]
