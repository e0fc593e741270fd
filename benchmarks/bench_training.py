"""Training-speed benchmark of prunelens on the CPU: `python benchmarks/bench_training.py [--quick] [--diagnose]`.

What is measured (every number is a *ratio within one process*, taken interleaved, because absolute CPU timings
on a shared machine drift by 2× or more between runs; spreads are printed as min / median / max over repeats):

1. Epoch time, prunelens vs an OpenLTH-style pipeline. LeNet-300-100 on 60,000 deterministic random
   MNIST-shaped uint8 images, batch 128, SGD lr 0.1 without momentum (OpenLTH's mnist_lenet_300_100).
   prunelens: `prunelens.train.train` with a `Loader` over a `TensorSplit` and an all-ones `MaskSet` over
   `prunable_names` (so the per-step mask enforcement is included), one full epoch.
   Baseline: a `DataLoader` (num_workers=0, shuffle) over a torchvision-MNIST-like Dataset (uint8 → PIL image →
   `ToTensor()` → `Normalize((0.1307,), (0.3081,))` per sample) and a plain loop with the same model and SGD.
   The baseline times only the first `--baseline-batches` batches of each epoch and scales to the full epoch.
   Read: speed-up = baseline s/epoch ÷ prunelens s/epoch (higher is better; target ≥ 7×).

2. Fraction of the matmul rate. The epoch's exact FLOPs (forward + backward of one training step counted by
   `torch.utils.flop_counter.FlopCounterMode`, times the number of full batches, plus the last partial batch
   counted on its own; matmuls only, the optimizer and element-wise ops count 0) divided by prunelens' epoch
   time, as a fraction of the rate of a 4096×4096 fp32 matmul (2·4096³ FLOPs) measured in the same round.
   Read: the share of the machine's dense-matmul speed that training achieves (target ≥ 45 %).
   When it is missed (or with --diagnose) a diagnosis follows: a torch.profiler op table, in-process variants
   of the training loop (copies of `train`, each a change one could make to train.py / data/loader.py) timed
   against the real `train`, and OpenMP wait-policy settings, which must be set before torch is imported and
   are therefore timed in child processes. Read: ratio < 1 = the variant is faster.

3. Masked step overhead. One training step of a 50 %-pruned model (prunelens: plain weights + enforcer after
   the optimizer step) vs the same dense step, for LeNet-300-100 (batch 128) and a 3-conv net (32/64/128
   channels, 32×32 RGB, batch 64); and vs `torch.nn.utils.prune.l1_unstructured` (forward pre-hook recomputes
   weight = weight_orig · weight_mask). Read: overhead % = masked / dense − 1 (target ≤ 5 %); state_dict bytes
   of prunelens (weights + a separate bool-mask file) vs torch-prune's state_dict (weight_orig + float masks).

Every section also prints how many CPU cores *other* processes used while it ran (from /proc/stat): with
more than ~0.3 of the 2 cores busy elsewhere, OpenMP's spinning barriers make small ops very slow and all
ratios that involve the training step are unreliable.
"""

from __future__ import annotations

import argparse
import copy
import io
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

import numpy as np
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

N_TRAIN = 60_000
BATCH = 128
LR = 0.1
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
MATMUL_N = 4096
TARGET_SPEEDUP = 7.0
TARGET_FRACTION = 0.45
TARGET_OVERHEAD = 0.05
OMP_SETTINGS: dict[str, dict[str, str]] = {
    "default (spin, torch's libgomp)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=0": {"GOMP_SPINCOUNT": "0"},
}
LENET_CFG = TrainingConfig(optimizer="sgd", lr=LR, momentum=0.0, weight_decay=0.0, schedule="constant", epochs=1, batch_size=BATCH)


# ----------------------------------------------------------------------------------------------- utilities


def spread(values: Sequence[float], fmt: str = "{:.3g}", scale: float = 1.0) -> str:
    """'min / median / max' of `values` (times `scale`)."""
    v = sorted(x * scale for x in values)
    return " / ".join(fmt.format(x) for x in (v[0], statistics.median(v), v[-1]))


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def header(title: str) -> None:
    print(f"\n{'=' * 100}\n{title}\n{'=' * 100}", flush=True)


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def _busy_cpu_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (first line of /proc/stat)."""
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
        wall = time.perf_counter() - wall0
        own = time.process_time() - own0
        self.others.append(max(0.0, (_busy_cpu_seconds() - busy0 - own) / max(wall, 1e-9)))

    def line(self) -> str:
        if not self.others:
            return "other processes' CPU use: unknown (no /proc/stat)"
        return f"cores busy in OTHER processes meanwhile (min / median / max): {spread(self.others, '{:.2f}')} of {os.cpu_count()}"


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


# ------------------------------------------------------------------------------------------ data and models


def mnist_like(n: int = N_TRAIN, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic random MNIST-shaped data: (n, 28, 28) uint8 images and (n,) int64 labels in 0..9."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def lenet_300_100() -> nn.Module:
    """prunelens' registered LeNet-300-100 (784→300→100→10, ReLU), or the same net inline if not importable."""
    torch.manual_seed(0)
    try:
        from prunelens.models.base import MODELS
        from prunelens.models import small  # noqa: F401  (registers the small nets)

        return MODELS.get("lenet_300_100")(10, 1, (28, 28), {}, None)
    except Exception:  # noqa: BLE001 - the factory may not exist yet
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


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
    return Loader(TensorSplit(images[:, None], labels), BATCH, mean=MNIST_MEAN, std=MNIST_STD, shuffle=True, seed=0)


def baseline_loader(images: torch.Tensor, labels: torch.Tensor) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    return DataLoader(TorchvisionStyleMNIST(images, labels), batch_size=BATCH, shuffle=True, num_workers=0, generator=gen)


def ones_masks(model: nn.Module) -> MaskSet:
    return MaskSet.ones(model, prunable_names(model))


# ------------------------------------------------------------------------------------------- timed workloads


def baseline_epoch_seconds(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, batches: int) -> float:
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
    """FLOPs of forward + cross-entropy + backward of one training step (FlopCounterMode, matmul-like ops)."""
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def epoch_flops(model: nn.Module, loader: Loader) -> tuple[int, int, int]:
    """(epoch FLOPs, FLOPs of a full step, FLOPs of the last partial step) of one training epoch."""
    batches = list(loader.epoch(0))
    full = step_flops(model, *batches[0])
    last = step_flops(model, *batches[-1])
    return full * (len(batches) - 1) + last, full, last


# ------------------------------------------------------------------------------------------------ section 1+2


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
        return max((statistics.median(m.others) for m in self.meters.values() if m.others), default=0.0)


def bench_epoch(images: torch.Tensor, labels: torch.Tensor, repeats: int, baseline_batches: int, probe: MatmulProbe) -> EpochResult:
    """Repeat (baseline epoch, prunelens epoch, matmul rate) `repeats` times, interleaved."""
    model = lenet_300_100()
    base_model = copy.deepcopy(model)
    base_opt = torch.optim.SGD(base_model.parameters(), lr=LR)  # OpenLTH: plain SGD, momentum 0, default (for-loop) impl
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
        print(
            f"  round {r + 1}/{repeats}: baseline {res.baseline_s[-1]:7.2f} s/epoch | prunelens {res.prunelens_s[-1]:6.3f} s/epoch"
            f" | speed-up {res.speedups[-1]:5.2f}× | matmul {res.matmul_rate[-1] / 1e9:6.1f} GFLOP/s"
            f" | fraction {res.fractions[-1]:6.1%} | cores busy elsewhere (base/prunelens/matmul) {others}",
            flush=True,
        )
    return res


def report_epoch(res: EpochResult) -> None:
    header("1. Epoch time: prunelens vs OpenLTH-style pipeline (LeNet-300-100, 60k MNIST-shaped samples, batch 128)")
    print(f"  baseline timed on the first {res.baseline_batches} of {res.steps} batches of each epoch, scaled ×{res.steps / res.baseline_batches:.2f}")
    print(f"  {'':34s} {'min / median / max':>28s}")
    print(f"  {'baseline (DataLoader+PIL) s/epoch':34s} {spread(res.baseline_s, '{:.2f}'):>28s}")
    print(f"  {'prunelens train() s/epoch':34s} {spread(res.prunelens_s, '{:.3f}'):>28s}")
    speed = statistics.median(res.speedups)
    print(f"  {'speed-up (baseline / prunelens)':34s} {spread(res.speedups, '{:.2f}×'):>28s}   target ≥ {TARGET_SPEEDUP:.0f}×: {verdict(speed >= TARGET_SPEEDUP)}")
    print(f"  baseline: {res.meters['baseline'].line()}")
    print(f"  prunelens: {res.meters['prunelens'].line()}")
    contention_warning(res.busy_elsewhere())

    header("2. Fraction of the matmul rate (prunelens epoch FLOP/s ÷ 4096×4096 fp32 matmul FLOP/s, same round)")
    print(f"  FLOPs/step (fwd+bwd, FlopCounterMode): {res.flops_full / 1e6:.1f} M (batch {BATCH}), last partial step {res.flops_last / 1e6:.1f} M")
    print(f"  epoch: {res.steps - 1} × {res.flops_full / 1e6:.1f} M + {res.flops_last / 1e6:.1f} M = {res.flops / 1e9:.2f} GFLOP")
    achieved = [res.flops / p for p in res.prunelens_s]
    print(f"  {'prunelens achieved GFLOP/s':34s} {spread(achieved, '{:.1f}', 1e-9):>28s}")
    print(f"  {'4096² fp32 matmul GFLOP/s':34s} {spread(res.matmul_rate, '{:.1f}', 1e-9):>28s}")
    frac = statistics.median(res.fractions)
    print(f"  {'fraction of matmul rate':34s} {spread(res.fractions, '{:.1%}'):>28s}   target ≥ {TARGET_FRACTION:.0%}: {verdict(frac >= TARGET_FRACTION)}")
    print(f"  matmul: {res.meters['matmul'].line()}")
    contention_warning(res.busy_elsewhere())


def contention_warning(busy: float, limit: float = 0.3) -> None:
    if busy > limit:
        print(f"  WARNING: other processes kept {busy:.2f} cores busy (median). With torch's spinning OpenMP barriers the small ops of a"
              f" training step then stall for whole scheduler slices; these ratios are unreliable (see 2b, 'OpenMP settings').")


# ----------------------------------------------------------------------------------------------- diagnosis


@dataclass(frozen=True)
class Variant:
    """A copy of `train`'s inner loop with one or more changes (defaults = exactly what train.py does)."""

    name: str
    hoist_lr: bool = False  # set the LR once when the schedule is constant (no per-step lr_factor / param_groups loop)
    foreach: bool = True  # SGD(foreach=...)
    set_to_none: bool = True  # optimizer.zero_grad(set_to_none=...)
    prenormalised: bool = False  # normalise the whole split once to float32 (loader change)
    index_select: bool = False  # images.index_select(0, idx) instead of images[idx]
    fixed_batch: bool = False  # no data loading at all (lower bound of the step)
    enforce: bool = True  # mask enforcement after the step
    threads: int | None = None  # torch.set_num_threads during the loop


VARIANTS = (
    Variant("copy of train() (sanity: ≈ 1.00)"),
    Variant("LR set once (constant schedule)", hoist_lr=True),
    Variant("SGD foreach=False", foreach=False),
    Variant("zero_grad(set_to_none=False)", set_to_none=False),
    Variant("no mask enforcement", enforce=False),
    Variant("index_select instead of images[idx]", index_select=True),
    Variant("split pre-normalised to float32", prenormalised=True),
    Variant("fixed batch (no loader work)", fixed_batch=True),
    Variant("torch.set_num_threads(1)", threads=1),
    Variant("threads=1 + LR once + pre-normalised", threads=1, hoist_lr=True, prenormalised=True),
)


def variant_loop(model: nn.Module, loader: Loader, masks: MaskSet, steps: int, v: Variant, normalised: torch.Tensor) -> None:
    """A copy of `prunelens.train.train` (one epoch prefix of `steps` steps) with the changes of `v`."""
    cfg = LENET_CFG
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=v.foreach)
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
                x, y = (rows if v.prenormalised else loader.normalise(rows)), split.labels[idx]
            if not v.hoist_lr:
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(step, cfg, per_epoch, cfg.epochs * per_epoch)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=v.set_to_none)
            loss.backward()
            optimizer.step()
            enforce()
            losses.append(loss.detach())
    float(torch.stack(losses).mean())


def calibrate_steps(fn: Callable[[int], object], seconds: float, lo: int = 20, hi: int = 469) -> int:
    """Number of steps of `fn(steps)` that takes about `seconds` (bounded to [lo, hi])."""
    per_step = timed(lambda: fn(lo)) / lo
    return int(min(hi, max(lo, seconds / per_step)))


def profile_train(model: nn.Module, loader: Loader, masks: MaskSet, steps: int, top: int = 12) -> None:
    """torch.profiler table of `train` (self CPU time per op), and how much of the wall time is in matmuls."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = prunelens_epoch_seconds(model, loader, masks, steps=steps)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    aten = [e for e in events if e.key.startswith("aten::")]
    in_ops = sum(e.self_cpu_time_total for e in aten) / 1e6
    matmul = sum(e.self_cpu_time_total for e in aten if e.key in ("aten::mm", "aten::addmm")) / 1e6
    print(f"  torch.profiler over {steps} steps of train(): wall {wall * 1e3 / steps:.2f} ms/step (profiled), "
          f"in ATen ops {in_ops / wall:.0%}, of which matmul (mm/addmm) {matmul / wall:.0%} of wall; "
          f"outside ops (Python, dispatch, profiler) {1 - in_ops / wall:.0%}")
    print(f"  {'op':40s} {'self ms/step':>12s} {'% wall':>7s} {'calls/step':>10s} {'µs/call':>9s}")
    for e in events[:top]:
        self_s = e.self_cpu_time_total / 1e6
        print(f"  {e.key[:40]:40s} {self_s * 1e3 / steps:12.3f} {self_s / wall:7.1%} {e.count / steps:10.1f} {self_s * 1e6 / e.count:9.1f}")


def bench_variants(images: torch.Tensor, labels: torch.Tensor, rounds: int, seconds: float) -> None:
    """Each variant's ms/step ÷ the real `train()`'s ms/step, timed back to back, `rounds` rounds."""
    model, loader = lenet_300_100(), prunelens_loader(images, labels)
    masks = ones_masks(model)
    normalised = loader.normalise(loader.split.images)
    steps = calibrate_steps(lambda s: prunelens_epoch_seconds(model, loader, masks, steps=s), seconds)
    ratios: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
    per_step: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
    meter = CpuMeter()
    for r in range(rounds):
        for v in VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]:  # rotate the order each round
            with meter.measure():
                ref = prunelens_epoch_seconds(model, loader, masks, steps=steps)
                var = timed(lambda: variant_loop(model, loader, masks, steps, v, normalised))
            ratios[v.name].append(var / ref)
            per_step[v.name].append(var / steps)
    print(f"  in-process variants ({steps} steps each, {rounds} rounds, each run right after a train() run of the same length)")
    print(f"  {'variant':42s} {'ms/step':>8s} {'time ÷ train() (min / median / max)':>38s}")
    for v in VARIANTS:
        print(f"  {v.name:42s} {statistics.median(per_step[v.name]) * 1e3:8.3f} {spread(ratios[v.name], '{:.3f}'):>38s}")
    print(f"  {meter.line()}")


def child_measure(steps: int) -> None:
    """Child-process mode: print ms/step of `train()` and the matmul rate as JSON (for OpenMP env settings)."""
    images, labels = mnist_like()
    model, loader = lenet_300_100(), prunelens_loader(images, labels)
    masks = ones_masks(model)
    prunelens_epoch_seconds(model, loader, masks, steps=20)
    probe, meter = MatmulProbe(), CpuMeter()
    with meter.measure():
        seconds = min(prunelens_epoch_seconds(model, loader, masks, steps=steps) for _ in range(2))
        rate = probe.rate(2)
    print(json.dumps({"ms_per_step": seconds * 1e3 / steps, "matmul_gflops": rate / 1e9, "others": meter.others[-1] if meter.others else 0.0}))


def bench_omp_settings(rounds: int, steps: int, flops_per_step: int) -> None:
    """OpenMP wait policies (read when libgomp loads, so each runs in a fresh child process), interleaved."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in OMP_SETTINGS}
    for _ in range(rounds):
        for name, env in OMP_SETTINGS.items():
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(steps)], env={**os.environ, **env}, capture_output=True, text=True, check=True
            )
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"  OpenMP settings (child processes, {steps} steps of train() best of 2, {rounds} rounds, fraction = FLOPs/step ÷ step time ÷ matmul rate)")
    print(f"  {'setting':34s} {'ms/step':>20s} {'matmul GFLOP/s':>16s} {'fraction of matmul':>22s} {'cores busy elsewhere':>22s}")
    for name, runs in results.items():
        ms = [r["ms_per_step"] for r in runs]
        gf = [r["matmul_gflops"] for r in runs]
        frac = [flops_per_step / (m * 1e-3) / (g * 1e9) for m, g in zip(ms, gf)]
        others = [r["others"] for r in runs]
        print(f"  {name:34s} {spread(ms, '{:.2f}'):>20s} {spread(gf, '{:.0f}'):>16s} {spread(frac, '{:.1%}'):>22s} {spread(others, '{:.2f}'):>22s}")


def diagnose(images: torch.Tensor, labels: torch.Tensor, flops_per_step: int, quick: bool) -> None:
    header("2b. Diagnosis: where prunelens' training step spends its time")
    print(f"  torch threads: {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op; cpu_count {os.cpu_count()}")
    model, loader = lenet_300_100(), prunelens_loader(images, labels)
    masks = ones_masks(model)
    prunelens_epoch_seconds(model, loader, masks, steps=20)
    profile_train(model, loader, masks, steps=100)
    bench_variants(images, labels, rounds=2 if quick else 3, seconds=0.25 if quick else 0.4)
    bench_omp_settings(rounds=1 if quick else 2, steps=150, flops_per_step=flops_per_step)


# ------------------------------------------------------------------------------------------------- section 3


def half_pruned(model: nn.Module) -> tuple[nn.Module, MaskSet, nn.Module]:
    """(prunelens copy with 50 % magnitude-pruned weights, its MaskSet, torch.nn.utils.prune copy, same masks)."""
    tp = copy.deepcopy(model)
    names = prunable_names(tp)
    modules = dict(tp.named_modules())
    for name in names:
        torch_prune.l1_unstructured(modules[name.rsplit(".", 1)[0]], "weight", amount=0.5)
    masks = MaskSet({n: modules[n.rsplit(".", 1)[0]].weight_mask for n in names})
    masked = copy.deepcopy(model)
    masks.enforcer(masked)()
    return masked, masks, tp


def train_step(model: nn.Module, cfg: TrainingConfig, x: torch.Tensor, y: torch.Tensor, enforce: Callable[[], None] | None) -> Callable[[], None]:
    """One step exactly as in `train` (forward, CE, zero_grad(None), backward, SGD foreach, optional enforce)."""
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    model.train()

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if enforce is not None:
            enforce()

    return step


def state_bytes(obj: object) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes


@dataclass
class MaskedResult:
    name: str
    ms: dict[str, list[float]]
    overhead: list[float]
    vs_torch_prune: list[float]
    bytes_prunelens: tuple[int, int]
    bytes_torch_prune: int
    meter: CpuMeter


def bench_masked(name: str, model: nn.Module, cfg: TrainingConfig, x: torch.Tensor, y: torch.Tensor, repeats: int, block_s: float) -> MaskedResult:
    """Dense vs prunelens-masked vs torch-prune step, blocks of k steps in rotating order, `repeats` times."""
    masked, masks, tp = half_pruned(model)
    steps = {
        "dense": train_step(copy.deepcopy(model), cfg, x, y, None),
        "prunelens masked": train_step(masked, cfg, x, y, masks.enforcer(masked)),
        "torch prune": train_step(tp, cfg, x, y, None),
    }
    for fn in steps.values():
        for _ in range(3):
            fn()
    k = max(1, round(block_s / (timed(steps["dense"]))))
    ms: dict[str, list[float]] = {n: [] for n in steps}
    meter = CpuMeter()
    names = list(steps)
    for r in range(repeats):
        with meter.measure():
            for n in names[r % 3 :] + names[: r % 3]:
                ms[n].append(timed(lambda: [steps[n]() for _ in range(k)]) / k * 1e3)
    overhead = [m / d - 1 for m, d in zip(ms["prunelens masked"], ms["dense"])]
    vs_tp = [t / m for t, m in zip(ms["torch prune"], ms["prunelens masked"])]
    sizes = (state_bytes(masked.state_dict()), state_bytes(masks.state_dict()))
    return MaskedResult(name, ms, overhead, vs_tp, sizes, state_bytes(tp.state_dict()), meter)


def report_masked(results: list[MaskedResult], repeats: int) -> None:
    header(f"3. Masked training step (50 % pruned) vs dense, and vs torch.nn.utils.prune ({repeats} interleaved repeats)")
    for res in results:
        print(f"  {res.name}")
        for n, values in res.ms.items():
            print(f"    {n + ' ms/step':34s} {spread(values, '{:.3f}'):>28s}")
        over = statistics.median(res.overhead)
        print(f"    {'prunelens overhead vs dense':34s} {spread(res.overhead, '{:+.1%}'):>28s}   target ≤ {TARGET_OVERHEAD:.0%}: {verdict(over <= TARGET_OVERHEAD)}")
        print(f"    {'torch prune step ÷ prunelens step':34s} {spread(res.vs_torch_prune, '{:.2f}×'):>28s}")
        w, m = res.bytes_prunelens
        print(f"    state_dict bytes: prunelens {w + m:,} (weights {w:,} + bool masks {m:,}) vs torch prune {res.bytes_torch_prune:,}"
              f" → torch prune is {res.bytes_torch_prune / (w + m):.2f}× larger")
        print(f"    {res.meter.line()}")
        contention_warning(statistics.median(res.meter.others) if res.meter.others else 0.0)


# ------------------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, fewer repeats (~1 min)")
    parser.add_argument("--diagnose", action="store_true", help="run the diagnosis even if the matmul-fraction target is met")
    parser.add_argument("--baseline-batches", type=int, default=150, help="baseline batches timed per epoch (scaled to the epoch)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave torch's default)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def print_environment() -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    omp = {k: os.environ.get(k, "unset") for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    print(f"torch {torch.__version__} | torch.get_num_threads() = {torch.get_num_threads()} (inter-op {torch.get_num_interop_threads()})"
          f" | os.cpu_count() = {os.cpu_count()} | load average {load} | {omp}")


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
    repeats = 1 if args.quick else 3

    print("\nrunning sections 1 + 2 (interleaved: baseline epoch, prunelens epoch, matmul rate) ...", flush=True)
    epoch = bench_epoch(images, labels, repeats, args.baseline_batches, probe)
    report_epoch(epoch)
    missed = statistics.median(epoch.fractions) < TARGET_FRACTION
    if args.diagnose or (missed and not args.quick):
        diagnose(images, labels, epoch.flops_full, args.quick)
    elif missed:
        print("  (target missed: run without --quick, or with --diagnose, for the profiler diagnosis)")

    step_repeats, block_s = (8, 0.05) if args.quick else (25, 0.1)
    lenet_x = prunelens_loader(images, labels).normalise(images[:BATCH, None])
    conv_gen = torch.Generator().manual_seed(2)
    conv_x, conv_y = torch.randn(64, 3, 32, 32, generator=conv_gen), torch.randint(0, 10, (64,), generator=conv_gen)
    conv_cfg = LENET_CFG.model_copy(update={"momentum": 0.9})
    results = [
        bench_masked("LeNet-300-100, batch 128, SGD lr 0.1", lenet_300_100(), LENET_CFG, lenet_x, labels[:BATCH], step_repeats, block_s),
        bench_masked("conv 32/64/128, 32×32 RGB, batch 64, SGD lr 0.1 momentum 0.9", small_convnet(), conv_cfg, conv_x, conv_y, step_repeats, block_s),
    ]
    report_masked(results, step_repeats)
    print(f"\ntotal wall time {time.perf_counter() - began:.0f} s")
    print_environment()


if __name__ == "__main__":
    main()
