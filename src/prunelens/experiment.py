"""config → data, model → IMP schedule → run store. The Python entry point: `prunelens.run(cfg)`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from prunelens import config as config_mod
from prunelens.analyze import analyze
from prunelens.config import ExperimentConfig
from prunelens.data import DataBundle, build_dataset
from prunelens.errors import PrunelensError
from prunelens.lenses import LENSES
from prunelens.models import build_model
from prunelens.progress import Reporter
from prunelens.pruning import check as check_pruning
from prunelens.schedules import Context, run_rounds
from prunelens.store import RunStore
from prunelens.train import seed_everything

MODEL_METRICS = (
    "rate_nominal", "density", "density_actual", "density_all", "test_top1", "test_top5", "test_loss", "val_top1", "val_top5", "val_loss", "train_loss",
    "remaining_params", "nonzero_params", "prunable_params", "total_params", "flops_dense", "flops_effective",
    "train_seconds", "eval_seconds", "prune_seconds", "collapsed",
)  # fmt: skip


@dataclass
class RunResult:
    run_dir: Path
    records: list[dict[str, Any]]
    lenses: dict[str, pd.DataFrame] = field(default_factory=dict)  # lens name → its long table

    @property
    def table(self) -> pd.DataFrame:
        """Long format: one row per (round, metric, layer)."""
        return tidy(self.records)

    def summary(self) -> pd.DataFrame:
        """One row per round: density, accuracy, FLOPs — the accuracy-vs-density table."""
        cols = ["round", "rate_nominal", "density", "density_all", "test_top1", "test_top5", "val_top1", "flops_effective", "train_seconds"]
        return pd.DataFrame([{c: rec[c] for c in cols} for rec in self.records])


def tidy(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for rec in records:
        rows += [{"round": rec["round"], "metric": m, "layer": "", "value": float(rec[m])} for m in MODEL_METRICS]
        rows += [{"round": rec["round"], "metric": "density", "layer": n, "value": d} for n, d in rec["layers"].items()]
    return pd.DataFrame(rows, columns=["round", "metric", "layer", "value"])


def open_store(cfg: ExperimentConfig, write_config: bool = True) -> RunStore:
    """The run's store, locked (use it as a context manager to release the lock) and verified; refuses a
    directory holding another config."""
    store = RunStore(cfg.run_dir)
    if store.has("canonical.json") and store.load_json("canonical.json") != cfg.canonical():
        raise PrunelensError(f"{cfg.run_dir}: holds a run of a different config")
    store.lock()
    try:
        store.verify()
        if not store.has("canonical.json"):
            store.save_json("canonical.json", cfg.canonical())
        if write_config:
            store.write("config.yaml", config_mod.dump(cfg).encode())
    except BaseException:
        store.unlock()
        raise
    return store


def check_device(device: str) -> None:
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise PrunelensError(f"device: {device!r} is not a torch device") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise PrunelensError(f"device: {device!r} is not available on this machine")


def check_schedule(cfg: ExperimentConfig, model: Any, steps: int) -> None:
    p = cfg.pruning
    check_pruning(p)
    if p.rewind == "step" and not 0 < p.rewind_step < steps:
        raise PrunelensError(f"pruning.rewind_step: {p.rewind_step} is not in (0, {steps}) training steps")
    if p.rewind == "pretrained" and cfg.model.weights is None and not getattr(model, "is_pretrained", False):
        raise PrunelensError(f"pruning.rewind: 'pretrained' needs model.weights (model {cfg.model.name!r} has no built-in weights)")


def prepare(cfg: ExperimentConfig) -> tuple[DataBundle, Callable[[], nn.Module]]:
    """Load the data and return it with a model builder (architecture only; weights as the factory sets them)."""
    check_device(cfg.device)
    for spec in cfg.lenses:
        LENSES.get(spec.name)
    bundle = build_dataset(cfg.dataset, cfg.seed)

    def build() -> nn.Module:
        return build_model(cfg.model, bundle.num_classes, bundle.in_channels, bundle.image_size).to(cfg.device)

    return bundle, build


def run(cfg: ExperimentConfig, quiet: bool = False) -> RunResult:
    """Run, resume or extend the experiment `cfg`, then its lenses; every input is checked before the run
    directory is touched."""
    bundle, build = prepare(cfg)
    seed_everything(cfg.seed)
    model = build()
    with Reporter(quiet) as reporter:
        ctx = Context(cfg, bundle, model, reporter)
        check_schedule(cfg, model, min(ctx.steps(0), ctx.steps(1)))
        with open_store(cfg) as store:
            records = run_rounds(ctx, store, on_round=lambda done: store.save_table("metrics", tidy(done)))
            lenses = analyze(cfg, store, bundle, build, reporter, other_seed=lambda: other_seed_run(cfg, quiet)) if cfg.lenses else {}
    return RunResult(cfg.run_dir, records, lenses)


def other_seed_run(cfg: ExperimentConfig, quiet: bool) -> Path:
    """The dense round of `cfg` trained from seed + 1 (a run of its own, cached like any other)."""
    other = cfg.with_overrides(name=f"{cfg.name}-ceiling", seed=cfg.seed + 1, pruning={"rounds": 0}, lenses=[])
    return run(other, quiet=quiet).run_dir


def load_run_config(run_dir: Path) -> ExperimentConfig:
    """The config a run was made with, pointed at where the run directory is now."""
    cfg = config_mod.load(Path(run_dir) / "config.yaml")
    return cfg.with_overrides(output_dir=str(Path(run_dir).parent))


def analyze_run(run_dir: Path, lenses: list[str] | None = None, quiet: bool = False, force: bool = False) -> dict[str, pd.DataFrame]:
    """Run lenses (default: the config's) on a finished run without retraining."""
    if not (Path(run_dir) / "manifest.json").is_file():
        raise PrunelensError(f"{run_dir}: not a prunelens run directory")
    cfg = load_run_config(run_dir)
    if lenses:
        cfg = cfg.with_overrides(lenses=lenses)
    if not cfg.lenses:
        raise PrunelensError(f"{run_dir}: no lenses to run (pass --explain NAME[,NAME])")
    bundle, build = prepare(cfg)
    with Reporter(quiet) as reporter, open_store(cfg, write_config=False) as store:
        return analyze(cfg, store, bundle, build, reporter, other_seed=lambda: other_seed_run(cfg, quiet), force=force)
