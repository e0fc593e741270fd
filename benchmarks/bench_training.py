"""Training-speed benchmark of prunelens on the CPU: `python benchmarks/bench_training.py [--quick] [--diagnose]`.

What is measured. Every number is a *ratio taken within one process, interleaved*, because absolute CPU timings on
a shared machine drift by 2× or more between runs; spreads are printed as min / median / max over repeats, plus
"best ÷ best" (fastest run of one side ÷ fastest of the other: interference only ever slows a run down, so this is
the ratio least disturbed by other processes).

1. Epoch time, prunelens vs an OpenLTH-style pipeline. LeNet-300-100 on 60,000 deterministic random MNIST-shaped
   uint8 images, batch 128, SGD lr 0.1 without momentum (OpenLTH's mnist_lenet_300_100).
   prunelens: `prunelens.train.train` with a `Loader` over a `TensorSplit` and an all-ones `MaskSet` over
   `prunable_names` (so the per-step mask enforcement is included), one full epoch.
   Baseline: a `DataLoader` (num_workers=0, shuffle) over a torchvision-MNIST-like Dataset (uint8 → PIL image →
   `ToTensor()` → `Normalize((0.1307,), (0.3081,))` per sample) and a plain loop with the same model and SGD; it is
   timed on the first `--baseline-batches` batches of each epoch and scaled to the full epoch.
   Read: speed-up = baseline s/epoch ÷ prunelens s/epoch (higher is better; target ≥ 7×).

2. Fraction of the matmul rate. The epoch's exact FLOPs (forward + backward of one training step counted by
   `torch.utils.flop_counter.FlopCounterMode` × the number of full batches, plus the last partial batch counted on
   its own; matmuls only, optimizer and element-wise work count 0) ÷ prunelens' epoch time, as a fraction of the
   rate of a 4096×4096 fp32 matmul (2·4096³ FLOPs, warmed up, median of 3) measured in the same round.
   Read: the share of the machine's dense-matmul speed that training reaches (target ≥ 45 %).
   2b (when a target of 1/2 is missed, or with --diagnose) shows why: a torch.profiler op table; the matmul-only
   floor of a step; copies of `train` with one change each (changes one could make to train.py / data/loader.py)
   timed between runs of the real `train` (ratio < 1 = the change is faster); optimizer.step() of foreach vs
   for-loop vs fused optimizers; and OpenMP wait policies, which libgomp reads at start-up and which therefore run
   in child processes.

3. Masked step overhead. One training step of a 50 %-pruned model (prunelens: plain weights, enforcer after the
   optimizer step) vs the same dense step, for LeNet-300-100 (batch 128) and a 3-conv net (32/64/128 channels,
   32×32 RGB, batch 64); and vs `torch.nn.utils.prune.l1_unstructured` (a forward pre-hook recomputes
   weight = weight_orig · weight_mask). Read: overhead = masked ÷ dense − 1 (target ≤ 5 %); state_dict bytes of
   prunelens (weights + a separate bool-mask file) vs torch prune's state_dict (weight_orig + float masks).

Every section prints how many cores *other* processes kept busy meanwhile (from /proc/stat). Above ~0.3 of the
2 cores, torch's spinning OpenMP barriers make the many small parallel ops of a training step stall for scheduler
slices (10-100× slower steps, while a big matmul only halves), and the ratios that involve a step are unreliable.
"""

from __future__ import annotations

import argparse
import copy
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

try:
    import prunelens  # noqa: F401
except ModuleNotFoundError:  # run without PYTHONPATH=src
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prunelens.config import TrainingConfig
from prunelens.data.base import TensorSplit
from prunelens.data.loader import Loader, generator
from prunelens.masks import MaskSet, prunable_names
from prunelens.train import build_optimizer, lr_factor, train

Batch = tuple[torch.Tensor, torch.Tensor]
N_TRAIN = 60_000
BATCH = 128
LR = 0.1
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
MATMUL_N = 4096
TARGET_SPEEDUP = 7.0
TARGET_FRACTION = 0.45
TARGET_OVERHEAD = 0.05
BUSY_LIMIT = 0.3
"""Cores busy in other processes above which a warning is printed."""
LENET_CFG = TrainingConfig(
    optimizer="sgd", lr=LR, momentum=0.0, weight_decay=0.0, schedule="constant", epochs=1, batch_size=BATCH
)
OMP_SETTINGS: dict[str, dict[str, str]] = {
    "default (spin, torch's libgomp)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=0": {"GOMP_SPINCOUNT": "0"},
}
"""Environment settings tried in child processes (libgomp reads them when torch is imported)."""


# ------------------------------------------------------------------------------------------------ utilities


def spread(values: Sequence[float], fmt: str = "{:.3g}", scale: float = 1.0) -> str:
    """'min / median / max' of `values` (times `scale`)."""
    v = sorted(x * scale for x in values)
    return " / ".join(fmt.format(x) for x in (v[0], statistics.median(v), v[-1]))


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def header(title: str) -> None:
    print(f"\n{'=' * 110}\n{title}\n{'=' * 110}", flush=True)


def row(label: str, values: str, note: str = "", indent: int = 2) -> None:
    """One aligned table line: label, a right-aligned value column, an optional note."""
    print(f"{' ' * indent}{label:38s} {values:>30s}   {note}".rstrip(), flush=True)


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def _busy_cpu_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (first line of /proc/stat, steal included)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """Cores used by *other* processes while a block ran: (machine busy CPU − own CPU) / wall time."""

    others: list[float] = field(default_factory=list)

    @contextmanager
    def measure(self) -> Iterator[None]:
        try:
            busy0, own0, wall0 = _busy_cpu_seconds(), time.process_time(), time.perf_counter()
        except OSError:  # no /proc: report nothing
            yield
            return
        yield
        wall, own = time.perf_counter() - wall0, time.process_time() - own0
        self.others.append(max(0.0, (_busy_cpu_seconds() - busy0 - own) / max(wall, 1e-9)))

    def median(self) -> float:
        return statistics.median(self.others) if self.others else 0.0

    def line(self) -> str:
        if not self.others:
            return "cores busy in other processes: unknown (no /proc/stat)"
        values = spread(self.others, "{:.2f}")
        return f"cores busy in OTHER processes meanwhile (min / median / max): {values} of {os.cpu_count()}"


def contention_warning(busy: float) -> None:
    if busy > BUSY_LIMIT:
        print(f"  WARNING: other processes kept {busy:.2f} cores busy (median): with torch's spinning OpenMP barriers the"
              " small ops of a training step\n  stall for scheduler slices, so these ratios are unreliable (2b: 'OpenMP').")


@contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Temporarily `torch.set_num_threads(n)` (None = leave as is)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------- data and models


def mnist_like(n: int = N_TRAIN, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic random MNIST-shaped data: (n, 28, 28) uint8 images and (n,) int64 labels in 0..9."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
    return images, torch.randint(0, 10, (n,), generator=gen)


def lenet_300_100() -> nn.Module:
    """prunelens' registered LeNet-300-100 (784→300→100→10, ReLU), or the same net inline if not importable."""
    torch.manual_seed(0)
    try:
        from prunelens.models import small  # noqa: F401  (registers the small nets)
        from prunelens.models.base import MODELS

        return MODELS.get("lenet_300_100")(10, 1, (28, 28), {}, None)
    except Exception:  # noqa: BLE001 - the factory may not exist yet
        return nn.Sequential(
            nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
        )


def small_convnet() -> nn.Module:
    """3 conv layers (32/64/128 channels, 3×3, ReLU, 2×2 max-pool) on 32×32 RGB, then a linear classifier."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for c_in, c_out in ((3, 32), (32, 64), (64, 128)):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, 10))


class TorchvisionStyleMNIST(Dataset):
    """What torchvision's MNIST (and so OpenLTH) does per sample: uint8 array → PIL image → transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.data, self.targets = images, labels
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MNIST_MEAN, MNIST_STD)])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.data[index].numpy())  # mode "L" for a 2-D uint8 array
        return self.transform(image), int(self.targets[index])


def prunelens_loader(images: torch.Tensor, labels: torch.Tensor) -> Loader:
    split = TensorSplit(images[:, None], labels)
    return Loader(split, BATCH, mean=MNIST_MEAN, std=MNIST_STD, shuffle=True, seed=0)


def baseline_loader(images: torch.Tensor, labels: torch.Tensor) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    dataset = TorchvisionStyleMNIST(images, labels)
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0, generator=gen)


def ones_masks(model: nn.Module) -> MaskSet:
    return MaskSet.ones(model, prunable_names(model))


# ----------------------------------------------------------------------------------------- timed workloads


def baseline_epoch_seconds(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, batches: int
) -> float:
    """OpenLTH-style loop over the first `batches` batches of a fresh epoch, scaled to the full epoch."""
    model.train()
    began = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i == batches:
            break
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - began) * len(loader) / min(batches, len(loader))


def prunelens_epoch_seconds(model: nn.Module, loader: Loader, masks: MaskSet, steps: int | None = None) -> float:
    """`prunelens.train.train` over one epoch (or its first `steps` steps, unscaled)."""
    return timed(lambda: train(model, loader, LENET_CFG, masks, start_step=0, end_step=steps or len(loader)))


def train_step(
    model: nn.Module, cfg: TrainingConfig, batches: Sequence[Batch], enforce: Callable[[], None] | None
) -> Callable[[], None]:
    """One step as in `train` (forward, CE, zero_grad(None), backward, build_optimizer's SGD, optional enforce),
    on the next of `batches` (cycled: a pool of batches, so the net cannot memorise one batch and drift into
    a different numeric regime than the model it is compared with)."""
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    pool = itertools.cycle(batches)
    model.train()

    def step() -> None:
        x, y = next(pool)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if enforce is not None:
            enforce()

    return step


class MatmulProbe:
    """Rate (FLOP/s) of an n×n fp32 matmul: warmed up once, median of `repeats` per call."""

    def __init__(self, n: int = MATMUL_N) -> None:
        gen = torch.Generator().manual_seed(1)
        self.n = n
        self.a, self.b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        self.out = torch.empty(n, n)
        torch.mm(self.a, self.b, out=self.out)

    def rate(self, repeats: int = 3) -> float:
        times = [timed(lambda: torch.mm(self.a, self.b, out=self.out)) for _ in range(repeats)]
        return 2 * self.n**3 / statistics.median(times)


def step_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of forward + cross-entropy + backward of one training step (FlopCounterMode: matmul-like ops)."""
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def epoch_flops(model: nn.Module, loader: Loader) -> tuple[int, int, int]:
    """(epoch FLOPs, FLOPs of a full step, FLOPs of the last partial step) of one training epoch."""
    batches = list(loader.epoch(0))
    full, last = step_flops(model, *batches[0]), step_flops(model, *batches[-1])
    return full * (len(batches) - 1) + last, full, last


# ---------------------------------------------------------------------------------------------- sections 1+2


@dataclass
class EpochResult:
    baseline_s: list[float]
    prunelens_s: list[float]
    matmul_rate: list[float]
    flops: int
    flops_full: int
    flops_last: int
    steps: int
    baseline_batches: int
    meters: dict[str, CpuMeter] = field(default_factory=lambda: {k: CpuMeter() for k in ("baseline", "prunelens", "matmul")})

    @property
    def speedups(self) -> list[float]:
        return [b / p for b, p in zip(self.baseline_s, self.prunelens_s)]

    @property
    def fractions(self) -> list[float]:
        return [self.flops / p / r for p, r in zip(self.prunelens_s, self.matmul_rate)]

    def busy_elsewhere(self) -> float:
        """Largest median of other processes' cores over the three workloads."""
        return max(m.median() for m in self.meters.values())

    def targets_met(self) -> bool:
        return statistics.median(self.speedups) >= TARGET_SPEEDUP and statistics.median(self.fractions) >= TARGET_FRACTION


def bench_epoch(
    images: torch.Tensor, labels: torch.Tensor, repeats: int, baseline_batches: int, probe: MatmulProbe
) -> EpochResult:
    """Repeat (baseline epoch, prunelens epoch, matmul rate) `repeats` times, interleaved."""
    model = lenet_300_100()
    base_model = copy.deepcopy(model)
    base_opt = torch.optim.SGD(base_model.parameters(), lr=LR)  # OpenLTH: SGD, momentum 0, default for-loop impl
    base_loader, loader, masks = baseline_loader(images, labels), prunelens_loader(images, labels), ones_masks(model)
    flops, full, last = epoch_flops(copy.deepcopy(model), loader)
    baseline_epoch_seconds(base_model, base_opt, base_loader, 5)  # warm-up
    prunelens_epoch_seconds(model, loader, masks, steps=20)
    res = EpochResult([], [], [], flops, full, last, len(loader), baseline_batches)
    for r in range(repeats):
        with res.meters["baseline"].measure():
            res.baseline_s.append(baseline_epoch_seconds(base_model, base_opt, base_loader, baseline_batches))
        with res.meters["prunelens"].measure():
            res.prunelens_s.append(prunelens_epoch_seconds(model, loader, masks))
        with res.meters["matmul"].measure():
            res.matmul_rate.append(probe.rate())
        others = "/".join(f"{m.others[-1]:.2f}" for m in res.meters.values() if m.others)
        print(f"  round {r + 1}/{repeats}: baseline {res.baseline_s[-1]:6.2f} s/epoch | prunelens {res.prunelens_s[-1]:6.3f}"
              f" s/epoch | speed-up {res.speedups[-1]:5.2f}× | matmul {res.matmul_rate[-1] / 1e9:5.1f} GFLOP/s"
              f" | fraction {res.fractions[-1]:5.1%} | busy elsewhere (base/pl/mm) {others}", flush=True)
    return res


def report_epoch(res: EpochResult) -> None:
    header("1. Epoch time: prunelens vs OpenLTH-style pipeline (LeNet-300-100, 60k MNIST-shaped samples, batch 128)")
    print(f"  baseline timed on the first {res.baseline_batches} of {res.steps} batches of each epoch,"
          f" scaled ×{res.steps / res.baseline_batches:.2f} to a full epoch")
    row("", "min / median / max")
    row("baseline (DataLoader + PIL) s/epoch", spread(res.baseline_s, "{:.2f}"))
    row("prunelens train() s/epoch", spread(res.prunelens_s, "{:.3f}"))
    ok = statistics.median(res.speedups) >= TARGET_SPEEDUP
    row("speed-up (baseline ÷ prunelens)", spread(res.speedups, "{:.2f}×"), f"target ≥ {TARGET_SPEEDUP:.0f}×: {verdict(ok)}")
    row("speed-up, best ÷ best", f"{min(res.baseline_s) / min(res.prunelens_s):.2f}×")
    print(f"  baseline:  {res.meters['baseline'].line()}")
    print(f"  prunelens: {res.meters['prunelens'].line()}")
    contention_warning(max(res.meters["baseline"].median(), res.meters["prunelens"].median()))

    header("2. Fraction of the matmul rate (prunelens epoch FLOP/s ÷ 4096×4096 fp32 matmul FLOP/s, same round)")
    print(f"  FLOPs per step (forward + backward, FlopCounterMode): {res.flops_full / 1e6:.1f} M at batch {BATCH};"
          f" last partial step {res.flops_last / 1e6:.1f} M")
    print(f"  epoch: {res.steps - 1} × {res.flops_full / 1e6:.1f} M + {res.flops_last / 1e6:.1f} M"
          f" = {res.flops / 1e9:.2f} GFLOP")
    row("", "min / median / max")
    row("prunelens achieved GFLOP/s", spread([res.flops / p for p in res.prunelens_s], "{:.1f}", 1e-9))
    row("4096² fp32 matmul GFLOP/s", spread(res.matmul_rate, "{:.1f}", 1e-9))
    ok = statistics.median(res.fractions) >= TARGET_FRACTION
    row("fraction of matmul rate", spread(res.fractions, "{:.1%}"), f"target ≥ {TARGET_FRACTION:.0%}: {verdict(ok)}")
    row("fraction, best ÷ best", f"{res.flops / min(res.prunelens_s) / max(res.matmul_rate):.1%}",
        "(fastest epoch ÷ fastest matmul)")
    print(f"  matmul: {res.meters['matmul'].line()}")
    contention_warning(res.busy_elsewhere())


# ----------------------------------------------------------------------------------------------- diagnosis


@dataclass(frozen=True)
class Variant:
    """A copy of `train`'s inner loop with some changes (the defaults are exactly what train.py and Loader do)."""

    name: str
    hoist_lr: bool = False  # set the LR once for a constant schedule (no per-step lr_factor / param_groups loop)
    sgd: str = "foreach"  # "foreach" (build_optimizer), "loop" (foreach=False), "fused", "minimal" (_foreach_add_)
    set_to_none: bool = True  # optimizer.zero_grad(set_to_none=...)
    enforce: bool = True  # mask enforcement after the step (an all-ones mask could be skipped)
    index_select: bool = False  # images.index_select(0, idx) instead of images[idx] (Loader.epoch)
    prenormalised: bool = False  # normalise the whole split once to float32 (Loader.__init__), gather floats
    fixed_batch: bool = False  # no data loading at all (lower bound of the step)
    threads: int | None = None  # torch.set_num_threads during the loop


VARIANTS = (
    Variant("copy of train() (sanity: ≈ 1.00)"),
    Variant("LR set once (constant schedule)", hoist_lr=True),
    Variant("SGD foreach=False", sgd="loop"),
    Variant("SGD fused=True", sgd="fused"),
    Variant("minimal SGD: _foreach_add_(p, g, -lr)", sgd="minimal"),
    Variant("zero_grad(set_to_none=False)", set_to_none=False),
    Variant("skip enforcing all-ones masks", enforce=False),
    Variant("index_select instead of images[idx]", index_select=True),
    Variant("split pre-normalised to float32", prenormalised=True),
    Variant("fixed batch (no loader work at all)", fixed_batch=True),
    Variant("torch.set_num_threads(1)", threads=1),
    Variant("index_select + skip ones-masks + fused SGD", index_select=True, enforce=False, sgd="fused"),
    Variant("… + LR once + minimal SGD", index_select=True, enforce=False, hoist_lr=True, sgd="minimal"),
)

Update = tuple[Callable[[], None], Callable[[bool], None], list[dict]]


def sgd_update(model: nn.Module, cfg: TrainingConfig, kind: str) -> Update:
    """(step, zero_grad, param_groups) of the SGD flavour `kind` over the model's parameters."""
    params = list(model.parameters())
    if kind == "minimal":  # valid for momentum 0 and weight decay 0 only
        groups = [{"lr": cfg.lr}]

        @torch.no_grad()
        def step() -> None:
            torch._foreach_add_(params, [p.grad for p in params], alpha=-groups[0]["lr"])

        def zero_grad(set_to_none: bool) -> None:
            for p in params:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad.zero_()

        return step, zero_grad, groups
    flag = {"foreach": {"foreach": True}, "loop": {"foreach": False}, "fused": {"fused": True}}[kind]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **flag)
    return opt.step, lambda set_to_none: opt.zero_grad(set_to_none=set_to_none), opt.param_groups


def variant_loop(model: nn.Module, loader: Loader, masks: MaskSet, steps: int, v: Variant, normalised: torch.Tensor) -> None:
    """A copy of `prunelens.train.train` (the first `steps` steps of epoch 0) with the changes of `v`."""
    cfg = LENET_CFG
    step_fn, zero_grad, groups = sgd_update(model, cfg, v.sgd)
    enforce = masks.enforcer(model) if v.enforce else (lambda: None)
    enforce()
    model.train()
    split = loader.split
    images = normalised if v.prenormalised else split.images
    order = torch.randperm(len(split), generator=generator(loader.seed, 0))
    per_epoch = len(loader)
    fixed = (loader.normalise(split.images[:BATCH]), split.labels[:BATCH])
    losses = []
    with num_threads(v.threads):
        for step in range(steps):
            if v.fixed_batch:
                x, y = fixed
            else:
                idx = order[step * BATCH : (step + 1) * BATCH]
                rows = images.index_select(0, idx) if v.index_select else images[idx]
                x = rows if v.prenormalised else loader.normalise(rows)
                y = split.labels.index_select(0, idx) if v.index_select else split.labels[idx]
            if not v.hoist_lr:
                for group in groups:
                    group["lr"] = cfg.lr * lr_factor(step, cfg, per_epoch, cfg.epochs * per_epoch)
            loss = F.cross_entropy(model(x), y)
            zero_grad(v.set_to_none)
            loss.backward()
            step_fn()
            enforce()
            losses.append(loss.detach())
    float(torch.stack(losses).mean())


@dataclass
class Interleaved:
    ratios: dict[str, list[float]]  # run time ÷ mean of the two neighbouring reference times
    times: dict[str, list[float]]
    refs: list[float]
    meter: CpuMeter


def against_reference(ref: Callable[[], float], runs: dict[str, Callable[[], float]], rounds: int) -> Interleaved:
    """Time each run between two reference runs (ref, a, ref, b, ref, …), the order rotated every round."""
    out = Interleaved({n: [] for n in runs}, {n: [] for n in runs}, [], CpuMeter())
    names = list(runs)
    for r in range(rounds):
        with out.meter.measure():
            before = ref()
            out.refs.append(before)
            for n in names[r % len(names) :] + names[: r % len(names)]:
                t = runs[n]()
                after = ref()
                out.refs.append(after)
                out.ratios[n].append(t / ((before + after) / 2))
                out.times[n].append(t)
                before = after
    return out


def profile_train(model: nn.Module, loader: Loader, masks: MaskSet, steps: int, top: int = 12) -> None:
    """torch.profiler table of `train` (self CPU time per op), and how much of the wall time is in matmuls."""
    from torch.profiler import ProfilerActivity, profile

    meter = CpuMeter()
    with meter.measure(), profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = prunelens_epoch_seconds(model, loader, masks, steps=steps)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    aten = [e for e in events if e.key.startswith("aten::")]
    in_ops = sum(e.self_cpu_time_total for e in aten) / 1e6
    matmul = sum(e.self_cpu_time_total for e in aten if e.key in ("aten::mm", "aten::addmm")) / 1e6
    print(f"  [profiler] {steps} steps of train(), {wall * 1e3 / steps:.2f} ms/step while profiled: in ATen ops"
          f" {in_ops / wall:.0%} of wall, mm/addmm {matmul / wall:.0%}; outside ops (Python, dispatch, profiler)"
          f" {1 - in_ops / wall:.0%}")
    print(f"  [profiler] {meter.line()}")
    print(f"  {'op':40s} {'self ms/step':>12s} {'% wall':>7s} {'calls/step':>10s} {'µs/call':>9s}")
    for e in events[:top]:
        self_s = e.self_cpu_time_total / 1e6
        print(f"  {e.key[:40]:40s} {self_s * 1e3 / steps:12.3f} {self_s / wall:7.1%} {e.count / steps:10.1f}"
              f" {self_s * 1e6 / e.count:9.1f}")


def capture_matmuls(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """The mm/addmm calls of one training step (same shapes and strides), as a replay function without autograd."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: list[tuple[Callable, tuple]] = []

    def copy_arg(a: object) -> object:
        return torch.empty_strided(a.shape, a.stride()).copy_(a.detach()) if isinstance(a, torch.Tensor) else a

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
                calls.append((func, tuple(copy_arg(a) for a in args)))
            return func(*args, **(kwargs or {}))

    with Recorder():
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def replay() -> None:
        for func, args in calls:
            func(*args)

    return replay


def bench_floor(images: torch.Tensor, labels: torch.Tensor, rounds: int, flops_per_step: int, rate: float) -> None:
    """Matmul-only floor of a step vs the full step on a fixed batch vs a `train()` step (best of `rounds`)."""
    model, loader = lenet_300_100(), prunelens_loader(images, labels)
    masks = ones_masks(model)
    x, y = next(loader.epoch())
    replay = capture_matmuls(model, x, y)
    step = train_step(model, LENET_CFG, [(x, y)], masks.enforcer(model))
    k = 100
    runs = {
        "matmuls only (the step's mm/addmm replayed)": lambda: timed(lambda: [replay() for _ in range(k)]) / k,
        "full step on a fixed batch (train()'s body)": lambda: timed(lambda: [step() for _ in range(k)]) / k,
        "train() step (with the Loader)": lambda: prunelens_epoch_seconds(model, loader, masks, steps=k) / k,
    }
    best = {n: float("inf") for n in runs}
    meter = CpuMeter()
    for _ in range(rounds):
        with meter.measure():
            for n, fn in runs.items():
                best[n] = min(best[n], fn())
    print(f"  [floor] best of {rounds} × {k} steps; fraction = {flops_per_step / 1e6:.1f} MFLOP/step ÷ time ÷"
          f" {rate / 1e9:.0f} GFLOP/s (the best 4096² matmul of section 2)")
    for n, t in best.items():
        print(f"    {n:46s} {t * 1e3:7.3f} ms/step   fraction {flops_per_step / t / rate:6.1%}")
    print(f"    {meter.line()}")


def bench_variants(images: torch.Tensor, labels: torch.Tensor, rounds: int, steps: int) -> None:
    """Each variant's time ÷ the real `train()`'s time on the same steps, interleaved (ref, variant, ref, …)."""
    model, loader = lenet_300_100(), prunelens_loader(images, labels)
    masks = ones_masks(model)
    normalised = loader.normalise(loader.split.images)

    def run(v: Variant) -> Callable[[], float]:
        return lambda: timed(lambda: variant_loop(model, loader, masks, steps, v, normalised))

    res = against_reference(
        lambda: prunelens_epoch_seconds(model, loader, masks, steps=steps), {v.name: run(v) for v in VARIANTS}, rounds
    )
    print(f"  [variants] copies of train() with changes, {steps} steps per run, {rounds} rounds, each between two"
          f" train() runs; train() best {min(res.refs) * 1e3 / steps:.3f} ms/step")
    print(f"  {'variant':44s} {'best ms/step':>12s} {'time ÷ train(): min / median / max':>36s} {'best ÷ best':>12s}")
    for n, times in res.times.items():
        print(f"  {n:44s} {min(times) * 1e3 / steps:12.3f} {spread(res.ratios[n], '{:.3f}'):>36s}"
              f" {min(times) / min(res.refs):12.3f}")
    print(f"  {res.meter.line()}")


def optimizer_models() -> dict[str, nn.Module]:
    """LeNet-300-100 plus, when registered, two CIFAR nets with many / big parameter tensors."""
    models = {"lenet_300_100": lenet_300_100()}
    try:
        from prunelens.models.base import MODELS

        for name in ("cifar_resnet_20", "cifar_vgg_16"):
            models[name] = MODELS.get(name)(10, 3, (32, 32), {}, None)
    except Exception:  # noqa: BLE001 - the registry may not have them
        pass
    return models


def bench_optimizers(rounds: int, k: int = 10) -> None:
    """optimizer.step() of build_optimizer's foreach=True vs foreach=False vs fused=True (best of `rounds` × k)."""
    kinds = {"foreach=True (now)": {"foreach": True}, "foreach=False": {"foreach": False}, "fused=True": {"fused": True}}
    setups = {
        "SGD m=0 (this benchmark)": (torch.optim.SGD, {"lr": 1e-6}),
        "SGD m=0.9 wd=5e-4 (default cfg)": (torch.optim.SGD, {"lr": 1e-6, "momentum": 0.9, "weight_decay": 5e-4}),
        "AdamW": (torch.optim.AdamW, {"lr": 1e-6}),
    }
    print(f"  [optimizer] optimizer.step() alone (random grads), best of {rounds} × {k} steps, µs/step")
    print(f"  {'model':16s} {'optimizer':32s} " + " ".join(f"{n:>18s}" for n in kinds) + f" {'foreach ÷ fused':>16s}")
    meter = CpuMeter()
    for model_name, model in optimizer_models().items():
        params = list(model.parameters())
        for p in params:
            p.grad = torch.randn_like(p)
        for setup, (cls, kw) in setups.items():
            opts = {n: cls(params, **kw, **flag) for n, flag in kinds.items()}
            best = {n: float("inf") for n in opts}
            with meter.measure():
                for _ in range(rounds):
                    for n, opt in opts.items():
                        opt.step()
                        best[n] = min(best[n], timed(lambda: [opt.step() for _ in range(k)]) / k)
            cells = " ".join(f"{best[n] * 1e6:18.0f}" for n in kinds)
            print(f"  {model_name:16s} {setup:32s} {cells} {best['foreach=True (now)'] / best['fused=True']:15.2f}×")
    print(f"  {meter.line()}")


def child_measure(steps: int) -> None:
    """Child-process mode: print ms/step of `train()`, the matmul rate and the other processes' load as JSON."""
    images, labels = mnist_like()
    model, loader = lenet_300_100(), prunelens_loader(images, labels)
    masks = ones_masks(model)
    prunelens_epoch_seconds(model, loader, masks, steps=20)
    probe, meter = MatmulProbe(), CpuMeter()
    with meter.measure():
        seconds = min(prunelens_epoch_seconds(model, loader, masks, steps=steps) for _ in range(2))
        rate = probe.rate(2)
    print(json.dumps({"ms_per_step": seconds * 1e3 / steps, "matmul_gflops": rate / 1e9, "others": meter.median()}))


def bench_omp_settings(rounds: int, steps: int, flops_per_step: int) -> None:
    """OpenMP wait policies (read when libgomp loads, so each runs in a fresh child process), interleaved."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in OMP_SETTINGS}
    for _ in range(rounds):
        for name, env in OMP_SETTINGS.items():
            cmd = [sys.executable, __file__, "--child", str(steps)]
            out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True)
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"  [OpenMP] child processes, {steps} steps of train() (best of 2), {rounds} round(s);"
          " fraction = FLOPs/step ÷ step time ÷ the child's matmul rate")
    print(f"  {'setting':34s} {'ms/step':>20s} {'matmul GFLOP/s':>16s} {'fraction':>22s} {'busy elsewhere':>20s}")
    for name, runs in results.items():
        ms = [r["ms_per_step"] for r in runs]
        gf = [r["matmul_gflops"] for r in runs]
        frac = [flops_per_step / (m * 1e-3) / (g * 1e9) for m, g in zip(ms, gf)]
        others = [r["others"] for r in runs]
        print(f"  {name:34s} {spread(ms, '{:.2f}'):>20s} {spread(gf, '{:.0f}'):>16s} {spread(frac, '{:.1%}'):>22s}"
              f" {spread(others, '{:.2f}'):>20s}")


def diagnose(images: torch.Tensor, labels: torch.Tensor, flops_per_step: int, rate: float, quick: bool) -> None:
    header("2b. Diagnosis: where prunelens' training step spends its time (LeNet-300-100, batch 128)")
    print(f"  torch threads: {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op;"
          f" os.cpu_count() {os.cpu_count()}")
    model, loader = lenet_300_100(), prunelens_loader(images, labels)
    masks = ones_masks(model)
    prunelens_epoch_seconds(model, loader, masks, steps=20)
    profile_train(model, loader, masks, steps=100)
    bench_floor(images, labels, rounds=3 if quick else 5, flops_per_step=flops_per_step, rate=rate)
    bench_variants(images, labels, rounds=2 if quick else 5, steps=100 if quick else 200)
    bench_optimizers(rounds=2 if quick else 4)
    bench_omp_settings(rounds=1 if quick else 2, steps=150, flops_per_step=flops_per_step)


# ------------------------------------------------------------------------------------------------- section 3


def half_pruned(model: nn.Module) -> tuple[nn.Module, MaskSet, nn.Module]:
    """(prunelens copy with 50 % magnitude-pruned weights, its MaskSet, a torch.nn.utils.prune copy: same masks)."""
    tp = copy.deepcopy(model)
    names = prunable_names(tp)
    modules = dict(tp.named_modules())
    for name in names:
        torch_prune.l1_unstructured(modules[name.rsplit(".", 1)[0]], "weight", amount=0.5)
    masks = MaskSet({n: modules[n.rsplit(".", 1)[0]].weight_mask for n in names})
    masked = copy.deepcopy(model)
    masks.enforcer(masked)()
    return masked, masks, tp


def state_bytes(obj: object) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes


@dataclass
class MaskedResult:
    name: str
    ms: dict[str, list[float]]  # ms/step per repeat of "dense", "prunelens masked", "torch prune"
    bytes_prunelens: tuple[int, int]  # (weights, masks)
    bytes_torch_prune: int
    meter: CpuMeter

    @property
    def overhead(self) -> list[float]:
        return [m / d - 1 for m, d in zip(self.ms["prunelens masked"], self.ms["dense"])]

    @property
    def vs_torch_prune(self) -> list[float]:
        return [t / m for t, m in zip(self.ms["torch prune"], self.ms["prunelens masked"])]


def bench_masked(
    name: str, model: nn.Module, cfg: TrainingConfig, batches: Sequence[Batch], repeats: int, block_s: float
) -> MaskedResult:
    """Dense vs prunelens-masked vs torch-prune step: blocks of k steps in rotating order, `repeats` times.

    Denormals are flushed meanwhile, so that a model whose gradients happen to underflow is not penalised."""
    masked, masks, tp = half_pruned(model)
    steps = {
        "dense": train_step(copy.deepcopy(model), cfg, batches, None),
        "prunelens masked": train_step(masked, cfg, batches, masks.enforcer(masked)),
        "torch prune": train_step(tp, cfg, batches, None),
    }
    k = max(1, round(block_s / min(timed(steps["dense"]) for _ in range(5))))
    ms: dict[str, list[float]] = {n: [] for n in steps}
    meter = CpuMeter()
    names = list(steps)
    torch.set_flush_denormal(True)
    try:
        for r in range(repeats):
            with meter.measure():
                for n in names[r % 3 :] + names[: r % 3]:
                    ms[n].append(timed(lambda: [steps[n]() for _ in range(k)]) / k * 1e3)
    finally:
        torch.set_flush_denormal(False)
    sizes = (state_bytes(masked.state_dict()), state_bytes(masks.state_dict()))
    return MaskedResult(name, ms, sizes, state_bytes(tp.state_dict()), meter)


def report_masked(results: list[MaskedResult], repeats: int) -> None:
    header(f"3. Masked training step (50 % pruned) vs dense, and vs torch.nn.utils.prune ({repeats} interleaved repeats)")
    for res in results:
        print(f"  {res.name}")
        row("", "min / median / max", indent=4)
        for n, values in res.ms.items():
            row(f"{n} ms/step", spread(values, "{:.3f}"), indent=4)
        ok = statistics.median(res.overhead) <= TARGET_OVERHEAD
        row("prunelens overhead vs dense", spread(res.overhead, "{:+.1%}"),
            f"target ≤ {TARGET_OVERHEAD:.0%}: {verdict(ok)}", indent=4)
        row("overhead, best ÷ best", f"{min(res.ms['prunelens masked']) / min(res.ms['dense']) - 1:+.1%}", indent=4)
        best_tp = min(res.ms["torch prune"]) / min(res.ms["prunelens masked"])
        row("torch prune step ÷ prunelens step", spread(res.vs_torch_prune, "{:.2f}×"),
            f"best ÷ best {best_tp:.2f}×", indent=4)
        w, m = res.bytes_prunelens
        print(f"    state_dict bytes: prunelens {w + m:,} (weights {w:,} + bool masks {m:,})\n"
              f"                      torch prune {res.bytes_torch_prune:,} (weight_orig + float weight_mask)"
              f" → {res.bytes_torch_prune / (w + m):.2f}× larger")
        print(f"    {res.meter.line()}")
        contention_warning(res.meter.median())


# ------------------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, fewer repeats, no diagnosis (~1 min)")
    parser.add_argument("--diagnose", action="store_true", help="run the diagnosis (2b) even if the targets are met")
    parser.add_argument("--baseline-batches", type=int, default=150, help="baseline batches timed per epoch (then scaled)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def print_environment() -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    omp = " ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"))
    print(f"torch {torch.__version__} | torch.get_num_threads() = {torch.get_num_threads()}"
          f" (inter-op {torch.get_num_interop_threads()}) | os.cpu_count() = {os.cpu_count()} | load average {load} | {omp}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        child_measure(args.child)
        return
    began = time.perf_counter()
    print_environment()
    images, labels = mnist_like()
    probe = MatmulProbe()

    print("\nsections 1 + 2, interleaved rounds of (baseline epoch, prunelens epoch, matmul rate):", flush=True)
    epoch = bench_epoch(images, labels, 1 if args.quick else 3, args.baseline_batches, probe)
    report_epoch(epoch)
    if args.diagnose or (not epoch.targets_met() and not args.quick):
        diagnose(images, labels, epoch.flops_full, max(epoch.matmul_rate), args.quick)
    elif not epoch.targets_met():
        print("  (a target is missed: run without --quick, or with --diagnose, for the diagnosis)")

    repeats, block_s = (8, 0.05) if args.quick else (25, 0.1)
    lenet_batches = list(itertools.islice(prunelens_loader(images, labels).epoch(0), 20))
    gen = torch.Generator().manual_seed(2)
    conv_batches = [(torch.randn(64, 3, 32, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen)) for _ in range(20)]
    conv_cfg = LENET_CFG.model_copy(update={"lr": 0.01, "momentum": 0.9})
    results = [
        bench_masked("LeNet-300-100, batch 128, SGD lr 0.1", lenet_300_100(), LENET_CFG, lenet_batches, repeats, block_s),
        bench_masked("conv 32/64/128, 32×32 RGB, batch 64, SGD lr 0.01 momentum 0.9", small_convnet(), conv_cfg,
                     conv_batches, repeats, block_s),
    ]
    report_masked(results, repeats)
    print(f"\ntotal wall time {time.perf_counter() - began:.0f} s")
    print_environment()


if __name__ == "__main__":
    main()
