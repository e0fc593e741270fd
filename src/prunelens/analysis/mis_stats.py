"""MIS across pruned networks (docs/methods.md §16; Seuffert & von Rad, arXiv 2409.19727): one table of every
pruned model's MIS with its pruning settings, the correlations of MIS with the pruning rate and with accuracy,
and the ANOVA of MIS on the pruning settings.

Which models enter: every finished round of every run is a model. `collect` lists them all, the dense round 0
included (as its baseline); the statistics (`correlations`, `anova`) use the pruned rounds r ≥ 1 only — the
dense network is no pruned model, and a sweep's runs usually share one dense network, which would otherwise
enter many times. S&vR analyse every pruned model; an iterative run contributes one model per round.

Factors (`collect`): `method` is `pruning.method/scope/granularity`; `schedule` "one-shot" for a single pruning
round, else "iterative"; `rate_nominal` the round's nominal rate from its record (1 − (1 − f)^r; rounded to 6
decimals so that float noise makes no extra ANOVA level); `epochs` and `optimizer` those of the section that
trained the round (`retraining` for pruned rounds where the config has one, else `training`, as the runner
does); a pruned round retrained for 0 epochs has optimizer `none` — no optimiser touched it. `rate` is the actual
rate 1 − density (prunable weights), `accuracy` the round's test top-1, `network` the checksum of the round's
weights: grid points that differ only in the optimiser of 0 retraining epochs hold the same network, which
enters the statistics once.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from prunelens.errors import PrunelensError
from prunelens.report.figures import png
from prunelens.report.mis_figures import mis_vs_accuracy, mis_vs_density
from prunelens.runs import Run, round_file
from prunelens.store import atomic_write

COLUMNS = ["run", "round", "density", "rate", "rate_nominal", "method", "schedule", "epochs", "optimizer", "accuracy", "mis", "network"]
FACTORS = ("method", "rate_nominal", "epochs", "optimizer", "schedule")
"""The ANOVA's categorical factors: S&vR's four, plus the schedule (one-shot vs iterative, which S&vR's
method labels do not distinguish from each other here); any with a single level is left out."""
ANOVA_COLUMNS = ["term", "sum_sq", "df", "F", "p", "n", "r_squared", "formula", "dropped"]
CORRELATION_COLUMNS = ["x", "group", "n", "pearson_r", "pearson_p", "spearman_rho", "spearman_p"]
POOLED = "pooled"
RATE_DECIMALS = 6


def method_label(run: Run) -> str:
    p = run.config.pruning
    return f"{p.method}/{p.scope}/{p.granularity}"


def lens_table(run: Run, key: str) -> pd.DataFrame:
    """The run's `lens_<key>` long table (parquet where stored, else CSV; checksums verified)."""
    for name, reader in ((f"lens_{key}.parquet", pd.read_parquet), (f"lens_{key}.csv", pd.read_csv)):
        if run.store.has(name):
            return reader(io.BytesIO(run.store.read(name)))
    raise PrunelensError(f"{run.root}: no lens table lens_{key}.csv (run the mis lens on it: prunelens analyze)")


NO_TRAINING = "none"
"""The optimiser label of a pruned round retrained for 0 epochs."""


def collect(runs: Sequence[Run], key: str = "mis", metric: str = "mis") -> pd.DataFrame:
    """One row per (run, round) whose lens table has a model-level `metric` value (module docstring); the
    value is in column `mis` whatever `metric` is (`attrs` hold `key` and `metric`)."""
    rows: list[dict[str, Any]] = []
    for run in runs:
        table = lens_table(run, key)
        values = table[(table["kind"] == "model") & (table["metric"] == metric)].set_index("round")["value"]
        if values.empty:
            raise PrunelensError(f"{run.root}: lens_{key}.csv has no model-level {metric!r} rows")
        cfg, finished = run.config, run.rounds()
        one_shot = max(cfg.pruning.rounds, max(finished, default=0)) == 1
        for r in finished:
            if r not in values.index or not math.isfinite(float(values[r])):
                continue
            record = run.round(r).record()
            section = cfg.retraining if r > 0 and cfg.retraining is not None else cfg.training
            nominal = record.get("rate_nominal", 1 - (1 - cfg.pruning.round_fraction) ** r)
            rows.append({
                "run": run.root.name, "round": r, "density": record["density"], "rate": 1 - record["density"],
                "rate_nominal": round(float(nominal), RATE_DECIMALS), "method": method_label(run),
                "schedule": "one-shot" if one_shot else "iterative", "epochs": section.epochs,
                "optimizer": section.optimizer if r == 0 or section.epochs else NO_TRAINING,
                "accuracy": record["test_top1"], "mis": float(values[r]), "network": _digest(run, r),
            })  # fmt: skip
    out = pd.DataFrame(rows, columns=COLUMNS)
    out.attrs.update(key=key, metric=metric)
    return out


def _digest(run: Run, r: int) -> str:
    """The sha256 of the round's stored weights (identical networks, identical digests)."""
    return str(run.store.manifest.get(round_file(r, "weights.pt"), f"{run.root.name}/{r}"))


def pruned(table: pd.DataFrame) -> pd.DataFrame:
    """The models the statistics use: rounds ≥ 1, each network once. Pruned rounds retrained for 0 epochs do not
    depend on the retraining optimiser (labelled `none`), so grid points that differ only in it hold the same
    network (the same weights file checksum, column `network`): only the first is kept."""
    models = table[table["round"] > 0]
    return models.drop_duplicates(subset="network") if "network" in models else models


def _pair(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman of finite pairs; NaN for fewer than 3 pairs or a constant column. scipy warns
    (ConstantInputWarning, NearConstantInputWarning) and returns NaN or imprecise values there: constant columns
    are caught here first and the warnings are silenced on purpose, so a sweep's output is not flooded."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out = {"n": int(len(x)), "pearson_r": math.nan, "pearson_p": math.nan, "spearman_rho": math.nan, "spearman_p": math.nan}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (stats.ConstantInputWarning, stats.NearConstantInputWarning))
        pearson, spearman = stats.pearsonr(x, y), stats.spearmanr(x, y)
    return {**out, "pearson_r": float(pearson.statistic), "pearson_p": float(pearson.pvalue),
            "spearman_rho": float(spearman.statistic), "spearman_p": float(spearman.pvalue)}  # fmt: skip


def correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Pearson r and Spearman ρ (with n and two-sided p) of MIS against x ∈ {rate (actual), accuracy}, per
    method and pooled, over the pruned models (rounds ≥ 1)."""
    models = pruned(table)
    groups = [(str(m), models[models["method"] == m]) for m in sorted(models["method"].unique())] + [(POOLED, models)]
    rows = [
        {"x": x, "group": name, **_pair(g[x].to_numpy(float), g["mis"].to_numpy(float))}
        for x in ("rate", "accuracy")
        for name, g in groups
    ]
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


def _terms(models: pd.DataFrame, candidates: Sequence[str]) -> tuple[list[str], list[str]]:
    """The estimable terms, in order, and the dropped ones with the reason (`anova`)."""
    design = np.ones((len(models), 1))
    terms, dropped = [], []
    for name in candidates:
        term = name if name == "accuracy" else f"C({name})"
        column = models[name]
        if column.nunique() < 2:
            dropped.append(f"{term} (one level)")
            continue
        added = (
            column.to_numpy(float)[:, None]
            if name == "accuracy"
            else pd.get_dummies(column.astype(str), drop_first=True).to_numpy(float)
        )
        wider = np.hstack([design, added])
        if np.linalg.matrix_rank(wider) < np.linalg.matrix_rank(design) + added.shape[1]:
            dropped.append(f"{term} (aliased)")
            continue
        design = wider
        terms.append(term)
    return terms, dropped


def anova(table: pd.DataFrame, with_accuracy: bool) -> pd.DataFrame:
    """Type II ANOVA (statsmodels OLS + `anova_lm(typ=2)`) of MIS over the pruned models (rounds ≥ 1):
    `mis ~ C(method) + C(rate_nominal) + C(epochs) + C(optimizer) + C(schedule) [+ accuracy]`.

    Terms that cannot be estimated are left out of the formula and listed in `dropped`: a factor with a single
    level (accuracy: constant) as "C(f) (one level)", and one confounded with the terms before it (in the order
    above: its dummy columns do not raise the design's rank by levels − 1, e.g. optimizer when every SGD run
    also has other epochs than every Adam run) as "C(f) (aliased)", so the design always has full rank.

    One row per term plus `Residual`: `sum_sq`, `df`, `F`, `p` (statsmodels' `PR(>F)`); every row also carries
    the model's `n`, `r_squared`, the `formula` fitted and the `dropped` terms ("; "-separated), so a CSV keeps
    them. With no residual degrees of freedom (a saturated design) the terms' values are NaN; with no term left
    (`mis ~ 1`), only the Residual row; with fewer than 2 models, a Residual row of NaN.
    """
    from statsmodels.formula.api import ols
    from statsmodels.stats.anova import anova_lm

    models = pruned(table).dropna(subset=["mis", *(["accuracy"] if with_accuracy else [])])
    terms, dropped = _terms(models, [*FACTORS, *(["accuracy"] if with_accuracy else [])])
    formula = "mis ~ " + (" + ".join(terms) or "1")
    extra = {"n": len(models), "formula": formula, "dropped": "; ".join(dropped)}
    if len(models) < 2:
        return pd.DataFrame([{"term": "Residual", "sum_sq": math.nan, "df": math.nan, "F": math.nan, "p": math.nan, "r_squared": math.nan, **extra}],
                            columns=ANOVA_COLUMNS)  # fmt: skip
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a saturated fit divides by its 0 residual df
        fit = ols(formula, data=models).fit()
        if terms and fit.df_resid > 0:
            result = anova_lm(fit, typ=2).rename(columns={"PR(>F)": "p"}).rename_axis("term").reset_index()
        else:  # no term, or no residual df (statsmodels refuses the F tests)
            rows = [{"term": t, "sum_sq": math.nan, "df": math.nan, "F": math.nan, "p": math.nan} for t in terms]
            result = pd.DataFrame(
                [*rows, {"term": "Residual", "sum_sq": float(fit.ssr), "df": float(fit.df_resid), "F": math.nan, "p": math.nan}]
            )
        r_squared = float(fit.rsquared) if terms else 0.0
    return result.assign(r_squared=r_squared, **extra)[ANOVA_COLUMNS]


def mis_statistics(runs: Sequence[Run], key: str = "mis", metric: str = "mis") -> dict[str, pd.DataFrame]:
    """The models table (`collect`, dense rounds included), the correlations and the ANOVA without and with
    accuracy as a covariate."""
    table = collect(runs, key, metric)
    return {
        "mis_models": table,
        "mis_correlations": correlations(table),
        "mis_anova": anova(table, with_accuracy=False),
        "mis_anova_accuracy": anova(table, with_accuracy=True),
    }


def save_mis_statistics(runs: Sequence[Run], key: str, out: Path, suffix: str = "") -> dict[str, pd.DataFrame]:
    """`mis_statistics` written to `out` as `<table><suffix>.csv`, with `mis_vs_density<suffix>.png` and
    `mis_vs_accuracy<suffix>.png`."""
    tables = mis_statistics(runs, key)
    for name, frame in tables.items():
        atomic_write(out / f"{name}{suffix}.csv", frame.to_csv(index=False).encode())
    for name, draw in (("mis_vs_density", mis_vs_density), ("mis_vs_accuracy", mis_vs_accuracy)):
        atomic_write(out / f"{name}{suffix}.png", png(draw(tables["mis_models"])))
    return tables
