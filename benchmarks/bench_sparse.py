"""Dense vs sparse CSR kernels on the CPU: `python benchmarks/bench_sparse.py [--repeats N] [--threads T] [--quick]`.

Unstructured masks keep every filter, so `shrink` removes nothing; what they can buy on a CPU is a sparse
kernel (`prunelens.pruning.sparse`, docs/methods.md §17). For each layer below, at random unstructured masks
of density 1.0 (dense weights stored sparse), 0.5, 0.2, 0.1, 0.05, 0.02 and 0.01, the masked dense layer
(`F.linear` / mkldnn `F.conv2d` on the zero-filled weights) is timed against the same weights as a CSR matrix
(`SparseLinear`: addmm(b, W_csr, xᵀ); `SparseConv2d`: strided im2col + the same matmul):

- LeNet-300-100's Linear layers 784→300, 300→100, 100→10 at batch 1 and 64;
- a conv 64→64 3×3 (padding 1) on 32×32 inputs at batch 32;
- the whole LeNet-300-100 (random masks at the density in every layer) masked dense vs `sparsify`d;
- which CSR call is fastest for 784→300 at batch 64: torch.sparse.mm, torch.mm, torch.addmm, with xᵀ as a
  view or made contiguous (what `SparseLinear` does).

Each case runs dense and sparse interleaved (the order rotated every round, `--repeats` rounds); one sample is
the mean of as many calls in a row as fill about 2 ms (1 ms with `--quick`), so sub-millisecond kernels are not
timer noise. Printed: min / median / max ms per call, the speed-up dense / sparse of the medians and of the
minima, and per layer the crossover: the highest density at which the sparse median is below the dense one.
Every case reports how many cores other processes kept busy over the whole case ("busy"; /proc/stat's 10 ms
ticks are too coarse for single samples): above 0.3 torch's spinning OpenMP threads stall for scheduler slices
and the numbers are unreliable; `--threads 1` takes the thread team, though not the shared core, out of it.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable, Sequence
from functools import partial

import torch
from _harness import CpuMeter, environment, header, interleaved, spread, timed

from prunelens.masks import MaskSet, prunable_names
from prunelens.models import MODELS
from prunelens.pruning.sparse import Layer, SparseConv2d, SparseLinear, random_mask, sparsify

DENSITIES = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
LENET = (Layer("fc 784→300", (300, 784), (784,)), Layer("fc 300→100", (100, 300), (300,)), Layer("fc 100→10", (10, 100), (100,)))
CONV = Layer("conv 64→64 3×3, 32×32", (64, 64, 3, 3), (64, 32, 32), padding=(1, 1))
MODEL_DENSITIES = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02)
LOAD = CpuMeter()
"""Every case's cores busy in other processes, for the report at the end."""


def calls_per_sample(fn: Callable[[], object], target: float) -> int:
    """Calls in a row that take about `target` seconds (at least 1), from the fastest of 3 single calls."""
    fn()
    one = min(timed(fn) for _ in range(3))
    return max(1, round(target / max(one, 1e-7)))


@torch.no_grad()
def duel(runs: dict[str, Callable[[], object]], rounds: int, target: float) -> tuple[dict[str, list[float]], float]:
    """Seconds per call of each run, interleaved; and the median cores other processes kept busy."""
    numbers = {name: calls_per_sample(fn, target) for name, fn in runs.items()}
    meter = CpuMeter()  # around the whole case: /proc/stat counts in 10 ms ticks, too coarse for one sample
    with meter.measure():
        samples = interleaved({n: (lambda fn=fn, k=numbers[n]: timed(fn, k)) for n, fn in runs.items()}, rounds, CpuMeter())
    LOAD.others.extend(meter.others)
    return samples, meter.median()


def line(label: str, dense: list[float], sparse: list[float], busy: float) -> float:
    """Print one density's row; returns the median speed-up dense / sparse."""
    ratio = statistics.median(dense) / statistics.median(sparse)
    best = min(dense) / min(sparse)
    flag = "  sparse wins" if ratio > 1 else ""
    print(
        f"  {label:22s} dense {spread(dense, '{:8.4f}', 1e3)}  sparse {spread(sparse, '{:8.4f}', 1e3)} ms"
        f"  speed-up {ratio:6.2f}× (min {best:5.2f}×)  busy {busy:.2f}{flag}",
        flush=True,
    )
    return ratio


def bench_layer(layer: Layer, batch: int, densities: Sequence[float], rounds: int, target: float) -> float | None:
    header(f"{layer.name}, batch {batch}: masked dense vs sparse CSR (ms per call: min / median / max)")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *layer.input, generator=generator)
    wins = []
    for density in densities:
        dense = layer.dense(generator)
        with torch.no_grad():
            dense.weight.mul_(random_mask(dense.weight.shape, density, generator))
        sparse = SparseLinear(dense) if isinstance(dense, torch.nn.Linear) else SparseConv2d(dense)
        samples, busy = duel({"dense": partial(dense, x), "sparse": partial(sparse, x)}, rounds, target)
        nnz = sparse.weight._nnz()
        if line(f"density {density:g} (nnz {nnz})", samples["dense"], samples["sparse"], busy) > 1:
            wins.append(density)
    cross = max(wins, default=None)
    print(f"  crossover: {'sparse never won' if cross is None else f'sparse wins at density ≤ {cross:g}'}")
    return cross


def bench_model(batch: int, rounds: int, target: float) -> float | None:
    header(f"LeNet-300-100 (784-300-100-10), batch {batch}: masked dense model vs sparsify(model, masks)")
    torch.manual_seed(0)
    model = MODELS.get("lenet_300_100")(10, 1, (28, 28), {}, None).eval()
    x = torch.randn(batch, 1, 28, 28)
    params, wins = dict(model.named_parameters()), []
    for density in MODEL_DENSITIES:
        generator = torch.Generator().manual_seed(1)
        masks = MaskSet({n: random_mask(params[n].shape, density, generator) for n in prunable_names(model)})
        masked = copy.deepcopy(model)
        masks.apply(masked)  # the dense kernels on zero-filled weights
        sparse = sparsify(model, masks).eval()
        with torch.no_grad():
            diff = float((masked(x) - sparse(x)).abs().max())
        samples, busy = duel({"dense": partial(masked, x), "sparse": partial(sparse, x)}, rounds, target)
        if line(f"density {density:g}", samples["dense"], samples["sparse"], busy) > 1:
            wins.append(density)
        print(f"  {'':22s} max |Δ output| {diff:.1e}")
    return max(wins, default=None)


def bench_kernels(rounds: int, target: float) -> None:
    layer = LENET[0]
    header(f"{layer.name}, batch 64: which CSR call (ms per call; ratio = SparseLinear's call / this one)")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 784, generator=generator)
    for density in (0.5, 0.1, 0.01):
        dense = layer.dense(generator)
        with torch.no_grad():
            dense.weight.mul_(random_mask(dense.weight.shape, density, generator))
        w, b, dense_w = SparseLinear(dense).weight, dense.bias.detach(), dense.weight.detach()
        calls = {
            "addmm(b, W, xT.contiguous())": lambda w=w, b=b: torch.addmm(b[:, None], w, x.T.contiguous()).T,
            "addmm(b, W, xT view)": lambda w=w, b=b: torch.addmm(b[:, None], w, x.T).T,
            "sparse.mm(W, xT.contiguous())+b": lambda w=w, b=b: torch.sparse.mm(w, x.T.contiguous()).T + b,
            "sparse.mm(W, xT view)+b": lambda w=w, b=b: torch.sparse.mm(w, x.T).T + b,
            "mm(W, xT view)+b": lambda w=w, b=b: torch.mm(w, x.T).T + b,
            "F.linear (dense)": lambda w=dense_w, b=b: torch.nn.functional.linear(x, w, b),
        }
        samples, busy = duel(calls, rounds, target)
        ours = statistics.median(samples["addmm(b, W, xT.contiguous())"])
        print(f"  density {density:g} (cores busy in other processes {busy:.2f})")
        for name, times in samples.items():
            print(f"    {name:34s} {spread(times, '{:8.4f}', 1e3)} ms   ratio {ours / statistics.median(times):5.2f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, help="interleaved rounds per case (default 10; --quick: 4)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, 1 ms samples")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds, target = args.repeats or (4 if args.quick else 10), 1e-3 if args.quick else 2e-3
    print(environment())
    summary = {}
    for layer in LENET:
        for batch in (1, 64):
            summary[f"{layer.name}, batch {batch}"] = bench_layer(layer, batch, DENSITIES, rounds, target)
    summary[f"{CONV.name}, batch 32"] = bench_layer(CONV, 32, DENSITIES, rounds, target)
    for batch in (1, 64):
        summary[f"LeNet-300-100 model, batch {batch}"] = bench_model(batch, rounds, target)
    bench_kernels(rounds, target)
    header("crossover: highest density at which the sparse CSR kernel's median beats the dense one")
    for name, cross in summary.items():
        print(f"  {name:34s} {'never (down to 0.01 / 0.02 for the model)' if cross is None else f'≤ {cross:g}'}")
    LOAD.report()


if __name__ == "__main__":
    main()
