"""Run lenses on the rounds of a run, caching each (lens, round) in the run (docs/extending.md).

`lenses/<key>/` holds `lens.json` (name, version, options), `setup.{json,pt}` (the lens on the dense
network), `round_NNN.{json,pt}` and the figures; `lens_<key>.{csv,parquet}` is the long table over all
rounds (setup records count as round 0's). `<key>` is the lens name, plus a hash of its options when they
differ from the defaults, so several configurations of one lens coexist in a run. Results of another lens
version are recomputed. Rounds are analysed independently, so their order never changes a result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
from torch import nn

from prunelens.config import LensConfig
from prunelens.errors import PrunelensError
from prunelens.faults import killpoint
from prunelens.interrupts import check_interrupt
from prunelens.lenses.base import Cache, Lens, LensContext, LensResult, LensRound, options_key
from prunelens.lenses.data import LensData
from prunelens.progress import Reporter
from prunelens.report import LENS_FIGURES
from prunelens.report.figures import LensView, png
from prunelens.runs import Run, lens_file


@dataclass(frozen=True)
class LensTable:
    """A lens' long table in a run: `key` names its files, `name` the lens."""

    key: str
    name: str
    table: pd.DataFrame


def lens_key(lens: Lens) -> str:
    """`<name>`, or `<name>-<hash of the non-default options>`."""
    options = options_key(lens)
    if not options:
        return lens.name
    return f"{lens.name}-{hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]}"


def stored_lenses(run: Run) -> list[LensConfig]:
    """The lens configurations whose results a run holds (from their `lens.json`)."""
    specs = []
    for rel in sorted(run.store.manifest):
        if rel.startswith("lenses/") and rel.endswith("/lens.json") and run.store.has(rel):
            info = run.store.load_json(rel)
            specs.append(LensConfig(name=info["name"], options=info["options"]))
    return specs


def save_result(run: Run, key: str, stem: str, result: LensResult) -> None:
    """Tensors first, the JSON (records, artefacts) last: it marks the result as done."""
    if result.tensors:
        run.store.save_tensors(lens_file(key, f"{stem}.pt"), result.tensors)
    run.store.save_json(lens_file(key, f"{stem}.json"), {"records": result.records, "artefacts": result.artefacts})


def load_result(run: Run, key: str, stem: str) -> LensResult:
    stored = run.store.load_json(lens_file(key, f"{stem}.json"))
    tensors = run.store.load_tensors(lens_file(key, f"{stem}.pt")) if run.store.has(lens_file(key, f"{stem}.pt")) else {}
    return LensResult(stored["records"], tensors, stored["artefacts"])


def refresh(run: Run, lens: Lens, key: str, force: bool) -> None:
    """Forget results of another lens version (or all, with `force`), then record what the directory holds."""
    info = {"name": lens.name, "version": lens.version, "options": options_key(lens)}
    where = lens_file(key, "lens.json")
    current = run.store.has(where) and run.store.load_json(where) == info
    if force or not current:
        run.store.forget([rel for rel in run.store.manifest if rel.startswith(f"lenses/{key}/")])
    run.store.save_json(where, info)


def analyze(
    run: Run,
    lenses: Sequence[Lens],
    data: LensData,
    references: Mapping[str, nn.Module],
    cache: Cache,
    seed: int,
    reporter: Reporter,
    force: bool = False,
) -> list[LensTable]:
    """Every lens on every finished round of `run` (held for writing); returns their long tables."""
    rounds = run.rounds()
    if not rounds or rounds[0] != 0:
        raise PrunelensError(f"{run.root}: no finished dense round 0 to analyse")
    dense = run.round(0).model(data.device)
    out = []
    for lens in lenses:
        key = lens_key(lens)
        refresh(run, lens, key, force)
        ctx = LensContext(data, dense, {k: references[k] for k in lens.references()}, cache, seed)
        if not run.store.has(lens_file(key, "setup.json")):
            save_result(run, key, "setup", lens.setup(ctx))
        ctx = replace(ctx, dense_result=load_result(run, key, "setup"))
        for note in ctx.dense_result.artefacts.get("notes", []):
            reporter.notice(f"lens {key}: {note}")
        with reporter.task(f"lens {key}", total=len(rounds)) as advance:
            for r in rounds:
                if not run.store.has(lens_file(key, f"round_{r:03d}.json")):
                    view = run.round(r)
                    rnd = LensRound(r, view.model(data.device), view.masks().to(data.device), view.record()["density"])
                    result = lens(ctx, rnd)
                    killpoint("lens.round")
                    save_result(run, key, f"round_{r:03d}", result)
                advance(1)
        table = lens_table(run, key, rounds)
        before = run.store.manifest.get(f"lens_{key}.csv")
        run.store.save_table(f"lens_{key}", table)
        for name, extra in lens.tables(table).items():
            run.store.save_table(f"lens_{key}_{name}", extra)
        if before != run.store.manifest.get(f"lens_{key}.csv") or not figures_present(run, key):
            draw_figures(run, lens.name, key, table)
        reporter.log(f"lens {key}: {len(table)} records over {len(rounds)} rounds")
        out.append(LensTable(key, lens.name, table))
    return out


def lens_table(run: Run, key: str, rounds: Sequence[int]) -> pd.DataFrame:
    """The long table: setup records (as round 0) and every round's records, each with the round's density."""
    rows: list[dict[str, Any]] = []
    for r in rounds:
        density = run.round(r).record()["density"]
        stems = ["setup", f"round_{r:03d}"] if r == 0 else [f"round_{r:03d}"]
        for stem in stems:
            rows += [{"round": r, "density": density, **rec} for rec in run.store.load_json(lens_file(key, f"{stem}.json"))["records"]]
    return pd.DataFrame(rows)


def figures_present(run: Run, key: str) -> bool:
    """Whether every figure last drawn for the lens (listed in `figures.json`) is still in the run."""
    where = lens_file(key, "figures.json")
    return run.store.has(where) and all(run.store.has(lens_file(key, f"{n}.png")) for n in run.store.load_json(where))


def draw_figures(run: Run, name: str, key: str, table: pd.DataFrame) -> None:
    """The lens' figures, drawn from its stored results (`report/figures.py`), as PNGs in its directory, and
    their list (`figures.json`, written last), so an unchanged table with all its figures is not drawn again."""
    if name not in LENS_FIGURES:
        return
    setup = load_result(run, key, "setup")
    view = LensView(table, setup.tensors, setup.artefacts, lambda r: load_result(run, key, f"round_{r:03d}").tensors)
    drawn = []
    for figure_name, figure in LENS_FIGURES[name](view).items():
        check_interrupt()
        run.store.write(lens_file(key, f"{figure_name}.png"), png(figure))
        drawn.append(figure_name)
    run.store.save_json(lens_file(key, "figures.json"), drawn)
