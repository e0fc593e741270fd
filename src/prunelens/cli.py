"""`prunelens …`: every user error is one line on stderr and exit code 2; a signal stops at the next safe point.

The parser and the signal handlers come first and import nothing heavy, so Ctrl-C during start-up (torch
takes seconds to import) is handled like any other interruption; the commands live in `commands.py`.
"""

from __future__ import annotations

import argparse
import signal
import sys

RESUME = "interrupted; resume with the same command"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prunelens", description="Pruning × explanations, end to end.")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, run_arg: bool = True, quiet: bool = True) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help)
        if run_arg:
            cmd.add_argument("run", help="run directory, its name, <name>-<hash prefix>, or a hash prefix")
        cmd.add_argument("--output-dir", help="where to look for runs (default: runs)")
        if quiet:
            cmd.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-round messages")
        return cmd

    run = command("run", "run, resume or extend an experiment (or a sweep)", run_arg=False)
    run.add_argument("config", nargs="?", help="YAML config (default: the built-in quick start)")
    run.add_argument("--rounds", type=int, help="override pruning.rounds (more rounds extend a finished run)")
    run.add_argument("--device", help="override device (cpu, cuda, cuda:1, ...)")
    run.add_argument("--threads", type=int, help="CPU threads for torch (default: cores ÷ concurrent workers)")
    run.add_argument("--executor", choices=("local", "process", "ray"), help="where a sweep's runs train (default: local, one at a time)")
    run.add_argument("--jobs", type=int, help="runs at once: process pool size, or the CPUs of a local Ray cluster")
    run.add_argument("--address", help="Ray cluster to use: auto or ray://HOST:PORT (default: start a local one)")
    run.add_argument("--no-batch", action="store_true", help="train a sweep's runs one by one, never as batched tickets")
    run.add_argument("--mlflow", metavar="URI", help="log the finished run to MLflow: sqlite:///PATH or http://127.0.0.1:PORT")
    check = command("check", "validate a config and every input it names, without training or writing", run_arg=False, quiet=False)
    check.add_argument("config", nargs="?", help="YAML config (default: the built-in quick start)")
    analyze = command("analyze", "run explanation lenses on a finished run (no retraining)")
    analyze.add_argument("--explain", help="comma-separated lenses (default: the run's own)")
    analyze.add_argument("--force", action="store_true", help="recompute cached lens results")
    compare = command("compare", "overlap, stability and collapse of the tickets of several runs", run_arg=False, quiet=False)
    compare.add_argument("runs", nargs="+", help="run directories, names, or hash prefixes")
    compare.add_argument("--round", type=int, help="round to compare (default: the last round all runs finished)")
    compare.add_argument("--out", help="directory for the tables and plot (default: <output-dir>/compare/<runs>)")
    compare.add_argument("--reinit", action="store_true", help="partial re-initialisation: rerun keeping only the overlap's values")
    compare.add_argument("--mis", nargs="?", const="mis", metavar="KEY",
                         help="MIS statistics (correlations, ANOVA) across the runs' rounds instead of tickets (lens key, default mis)")
    shrink = command("shrink", "physically remove pruned filters of a round; compare size, FLOPs, latency", quiet=False)
    shrink.add_argument("--round", type=int, help="round (default: the last finished)")
    shrink.add_argument("--batch", type=int, default=32, help="batch size for the latency measurement")
    shrink.add_argument("--repeats", type=int, default=20, help="timed forwards per model (the sparse crossover uses a quarter)")
    shrink.add_argument("--threads", type=int, help="CPU threads for torch while timing (default: cores ÷ concurrent workers)")
    control = command("control", "lottery-ticket controls: random re-initialisation or random pruning")
    control.add_argument("--kind", default="random_reinit", help="random_reinit (default) or random_prune")
    command("show", "per-round table of a run", quiet=False)
    report = command("report", "write a self-contained report.html (figures embedded) into a run or sweep directory", run_arg=False, quiet=False)
    report.add_argument("run", metavar="RUN|SWEEP", help="a run (as for show) or a sweep: its directory or its name under <output-dir>/sweeps")
    sub.add_parser("list", help="datasets, models, pruning methods, scopes, granularities and lenses")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        from prunelens.interrupts import install_signal_handlers

        install_signal_handlers()
        args = parser().parse_args(argv)
        from prunelens import commands
        from prunelens.errors import PrunelensError
        from prunelens.interrupts import check_interrupt

        try:
            getattr(commands, f"cmd_{args.command}")(args)
            check_interrupt()  # a stop requested after the last safe point still ends as interrupted
        except PrunelensError as err:
            print(f"prunelens: error: {err}", file=sys.stderr)
            return 2
        except OSError as err:  # disk full, permissions: name the file, no traceback
            where = f"{err.filename}: " if err.filename else ""
            print(f"prunelens: error: {where}{err.strerror or err}", file=sys.stderr)
            return 2
    except KeyboardInterrupt as err:  # Ctrl-C (also during start-up) or SIGTERM, raised at a safe point
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"prunelens: {RESUME}", file=sys.stderr)
        return 128 + int(signum)
    return 0


if __name__ == "__main__":
    sys.exit(main())
