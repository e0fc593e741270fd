"""The `prunelens` commands (parsed in cli.py). Every command reads runs through the run reader."""

from __future__ import annotations

import argparse
import sys
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from prunelens import config as config_mod
from prunelens import distributed
from prunelens.analyze import LensTable
from prunelens.config import ExperimentConfig, LensConfig, PruningConfig
from prunelens.data import DATASETS
from prunelens.errors import PrunelensError
from prunelens.experiment import analyze_run, run, summary
from prunelens.lenses import LENSES
from prunelens.models import MODELS
from prunelens.progress import Reporter
from prunelens.pruning import SCORES
from prunelens.runs import Run, round_file
from prunelens.store import atomic_write
from prunelens.sweep import Point, Sweep, load, prepare_all, run_sweep
from prunelens.tracking import with_uri

QUICKSTART = "quickstart.yaml"


def quickstart_config() -> ExperimentConfig:
    """The built-in default experiment (the same file as configs/quickstart.yaml)."""
    with resources.as_file(resources.files("prunelens") / "configs" / QUICKSTART) as path:
        return config_mod.load(path)


def print_table(frame: pd.DataFrame, title: str) -> None:
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col), justify="right")
    for row in frame.itertuples(index=False):
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def print_lenses(tables: list[LensTable], run_dir: Path) -> None:
    for lens in tables:
        headline = LENSES.get(lens.name).headline(lens.table)
        if headline is not None:
            print_table(headline, f"{lens.key}: explanations vs density (all numbers: {run_dir / f'lens_{lens.key}.csv'})")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides given on the command line."""
    fields = {"output_dir": args.output_dir, "device": args.device, "threads": args.threads}
    out: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    if args.rounds is not None:
        out["pruning"] = {"rounds": args.rounds}
    return out


def loaded(path: str | None) -> Sweep | ExperimentConfig:
    return load(path) if path else quickstart_config()


def cmd_run(args: argparse.Namespace) -> None:
    target, changes = loaded(args.config), overrides(args)
    if isinstance(target, Sweep):
        if distributed.launched():
            raise PrunelensError("a sweep cannot run under torchrun: run it without torchrun, or each point's config with it")
        for point in target.points:
            point.cfg = point.cfg.with_overrides(**changes) if changes else point.cfg
            point.cfg = with_uri(point.cfg, args.mlflow)
        before = {p.cfg.run_dir: Run(p.cfg.run_dir).store.manifest for p in target.points}
        batch = False if args.no_batch else None
        table = run_sweep(target, quiet=args.quiet, executor=args.executor, jobs=args.jobs, address=args.address, batch=batch)
        print_table(table, f"sweep {target.name}: {len(target.points)} runs ({target.out_dir / 'summary.csv'})")
        print_sweep_report(target.out_dir, [d.name for d, files in before.items() if Run(d).store.manifest != files])
        return
    if args.executor or args.jobs or args.address or args.no_batch:
        raise PrunelensError("--executor, --jobs, --address and --no-batch are for sweeps (a config with a `sweep` section)")
    cfg = with_uri(target.with_overrides(**changes) if changes else target, args.mlflow)
    distributed.launch(cfg, lambda cfg: run_and_print(cfg, args.quiet))  # under torchrun: only rank 0 runs it


def run_and_print(cfg: ExperimentConfig, quiet: bool) -> None:
    result = run(cfg, quiet=quiet)
    print_table(summary(result.records), f"{cfg.name}: accuracy vs density ({result.run_dir})")
    print_lenses(result.lenses, result.run_dir)
    print_report(result.run_dir)


def print_report(where: Path) -> None:
    from prunelens.report.html import write_report

    print(f"report: {write_report(where)}")


def print_sweep_report(where: Path, changed: list[str]) -> None:
    """The sweep's report, after the reports of the runs this command changed (finished runs stay untouched)."""
    from prunelens.report.html import write_sweep_report

    print(f"report: {write_sweep_report(where, changed)}")


def cmd_report(args: argparse.Namespace) -> None:
    """Write report.html (figures embedded, no network needed) into the run's or sweep's directory."""
    from prunelens.report.html import write_report

    print(write_report(args.run, args.output_dir or "runs"))


def cmd_check(args: argparse.Namespace) -> None:
    """Validate the config(s) and every input they name (data files, weights, lens fit) without writing."""
    target = loaded(args.config)
    sweep = target if isinstance(target, Sweep) else Sweep(target.name, [Point(target, 0, {})], compare=False)
    for point in sweep.points:
        point.cfg = point.cfg.with_overrides(output_dir=args.output_dir) if args.output_dir else point.cfg
    with Reporter(quiet=True) as reporter:
        prepare_all(sweep, reporter)
    print(f"ok: {len(sweep.points)} run(s) would go to {', '.join(sorted({str(p.cfg.run_dir) for p in sweep.points}))}")


def cmd_list(args: argparse.Namespace) -> None:
    scopes = typing.get_args(PruningConfig.model_fields["scope"].annotation)
    granularities = typing.get_args(PruningConfig.model_fields["granularity"].annotation)
    for title, names in (
        ("datasets", DATASETS.names()), ("models", MODELS.names()), ("pruning methods", SCORES.names()),
        ("pruning scopes", scopes), ("granularities", granularities), ("lenses", LENSES.names()),
    ):  # fmt: skip
        print(f"{title}: {', '.join(names)}")


def open_run(args: argparse.Namespace, name: str | None = None) -> Run:
    return Run.open(name or args.run, Path(args.output_dir or "runs"))


def cmd_show(args: argparse.Namespace) -> None:
    found = open_run(args)
    print_table(summary(found.records()), str(found.root))


def cmd_analyze(args: argparse.Namespace) -> None:
    found = open_run(args)
    lenses = [LensConfig(name=n.strip()) for n in args.explain.split(",") if n.strip()] if args.explain else None
    print_lenses(analyze_run(found, lenses, quiet=args.quiet, force=args.force), found.root)


def cmd_compare(args: argparse.Namespace) -> None:
    from prunelens.analysis.reinit import partial_reinit
    from prunelens.analysis.tickets import compare_runs, compared_round
    from prunelens.report.figures import layer_density_figure, png

    runs = [open_run(args, name) for name in args.runs]
    if args.mis is not None:
        return compare_mis(runs, args)
    if len(runs) < 2:
        raise PrunelensError("compare: give at least two runs")
    tables = compare_runs(runs, args.round)
    out = Path(args.out) if args.out else Path(args.output_dir or "runs") / "compare" / "+".join(sorted(r.root.name for r in runs))
    for name, table in tables.items():
        atomic_write(out / f"{name}.csv", table.to_csv(index=False).encode())
    atomic_write(out / "layer_density.png", png(layer_density_figure(tables["density"]), dpi=120))
    overall = tables["overlap"][tables["overlap"]["layer"] == "all"]
    print_table(overall, f"ticket overlap vs chance at the tickets' per-layer densities ({out})")
    if args.reinit:
        r = compared_round(runs, args.round)
        table = partial_reinit(runs, r, out)
        print_table(table, f"partial re-initialisation: survival of the overlap at round {r} vs chance")


def compare_mis(runs: list[Run], args: argparse.Namespace) -> None:
    """MIS against pruning rate, accuracy and the pruning settings across the rounds of `runs` (one or more)."""
    from prunelens.analysis.mis_stats import save_mis_statistics

    out = Path(args.out) if args.out else Path(args.output_dir or "runs") / "compare" / "+".join(sorted(r.root.name for r in runs))
    tables = save_mis_statistics(runs, args.mis, out)
    print_table(tables["mis_correlations"], f"MIS vs pruning rate and accuracy ({out})")
    print_table(tables["mis_anova"], "ANOVA (Type II) of MIS on the pruning settings")


def cmd_shrink(args: argparse.Namespace) -> None:
    from prunelens.analysis.shrink import shrink_round
    from prunelens.device import configure_cpu

    found = open_run(args)
    configure_cpu(args.threads)
    report = shrink_round(found, args.round, batch=args.batch, repeats=args.repeats)
    rows = [
        {"model": kind, "params": report[kind]["params"], "flops": report[kind]["flops"],
         "flops_effective": report[kind].get("flops_effective", report[kind]["flops"]),
         "latency_median_ms": 1e3 * report["latency"][kind]["median"]}
        for kind in ("masked", "shrunk")
    ]  # fmt: skip
    print_table(pd.DataFrame(rows), f"round {report['round']}: masked (simulated) vs shrunk (physical), batch {args.batch}")
    if report["shrunk"]["params"] == report["masked"]["params"]:
        print("no whole filter or input channel is pruned: unstructured sparsity cannot be removed physically;"
              " what sparse kernels buy is in the next table")
    print(f"measured speed-up: {report['latency']['speedup']:.2f}x; model saved as {found.root / round_file(report['round'], 'shrunk.pt2')}")
    sparse = report["sparse"]
    times, speedup = sparse["latency_ms"], sparse["latency_ms"]["speedup"]
    rows = [
        {"model": kind, "density": sparse["density"], "flops_effective": sparse["flops_effective"],
         "latency_median_ms": times[kind]["median"], "latency_min_ms": times[kind]["min"],
         "latency_max_ms": times[kind]["max"], "speedup": 1.0 if kind == "masked" else speedup}
        for kind in ("masked", "sparse")
    ]  # fmt: skip
    print_table(pd.DataFrame(rows), f"round {report['round']}: masked dense vs sparse CSR kernels (CPU), batch {args.batch}")
    verdict = "faster" if sparse["faster"] else "slower"
    print(f"at this round's density {sparse['density']:.4g}, sparse kernels are {verdict} than the masked dense model:"
          f" {speedup:.2f}x (max |Δ output| {sparse['max_abs_diff']:.1e}; {len(sparse['dense_layers'])} masked layer(s) kept dense)")
    load, cpus = max(sparse["load_average"]), sparse["cores"]
    if load > cpus:
        hint = "a quiet machine" if sparse["threads"] == 1 else "--threads 1, or a quiet machine"
        print(f"WARNING: load average {load:.1f} on {cpus} cores while timing ({sparse['threads']} torch thread(s)):"
              f" other processes compete, so these timings are unreliable (try {hint})")
    cross, plot = sparse["crossover"]["density"], found.root / sparse["crossover"]["figure"]
    if cross is None:
        print(f"sparse kernels never won at the densities measured ({min(sparse['crossover']['densities'], default=1):g}"
              f" and above; crossover plot: {plot})")
    else:
        print(f"sparse kernels win below density {cross:g} on this machine (this round's layer shapes at random masks,"
              f" batch {sparse['crossover']['batch']}; crossover plot: {plot})")
    semi = sparse["semi_structured"]
    if semi["status"] != "measured":
        print(f"2:4 semi-structured kernels: {semi['status']}")
    else:
        print("2:4 semi-structured kernels (" + semi["device"] + "): "
              + (", ".join(f"{row['layer']} {row['speedup']:.2f}x" if "speedup" in row else f"{row['layer']} failed ({row['error']})"
                           for row in semi["layers"]) or "no Linear layer to time"))  # fmt: skip


def cmd_control(args: argparse.Namespace) -> None:
    from prunelens.analysis.controls import run_controls

    found = open_run(args)
    table = run_controls(found, args.kind, quiet=args.quiet)
    print_table(table, f"ticket vs {args.kind} control ({found.root / f'controls_{args.kind}.csv'})")
