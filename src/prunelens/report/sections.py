"""The content of the HTML report (`report/html.py` renders it): facts, figures and tables read from a run or a
sweep directory. Everything here reads; nothing is written.

A section is plain data (`Section`: figures as PNG bytes, tables as formatted cells, each with the relative
link of the CSV it came from). A lens contributes its section through the lens interface only: its stored
figures (`lenses/<key>/figures.json`), `Lens.headline(table)` and `Lens.headline_metric`, so a new lens needs no
change here.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from prunelens.analyze import figures_present, lens_key, stored_lenses
from prunelens.experiment import summary
from prunelens.lenses import LENSES, Lens
from prunelens.report.figures import density_ticks, layer_density_figure, on_axis, png, zero_position
from prunelens.runs import Run, lens_file, round_file

REFERENCE_ROWS = ("floor", "same_init", "other_seed")


@dataclass
class Table:
    caption: str
    columns: list[str]
    rows: list[list[str]]
    source: str | None = None
    """Relative link of the CSV (or JSON) file the numbers came from."""


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    figures: list[tuple[str, bytes]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables_first: bool = False


def cell(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return "—" if not math.isfinite(value) else f"{value:.4g}"
    if value is None or (isinstance(value, str) and not value):
        return "—"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or "—"
    return str(value)


def table(frame: pd.DataFrame, caption: str, source: str | None) -> Table:
    frame = frame.astype(object).where(pd.notna(frame), None)
    return Table(caption, [str(c) for c in frame.columns], [[cell(v) for v in row] for row in frame.itertuples(index=False)], source)


def percent(density: float) -> str:
    return f"{100 * density:.3g} %"


def sentence(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def percent_axis(ax: Any, densities: Sequence[float]) -> None:
    """A logarithmic axis of % weights remaining, decreasing to the right (0 a decade below the smallest)."""
    ticks = density_ticks(densities)
    zero = zero_position(densities) if min(densities, default=1.0) <= 0 else None
    ax.set_xscale("log")
    ax.set_xticks(ticks, ["0" if d == zero else f"{100 * d:.3g}" for d in ticks], fontsize=7)
    ax.minorticks_off()
    if len(ticks) > 1:
        ax.set_xlim(max(ticks) * 1.15, min(ticks) / 1.15)
    ax.set_xlabel("% of prunable weights remaining (log scale)")


# -- a run


def facts(run: Run, records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    cfg = run.config
    p = cfg.pruning
    rewind = f"step {p.rewind_step}" if p.rewind == "step" else p.rewind
    out = [("run", run.root.name), ("dataset", cfg.dataset.name), ("model", cfg.model.name),
           ("pruning", f"{p.method}, {p.scope} scope, {p.granularity}"),
           ("rounds", f"{max(len(records) - 1, 0)} finished of {p.rounds}" + (f", rate {p.rate}" if p.rate else f", {p.fraction:g} per round")),
           ("rewind", rewind), ("seed", str(cfg.seed))]  # fmt: skip
    if records:
        best = max(records, key=lambda rec: rec["test_top1"])
        worst = min(records, key=lambda rec: rec["test_top1"])
        for label, rec in (("best round", best), ("worst round", worst)):
            out.append((label, f"round {rec['round']}: test top-1 {rec['test_top1']:.4g} at {percent(rec['density'])} of weights"))
    return out


def story(run: Run, records: list[dict[str, Any]], lenses: list[LensPart]) -> str:
    """One paragraph from the numbers: accuracy at the densest and sparsest pruned round against dense, and
    each lens' headline metric at the sparsest round against its references."""
    cfg = run.config
    dense = next((rec for rec in records if rec["round"] == 0), None)
    pruned = [rec for rec in records if rec["round"] > 0]
    p = cfg.pruning
    text = [f"{cfg.model.name} on {cfg.dataset.name}, pruned by {p.method} ({p.scope}, {p.granularity}) in {len(pruned)} round(s), rewind: {p.rewind}."]
    if dense is not None:
        text.append(f"The dense network reaches {dense['test_top1']:.3g} test top-1.")
    if pruned and dense is not None:
        for label, rec in (("densest", pruned[0]), ("sparsest", pruned[-1])) if len(pruned) > 1 else (("only", pruned[0]),):
            delta = 100 * (rec["test_top1"] - dense["test_top1"])
            text.append(f"At the {label} pruned round ({rec['round']}, {percent(rec['density'])} of weights) it reaches "
                        f"{rec['test_top1']:.3g} ({delta:+.1f} points vs dense).")  # fmt: skip
        collapsed = [rec for rec in pruned if rec.get("collapsed")]
        if collapsed:
            first = collapsed[0]
            text.append(f"{len(collapsed)} round(s) collapsed, first round {first['round']} ({first.get('collapse', '')}).")
    elif not pruned:
        text.append("No pruned round has finished yet.")
    text += [part.sentence for part in lenses if part.sentence]
    return " ".join(text)


def accuracy_figure(records: list[dict[str, Any]]) -> Figure:
    """Accuracy against % weights remaining, the dense baseline and chance as lines, collapsed rounds as ×."""
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    densities = [rec["density"] for rec in records]
    x = on_axis(densities)
    for key, label in (("test_top1", "test top-1"), ("val_top1", "val top-1"), ("test_top5", "test top-5")):
        if all(key in rec for rec in records):
            ax.plot(x, [rec[key] for rec in records], marker="o", markersize=3, label=label)
    dense = next((rec for rec in records if rec["round"] == 0), None)
    if dense is not None:
        ax.axhline(dense["test_top1"], color="black", linestyle="--", linewidth=1, label=f"dense test top-1 ({dense['test_top1']:.3g})")
    if records and "chance_top1" in records[0]:
        ax.axhline(records[0]["chance_top1"], color="grey", linestyle=":", linewidth=1, label="chance")
    hits = [(at, rec) for at, rec in zip(x, records) if rec.get("collapsed")]
    if hits:
        ax.plot([at for at, _ in hits], [rec["test_top1"] for _, rec in hits], "x", color="tab:red", markersize=9, mew=2, label="collapse")
        for at, rec in hits:
            ax.annotate(str(rec.get("collapse", "")), (at, rec["test_top1"]), fontsize=6, color="tab:red", xytext=(3, 5), textcoords="offset points")
    percent_axis(ax, densities)
    ax.set(ylabel="accuracy", ylim=(0, 1.02))
    ax.legend(fontsize="x-small")
    return fig


def shrink_reports(run: Run) -> list[tuple[str, dict[str, Any]]]:
    found = [(round_file(r, "shrink.json"), r) for r in run.rounds()]
    return [(rel, run.store.load_json(rel)) for rel, r in found if run.store.has(rel)]


def efficiency_section(run: Run, records: list[dict[str, Any]]) -> Section:
    section = Section("efficiency", "Effective FLOPs and measured latency",
                      "Effective FLOPs (each layer's FLOPs × its density) are simulated; latency is measured where "
                      "`prunelens shrink` physically removed pruned filters.")  # fmt: skip
    density = {rec["round"]: rec["density"] for rec in records}
    shrunk = shrink_reports(run)
    fig = Figure(figsize=(9.6 if shrunk else 6.4, 3.6), layout="constrained")
    axes = fig.subplots(1, 2 if shrunk else 1, squeeze=False).ravel()
    ds = [rec["density"] for rec in records]
    axes[0].plot(on_axis(ds), [rec["flops_effective"] / rec["flops_dense"] for rec in records], marker="o", markersize=3, label="effective (masked)")
    rows = []
    for rel, rep in shrunk:
        r = rep["round"]
        lat = rep["latency"]
        rows.append({"round": r, "% weights": 100 * density.get(r, math.nan), "params masked": rep["masked"]["params"],
                     "params shrunk": rep["shrunk"]["params"], "FLOPs effective": rep["masked"].get("flops_effective", math.nan),
                     "FLOPs shrunk": rep["shrunk"]["flops"], "latency masked (ms)": 1e3 * lat["masked"]["median"],
                     "latency shrunk (ms)": 1e3 * lat["shrunk"]["median"], "speed-up": lat["speedup"], "batch": rep.get("batch")})  # fmt: skip
        section.links.append((rel, f"round {r}: shrink.json"))
    if rows:
        frame = pd.DataFrame(rows)
        at = on_axis([density.get(r, 1.0) for r in frame["round"]])
        dense_flops = np.array([rep["masked"]["flops"] for _, rep in shrunk], dtype=float)
        axes[0].plot(at, frame["FLOPs shrunk"].to_numpy(dtype=float) / dense_flops, "s", label="shrunk (physical)")
        axes[1].plot(at, frame["latency masked (ms)"], "o", label="masked")
        axes[1].plot(at, frame["latency shrunk (ms)"], "s", label="shrunk")
        axes[1].set(ylabel="median latency per batch (ms)", ylim=(0, None))
        axes[1].legend(fontsize="x-small")
        percent_axis(axes[1], ds)
        section.tables.append(table(frame, "Masked (simulated) vs shrunk (physical) model per shrunk round", shrunk[0][0]))
    else:
        section.notes.append("No round was shrunk: run `prunelens shrink RUN --round R` for measured latency.")
    axes[0].set(ylabel="FLOPs / dense FLOPs", ylim=(0, 1.05))
    axes[0].legend(fontsize="x-small")
    percent_axis(axes[0], ds)
    section.figures.append(("Effective FLOPs (and latency) against % weights remaining", png(fig)))
    return section


def layer_section(records: list[dict[str, Any]]) -> Section:
    section = Section("layers", "Per-layer density and layer collapse",
                      "Layer sparsity against global sparsity (the dotted diagonal is uniform pruning); collapse is "
                      "structural (an emptied layer, no input→output path) or functional (constant outputs, at chance).")  # fmt: skip
    long = pd.DataFrame([{"round": rec["round"], "layer": name, "density": d, "global_density": rec["density"]}
                         for rec in records for name, d in rec.get("layers", {}).items()])  # fmt: skip
    if long.empty:
        return section
    section.figures.append(("Layer sparsity against global sparsity", png(layer_density_figure(long))))
    wide = long.pivot_table(index="layer", columns="round", values="density", sort=False)
    density = {rec["round"]: rec["density"] for rec in records}
    wide.columns = [f"round {r} ({percent(density[r])})" for r in wide.columns]
    section.tables.append(table(wide.reset_index(), "Density of each layer per round", "metrics.csv"))
    collapsed = [{"round": rec["round"], "% weights": 100 * rec["density"], "test top-1": rec["test_top1"],
                  "collapse": rec.get("collapse", ""), "empty layers": rec.get("empty_layers", [])}
                 for rec in records if rec.get("collapsed")]  # fmt: skip
    if collapsed:
        section.tables.append(table(pd.DataFrame(collapsed), "Collapsed rounds (× in the accuracy figure)", "metrics.csv"))
    else:
        section.notes.append("No round collapsed.")
    return section


@dataclass
class LensPart:
    section: Section
    sentence: str


def lens_class(name: str) -> type[Lens] | None:
    return LENSES.get(name) if name in LENSES else None


def read_table(run: Run, stem: str) -> pd.DataFrame | None:
    if run.store.has(f"{stem}.parquet"):
        return pd.read_parquet(io.BytesIO(run.store.read(f"{stem}.parquet")))
    if run.store.has(f"{stem}.csv"):
        return pd.read_csv(io.BytesIO(run.store.read(f"{stem}.csv")))
    return None


def headline_sentence(key: str, cls: type[Lens], headline: pd.DataFrame, records: list[dict[str, Any]]) -> str:
    """`key`: its headline metric at the sparsest round, at the dense round and in the reference rows."""
    labels = [str(v) for v in headline.iloc[:, 0]]
    rounds = [int(v) for v in labels if v.isdigit()]
    if not rounds:
        return ""
    last = str(max(rounds))
    refs = [r for r in labels if not r.isdigit()]
    rows = headline.set_axis(labels).iloc[:, 1:]

    def value(row: str, col: str) -> float:
        v = pd.to_numeric(pd.Series([rows.loc[row, col]]), errors="coerce").iloc[0]
        return float(v) if pd.notna(v) else math.nan

    metric = cls.headline_metric if cls.headline_metric in rows else None
    metric = metric or next((c for c in rows if math.isfinite(value(last, c)) and any(math.isfinite(value(r, c)) for r in refs)), None)
    metric = metric or next((c for c in rows if math.isfinite(value(last, c))), None)
    if metric is None:
        return ""
    density = next((rec["density"] for rec in records if str(rec["round"]) == last), math.nan)
    text = f"Lens {key}: {metric} is {value(last, metric):.3g} at round {last} ({percent(density)} of weights)"
    if "0" in rows.index and last != "0":
        text += f", {value('0', metric):.3g} at the dense round"
    levels = [f"{r} {value(r, metric):.3g}" for r in refs if math.isfinite(value(r, metric))]
    return text + (f"; references: {', '.join(levels)}." if levels else ".")


def lens_part(run: Run, name: str, options: dict[str, Any], records: list[dict[str, Any]]) -> LensPart:
    """A lens' section: its description, headline table (linked to its CSV), extra tables and stored figures."""
    cls = lens_class(name)
    key = lens_key(cls(options)) if cls else name
    section = Section(f"lens-{key}", f"Lens: {key}", tables_first=True)
    if cls is None:
        section.notes.append(f"lens {name!r} is not installed: only its files are listed.")
    else:
        section.intro = sentence(getattr(sys.modules.get(cls.__module__), "__doc__", None)) or sentence(cls.__doc__)
    long = read_table(run, f"lens_{key}")
    text = ""
    if long is None:
        section.notes.append(f"no table lens_{key}.csv yet: run `prunelens analyze {run.root.name}`.")
    elif cls is not None:
        headline = cls.headline(long)
        if headline is not None and len(headline):
            section.tables.append(table(headline, sentence(cls.headline.__doc__) or "Headline", f"lens_{key}.csv"))
            text = headline_sentence(key, cls, headline, records)
    own = [rel for rel in sorted(run.store.manifest) if rel == f"lens_{key}.csv" or (rel.startswith(f"lens_{key}_") and rel.endswith(".csv"))]
    section.links += [(rel, rel) for rel in own]
    if figures_present(run, key):
        for figure in run.store.load_json(lens_file(key, "figures.json")):
            section.figures.append((figure.replace("_", " "), run.store.read(lens_file(key, f"{figure}.png"))))
    elif long is not None:
        section.notes.append(f"no stored figures: `prunelens analyze {run.root.name}` draws them.")
    return LensPart(section, text)


def run_content(run: Run) -> dict[str, Any]:
    """Everything the run report shows."""
    records = run.records()
    lenses = [lens_part(run, spec.name, spec.options, records) for spec in stored_lenses(run)]
    accuracy = Section("accuracy", "Accuracy vs % weights remaining",
                       "Test and validation accuracy of every round against the share of prunable weights left; the "
                       "dashed line is the dense network (round 0).")  # fmt: skip
    if records:
        accuracy.figures.append(("Accuracy against % weights remaining", png(accuracy_figure(records))))
        frame = summary(records)
        accuracy.tables.append(table(frame.drop(columns=[c for c in ("train_seconds",) if c in frame]), "Per round", "metrics.csv"))
        if run.store.has("timings.csv"):
            accuracy.links.append(("timings.csv", "timings.csv (seconds per round)"))
    sections = [accuracy, *([efficiency_section(run, records), layer_section(records)] if records else [])]
    return {"title": f"prunelens report: {run.root.name}", "facts": facts(run, records), "story": story(run, records, lenses),
            "sections": [*sections, *(part.section for part in lenses)]}  # fmt: skip


# -- a sweep


def sweep_content(root: Path, run_link: Any) -> dict[str, Any]:
    """Everything the sweep report shows (`run_link(run_name)`: the relative link of a run's report, or None)."""
    frame = pd.read_csv(root / "summary.csv")
    labels = list(frame.columns[list(frame.columns).index("run") + 1 :]) if "run" in frame else []
    group = ["variant", *(c for c in labels if c != "seed")]
    acc = Section("accuracy", "Accuracy vs % weights remaining per variant",
                  "Test top-1 of every run; runs that share every label but the seed are drawn as their mean ± std.")  # fmt: skip
    variants = sorted(frame["variant"].unique()) if "variant" in frame else [0]
    fig = Figure(figsize=(min(4.2 * len(variants), 12.6), 3.6), layout="constrained")
    axes = fig.subplots(1, len(variants), squeeze=False).ravel()
    stats = []
    for (ax, v) in zip(axes, variants):
        part = frame[frame["variant"] == v] if "variant" in frame else frame
        for key, runs in part.groupby(group[1:], sort=False) if group[1:] else [("", part)]:
            key = key if isinstance(key, tuple) else (key,)
            name = " ".join(f"{c}={k}" for c, k in zip(group[1:], key)) or f"variant {v}"
            per = runs.groupby("round").agg(density=("density", "mean"), mean=("test_top1", "mean"), std=("test_top1", "std"),
                                            n=("run", "nunique")).reset_index()  # fmt: skip
            x = on_axis(list(per["density"]))
            if per["n"].max() > 1:
                ax.plot(x, per["mean"], marker="o", markersize=3, label=f"{name} (mean ± std, n={per['n'].max()})")
                ax.fill_between(x, per["mean"] - per["std"].fillna(0), per["mean"] + per["std"].fillna(0), alpha=0.25)
            else:
                ax.plot(x, per["mean"], marker="o", markersize=3, label=name)
            stats.append(per.assign(variant=v, group=name))
        percent_axis(ax, list(part["density"]))
        ax.set(title=f"variant {v}", ylabel="test top-1", ylim=(0, 1.02))
        ax.legend(fontsize="x-small")
    acc.figures.append(("Test top-1 against % weights remaining", png(fig)))
    if stats:
        means = pd.concat(stats)
        means["% weights"] = 100 * means["density"]
        means["test top-1"] = [f"{m:.3g} ± {sd:.2g}" if n > 1 else f"{m:.3g}" for m, sd, n in zip(means["mean"], means["std"], means["n"])]
        means = means.rename(columns={"n": "runs"})[["variant", "group", "round", "% weights", "runs", "test top-1"]]
        acc.tables.append(table(means, "Test top-1 per variant and label group (mean ± std over the seeds)", "summary.csv"))
    acc.tables.append(table(frame, "Summary: every round of every run", "summary.csv"))
    sections = [acc]
    mis = sorted(root.glob("mis_*.csv"))
    if mis:
        section = Section("mis", "MIS statistics across the sweep's runs", "Correlations and ANOVA of MIS against the pruning settings.")
        section.figures = [(p.stem.replace("_", " "), p.read_bytes()) for p in sorted(root.glob("mis_*.png"))]
        section.tables = [table(pd.read_csv(p), p.stem, p.name) for p in mis]
        sections.append(section)
    others = [p.name for p in sorted(root.glob("*.csv")) if p.name != "summary.csv" and p not in mis]
    runs = Section("runs", "Runs", "Each run's own report.")
    rows = []
    for name, part in frame.groupby("run", sort=False) if "run" in frame else []:
        last = part.sort_values("round").iloc[-1]
        rows.append({"run": name, **{c: last[c] for c in ["variant", *labels]}, "rounds": int(last["round"]),
                     "% weights": 100 * last["density"], "test top-1": last["test_top1"]})  # fmt: skip
        link = run_link(name)
        if link:
            runs.links.append((link, f"{name}: report"))
        else:
            runs.notes.append(f"run {name}: no report (`prunelens report {name}` writes it)")
    if rows:
        runs.tables.append(table(pd.DataFrame(rows), "The last round of each run", "summary.csv"))
    runs.links += [(name, name) for name in others]
    sections.append(runs)
    n = frame["run"].nunique() if "run" in frame else 0
    text = f"{n} runs in {len(variants)} variant(s)" + (f", grid over {', '.join(labels)}." if labels else ".")
    return {"title": f"prunelens sweep report: {root.name}", "facts": [("sweep", root.name), ("runs", str(n))], "story": text, "sections": sections}
