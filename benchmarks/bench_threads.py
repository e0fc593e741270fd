"""CPU thread oversubscription and denormals: `python benchmarks/bench_threads.py [--repeats N] [--epochs E] [--quick]`.

Workload: the dense round of the default experiment (`configs/quickstart.yaml`: cifar_resnet depth 8 width 8 on
the synthetic `shapes` data, SGD momentum 0.9, cosine LR) with `pruning.rounds: 0` and no lenses, trained once in
a child process of this script with a fresh temporary output_dir: `prepare(cfg)`, then the thread count and the
denormal flag set explicitly (prunelens itself never flushes denormals: this benchmark found no gain), then `rounds.train_round` over an
all-ones `MaskSet`. Only the training is timed (`train_seconds`); when two runs share the machine, both children
prepare first and are released together.

Scenarios, one run of each per round, the order rotated every round (`--repeats` rounds):
  (a) one run alone, 2 threads, denormals not flushed     (b) the same, `torch.set_flush_denormal(True)`
  (c) two runs at once, 2 threads each, not flushed        (d) the same, flushed
  (e) two runs at once, 1 thread each, not flushed         (f) the same, flushed
Read: b ÷ a, d ÷ c and f ÷ e (< 1: flushing denormals helps, alone and under contention); c ÷ e, the cost of
oversubscription (4 spinning OpenMP threads on 2 cores vs 2); c ÷ a and e ÷ a against fair sharing's 2. Also
printed: the thread count `prunelens.device.default_threads()` gives each of two runs with `PRUNELENS_WORKERS=2`,
and how many values are subnormal after a run of (a) (weights, optimizer state, and the activations and gradients
of one training step), which shows whether denormals occur at all. The cores reported busy in other processes
exclude this script's children.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from _harness import CpuMeter, environment, header, interleaved, row, spread
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from prunelens.commands import quickstart_config
from prunelens.config import ExperimentConfig
from prunelens.device import WORKERS_ENV, cores, default_threads
from prunelens.experiment import prepare
from prunelens.masks import MaskSet
from prunelens.progress import Reporter
from prunelens.rounds import Context, train_round

TINY = torch.finfo(torch.float32).tiny
Batch = tuple[torch.Tensor, torch.Tensor]
Result = dict[str, Any]
"""What a child prints: `seconds` of training, `epochs`, `steps`, and `subnormal`: kind → [subnormal, all] entries."""


@dataclass(frozen=True)
class Scenario:
    label: str
    copies: int
    threads: int
    flush: bool


SCENARIOS = {
    "a": Scenario("alone, 2 threads, not flushed", 1, 2, False),
    "b": Scenario("alone, 2 threads, flushed", 1, 2, True),
    "c": Scenario("2 at once × 2 threads, not flushed", 2, 2, False),
    "d": Scenario("2 at once × 2 threads, flushed", 2, 2, True),
    "e": Scenario("2 at once × 1 thread, not flushed", 2, 1, False),
    "f": Scenario("2 at once × 1 thread, flushed", 2, 1, True),
}


def dense_experiment(epochs: int | None, images: int | None, output_dir: str) -> ExperimentConfig:
    """The default experiment without pruning rounds or lenses (and `epochs` epochs, `images` training images and a
    quarter of that for val and test, if given)."""
    cfg = quickstart_config()
    training = {"epochs": epochs} if epochs else {}
    small = {"n_train": images, "n_val": max(images // 4, 50), "n_test": max(images // 4, 50)} if images else {}
    dataset = {"options": {**cfg.dataset.options, **small}}
    return cfg.with_overrides(pruning={"rounds": 0}, lenses=[], output_dir=output_dir, training=training, dataset=dataset)


def subnormals(tensors: Sequence[torch.Tensor]) -> list[int]:
    """[subnormal entries, all entries] over float `tensors`."""
    found = sum(int(((t != 0) & (t.abs() < TINY)).sum()) for t in tensors)
    return [found, sum(t.numel() for t in tensors)]


def count_subnormals(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> dict[str, list[int]]:
    """Subnormal entries of the weights and the optimizer state, and of the activations (leaf modules' outputs),
    their gradients and the weight gradients of one forward + backward on `batch`."""
    found: dict[str, list[torch.Tensor]] = {"activations": [], "activation gradients": []}

    def keep(_module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        found["activations"].append(out.detach())
        if out.requires_grad:
            out.register_hook(found["activation gradients"].append)

    leaves = [m for m in model.modules() if not any(m.children())]
    handles = [m.register_forward_hook(keep) for m in leaves]
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(batch[0]), batch[1]).backward()
    for handle in handles:
        handle.remove()
    params = list(model.parameters())
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.is_floating_point()]
    tensors = {"weights": params, "optimizer state": state, **found, "weight gradients": [p.grad for p in params]}
    return {kind: subnormals(ts) for kind, ts in tensors.items()}


def child(threads: int, flush: bool, epochs: int | None, images: int | None) -> None:
    """Child-process mode: prepare, say `ready`, wait for `go`, train the dense round once; print a `Result`."""
    with tempfile.TemporaryDirectory() as out:
        cfg = dense_experiment(epochs, images, out)
        prepared = prepare(cfg)
        torch.set_num_threads(threads)
        torch.set_flush_denormal(flush)
        ctx = Context(cfg, prepared.bundle, prepared.build(), Reporter(quiet=True))
        masks = MaskSet.ones(ctx.model, ctx.names)
        caught: list[torch.optim.Optimizer] = []  # the optimizer `train` builds, caught at its steps

        def catch(optimizer: torch.optim.Optimizer, _args: object, _kwargs: object) -> None:
            caught[:] = [optimizer]

        register_optimizer_step_post_hook(catch)
        print("ready", flush=True)
        if sys.stdin.readline() != "go\n":
            return
        fit = train_round(ctx, 0, masks, 0)
        batch = next(ctx.loader(cfg.training).epoch(0))
        counts = count_subnormals(ctx.model, caught[0], batch)
    result = {"seconds": fit["train_seconds"], "epochs": cfg.training.epochs, "steps": ctx.steps(0), "subnormal": counts}
    print(json.dumps(result), flush=True)


def launch(s: Scenario, epochs: int | None, images: int | None) -> list[Result]:
    """Start `s.copies` children, release them together once all have prepared, and return their results."""
    cmd = [sys.executable, __file__, "--child", str(s.threads), str(int(s.flush))]
    cmd += ["--epochs", str(epochs)] if epochs else []
    cmd += ["--images", str(images)] if images else []
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(s.copies)]
    for p in procs:
        if p.stdout.readline() != "ready\n":
            raise RuntimeError(f"a child of {s.label!r} failed while preparing (its error is above)")
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a child of {s.label!r} failed while training (its error is above)")
    return [json.loads(r) for r in results]


def mean_seconds(runs: list[Result]) -> float:
    return statistics.fmean(r["seconds"] for r in runs)


def ratios(results: dict[str, list[list[Result]]], x: str, y: str) -> list[float]:
    """Per round: mean training time of the runs of `x` ÷ that of `y`."""
    return [mean_seconds(a) / mean_seconds(b) for a, b in zip(results[x], results[y])]


def report(results: dict[str, list[list[Result]]], meter: CpuMeter) -> None:
    first = results["a"][0][0]
    header(f"Dense round of the default experiment ({first['epochs']} epoch(s), {first['steps']} steps): training"
           f" seconds per run, {len(results['a'])} interleaved round(s)")
    row("", "min / median / max")
    for key, s in SCENARIOS.items():
        times = [r["seconds"] for runs in results[key] for r in runs]
        row(f"({key}) {s.label}", spread(times, "{:.1f}"), f"{len(times)} run(s)")
    meter.report()

    header("Ratios of training time (per round, mean of the runs; < 1: faster)")
    row("", "min / median / max")
    lines = (
        ("flushed ÷ not, alone (b ÷ a)", "b", "a", ""),
        ("flushed ÷ not, 2 at once, 2 thr (d ÷ c)", "d", "c", ""),
        ("flushed ÷ not, 2 at once, 1 thr (f ÷ e)", "f", "e", ""),
        ("2 threads ÷ 1 thread, 2 at once (c ÷ e)", "c", "e", "the cost of oversubscription"),
        ("2 at once ÷ alone, 2 threads (c ÷ a)", "c", "a", "fair sharing: 2"),
        ("2 at once, 1 thr ÷ alone, 2 thr (e ÷ a)", "e", "a", "fair sharing: 2"),
    )
    for label, x, y, note in lines:
        row(label, spread(ratios(results, x, y), "{:.2f}"), note)

    with mock.patch.dict(os.environ, {WORKERS_ENV: "2"}):
        threads = default_threads()
    same = [f"({k})" for k, s in SCENARIOS.items() if (s.copies, s.threads, s.flush) == (2, threads, False)]
    print(f"\n  prunelens.device.default_threads() with {WORKERS_ENV}=2 on {cores()} cores: {threads} thread(s) per run;"
          f" two such runs are scenario {same[0] if same else '(none of the above)'}")

    header(f"Subnormal values (x ≠ 0 and |x| < {TINY:.3g}) after a run of (a); activations and gradients: one step")
    for kind, (n, total) in first["subnormal"].items():
        row(kind, f"{n:,} of {total:,}", f"{n / total:.2%}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the six scenarios")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's)")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 epoch (a minute or two)")
    parser.add_argument("--images", type=int, default=None, help="training images, val/test a quarter (default: the config's 6,000/1,000/2,000)")
    parser.add_argument("--child", nargs=2, type=int, metavar=("THREADS", "FLUSH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    epochs = args.epochs or (1 if args.quick else None)
    if args.child:
        child(args.child[0], bool(args.child[1]), epochs, args.images)
        return
    began = time.perf_counter()
    print(environment())
    meter = CpuMeter()
    runs = {key: partial(launch, s, epochs, args.images) for key, s in SCENARIOS.items()}
    report(interleaved(runs, 1 if args.quick else args.repeats, meter), meter)
    print(f"\ntotal wall time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
