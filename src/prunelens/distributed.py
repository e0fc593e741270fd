"""Data-parallel training under torchrun (docs/distributed.md): the leader runs the pipeline, followers help it train.

`prunelens run CONFIG` started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT set, WORLD_SIZE > 1)
goes through `launch`, called by `commands.cmd_run`: the smallest place, since it already tells sweeps from
single runs (a sweep under torchrun is refused there) and is the only caller that prints and writes the report.
`launch` joins the process group (nccl for `device: cuda`, rank r on cuda:LOCAL_RANK; gloo on CPU) and a gloo
*control* group that carries requests, stop flags and checksums.

Rank 0, the leader, runs everything exactly as one process would (store, rounds, pruning, evaluation, lenses,
report); only `train()` notices, through its hook: it broadcasts a training request (`lead`) and trains with
`train_parallel`. The other ranks, followers, wait in `follow` for requests, train the same steps on their
shard of each global batch, and return when the leader sends "done" (also after an error: a `finally`);
they write nothing. Timeouts (minutes, env): PRUNELENS_DDP_TIMEOUT (default 30) bounds a collective during
training; PRUNELENS_DDP_IDLE_TIMEOUT (default 1440) bounds a follower's wait for the next request, since the
leader evaluates and runs lenses in between. A dead leader ends the followers at once (gloo sees the closed
connection; torchrun stops the other workers), the timeouts are the fallback for a hung one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from prunelens.config import ExperimentConfig, TrainingConfig
from prunelens.data.loader import Loader
from prunelens.device import WORKERS_ENV
from prunelens.errors import PrunelensError
from prunelens.masks import MaskSet
from prunelens.train import Progress, accelerated, autocast, build_optimizer, check_finite, make_loader, set_lr

if TYPE_CHECKING:
    from prunelens.experiment import Prepared

TIMEOUT_ENV, IDLE_ENV = "PRUNELENS_DDP_TIMEOUT", "PRUNELENS_DDP_IDLE_TIMEOUT"
DONE: dict[str, Any] = {"kind": "done"}
_control: dist.ProcessGroup | None = None


class Stopped(Exception):
    """The leader stopped a parallel training part-way (an interrupt); the followers drop it."""


def launched() -> bool:
    """Started by torchrun (or any env:// launcher) with more than one process."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """This process is in a prunelens process group (the `train()` hook asks)."""
    return _control is not None


def _minutes(env: str, default: float) -> timedelta:
    return timedelta(minutes=float(os.environ.get(env, default)))


def init_group(backend: str) -> None:
    """Join the env:// process group (`backend` for training) and create the gloo control group."""
    global _control
    dist.init_process_group(backend, timeout=_minutes(TIMEOUT_ENV, 30))
    _control = dist.new_group(backend="gloo", timeout=_minutes(IDLE_ENV, 24 * 60))


def close_group() -> None:
    global _control
    _control = None
    dist.destroy_process_group()


def launch(cfg: ExperimentConfig, main: Callable[[ExperimentConfig], None]) -> None:
    """`main(cfg)`; under torchrun only on the leader, while the followers `follow` until it is done."""
    if not launched():
        return main(cfg)
    device = torch.device(cfg.device)
    if device.type not in ("cpu", "cuda") or device.index is not None:
        raise PrunelensError(f"device: {cfg.device!r} cannot train data-parallel; use cpu or cuda (rank r takes cuda:LOCAL_RANK)")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" is then this rank's GPU
    os.environ.setdefault(WORKERS_ENV, os.environ.get("LOCAL_WORLD_SIZE", "1"))  # CPU threads: cores ÷ local ranks
    init_group("nccl" if device.type == "cuda" else "gloo")
    try:
        if dist.get_rank() == 0:
            try:
                main(cfg)
            except BaseException:
                with contextlib.suppress(Exception):  # the followers must not wait for a leader that is gone
                    _send(DONE)
                raise
            _send(DONE)
        else:
            from prunelens.experiment import prepare

            follow(lambda: prepare(cfg))
    finally:
        close_group()


def _send(request: dict[str, Any]) -> None:
    dist.broadcast_object_list([request], src=0, group=_control)


def _receive() -> dict[str, Any]:
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def lead(
    model: nn.Module, loader: Loader, cfg: TrainingConfig, masks: MaskSet | None, *,
    start_step: int, end_step: int, lr_offset: int = 0, progress: Progress | None = None, where: str = "training",
) -> dict[str, float]:  # fmt: skip
    """On the leader (from `train()`): send the followers this training, then train it data-parallel."""
    if dist.get_rank() != 0:
        raise RuntimeError("only the leader (rank 0) sends training requests")
    _send({
        "kind": "train", "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "masks": masks.state_dict() if masks is not None else None, "training": cfg.model_dump(mode="json"),
        "start_step": start_step, "end_step": end_step, "lr_offset": lr_offset, "where": where,
        "loader": {"batch_size": loader.batch_size, "seed": loader.seed, "augment": loader.augment, "examples": len(loader.split)},
    })  # fmt: skip
    return train_parallel(model, loader, cfg, masks, start_step=start_step, end_step=end_step, lr_offset=lr_offset, progress=progress, where=where)


def follow(load: Callable[[], Prepared]) -> None:
    """On a follower: train every request of the leader until "done". `load` prepares the config (data, θ₀)
    at the first request, after the leader has checked the config and fetched the data (no concurrent
    downloads; a config the leader refuses never loads here)."""
    prepared: Prepared | None = None
    model: nn.Module | None = None
    loaders: dict[tuple[int, int, bool], Loader] = {}
    while (request := _receive())["kind"] == "train":
        if prepared is None or model is None:
            prepared = load()
            model = prepared.build()
        spec, bundle = request["loader"], prepared.bundle
        if spec["examples"] != len(bundle.train):
            raise RuntimeError(f"the leader trains on {spec['examples']} examples, this rank's train split has {len(bundle.train)}")
        key = (spec["batch_size"], spec["seed"], spec["augment"])
        if key not in loaders:
            loaders[key] = make_loader(bundle, bundle.train, key[0], prepared.cfg.device, train=True, seed=key[1], augment=key[2])
        model.load_state_dict(request["state"])
        masks = MaskSet(request["masks"]) if request["masks"] is not None else None
        try:
            train_parallel(
                model, loaders[key], TrainingConfig.model_validate(request["training"]), masks, start_step=request["start_step"],
                end_step=request["end_step"], lr_offset=request["lr_offset"], where=request["where"],
            )  # fmt: skip
        except (PrunelensError, Stopped):
            pass  # raised alike on every rank (all-reduced losses, gathered checksums, the leader's stop): the leader reports it


def shard(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s contiguous slice of a global batch (sizes differ by at most one; may be empty)."""
    return batch.tensor_split(world)[rank]


def train_parallel(
    model: nn.Module, loader: Loader, cfg: TrainingConfig, masks: MaskSet | None, *,
    start_step: int, end_step: int, lr_offset: int = 0, progress: Progress | None = None, where: str = "training",
) -> dict[str, float]:  # fmt: skip
    """`train()` on every rank at once: each step every rank takes its shard of the same global batch, and its
    loss sum, weighted by world size / global batch size (DDP averages the gradients), makes the gradient that
    of the global batch's mean loss. Same optimiser, LR schedule, mask enforcement and finite check as `train()`;
    `train_loss` is the mean over the last epoch of the global batches' mean losses. Ends with `check_in_sync`."""
    rank, world = dist.get_rank(), dist.get_world_size()
    steps_per_epoch = len(loader)
    total = cfg.epochs * steps_per_epoch
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # before DDP builds its gradient buckets
    net = DistributedDataParallel(model)  # also broadcasts the leader's parameters and buffers
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    enforce = masks.enforcer(model) if masks is not None else (lambda: None)
    enforce()
    model.train()
    forward = accelerated(net, cfg)
    flag, failure = torch.zeros(1), None
    step, losses, began = start_step, torch.zeros(0), time.perf_counter()
    while step < end_step and failure is None:
        epoch, first = divmod(step, steps_per_epoch)
        means = []
        for x, y in loader.epoch(epoch, start=first):
            set_lr(optimizer, cfg, step + lr_offset, steps_per_epoch, total)
            xs, ys = shard(x, rank, world), shard(y, rank, world)
            with autocast(cfg, x.device):
                local = F.cross_entropy(forward(xs), ys, reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            (local * (world / len(y))).backward()
            optimizer.step()
            enforce()
            means.append(local.detach().float() / len(y))
            step += 1
            if progress is not None:
                try:
                    progress(1)
                except BaseException as err:  # noqa: BLE001 (an interrupt at a safe point): every rank stops after this step
                    failure = err
            flag.fill_(failure is not None)
            dist.broadcast(flag, src=0, group=_control)
            if flag.item() or step >= end_step:
                break
        if flag.item():
            break
        losses = torch.stack(means)
        dist.all_reduce(losses)  # per batch: Σ_ranks (loss sum / global batch size) = the global batch's mean loss
        check_finite([losses], cfg, epoch, where)
    del net, forward  # drops DDP's gradient hooks: the leader's model is a plain module again
    if cfg.channels_last:
        model.to(memory_format=torch.contiguous_format)
    if flag.item():
        raise failure if failure is not None else Stopped(where)
    check_in_sync(model, masks, where)
    mean_loss = float(losses.mean()) if len(losses) else float("nan")
    return {"train_loss": mean_loss, "train_seconds": time.perf_counter() - began}


def checksum(model: nn.Module, masks: MaskSet | None) -> tuple[float, str, str]:
    """(float64 sum of the parameters, sha256 of their bytes, sha256 of the bool masks) of this rank."""
    weights, kept, total = hashlib.sha256(), hashlib.sha256(), 0.0
    for p in model.parameters():
        flat = p.detach().cpu().contiguous().reshape(-1)
        total += float(flat.double().sum())
        weights.update(flat.view(torch.uint8).numpy().tobytes())
    for name in sorted(masks or {}):
        kept.update(name.encode() + masks[name].cpu().contiguous().reshape(-1).numpy().tobytes())
    return total, weights.hexdigest(), kept.hexdigest()


def check_in_sync(model: nn.Module, masks: MaskSet | None, where: str = "training") -> None:
    """Raise (on every rank alike) unless every rank holds the leader's masks and trained weights."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, checksum(model, masks), group=_control)
    lead_sum, lead_weights, lead_masks = gathered[0]
    for r, (total, weights, kept) in enumerate(gathered):
        if kept != lead_masks:
            raise PrunelensError(f"{where}: rank {r} holds other masks than the leader (rank 0) after data-parallel training")
        if weights != lead_weights:
            raise PrunelensError(
                f"{where}: rank {r}'s weights differ from the leader's (rank 0) after data-parallel training "
                f"(parameter sums {total:.17g} vs {lead_sum:.17g})"
            )
