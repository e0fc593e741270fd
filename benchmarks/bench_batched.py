"""Batched tickets vs one-by-one training: `python benchmarks/bench_batched.py [--quick] [--repeats N] [--device D]`.

K = 8 tickets of one architecture, each with its own random unstructured mask (density 0.2), its own
initialisation and its own data order, trained for the same steps
- one after another with `prunelens.train.train` (what a sweep does without batching), and
- at once with `prunelens.batched.train_batched` (parameters stacked, one vmap of functional_call),
interleaved in one process, min / median / max over the repeats, printing the throughput ratio
(one-by-one seconds ÷ batched seconds; target ≥ 1.3× on 2 CPU cores, ≥ 6× on one GPU).

Cases: LeNet-300-100 on MNIST-shaped 28×28 images, batch 128 (OpenLTH's mnist_lenet_300_100, SGD lr 0.1), and
Conv-2 on CIFAR-shaped 32×32 images, batch 60 (OpenLTH's cifar_conv2: Adam, lr 2e-4), both at full width and
at width 0.25 (the `layerwise_importance` shapes study's size). Random images: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from _harness import CpuMeter, environment, header, interleaved, row, spread, verdict

from prunelens.batched import train_batched
from prunelens.config import TrainingConfig
from prunelens.data.base import TensorSplit
from prunelens.data.loader import Loader
from prunelens.masks import MaskSet
from prunelens.models.small import ConvNet, LeNet
from prunelens.train import train

K = 8
DENSITY = 0.2


def case(name: str, device: str, steps: int) -> tuple:
    """(models, loaders, masks, cfg, steps) of one case; data stays on `device`."""
    gen = torch.Generator().manual_seed(0)
    if name.startswith("lenet"):
        shape, batch, build = (1, 28, 28), 128, lambda: LeNet(10, 1, (28, 28))
        cfg = TrainingConfig(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, epochs=1, batch_size=batch, schedule="constant")
    else:
        width = 0.25 if name.endswith("0.25") else 1.0
        shape, batch, build = (3, 32, 32), 60, lambda: ConvNet(10, 3, (32, 32), blocks=1, width=width)
        cfg = TrainingConfig(optimizer="adam", lr=2e-4, weight_decay=0.0, epochs=1, batch_size=batch, schedule="constant")
    n = batch * steps
    split = TensorSplit((torch.rand((n, *shape), generator=gen) * 255).to(torch.uint8), torch.randint(0, 10, (n,), generator=gen))
    loaders = [Loader(split, batch, mean=(0.5,), std=(0.25,), device=device, shuffle=True, seed=k) for k in range(K)]
    torch.manual_seed(0)
    models = [build().to(device) for _ in range(K)]
    masks = []
    for model in models:
        mask = MaskSet({n: torch.rand(p.shape, generator=gen).to(device) < DENSITY for n, p in model.named_parameters() if n.endswith("weight")})
        mask.apply(model)
        masks.append(mask)
    return models, loaders, masks, cfg, steps


def bench(name: str, device: str, steps: int, repeats: int) -> float:
    models, loaders, masks, cfg, steps = case(name, device, steps)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def one_by_one() -> float:
        copies = [copy.deepcopy(m) for m in models]
        t = time.perf_counter()
        for m, loader, mask in zip(copies, loaders, masks):
            train(m, loader, cfg, mask, start_step=0, end_step=steps)
        sync()
        return time.perf_counter() - t

    def batched() -> float:
        copies = [copy.deepcopy(m) for m in models]
        t = time.perf_counter()
        train_batched(copies, loaders, cfg, masks, start_step=0, end_step=steps)
        sync()
        return time.perf_counter() - t

    one_by_one(), batched()  # warm-up
    meter = CpuMeter()
    times = interleaved({"one by one": one_by_one, "batched": batched}, repeats, meter)
    ratios = [a / b for a, b in zip(times["one by one"], times["batched"])]
    header(f"{name}: K = {K} tickets × {steps} steps, density {DENSITY}, device {device}")
    row("one by one (s)", spread(times["one by one"]))
    row("batched (s)", spread(times["batched"]))
    row("tickets·steps per second, batched", f"{K * steps / statistics.median(times['batched']):.1f}")
    row("throughput ratio (per repeat)", spread(ratios, "{:.2f}"), "one-by-one ÷ batched")
    best = min(times["one by one"]) / min(times["batched"])
    row("best ÷ best", f"{best:.2f}")
    meter.report()
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    print(environment())
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    else:
        print("no GPU here: the GPU figure (target ≥ 6×) does not exist yet")
    target = 6.0 if args.device.startswith("cuda") else 1.3
    results = {}
    for name, steps in (("lenet_300_100", 20 if args.quick else 40), ("conv2 width 0.25", 10 if args.quick else 20), ("conv2", 3 if args.quick else 6)):
        results[name] = bench(name, args.device, steps, repeats)
    header("summary (median throughput ratio)")
    for name, ratio in results.items():
        row(name, f"{ratio:.2f}×", f"target ≥ {target:g}×: {verdict(ratio >= target)}")


if __name__ == "__main__":
    main()
