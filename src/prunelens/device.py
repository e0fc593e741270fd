"""Where computations run: the device named in the config, and the CPU threads torch uses."""

from __future__ import annotations

import os

import torch

from prunelens.errors import PrunelensError

WORKERS_ENV = "PRUNELENS_WORKERS"
"""Set by executors that run several trainings at once on one machine (the default thread count divides by it)."""


def check_device(device: str) -> None:
    """Raise a one-line error unless `device` is a torch device this machine has (index included)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise PrunelensError(f"device: {device!r} is not a torch device") from None
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise PrunelensError(f"device: {device!r} is not cpu, cuda[:N] or mps")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index is not None and parsed.index >= count):
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise PrunelensError(f"device: {device!r} is not available on this machine ({have})")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise PrunelensError(f"device: {device!r} is not available on this machine")


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads() -> int:
    """Cores ÷ concurrent workers (`PRUNELENS_WORKERS`, default 1), at least 1: more threads than cores make
    OpenMP's spinning threads fight (measured: two 2-thread trainings on 2 cores run 9× slower each)."""
    try:
        workers = max(1, int(os.environ.get(WORKERS_ENV, "1")))
    except ValueError:
        workers = 1
    return max(1, cores() // workers)


def configure_cpu(threads: int | None) -> int:
    """Set torch's intra-op threads to `threads` or `default_threads()`; returns the count. Denormals are not
    flushed: benchmarks/bench_threads.py measured no gain (0.97–1.03×) and no subnormal values in training."""
    count = threads or default_threads()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
