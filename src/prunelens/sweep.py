"""Sweeps: one YAML file describing several runs.

A config may carry a `sweep` section next to the usual fields (which form the base experiment):

    sweep:
      variants:                  # optional: section updates (key by key), one group of runs each
        - {dataset: {name: mnist5k}, model: {name: lenet_300_100, options: {}}}
        - {model: {name: conv2}}
      grid:                      # optional: dotted field → values; every combination is run
        pruning.method: [magnitude, l1, l2]
      compare: true              # ticket overlap across the grid runs of each variant
      batch: true                # default: runs of one architecture and schedule train as batched tickets

Every point is an ordinary run (its own hash-named directory, resumable); points that differ only in pruning
settings share one dense run. Every point is checked before the first one trains. The sweep writes a combined
per-round summary under `<output_dir>/sweeps/<name>/`, and with a `mis` lens the MIS statistics across its
runs (`write_mis_statistics`).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from prunelens import config as config_mod
from prunelens import executors, tracking
from prunelens.analysis.mis_stats import save_mis_statistics
from prunelens.analysis.tickets import compare_runs
from prunelens.analyze import lens_key
from prunelens.config import ExperimentConfig
from prunelens.data import DataBundle, build_dataset
from prunelens.errors import PrunelensError
from prunelens.experiment import Prepared, prepare, summary
from prunelens.lenses import LENSES
from prunelens.progress import Reporter
from prunelens.runs import Run
from prunelens.store import atomic_write


@dataclass
class Point:
    """One run of a sweep: its config, its variant index and the grid values that define it."""

    cfg: ExperimentConfig
    variant: int
    labels: dict[str, Any]


@dataclass
class Sweep:
    name: str
    points: list[Point]
    compare: bool
    batch: bool = True

    @property
    def out_dir(self) -> Path:
        return self.points[0].cfg.output_dir / "sweeps" / self.name


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise PrunelensError(f"sweep.grid: {dotted!r} does not name a config field")
    node[leaf] = value


def _overlay(base: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    """`base` with each section updated key by key from `variant` (a key's value is replaced whole)."""
    out = dict(base)
    for key, value in variant.items():
        out[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def expand(data: dict[str, Any], source: str = "config") -> Sweep:
    """The runs of a config with a `sweep` section (validating every point)."""
    spec = data.pop("sweep")
    if not isinstance(spec, dict) or set(spec) - {"variants", "grid", "compare", "batch"}:
        raise PrunelensError(f"{source}: sweep: expected a mapping with variants, grid, compare and/or batch")
    if not isinstance(spec.get("batch", True), bool):
        raise PrunelensError(f"{source}: sweep.batch: expected true or false, got {spec['batch']!r}")
    variants = spec.get("variants") or [{}]
    grid = spec.get("grid") or {}
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise PrunelensError(f"{source}: sweep.variants: expected a list of mappings")
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise PrunelensError(f"{source}: sweep.grid: expected a mapping of field → non-empty list of values")
    points = []
    for v, variant in enumerate(variants):
        for values in itertools.product(*grid.values()):
            point = copy.deepcopy(_overlay(data, variant))
            labels = dict(zip(grid, values))
            for dotted, value in labels.items():
                _set(point, dotted, value)
            points.append(Point(config_mod.from_dict(point, source=f"{source} (variant {v}, {labels})"), v, labels))
    return Sweep(points[0].cfg.name, points, bool(spec.get("compare", False)), spec.get("batch", True))


def load(path: str | Path) -> Sweep | ExperimentConfig:
    """A config file: a single experiment, or a sweep when it has a `sweep` section."""
    data = config_mod.read_yaml(path)
    if isinstance(data, dict) and "sweep" in data:
        return expand(data, str(path))
    return config_mod.from_dict(data, source=str(path))


def prepare_all(sweep: Sweep, reporter: Reporter) -> list[Prepared]:
    """Every point checked (with its data, built once per distinct dataset section) before any point trains."""
    bundles: dict[str, DataBundle] = {}
    prepared = []
    for point in sweep.points:
        tracking.require(point.cfg)
        key = point.cfg.dataset.model_dump_json()
        if key not in bundles:
            bundles[key] = build_dataset(point.cfg.dataset)
        prepared.append(prepare(point.cfg, bundles[key], reporter))
    return prepared


def run_sweep(
    sweep: Sweep,
    quiet: bool = False,
    executor: str | executors.Executor | None = None,
    jobs: int | None = None,
    address: str | None = None,
    batch: bool | None = None,
) -> pd.DataFrame:
    """Run every point on `executor` (`executors.py`: local, process, ray; resuming finished ones; the dense
    rounds and references points share trained first, once; with the local executor, points that can train
    together as batched tickets unless `batch` or `sweep.batch` is false) and write the combined per-round summary table."""
    frames = []
    with Reporter(quiet) as reporter:
        prepared = prepare_all(sweep, reporter)
        labels = [f"{sweep.name} variant {point.variant} {point.labels}" for point in sweep.points]
        with executors.get(executor, jobs, address) as ex:
            results = executors.run_all(ex, prepared, labels, reporter, sweep.name, sweep.batch if batch is None else batch)
        for point, records in zip(sweep.points, results):
            tracking.log_run(point.cfg, point.cfg.run_dir, reporter)  # on the driver, after the point finished
            table = summary(records).drop(columns=["train_seconds"])
            frames.append(table.assign(variant=point.variant, run=point.cfg.run_dir.name, **point.labels))
    table = pd.concat(frames, ignore_index=True)
    atomic_write(sweep.out_dir / "summary.csv", table.to_csv(index=False).encode())
    if sweep.compare:
        compare_variants(sweep)
    write_mis_statistics(sweep)
    return table


def compare_variants(sweep: Sweep) -> None:
    """Ticket overlap across the grid runs of each variant, as `overlap_variant<k>.csv`; when the grid has
    seeds, per seed (`overlap_variant<k>_seed<s>.csv`): tickets of different seeds share no initialisation."""
    groups: dict[tuple[int, Any], list[Point]] = {}
    for p in sweep.points:
        groups.setdefault((p.variant, p.labels.get("seed")), []).append(p)
    for (v, seed), points in sorted(groups.items(), key=lambda item: (item[0][0], str(item[0][1]))):
        if len(points) > 1:
            labels = [" ".join(f"{k}={val}" for k, val in p.labels.items() if k != "seed") or p.cfg.run_dir.name for p in points]
            suffix = f"_variant{v}" + (f"_seed{seed}" if seed is not None else "")
            for name, frame in compare_runs([Run(p.cfg.run_dir) for p in points], labels=labels).items():
                atomic_write(sweep.out_dir / f"{name}{suffix}.csv", frame.to_csv(index=False).encode())


def write_mis_statistics(sweep: Sweep) -> None:
    """With a `mis` lens: MIS of every model against the pruning settings (`analysis/mis_stats.py`) in the
    sweep's directory; names get `_<lens key>` when the points hold several mis configurations."""
    runs: dict[str, dict[Path, Run]] = {}
    for point in sweep.points:
        for spec in (s for s in point.cfg.lenses if s.name == "mis"):
            runs.setdefault(lens_key(LENSES.get("mis")(spec.options)), {})[point.cfg.run_dir] = Run(point.cfg.run_dir)
    for key, found in runs.items():
        save_mis_statistics(list(found.values()), key, sweep.out_dir, f"_{key}" if len(runs) > 1 else "")
