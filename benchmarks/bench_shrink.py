"""Simulated vs real structured pruning on the CPU: `python benchmarks/bench_shrink.py [--repeats N]`.

For cifar_resnet_20 (32×32, batch 64) and torchvision resnet18 (no weights, 64×64, batch 16), both from the
model registry with 10 classes: prune the output filters of every conv (not the classifier) at 0.5 by L1
norm (one round, `granularity: filters`), then physically shrink the masked model with Torch-Pruning
(`prunelens.pruning.shrink.shrink`) and print

- parameters: dense, alive in the masked model, shrunk;
- FLOPs per sample: dense, effective (masked: each layer's FLOPs × its weight density, what a sparse kernel
  could at best save) and actual (shrunk model, counted directly);
- CPU latency per batch of the masked vs the shrunk model, interleaved (median / min / max over the repeats)
  and the speed-up masked / shrunk;
- max |Δ| between the outputs of both models (they compute the same function in eval mode).

The models are untrained (BN at its init), so every removed channel is zero; folding of non-zero constants
is covered by tests/test_structured.py. Actual and effective FLOPs differ both ways: a removed channel also
removes the input columns of the layers reading it, which the masks keep, while a residual stream loses a
channel only where every conv writing it dropped that filter. CPU timings on a shared machine drift: read the
ratios, which are taken interleaved within one process; each case reports how many cores other processes kept
busy while its latencies were measured.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from _harness import CpuMeter, environment, header

from prunelens.config import PruningConfig
from prunelens.masks import MaskSet, prunable_names
from prunelens.models import MODELS
from prunelens.pruning import prune
from prunelens.pruning.shrink import compare_latency, footprint, shrink

CASES = (("cifar_resnet_20", 32, 64), ("resnet18", 64, 16))
"""(registry name, image side, batch)."""
RATE = 0.5


def bench(name: str, side: int, batch: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = MODELS.get(name)(10, 3, (side, side), {}, None).eval()
    masks = MaskSet.ones(model, prunable_names(model, prune_classifier=False))
    masks = prune(model, masks, PruningConfig(granularity="filters", fraction=RATE))
    masks.apply(model)
    x = torch.randn(batch, 3, side, side)
    small = shrink(model, masks, x)
    big, little = footprint(model, x, masks), footprint(small, x)
    meter = CpuMeter()
    with meter.measure():
        times = compare_latency(model, small, x, repeats)
    with torch.no_grad():
        diff = float((model(x) - small(x)).abs().max())
    header(f"{name}, {side}×{side}, batch {batch}, filters pruned at {RATE} (conv layers, not the classifier)")
    alive = masks.alive() + big["params"] - masks.total()
    print(f"  params   dense {big['params']:>12,}  masked alive {alive:>12,}  shrunk {little['params']:>12,}")
    print(
        f"  FLOPs    dense {big['flops']:>12,}  effective    {big['flops_effective']:>12,.0f}  actual {little['flops']:>12,}"
        f"  (per sample; actual / effective {little['flops'] / big['flops_effective']:.2f})"
    )
    for which in ("masked", "shrunk"):
        t = times[which]
        print(f"  latency  {which}  median {t['median'] * 1e3:8.2f} ms  min {t['min'] * 1e3:8.2f}  max {t['max'] * 1e3:8.2f}")
    best = times["masked"]["min"] / times["shrunk"]["min"]
    flops_ratio = big["flops"] / little["flops"]
    print(f"  speed-up masked / shrunk: median {times['speedup']:.2f}×, min {best:.2f}×  (FLOPs ratio {flops_ratio:.2f}×)")
    print(f"  max |Δ output| masked vs shrunk {diff:.1e}")
    meter.report()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards per model (after 2 warm-up)")
    args = parser.parse_args(argv)
    print(environment())
    for case in CASES:
        bench(*case, args.repeats)


if __name__ == "__main__":
    main()
