"""Masked training step vs dense, and vs `torch.nn.utils.prune`: `python benchmarks/bench_masking.py [--quick]`.

One training step of a 50 %-pruned model (prunelens: plain weights, one `_foreach_mul_` enforcer after the
optimizer step) vs the same dense step, for LeNet-300-100 (batch 128, foreach SGD) and a 3-conv net (32/64/128
channels, 32×32 RGB, batch 64, fused SGD with momentum); and vs `torch.nn.utils.prune.l1_unstructured` (a forward
pre-hook recomputes weight = weight_orig · weight_mask). Interleaved blocks of k steps, min / median / max.
Read: overhead = masked ÷ dense − 1 (target ≤ 5 %); state_dict bytes of prunelens (weights + a separate bool-mask
file) vs torch prune's state_dict (weight_orig + float masks).
"""

from __future__ import annotations

import argparse
import copy
import io
import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from _harness import CpuMeter, environment, header, interleaved, row, spread, timed, verdict
from bench_training import LENET_CFG, Batch, lenet_300_100, mnist_like, prunelens_loader
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunelens.config import TrainingConfig
from prunelens.masks import MaskSet, prunable_names
from prunelens.train import build_optimizer

TARGET_OVERHEAD = 0.05


def small_convnet() -> nn.Module:
    """3 conv layers (32/64/128 channels, 3×3, ReLU, 2×2 max-pool) on 32×32 RGB, then a linear classifier."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for c_in, c_out in ((3, 32), (32, 64), (64, 128)):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, 10))


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
    """Dense vs prunelens-masked vs torch-prune step: `repeats` interleaved rounds of one block of k steps each.

    Denormals are flushed meanwhile, so that a model whose gradients happen to underflow is not penalised."""
    masked, masks, tp = half_pruned(model)
    steps = {
        "dense": train_step(copy.deepcopy(model), cfg, batches, None),
        "prunelens masked": train_step(masked, cfg, batches, masks.enforcer(masked)),
        "torch prune": train_step(tp, cfg, batches, None),
    }
    k = max(1, round(block_s / min(timed(steps["dense"]) for _ in range(5))))
    meter = CpuMeter()
    torch.set_flush_denormal(True)
    try:
        seconds = interleaved({n: partial(timed, step, k) for n, step in steps.items()}, repeats, meter)
    finally:
        torch.set_flush_denormal(False)
    ms = {n: [t * 1e3 for t in values] for n, values in seconds.items()}
    sizes = (state_bytes(masked.state_dict()), state_bytes(masks.state_dict()))
    return MaskedResult(name, ms, sizes, state_bytes(tp.state_dict()), meter)


def report_masked(results: list[MaskedResult], repeats: int) -> None:
    header(f"Masked training step (50 % pruned) vs dense, and vs torch.nn.utils.prune ({repeats} interleaved repeats)")
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
        res.meter.report(indent=4)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (~20 s)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    print(environment())
    repeats, block_s = (8, 0.05) if args.quick else (25, 0.1)
    images, labels = mnist_like()
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


if __name__ == "__main__":
    main()
