"""The GPU path end to end: `python benchmarks/bench_gpu.py [--device cuda] [--rounds R] [--epochs E] [--study]`.

1. A lottery-ticket run of LeNet-300-100 on full Fashion-MNIST (Debian's `dataset-fashion-mnist`, 60,000 train
   images) with OpenLTH's mnist_lenet_300_100 schedule: SGD lr 0.1, no momentum, batch 128, 40 epochs per round,
   20 % of the remaining weights per round (global magnitude), rewinding to init, 20 rounds — through
   `prunelens.run` exactly as a user runs it (data resident on the device, masks enforced with one fused call per
   step, no host sync inside a step). Prints the wall time and the fraction of the device's peak it reaches:
   training FLOPs (forward + backward of one step, counted by torch's FlopCounterMode, × steps) ÷ training
   seconds ÷ the rate of a large matmul measured on the same device. Target on one GPU: ≤ 3 minutes.
2. `--study`: the Vandersmissen & Oramas study on the same data (5 layer-wise metrics × 3 seeds × the same rounds)
   as one sweep, whose 15 runs per round train as batched tickets. Target on one GPU: ≤ 10 minutes.

On a CPU the full schedule takes hours, so by default the CPU run is cut to `--rounds 1 --epochs 1` and the
printout says that no GPU figure exists yet; the FLOP-rate fraction is still measured.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _harness import environment, header, row, verdict
from torch.utils.flop_counter import FlopCounterMode

from prunelens import config
from prunelens.data import build_dataset
from prunelens.experiment import run
from prunelens.models import build_model
from prunelens.sweep import expand, run_sweep

BATCH = 128


def study_config(out: Path, device: str, rounds: int, epochs: int, precision: str) -> dict:
    return {
        "name": "bench_gpu",
        "output_dir": str(out),
        "device": device,
        "dataset": {"name": "fashion_mnist"},
        "model": {"name": "lenet_300_100"},
        "pruning": {"method": "magnitude", "scope": "global", "fraction": 0.2, "rounds": rounds, "rewind": "init"},
        "training": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "epochs": epochs,
                     "batch_size": BATCH, "schedule": "constant", "precision": precision},
    }  # fmt: skip


def peak_flops(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of a 4096² matmul on `device` (warmed up, best of 5)."""
    a = torch.randn(4096, 4096, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(6):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ a
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * 4096**3 / best


def step_flops(cfg: config.ExperimentConfig) -> float:
    """FLOPs of one training step (forward + backward) of the dense network on a batch of BATCH."""
    bundle = build_dataset(cfg.dataset)
    model = build_model(cfg.model, bundle.num_classes, bundle.in_channels, bundle.image_size)
    x = torch.randn(BATCH, bundle.in_channels, *bundle.image_size)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), torch.zeros(BATCH, dtype=torch.long)).backward()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, help="default: 20 on a GPU, 1 on a CPU")
    parser.add_argument("--epochs", type=int, help="default: 40 on a GPU, 1 on a CPU")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--study", action="store_true", help="also the 5 metrics × 3 seeds study as batched tickets")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    rounds, epochs = args.rounds or (20 if gpu else 1), args.epochs or (40 if gpu else 1)
    print(environment())
    print(f"device: {torch.cuda.get_device_name(0) if gpu else 'CPU'}" + ("" if gpu else " — no GPU here: no GPU figure exists yet"))
    with tempfile.TemporaryDirectory() as tmp:
        data = study_config(Path(tmp) / "runs", args.device, rounds, epochs, args.precision)
        cfg = config.from_dict(data)
        began = time.perf_counter()
        result = run(cfg, quiet=True)
        wall = time.perf_counter() - began
        train_s = sum(r["train_seconds"] for r in result.records)
        steps = (rounds + 1) * epochs * -(-60_000 // BATCH)
        achieved = step_flops(cfg) * steps / train_s
        peak = peak_flops(args.device, torch.float32)
        header(f"LeNet-300-100 lottery ticket on Fashion-MNIST: {rounds} rounds × {epochs} epochs, batch {BATCH}, {args.device}")
        row("wall time, whole run (s)", f"{wall:.1f}", f"target ≤ 180 s for 20 × 40 on a GPU: {verdict(wall <= 180) if gpu and rounds == 20 and epochs == 40 else 'n/a (not the full schedule)'}")
        row("training time (s)", f"{train_s:.1f}", f"{steps} steps, {1e3 * train_s / steps:.3f} ms per step")
        row("training FLOP rate (GFLOP/s)", f"{achieved / 1e9:.1f}")
        row("fp32 4096² matmul rate (GFLOP/s)", f"{peak / 1e9:.1f}")
        row("fraction of that peak", f"{achieved / peak:.1%}")
        row("last round: density, test top-1", f"{result.records[-1]['density']:.3f}, {result.records[-1]['test_top1']:.4f}")
        if args.study:
            data = {**data, "output_dir": str(Path(tmp) / "study"), "sweep": {"grid": {"pruning.method": ["magnitude", "l1", "l2", "softmax", "minmax"], "seed": [0, 1, 2]}}}
            began = time.perf_counter()
            run_sweep(expand(data, "bench_gpu --study"), quiet=True)
            wall = time.perf_counter() - began
            header(f"V&O study: 5 metrics × 3 seeds × {rounds} rounds, batched tickets, {args.device}")
            row("wall time (s)", f"{wall:.1f}", f"target ≤ 600 s on a GPU: {verdict(wall <= 600) if gpu and rounds == 20 and epochs == 40 else 'n/a'}")


if __name__ == "__main__":
    main()
