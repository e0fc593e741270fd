"""What every benchmark shares: interleaved repeats, min / median / max spreads, table lines, and how many cores
other processes kept busy meanwhile (from /proc/stat). Importing it makes `prunelens` importable from the
source tree when it is not installed (`python benchmarks/<name>.py` from the repository root)."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch

try:
    import prunelens  # noqa: F401
except ModuleNotFoundError:  # run without PYTHONPATH=src
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

T = TypeVar("T")
BUSY_LIMIT = 0.3
"""Cores kept busy by other processes above which a measurement is flagged as unreliable."""


def timed(fn: Callable[[], object], number: int = 1) -> float:
    """Seconds per call of `fn`, averaged over `number` calls in a row."""
    began = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - began) / number


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


def environment() -> str:
    """torch version, its thread counts, the cores, the load average and the OpenMP variables, on one line."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    omp = " ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"))
    return (f"torch {torch.__version__} | {torch.get_num_threads()} intra-op threads ({torch.get_num_interop_threads()}"
            f" inter-op) | os.cpu_count() {os.cpu_count()} | load average {load} | {omp}")


def busy_cpu_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (first line of /proc/stat, steal included)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class CpuMeter:
    """Cores used by *other* processes (not this one or its children) while blocks ran: busy CPU ÷ wall time."""

    others: list[float] = field(default_factory=list)

    @contextmanager
    def measure(self) -> Iterator[None]:
        try:
            busy0, own0, wall0 = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
        except OSError:  # no /proc: report nothing
            yield
            return
        yield
        wall, own = time.perf_counter() - wall0, own_cpu_seconds() - own0
        self.others.append(max(0.0, (busy_cpu_seconds() - busy0 - own) / max(wall, 1e-9)))

    def median(self) -> float:
        return statistics.median(self.others) if self.others else 0.0

    def report(self, indent: int = 2) -> None:
        """Print the cores other processes kept busy, with a warning above `BUSY_LIMIT`."""
        pad = " " * indent
        if not self.others:
            print(f"{pad}cores busy in other processes: unknown (no /proc/stat)")
            return
        print(f"{pad}cores busy in OTHER processes meanwhile (min / median / max): {spread(self.others, '{:.2f}')}"
              f" of {os.cpu_count()}")
        if self.median() > BUSY_LIMIT:
            print(f"{pad}WARNING: other processes kept {self.median():.2f} cores busy (median): torch's spinning OpenMP"
                  f" threads then stall\n{pad}for scheduler slices (bench_threads.py), so these numbers are unreliable")


def interleaved(runs: Mapping[str, Callable[[], T]], rounds: int, meter: CpuMeter) -> dict[str, list[T]]:
    """Each run's results over `rounds` rounds of one call each, the order rotated by one every round (so load
    drift and position hit every run alike); `meter` measures every call."""
    names = list(runs)
    out: dict[str, list[T]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            with meter.measure():
                out[n].append(runs[n]())
    return out
