"""Training and evaluation loops: optimisers, per-step LR schedules, mask enforcement after every step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from prunelens.config import TrainingConfig
from prunelens.data.base import DataBundle, Split
from prunelens.data.loader import Loader
from prunelens.errors import PrunelensError
from prunelens.masks import MaskSet
from prunelens.modules import eval_mode

Progress = Callable[[int], None]


def make_loader(bundle: DataBundle, split: Split, batch_size: int, device: str, *, train: bool, seed: int = 0, augment: bool = False) -> Loader:
    return Loader(split, batch_size, mean=bundle.mean, std=bundle.std, device=device, shuffle=train, seed=seed, augment=augment and train)


def build_optimizer(params: list[nn.Parameter], cfg: TrainingConfig, fused: bool = True) -> torch.optim.Optimizer:
    """A fresh SGD / Adam / AdamW over `params`: the fused kernels where they are faster (measured on CPU:
    1.6–7× for SGD with momentum and Adam/AdamW), `foreach` for plain SGD (where fused is slower) and whenever
    `fused` is False (the fused CPU kernels round an element differently depending on where it sits in its tensor;
    batched training needs a member's update to be independent of the stacked tensor's size)."""
    if cfg.optimizer == "sgd":
        fast = {"fused": True} if fused and (cfg.momentum or cfg.weight_decay) else {"foreach": True}
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay, **fast)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **({"fused": True} if fused else {"foreach": True}))


def lr_factor(step: int, cfg: TrainingConfig, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of the base LR at global `step`; a pure function of the step, so training can start
    at any step k (rewinding) with the schedule already advanced."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    epoch = step // steps_per_epoch
    if cfg.schedule == "step":
        base = cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    elif cfg.schedule == "exponential":
        base = cfg.gamma**epoch
    elif cfg.schedule == "cosine":
        base = 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    else:
        base = 1.0
    return warm * base


def set_lr(optimizer: torch.optim.Optimizer, cfg: TrainingConfig, step: int, steps_per_epoch: int, total_steps: int) -> None:
    """Set every parameter group's LR to that of schedule step `step`."""
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * lr_factor(step, cfg, steps_per_epoch, total_steps)


def train(
    model: nn.Module,
    loader: Loader,
    cfg: TrainingConfig,
    masks: MaskSet | None,
    *,
    start_step: int,
    end_step: int,
    lr_offset: int = 0,
    progress: Progress | None = None,
    where: str = "training",
) -> dict[str, float]:
    """Train from global step `start_step` to `end_step` with a fresh optimiser; pruned weights stay exactly zero.
    The LR of step s is that of schedule step s + `lr_offset` (a continued schedule); the data order is that of s.
    A non-finite loss (checked once per epoch, no host sync per step) stops with an error naming `where`.

    Returns the mean training loss over the last epoch trained and the wall time.
    """
    from prunelens import distributed  # here: distributed.py builds on this module

    if distributed.active():  # under torchrun (the leader): the same training, data-parallel
        return distributed.lead(
            model, loader, cfg, masks, start_step=start_step, end_step=end_step, lr_offset=lr_offset, progress=progress, where=where
        )
    steps_per_epoch = len(loader)
    total = cfg.epochs * steps_per_epoch
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    enforce = masks.enforcer(model) if masks is not None else (lambda: None)
    enforce()
    model.train()
    forward = accelerated(model, cfg)
    step, losses, began = start_step, [], time.perf_counter()
    while step < end_step:
        epoch, first = divmod(step, steps_per_epoch)
        losses = []
        for x, y in loader.epoch(epoch, start=first):
            set_lr(optimizer, cfg, step + lr_offset, steps_per_epoch, total)
            with autocast(cfg, x.device):
                loss = F.cross_entropy(forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            enforce()
            losses.append(loss.detach())
            step += 1
            if progress:
                progress(1)
            if step >= end_step:
                break
        check_finite(losses, cfg, epoch, where)
    if cfg.channels_last:
        model.to(memory_format=torch.contiguous_format)  # stored weights keep the default layout
    mean_loss = float(torch.stack(losses).mean()) if losses else float("nan")
    return {"train_loss": mean_loss, "train_seconds": time.perf_counter() - began}


def autocast(cfg: TrainingConfig, device: torch.device) -> AbstractContextManager:
    """bf16 autocast of the forward pass and the loss when `cfg.precision` is bf16 (parameters, gradients and
    optimizer state stay fp32), else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()


def accelerated(model: nn.Module, cfg: TrainingConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """The training forward of `model`: with `channels_last`, weights and 4-d inputs in channels-last memory
    format; with `compile`, through `torch.compile`. The plain module otherwise."""
    forward: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if cfg.compile else model
    if not cfg.channels_last:
        return forward
    model.to(memory_format=torch.channels_last)
    return lambda x: forward(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)


def check_finite(losses: list[torch.Tensor], cfg: TrainingConfig, epoch: int, where: str) -> None:
    """Raise if any loss of the epoch is NaN or infinite (the run diverged), naming the likely fields."""
    if losses and not bool(torch.isfinite(torch.stack(losses)).all()):
        raise PrunelensError(
            f"{where}: training diverged (non-finite loss in epoch {epoch}); lower the learning rate "
            f"(lr {cfg.lr:g}, weight_decay {cfg.weight_decay:g}, momentum {cfg.momentum:g}) or check the data"
        )


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader) -> dict[str, float]:
    """Over the loader's split (eval mode): mean cross-entropy `loss`, `top1`, `top5`, and for functional
    collapse the number of images `n`, the `majority` class share and `output_range`, the largest per-class
    spread (max − min) of the logits relative to their scale (0 for constant outputs)."""
    loss = top1 = top5 = 0.0
    n = 0
    lo = hi = counts = None
    with eval_mode(model):
        for x, y in loader.epoch():
            logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top.eq(y[:, None])
            top1 += float(hits[:, 0].sum())
            top5 += float(hits.any(dim=1).sum())
            n += len(y)
            low, high = logits.amin(0).double(), logits.amax(0).double()
            lo = low if lo is None else torch.minimum(lo, low)
            hi = high if hi is None else torch.maximum(hi, high)
            found = torch.bincount(y, minlength=logits.shape[1])
            counts = found if counts is None else counts + found
    scale = 1 + float(torch.maximum(hi.abs(), lo.abs()).max())
    return {
        "loss": loss / n, "top1": top1 / n, "top5": top5 / n, "n": n,
        "majority": float(counts.max()) / n, "output_range": float((hi - lo).max()) / scale,
    }  # fmt: skip
