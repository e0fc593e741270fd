"""`prunelens run [CONFIG] | list | show RUN`: every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import io
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from prunelens import config as config_mod
from prunelens.analyze import headlines
from prunelens.controls import KINDS, run_controls
from prunelens.data import DATASETS
from prunelens.errors import PrunelensError
from prunelens.experiment import analyze_run, run
from prunelens.export import shrink_round
from prunelens.lenses import LENSES
from prunelens.lenses.tickets import compare_runs, compared_round, plot_layer_density
from prunelens.models import MODELS
from prunelens.pruning import SCORES
from prunelens.reinit import partial_reinit
from prunelens.store import RunStore, atomic_write, round_dir
from prunelens.sweep import Sweep, load, run_sweep

QUICKSTART = "quickstart.yaml"


def quickstart_config() -> config_mod.ExperimentConfig:
    """The built-in default experiment (the same file as configs/quickstart.yaml)."""
    with resources.as_file(resources.files("prunelens") / "configs" / QUICKSTART) as path:
        return config_mod.load(path)


def print_table(frame: pd.DataFrame, title: str) -> None:
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(col, justify="right")
    for row in frame.itertuples(index=False):
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def summary_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-round accuracy-vs-density table from a long-format metrics table."""
    wide = frame[frame["layer"].fillna("") == ""].pivot(index="round", columns="metric", values="value")
    wide["flops_ratio"] = wide["flops_effective"] / wide["flops_dense"]
    cols = ["rate_nominal", "density", "density_all", "test_top1", "test_top5", "val_top1", "flops_ratio", "collapsed", "train_seconds"]
    return wide[cols].reset_index()


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides given on the command line."""
    out: dict[str, Any] = {k: v for k, v in {"output_dir": args.output_dir, "device": args.device}.items() if v is not None}
    if args.rounds is not None:
        out["pruning"] = {"rounds": args.rounds}
    return out


def cmd_run(args: argparse.Namespace) -> None:
    loaded = load(args.config) if args.config else quickstart_config()
    changes = overrides(args)
    if isinstance(loaded, Sweep):
        for point in loaded.points:
            point.cfg = point.cfg.with_overrides(**changes) if changes else point.cfg
        table = run_sweep(loaded, quiet=args.quiet)
        print_table(table, f"sweep {loaded.name}: {len(loaded.points)} runs ({loaded.out_dir / 'summary.csv'})")
        return
    cfg = loaded.with_overrides(**changes) if changes else loaded
    result = run(cfg, quiet=args.quiet)
    print_table(summary_frame(result.table), f"{cfg.name}: accuracy vs density ({result.run_dir})")
    for name, table in headlines(result.lenses).items():
        print_table(table, f"{name}: explanations vs density (all numbers: {result.run_dir / f'lens_{name}.csv'})")


def cmd_list(args: argparse.Namespace) -> None:
    for title, registry in (("datasets", DATASETS), ("models", MODELS), ("pruning methods", SCORES), ("lenses", LENSES)):
        print(f"{title}: {', '.join(registry.names())}")


def resolve_run(name: str, output_dir: Path) -> Path:
    """A run directory given as a path, a directory name under `output_dir`, an experiment name with a single
    run, or a unique prefix of its hash."""
    path = Path(name)
    if (path / "manifest.json").is_file():
        return path
    runs = [p for p in output_dir.glob("*") if (p / "manifest.json").is_file()]
    matches = [p for p in runs if name in (p.name, p.name.rsplit("-", 1)[0]) or p.name.rsplit("-", 1)[-1].startswith(name)]
    if len(matches) != 1:
        raise PrunelensError(f"run {name!r}: {'no such run' if not matches else 'ambiguous'} (looked in {output_dir})")
    return matches[0]


def cmd_show(args: argparse.Namespace) -> None:
    run_dir = resolve_run(args.run, Path(args.output_dir or "runs"))
    store = RunStore(run_dir)
    frame = pd.read_csv(io.BytesIO(store.read("metrics.csv")), keep_default_na=False)
    print_table(summary_frame(frame), str(run_dir))


def cmd_analyze(args: argparse.Namespace) -> None:
    run_dir = resolve_run(args.run, Path(args.output_dir or "runs"))
    lenses = [name.strip() for name in args.explain.split(",") if name.strip()] if args.explain else None
    tables = analyze_run(run_dir, lenses, quiet=args.quiet, force=args.force)
    for name, table in headlines(tables).items():
        print_table(table, f"{name}: explanations vs density (all numbers: {run_dir / f'lens_{name}.csv'})")


def cmd_compare(args: argparse.Namespace) -> None:
    runs_root = Path(args.output_dir or "runs")
    run_dirs = [resolve_run(name, runs_root) for name in args.runs]
    if len(run_dirs) < 2:
        raise PrunelensError("compare: give at least two runs")
    tables = compare_runs(run_dirs, args.round)
    out = Path(args.out) if args.out else runs_root / "compare" / "+".join(sorted(d.name for d in run_dirs))
    for name, table in tables.items():
        atomic_write(out / f"{name}.csv", table.to_csv(index=False).encode())
    plot_layer_density(tables["density"], out / "layer_density.png")
    overall = tables["overlap"][tables["overlap"]["layer"] == "all"]
    print_table(overall, f"ticket overlap ({out})")
    if args.reinit:

        r = compared_round([RunStore(d) for d in run_dirs], args.round)
        table = partial_reinit(run_dirs, r, out)
        print_table(table, f"partial re-initialisation: survival of the overlap at round {r} vs chance")


def cmd_shrink(args: argparse.Namespace) -> None:
    run_dir = resolve_run(args.run, Path(args.output_dir or "runs"))
    report = shrink_round(run_dir, args.round, batch=args.batch, repeats=args.repeats)
    rows = [
        {"model": kind, "params": report[kind]["params"], "flops": report[kind]["flops"],
         "flops_effective": report[kind].get("flops_effective", report[kind]["flops"]),
         "latency_median_ms": 1e3 * report["latency"][kind]["median"]}
        for kind in ("masked", "shrunk")
    ]  # fmt: skip
    print_table(pd.DataFrame(rows), f"round {report['round']}: masked (simulated) vs shrunk (physical), batch {args.batch}")
    if report["shrunk"]["params"] == report["masked"]["params"]:
        print("no whole filter or input channel is pruned: unstructured sparsity cannot be removed physically")
    print(f"measured speed-up: {report['latency']['speedup']:.2f}x; model saved as {run_dir / round_dir(report['round']) / 'shrunk.pt2'}")


def cmd_control(args: argparse.Namespace) -> None:
    run_dir = resolve_run(args.run, Path(args.output_dir or "runs"))
    table = run_controls(run_dir, args.kind, quiet=args.quiet)
    print_table(table, f"ticket vs {args.kind} control ({run_dir / f'controls_{args.kind}.csv'})")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prunelens", description="Pruning × explanations, end to end.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run, resume or extend an experiment")
    run.add_argument("config", nargs="?", help="YAML config (default: the built-in quick start)")
    run.add_argument("--rounds", type=int, help="override pruning.rounds (more rounds extend a finished run)")
    run.add_argument("--output-dir", help="override output_dir")
    run.add_argument("--device", help="override device (cpu, cuda, cuda:1, ...)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-round messages")
    run.set_defaults(func=cmd_run)
    analyze = sub.add_parser("analyze", help="run explanation lenses on a finished run (no retraining)")
    analyze.add_argument("run", help="run directory, its name, or a prefix of its hash")
    analyze.add_argument("--explain", help="comma-separated lenses (default: the run config's `lenses`)")
    analyze.add_argument("--force", action="store_true", help="recompute cached lens results")
    analyze.add_argument("--output-dir", help="where to look for RUN (default: runs)")
    analyze.add_argument("-q", "--quiet", action="store_true")
    analyze.set_defaults(func=cmd_analyze)
    compare = sub.add_parser("compare", help="overlap, stability and collapse of the tickets of several runs")
    compare.add_argument("runs", nargs="+", help="run directories, names, or hash prefixes")
    compare.add_argument("--round", type=int, help="round to compare (default: the last round all runs finished)")
    compare.add_argument("--out", help="directory for the tables and plot (default: runs/compare/<runs>)")
    compare.add_argument("--reinit", action="store_true", help="partial re-initialisation: rerun keeping only the overlap's values")
    compare.add_argument("--output-dir", help="where to look for RUNs (default: runs)")
    compare.set_defaults(func=cmd_compare)
    shrink = sub.add_parser("shrink", help="physically remove pruned filters of a round; compare size, FLOPs, latency")
    shrink.add_argument("run", help="run directory, its name, or a prefix of its hash")
    shrink.add_argument("--round", type=int, help="round (default: the last finished)")
    shrink.add_argument("--batch", type=int, default=32, help="batch size for the latency measurement")
    shrink.add_argument("--repeats", type=int, default=20)
    shrink.add_argument("--output-dir", help="where to look for RUN (default: runs)")
    shrink.set_defaults(func=cmd_shrink)
    control = sub.add_parser("control", help="lottery-ticket controls: random re-initialisation or random pruning")
    control.add_argument("run", help="run directory, its name, or a prefix of its hash")
    control.add_argument("--kind", choices=KINDS, default="random_reinit")
    control.add_argument("--output-dir", help="where to look for RUN (default: runs)")
    control.add_argument("-q", "--quiet", action="store_true")
    control.set_defaults(func=cmd_control)
    sub.add_parser("list", help="datasets, models, pruning methods and lenses").set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="per-round table of a run")
    show.add_argument("run", help="run directory, its name, or a prefix of its hash")
    show.add_argument("--output-dir", help="where to look for RUN (default: runs)")
    show.set_defaults(func=cmd_show)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except PrunelensError as err:
        print(f"prunelens: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunelens: interrupted; finished rounds are kept, re-run to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
