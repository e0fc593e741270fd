"""Where the runs of a sweep train: `local` (in this process, one after another: the default), `process` (a pool
of `--jobs` spawned processes on this machine) or `ray` (one Ray task per run, on a local or an existing cluster).

Every executor gets runs checked on the driver (`Prepared`) and returns each run's round records. A worker gets
the config as JSON (`model_dump(mode="json")`), rebuilds it with `config.from_dict`, prepares and executes it:
no model crosses processes. `run_all` first trains the dependencies of the points (their shared dense runs and
the trained references their lenses need; each distinct one once, as a first wave), then fans out the points,
so no two workers ever train the same dependency. Every run is idempotent: a task that dies (a killed worker,
a lost node) is reported, not retried; running the same sweep again trains only what is missing.

Threads: a `process` worker uses cores ÷ jobs (`PRUNELENS_WORKERS`) unless the config sets `threads`; a Ray
task reserves `threads` CPUs (default 1), one GPU when the device is cuda, and sets torch to that many threads.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from prunelens import config as config_mod
from prunelens import lockstep
from prunelens.config import ExperimentConfig
from prunelens.data import DataBundle, build_dataset
from prunelens.device import WORKERS_ENV, configure_cpu, cores
from prunelens.errors import PrunelensError
from prunelens.experiment import Prepared, dependencies, execute, prepare
from prunelens.interrupts import check_interrupt, install_signal_handlers
from prunelens.progress import Reporter

EXECUTORS = ("local", "process", "ray")
Records = list[dict[str, Any]]
Outcome = Records | BaseException
"""A run's stored round records, or the exception its task failed with."""

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_bundles: dict[str, DataBundle] = {}


def run_task(data: dict[str, Any], threads: int | None = None) -> Records:
    """One run in a worker process: the config rebuilt from JSON, checked and executed quietly (its data built
    once per worker and dataset section); `threads` overrides the torch threads `prepare` chose."""
    cfg = config_mod.from_dict(data, source="sweep task")
    key = cfg.dataset.model_dump_json()
    if key not in _bundles:
        _bundles[key] = build_dataset(cfg.dataset)
    with Reporter(quiet=True) as reporter:
        prepared = prepare(cfg, _bundles[key], reporter)
        if threads:
            configure_cpu(threads)
        return execute(prepared, reporter).records


def payload(cfg: ExperimentConfig) -> dict[str, Any]:
    """What a worker gets of a run: its config as plain JSON values."""
    return cfg.model_dump(mode="json")


class Executor:
    """Runs prepared runs. `map` returns, in order, each run's records or the exception its task failed with
    (the local executor raises instead, as a plain run does). Use as a context manager."""

    name = "local"

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release workers (and a cluster this executor started)."""

    def map(self, runs: Sequence[Prepared], labels: Sequence[str], reporter: Reporter) -> list[Outcome]:
        out: list[Outcome] = []
        for i, (p, label) in enumerate(zip(runs, labels), 1):
            reporter.log(f"[{i}/{len(runs)}] {label}")
            out.append(execute(p, reporter).records)
        return out


def _init_worker(jobs: int) -> None:
    os.environ[WORKERS_ENV] = str(jobs)  # default_threads(): cores ÷ jobs
    install_signal_handlers()  # Ctrl-C stops a worker at its next safe point


class ProcessExecutor(Executor):
    """A pool of `jobs` spawned processes (default: one per core) on this machine."""

    name = "process"

    def __init__(self, jobs: int | None = None) -> None:
        self.jobs = jobs or cores()
        self._pool: ProcessPoolExecutor | None = None

    def pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=context, initializer=_init_worker, initargs=(self.jobs,))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def map(self, runs: Sequence[Prepared], labels: Sequence[str], reporter: Reporter) -> list[Outcome]:
        futures: dict[Future, int] = {self.pool().submit(run_task, payload(p.cfg)): i for i, p in enumerate(runs)}
        out: list[Outcome] = [RuntimeError("not run")] * len(runs)
        pending, finished = set(futures), 0
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            check_interrupt()
            for future in done:
                i, finished = futures[future], finished + 1
                out[i] = future.exception() or future.result()
                _log_outcome(reporter, finished, len(runs), labels[i], out[i])
        if any(isinstance(o, BrokenProcessPool) for o in out):
            self.close()  # a broken pool takes no more work
        return out


def start_local_ray(num_cpus: int) -> None:
    """A one-machine Ray cluster whose servers listen on 127.0.0.1 only, no dashboard, no usage reports. (Ray
    otherwise replaces 127.0.0.1 by the machine's network address unless it thinks clusters are unsupported.)"""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    saved = os.environ.get(LOOPBACK_ENV)
    os.environ[LOOPBACK_ENV] = "0"  # read by the servers Ray starts
    try:
        from ray._private import ray_constants  # read by this process (imported already)

        flag = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):
        ray_constants = None
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    finally:
        if ray_constants is not None:
            ray_constants.ENABLE_RAY_CLUSTER = flag
        if saved is None:
            del os.environ[LOOPBACK_ENV]
        else:
            os.environ[LOOPBACK_ENV] = saved


class RayExecutor(Executor):
    """One Ray task per run. Connects to `address` (`auto`, `ray://HOST:PORT`) unless Ray is initialised already;
    without an address it starts a local cluster on 127.0.0.1 with `num_cpus` CPUs (default: all cores)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise PrunelensError("--executor ray needs Ray: pip install 'prunelens[ray]'") from None
        self.ray = ray
        self.owned = not ray.is_initialized()
        self.local = self.owned and not address
        if self.owned and address:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                lines = str(err).strip().splitlines()
                raise PrunelensError(f"--address {address}: cannot connect to a Ray cluster ({lines[0] if lines else type(err).__name__})") from None
        elif self.owned:
            start_local_ray(num_cpus or cores())
        self.task = ray.remote(run_task)
        self._pending: list[Any] = []

    def options(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """The Ray options of the task that runs `cfg`: `threads` CPUs (default 1), a GPU for cuda, no retries
        (a failed run is reported; re-running the sweep resumes it). Override to add resources or a runtime_env."""
        return {"num_cpus": cfg.threads or 1, "num_gpus": 1 if cfg.device.startswith("cuda") else 0, "max_retries": 0}

    def _check_fits(self, wanted: dict[str, Any], cfg: ExperimentConfig) -> None:
        """A task asking for more than the cluster this executor started would wait forever: refuse it."""
        have = self.ray.cluster_resources()
        for option, resource in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
            if wanted.get(option, 0) > have.get(resource, 0):
                raise PrunelensError(
                    f"{cfg.run_dir.name}: needs {wanted[option]} {resource}(s); the local Ray cluster has {have.get(resource, 0):g}"
                    " (set threads lower, or connect to a larger cluster with --address)"
                )

    def close(self) -> None:
        for ref in self._pending:  # interrupted: stop what still runs on the cluster
            self.ray.cancel(ref, force=True)
        self._pending = []
        if self.owned:
            self.ray.shutdown()
            self.owned = False

    def map(self, runs: Sequence[Prepared], labels: Sequence[str], reporter: Reporter) -> list[Outcome]:
        options = [self.options(p.cfg) for p in runs]
        if self.local:  # before submitting anything
            for p, wanted in zip(runs, options):
                self._check_fits(wanted, p.cfg)
        index = {self.task.options(**o).remote(payload(p.cfg), o.get("num_cpus")): i for i, (p, o) in enumerate(zip(runs, options))}
        out: list[Outcome] = [RuntimeError("not run")] * len(runs)
        self._pending, finished = list(index), 0
        while self._pending:
            done, self._pending = self.ray.wait(self._pending, num_returns=1, timeout=1.0)
            check_interrupt()
            for ref in done:
                i, finished = index[ref], finished + 1
                try:
                    out[i] = self.ray.get(ref)
                except Exception as err:  # the task's own error (RayTaskError) or a dead worker
                    out[i] = err
                _log_outcome(reporter, finished, len(runs), labels[i], out[i])
        return out


def _log_outcome(reporter: Reporter, done: int, total: int, label: str, outcome: Outcome) -> None:
    if isinstance(outcome, BaseException):
        reporter.notice(f"[{done}/{total}] {label}: failed ({describe(outcome)})")
    else:
        reporter.log(f"[{done}/{total}] {label}: done")


def describe(err: BaseException) -> str:
    """One line on why a task failed: the run's own error, or that its worker died."""
    cause = getattr(err, "cause", None)  # Ray wraps the task's exception
    if isinstance(cause, BaseException) and not isinstance(err, BrokenProcessPool):
        err = cause
    if isinstance(err, PrunelensError):
        return str(err)
    if isinstance(err, BrokenProcessPool) or type(err).__name__ in ("WorkerCrashedError", "NodeDiedError", "TaskCancelledError"):
        return f"its worker process died ({type(err).__name__})"
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def get(executor: str | Executor | None = None, jobs: int | None = None, address: str | None = None) -> Executor:
    """The executor named `executor` (default: `process` with `jobs` > 1, else `local`); an instance as is."""
    if isinstance(executor, Executor):
        return executor
    name = executor or ("process" if jobs and jobs > 1 else "ray" if address else "local")
    if name not in EXECUTORS:
        raise PrunelensError(f"--executor: {name!r} is not one of {', '.join(EXECUTORS)}")
    if jobs is not None and jobs < 1:
        raise PrunelensError(f"--jobs: {jobs} is not a positive number")
    if address and name != "ray":
        raise PrunelensError("--address: only with --executor ray")
    if name == "local":
        if jobs and jobs > 1:
            raise PrunelensError("--jobs: the local executor runs one run at a time (use --executor process or ray)")
        return Executor()
    return ProcessExecutor(jobs) if name == "process" else RayExecutor(address, num_cpus=jobs)


def run_all(
    executor: Executor, runs: Sequence[Prepared], labels: Sequence[str], reporter: Reporter, name: str, batch: bool = True
) -> list[Records]:
    """Train the distinct dependencies of `runs` (a first wave), then `runs`; their records, in order. Raises a
    one-line error naming every run that failed (the others are finished and kept). With `batch` and the local
    executor, runs that can train together first train their rounds in lockstep as batched tickets (lockstep.py)."""
    batched = batch and executor.name == "local"
    shared: dict[Path, Prepared] = {}
    for p in runs:
        for dep in dependencies(p):
            shared.setdefault(dep.cfg.run_dir, dep)
    if shared:
        deps = list(shared.values())
        reporter.log(f"{name}: {len(deps)} dependency run(s) first (dense rounds and references the points share)")
        if batched:
            lockstep.train_groups(deps, reporter)
        _raise_failures(name, deps, executor.map(deps, [f"dependency {d.cfg.run_dir.name}" for d in deps], reporter), "dependency run")
    if batched:
        lockstep.train_groups(runs, reporter)
    return _raise_failures(name, runs, executor.map(runs, labels, reporter))


def _raise_failures(name: str, runs: Sequence[Prepared], outcomes: list[Outcome], kind: str = "run") -> list[Records]:
    failed = [(p, o) for p, o in zip(runs, outcomes) if isinstance(o, BaseException)]
    if failed:
        for _, outcome in failed:
            if isinstance(outcome, KeyboardInterrupt):
                raise outcome
        what = "; ".join(f"{p.cfg.run_dir.name}: {describe(o)}" for p, o in failed)
        raise PrunelensError(
            f"sweep {name}: {len(failed)} of {len(runs)} {kind}(s) failed — {what}; the finished runs are kept: "
            "run the same command again to train only what is missing"
        )
    return list(outcomes)  # type: ignore[arg-type]
