"""config → prepared data and model → rounds (sharing the dense round) → tables → lenses (with their
references) → figures. The Python entry points: `prunelens.run(cfg)` and `analyze_run(run)`.

`prepare` checks every input — device, data, model, schedule, lens options and whether each lens can explain
the model — before anything is written; only then does `execute` touch the run directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from prunelens import analyze, tracking
from prunelens.cache import FileCache
from prunelens.config import ExperimentConfig, LensConfig
from prunelens.data import DataBundle, build_dataset
from prunelens.dependencies import TRAINED_REFERENCES, dense_config, reference_config
from prunelens.device import check_device, configure_cpu
from prunelens.errors import PrunelensError
from prunelens.faults import killpoint
from prunelens.lenses import LENSES, Lens
from prunelens.lenses.data import LensData
from prunelens.models import build_model, build_untrained
from prunelens.progress import Reporter
from prunelens.pruning import check as check_pruning
from prunelens.rounds import Context, Dense, DenseRound, run_rounds
from prunelens.runs import METRICS, TIMINGS, Run, data_info
from prunelens.seeding import forked

MODEL_METRICS = (
    "rate_nominal", "density", "density_actual", "density_all", "test_top1", "test_top5", "test_loss", "val_top1", "val_top5", "val_loss",
    "train_loss", "remaining_params", "nonzero_params", "prunable_params", "total_params", "flops_dense", "flops_effective",
    "collapsed", "collapsed_structural", "collapsed_functional", "chance_top1", "output_range",
)  # fmt: skip
"""The per-round metrics of `metrics.csv`, in this order (those a record has)."""
TIMING_METRICS = ("train_seconds", "eval_seconds", "prune_seconds")
"""Wall times: in `timings.csv`, never in `metrics.csv` (which is byte-identical across repeated runs)."""
CHECK_IMAGES = 4


@dataclass
class RunResult:
    run_dir: Path
    records: list[dict[str, Any]]
    lenses: list[analyze.LensTable] = field(default_factory=list)

    @property
    def table(self) -> pd.DataFrame:
        """Long format: one row per (round, metric, layer)."""
        return tidy(self.records)

    def summary(self) -> pd.DataFrame:
        """One row per round: density, accuracy, FLOPs — the accuracy-vs-density table."""
        return summary(self.records)


def tidy(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The long metrics table of `records` (no timings)."""
    rows = []
    for rec in records:
        rows += [{"round": rec["round"], "metric": m, "layer": "", "value": float(rec[m])} for m in MODEL_METRICS if m in rec]
        rows += [{"round": rec["round"], "metric": "density", "layer": n, "value": d} for n, d in rec["layers"].items()]
    return pd.DataFrame(rows, columns=["round", "metric", "layer", "value"])


def summary(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per round: rates, densities, accuracy, effective FLOPs as a fraction of dense, collapse, time."""
    cols = ["round", "rate_nominal", "density", "density_all", "test_top1", "test_top5", "val_top1", "flops_ratio", "collapse", "train_seconds"]
    rows = [{**rec, "flops_ratio": rec["flops_effective"] / rec["flops_dense"], "collapse": rec.get("collapse", "")} for rec in records]
    return pd.DataFrame([{c: row[c] for c in cols if c in row} for row in rows])


@dataclass(frozen=True)
class Prepared:
    """A checked config with its data and lenses; `build()` gives the model at its initialisation."""

    cfg: ExperimentConfig
    bundle: DataBundle
    lenses: tuple[Lens, ...] = ()

    def build(self) -> nn.Module:
        """The run's θ₀: the architecture from the (seed, "init") stream, with the config's weights if any."""
        b = self.bundle
        with forked(self.cfg.seed, "init"):
            return build_model(self.cfg.model, b.num_classes, b.in_channels, b.image_size).to(self.cfg.device)

    def random_init(self, stream: str, *keys: int) -> nn.Module:
        """The architecture at a random initialisation from the (seed, `stream`, *keys) stream, never with
        pretrained weights (the floor, random re-initialisation controls); the global RNGs are restored."""
        b = self.bundle
        with forked(self.cfg.seed, stream, *keys):
            return build_untrained(self.cfg.model, b.num_classes, b.in_channels, b.image_size).to(self.cfg.device)

    def derive(self, cfg: ExperimentConfig) -> Prepared:
        """A dependency run (dense or reference) of this one: the same data, no lenses."""
        if cfg.dataset != self.cfg.dataset:
            raise ValueError("a derived run must use the same data")
        return Prepared(cfg, self.bundle)


def check_schedule(cfg: ExperimentConfig, model: Any, steps: int) -> None:
    p = cfg.pruning
    check_pruning(p)
    if p.rewind == "step" and not 0 < p.rewind_step < steps:
        raise PrunelensError(f"pruning.rewind_step: {p.rewind_step} is not in (0, {steps}) training steps")
    if p.rewind == "pretrained" and cfg.model.weights is None and not getattr(model, "is_pretrained", False):
        raise PrunelensError(f"pruning.rewind: 'pretrained' needs model.weights (model {cfg.model.name!r} has no built-in weights)")


def prepare(cfg: ExperimentConfig, bundle: DataBundle | None = None, reporter: Reporter | None = None) -> Prepared:
    """Check every input and load the data; nothing is written."""
    check_device(cfg.device)
    configure_cpu(cfg.threads)
    bundle = bundle or build_dataset(cfg.dataset)
    for note in bundle.notes if reporter else ():
        reporter.notice(note)
    prepared = Prepared(cfg, bundle, tuple(LENSES.get(spec.name)(spec.options) for spec in cfg.lenses))
    model = prepared.build()
    ctx = Context(cfg, bundle, model, Reporter(quiet=True))
    check_schedule(cfg, model, min(ctx.steps(0), ctx.steps(1)))
    if prepared.lenses:
        batch = LensData(bundle, cfg.device, CHECK_IMAGES).eval_batch
        for i, lens in enumerate(prepared.lenses):
            try:
                lens.check_pruning(cfg.pruning.granularity)
                lens.check(model, batch)
            except PrunelensError as err:
                raise PrunelensError(f"lenses[{i}] ({lens.name}): {err}") from None
    return prepared


def run(cfg: ExperimentConfig, quiet: bool = False) -> RunResult:
    """Run, resume or extend the experiment `cfg`, then its lenses; then log it to MLflow when `cfg.tracking` says so."""
    tracking.require(cfg)
    with Reporter(quiet) as reporter:
        result = execute(prepare(cfg, reporter=reporter), reporter)
        tracking.log_run(cfg, result.run_dir, reporter)
    return result


def execute(p: Prepared, reporter: Reporter) -> RunResult:
    """Train the missing rounds of `p.cfg` (round 0 from its shared dense run), rebuild its tables and run its lenses."""
    cfg = p.cfg
    run = Run(cfg.run_dir)
    with run.writing(on_wait=reporter.notice):
        run.initialise(cfg, data_info(p.bundle))
        records = run_rounds(Context(cfg, p.bundle, p.build(), reporter), run, dense_source(p, reporter))
        killpoint("rounds.done")
        write_tables(run, records)
        lenses = analyze_lenses(p, run, reporter) if p.lenses else []
    return RunResult(run.root, records, lenses)


def dense_source(p: Prepared, reporter: Reporter) -> Dense | None:
    """Where `p` takes its round 0 from: its shared dense run (run or reused on first use), or None for a dense run."""
    shared = dense_config(p.cfg)
    return None if shared.run_dir == p.cfg.run_dir else (lambda: dense_round(p.derive(shared), reporter))


def dense_round(p: Prepared, reporter: Reporter) -> DenseRound:
    """Run (or reuse) the shared dense run `p` and hand over its θ_start and round 0."""
    done = Run(execute(p, reporter).run_dir)
    record = done.round(0).record()
    fit = {"train_loss": record["train_loss"], "train_seconds": record["train_seconds"], "dense_run": done.root.name}
    return DenseRound(done.start(), done.round(0).weights(), fit)


def write_tables(run: Run, records: list[dict[str, Any]]) -> None:
    """`metrics` (long, deterministic) and `timings` of every finished round; rewritten only when they changed."""
    run.store.save_table(METRICS, tidy(records))
    timings = pd.DataFrame([{"round": rec["round"], **{k: rec.get(k) for k in TIMING_METRICS}} for rec in records])
    run.store.write(f"{TIMINGS}.csv", timings.to_csv(index=False).encode())


def dependencies(p: Prepared) -> list[Prepared]:
    """The runs `p` depends on, unstarted: its shared dense run (unless `p` is one) and the trained references
    its lenses need. `execute` trains whichever is missing on first use; executors.py trains them first, once,
    so that parallel points never train (or wait for) the same dependency."""
    shared = dense_config(p.cfg)
    out = [] if shared.run_dir == p.cfg.run_dir else [p.derive(shared)]
    kinds = sorted({kind for lens in p.lenses for kind in lens.references()} & set(TRAINED_REFERENCES))
    return out + [p.derive(reference_config(p.cfg, kind)) for kind in kinds]


def reference_models(p: Prepared, kinds: Sequence[str], reporter: Reporter) -> dict[str, nn.Module]:
    """The reference networks the lenses need: the floor drawn from the `floor` stream, trained references
    from their own (shared, resumable) dense runs."""
    out = {}
    for kind in kinds:
        if kind == "floor":
            out[kind] = p.random_init("floor").eval()
            continue
        reference = p.derive(reference_config(p.cfg, kind))
        reporter.log(f"reference {kind}: run {reference.cfg.run_dir.name}")
        out[kind] = Run(execute(reference, reporter).run_dir).round(0).model(p.cfg.device)
        killpoint("reference.trained")
    return out


def analyze_lenses(p: Prepared, run: Run, reporter: Reporter, force: bool = False) -> list[analyze.LensTable]:
    kinds = sorted({kind for lens in p.lenses for kind in lens.references()})
    references = reference_models(p, kinds, reporter)
    data = LensData(p.bundle, p.cfg.device, p.cfg.lens_images)
    cache = FileCache(p.cfg.output_dir / "cache")
    return analyze.analyze(run, p.lenses, data, references, cache, p.cfg.seed, reporter, force=force)


def analyze_run(run: Run, lenses: Sequence[LensConfig] | None = None, quiet: bool = False, force: bool = False) -> list[analyze.LensTable]:
    """Run lenses (default: the run config's and those run on it before) on a run without retraining."""
    cfg = run.config
    if run.format == 1:  # prunelens 0.1 seeded the data with the experiment seed
        cfg = cfg.with_overrides(dataset={"seed": cfg.seed})
    specs = list(lenses) if lenses else [*cfg.lenses, *(s for s in analyze.stored_lenses(run) if s not in cfg.lenses)]
    if not specs:
        raise PrunelensError(f"{run.root}: no lenses to run (pass --explain NAME[,NAME])")
    cfg = replace_lenses(cfg, specs)
    with Reporter(quiet) as reporter:
        p = prepare(cfg, build_dataset(run.data_config), reporter)
        with run.writing(on_wait=reporter.notice):
            return analyze_lenses(p, run, reporter, force)


def replace_lenses(cfg: ExperimentConfig, specs: Sequence[LensConfig]) -> ExperimentConfig:
    return cfg.with_overrides(lenses=[spec.model_dump() for spec in specs])
