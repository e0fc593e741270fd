"""Training-speed benchmark of prunelens on the CPU: `python benchmarks/bench_training.py [--quick] [--diagnose]`.

What is measured. Every number is a *ratio taken within one process, interleaved* (one call of each side per
round, the order rotated every round), because absolute CPU timings on a shared machine drift by 2× or more
between runs; spreads are printed as min / median / max over rounds, plus "best ÷ best" (fastest run of one side
÷ fastest of the other: interference only ever slows a run down, so this is the ratio least disturbed by other
processes).

1. Epoch time, prunelens vs an OpenLTH-style pipeline. LeNet-300-100 on 60,000 deterministic random MNIST-shaped
   uint8 images, batch 128, SGD lr 0.1 without momentum (OpenLTH's mnist_lenet_300_100).
   prunelens: `prunelens.train.train` (index_select batches of a `Loader` over a `TensorSplit`, `build_optimizer`'s
   SGD) with an all-ones `MaskSet` over `prunable_names`, as in a dense round (the enforcer skips all-ones masks),
   one full epoch.
   Baseline: a `DataLoader` (num_workers=0, shuffle) over a torchvision-MNIST-like Dataset (uint8 → PIL image →
   `ToTensor()` → `Normalize((0.1307,), (0.3081,))` per sample) and a plain loop with the same model and SGD; it is
   timed on the first `--baseline-batches` batches of each epoch and scaled to the full epoch.
   Read: speed-up = baseline s/epoch ÷ prunelens s/epoch (higher is better; target ≥ 7×).

2. Fraction of the matmul rate. The epoch's exact FLOPs (forward + backward of one training step counted by
   `torch.utils.flop_counter.FlopCounterMode` × the number of full batches, plus the last partial batch counted on
   its own; matmuls only, optimizer and element-wise work count 0) ÷ prunelens' epoch time, as a fraction of the
   rate of a 4096×4096 fp32 matmul (2·4096³ FLOPs, warmed up, median of 3) measured in the same round.
   Read: the share of the machine's dense-matmul speed that training reaches (target ≥ 45 %).
   2b (when a target of 1/2 is missed, or with --diagnose): a torch.profiler table of `train`'s ops.

The masked-step overhead (formerly section 3) is `benchmarks/bench_masking.py`.

Every section prints how many cores *other* processes kept busy meanwhile (from /proc/stat). Above ~0.3 of the
2 cores, torch's spinning OpenMP threads make the many small parallel ops of a training step stall for scheduler
slices (benchmarks/bench_threads.py), and the ratios that involve a step are unreliable.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from _harness import CpuMeter, environment, header, interleaved, row, spread, timed, verdict
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from prunelens.config import ModelConfig, TrainingConfig
from prunelens.data.base import TensorSplit
from prunelens.data.loader import Loader
from prunelens.masks import MaskSet, prunable_names
from prunelens.models import build_model
from prunelens.train import train

Batch = tuple[torch.Tensor, torch.Tensor]
N_TRAIN = 60_000
BATCH = 128
LR = 0.1
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
MATMUL_N = 4096
TARGET_SPEEDUP = 7.0
TARGET_FRACTION = 0.45
LENET_CFG = TrainingConfig(
    optimizer="sgd", lr=LR, momentum=0.0, weight_decay=0.0, schedule="constant", epochs=1, batch_size=BATCH
)


# ---------------------------------------------------------------------------------------- data and models


def mnist_like(n: int = N_TRAIN, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic random MNIST-shaped data: (n, 28, 28) uint8 images and (n,) int64 labels in 0..9."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
    return images, torch.randint(0, 10, (n,), generator=gen)


def lenet_300_100() -> nn.Module:
    """prunelens' registered LeNet-300-100 (784→300→100→10, ReLU), initialised from torch's seed 0."""
    torch.manual_seed(0)
    return build_model(ModelConfig(name="lenet_300_100"), 10, 1, (28, 28))


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
    meter: CpuMeter

    @property
    def speedups(self) -> list[float]:
        return [b / p for b, p in zip(self.baseline_s, self.prunelens_s)]

    @property
    def fractions(self) -> list[float]:
        return [self.flops / p / r for p, r in zip(self.prunelens_s, self.matmul_rate)]

    def targets_met(self) -> bool:
        return statistics.median(self.speedups) >= TARGET_SPEEDUP and statistics.median(self.fractions) >= TARGET_FRACTION


def bench_epoch(images: torch.Tensor, labels: torch.Tensor, repeats: int, baseline_batches: int) -> EpochResult:
    """`repeats` interleaved rounds of (baseline epoch, prunelens epoch, matmul rate)."""
    model = lenet_300_100()
    base_model = copy.deepcopy(model)
    base_opt = torch.optim.SGD(base_model.parameters(), lr=LR)  # OpenLTH: SGD, momentum 0, default for-loop impl
    base_loader, loader, masks = baseline_loader(images, labels), prunelens_loader(images, labels), ones_masks(model)
    flops, full, last = epoch_flops(copy.deepcopy(model), loader)
    probe = MatmulProbe()
    baseline_epoch_seconds(base_model, base_opt, base_loader, 5)  # warm-up
    prunelens_epoch_seconds(model, loader, masks, steps=20)
    runs = {
        "baseline": lambda: baseline_epoch_seconds(base_model, base_opt, base_loader, baseline_batches),
        "prunelens": lambda: prunelens_epoch_seconds(model, loader, masks),
        "matmul": probe.rate,
    }
    meter = CpuMeter()
    v = interleaved(runs, repeats, meter)
    return EpochResult(v["baseline"], v["prunelens"], v["matmul"], flops, full, last, len(loader), baseline_batches, meter)


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
    res.meter.report()

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
    res.meter.report()


def diagnose(images: torch.Tensor, labels: torch.Tensor, steps: int = 100, top: int = 12) -> None:
    """torch.profiler table of `steps` steps of `train` (self CPU time per op) and the share of wall time in matmuls."""
    from torch.profiler import ProfilerActivity, profile

    header(f"2b. Where train() spends its time: torch.profiler over {steps} steps (LeNet-300-100, batch {BATCH})")
    model, loader = lenet_300_100(), prunelens_loader(images, labels)
    masks = ones_masks(model)
    prunelens_epoch_seconds(model, loader, masks, steps=20)  # warm-up
    meter = CpuMeter()
    with meter.measure(), profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = prunelens_epoch_seconds(model, loader, masks, steps=steps)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    aten = [e for e in events if e.key.startswith("aten::")]
    in_ops = sum(e.self_cpu_time_total for e in aten) / 1e6
    matmul = sum(e.self_cpu_time_total for e in aten if e.key in ("aten::mm", "aten::addmm")) / 1e6
    print(f"  {wall * 1e3 / steps:.2f} ms/step while profiled: in ATen ops {in_ops / wall:.0%} of wall, mm/addmm"
          f" {matmul / wall:.0%}; outside ops (Python, dispatch, profiler) {1 - in_ops / wall:.0%}")
    print(f"  {'op':40s} {'self ms/step':>12s} {'% wall':>7s} {'calls/step':>10s} {'µs/call':>9s}")
    for e in events[:top]:
        self_s = e.self_cpu_time_total / 1e6
        print(f"  {e.key[:40]:40s} {self_s * 1e3 / steps:12.3f} {self_s / wall:7.1%} {e.count / steps:10.1f}"
              f" {self_s * 1e6 / e.count:9.1f}")
    meter.report()


# ------------------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, fewer repeats, no diagnosis (~1 min)")
    parser.add_argument("--diagnose", action="store_true", help="run the diagnosis (2b) even if the targets are met")
    parser.add_argument("--baseline-batches", type=int, default=150, help="baseline batches timed per epoch (then scaled)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    print(environment())
    images, labels = mnist_like()

    print("\nsections 1 + 2, interleaved rounds of (baseline epoch, prunelens epoch, matmul rate)", flush=True)
    epoch = bench_epoch(images, labels, 1 if args.quick else 3, args.baseline_batches)
    report_epoch(epoch)
    if args.diagnose or (not epoch.targets_met() and not args.quick):
        diagnose(images, labels)
    elif not epoch.targets_met():
        print("  (a target is missed: run without --quick, or with --diagnose, for the diagnosis)")

    print(f"\ntotal wall time {time.perf_counter() - began:.0f} s")
    print(environment())


if __name__ == "__main__":
    main()
