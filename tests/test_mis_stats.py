"""MIS across pruned networks (analysis/mis_stats.py): correlations and Type II ANOVA against scipy, statsmodels
and sums of squares by hand; `collect` on real tiny runs with the mis lens; the MIS figures; the sweep's files."""

import io
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import tiny_config
from matplotlib.figure import Figure
from scipy import stats
from statsmodels.formula.api import ols
from statsmodels.stats.anova import anova_lm

from prunelens import experiment
from prunelens.analysis.mis_stats import COLUMNS, anova, collect, correlations, mis_statistics
from prunelens.analyze import lens_key, load_result
from prunelens.errors import PrunelensError
from prunelens.lenses import LENSES
from prunelens.report.figures import LensView, png
from prunelens.report.mis_figures import mis_layer_figure, mis_lens_figures, mis_vs_accuracy, mis_vs_density
from prunelens.runs import Run
from prunelens.sweep import load as load_sweep
from prunelens.sweep import run_sweep

METHODS = ("magnitude/global/unstructured", "random/global/unstructured", "synflow/global/unstructured")
RATES = (0.2, 0.5, 0.8, 0.9)
OPTIMIZERS = ("adam", "sgd")
MIS_OPTIONS = {"encoder": "descriptor", "pool_size": 100}


def known_table(seeds: int = 2) -> pd.DataFrame:
    """3 methods × 4 rates × 2 optimizers × `seeds`, one-shot runs: mis = 0.9 − 0.3·rate + method and optimizer
    offsets + deterministic noise; every run's dense round 0 too (which the statistics must ignore)."""
    rows, i = [], 0
    for m, method in enumerate(METHODS):
        for rate in RATES:
            for o, optimizer in enumerate(OPTIMIZERS):
                for seed in range(seeds):
                    i += 1
                    run = f"{method.split('/')[0]}-{rate}-{optimizer}-{seed}"
                    density = (1 - rate) * (1 + 0.01 * math.sin(i))
                    accuracy = 0.9 - 0.4 * rate**2 + 0.02 * math.cos(2.3 * i)
                    mis = 0.9 - 0.3 * rate + 0.04 * m - 0.03 * o + 0.02 * math.sin(7.1 * i)
                    common = {
                        "run": run,
                        "rate_nominal": rate,
                        "method": method,
                        "schedule": "one-shot",
                        "epochs": 5,
                        "optimizer": optimizer,
                    }
                    rows.append({**common, "round": 0, "density": 1.0, "rate": 0.0, "accuracy": 0.95, "mis": 0.99, "network": "dense"})
                    rows.append({**common, "round": 1, "density": density, "rate": 1 - density, "accuracy": accuracy, "mis": mis,
                                 "network": run})  # fmt: skip
    return pd.DataFrame(rows)[COLUMNS]


# --- correlations -------------------------------------------------------------------------------------------


def test_correlations_match_scipy_per_method_and_pooled():
    table = known_table()
    pruned = table[table["round"] > 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = correlations(table)
    assert list(got[["x", "group"]].itertuples(index=False, name=None)) == [
        (x, g) for x in ("rate", "accuracy") for g in (*METHODS, "pooled")
    ]
    for row in got.itertuples(index=False):
        subset = pruned if row.group == "pooled" else pruned[pruned["method"] == row.group]
        pearson, spearman = stats.pearsonr(subset[row.x], subset["mis"]), stats.spearmanr(subset[row.x], subset["mis"])
        assert row.n == len(subset) == (48 if row.group == "pooled" else 16)
        assert (row.pearson_r, row.pearson_p) == pytest.approx((pearson.statistic, pearson.pvalue), rel=1e-12)
        assert (row.spearman_rho, row.spearman_p) == pytest.approx((spearman.statistic, spearman.pvalue), rel=1e-12)
    assert (got[got["x"] == "rate"]["pearson_r"] < -0.8).all()  # mis falls with the rate by construction


def test_correlations_are_nan_for_small_or_constant_groups_without_warnings():
    table = known_table(seeds=1)
    small = table[(table["method"] == METHODS[0]) & (table["rate_nominal"] == 0.2)]  # 2 pruned models
    constant = table.assign(mis=np.where(table["method"] == METHODS[1], 0.5, table["mis"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny, flat = correlations(small), correlations(constant)
    assert (
        tiny["n"].tolist() == [2, 2, 2, 2] and tiny[["pearson_r", "pearson_p", "spearman_rho", "spearman_p"]].isna().all().all()
    )
    for row in flat.itertuples(index=False):
        assert math.isnan(row.pearson_r) == (row.group == METHODS[1]) and math.isnan(row.spearman_p) == (row.group == METHODS[1])


# --- ANOVA --------------------------------------------------------------------------------------------------


def ssr(formula: str, data: pd.DataFrame) -> tuple[float, float]:
    fit = ols(formula, data=data).fit()
    return float(fit.ssr), float(fit.df_resid)


@pytest.mark.parametrize("with_accuracy", [False, True])
def test_anova_matches_statsmodels_and_nested_model_f_tests(with_accuracy):
    table = known_table()
    data = table[table["round"] > 0]
    terms = ["C(method)", "C(rate_nominal)", "C(optimizer)", *(["accuracy"] if with_accuracy else [])]
    got = anova(table, with_accuracy).set_index("term")
    assert list(got.index) == [*terms, "Residual"]
    assert got["dropped"].iloc[0] == "C(epochs) (one level); C(schedule) (one level)"
    assert (got["n"] == 48).all() and got["formula"].iloc[0] == "mis ~ " + " + ".join(terms)
    expected = anova_lm(ols("mis ~ " + " + ".join(terms), data=data).fit(), typ=2)
    assert got["F"].iloc[:-1].to_numpy() == pytest.approx(expected["F"].iloc[:-1].to_numpy(), rel=1e-10)
    assert got["p"].iloc[:-1].to_numpy() == pytest.approx(expected["PR(>F)"].iloc[:-1].to_numpy(), rel=1e-8)
    assert got["r_squared"].iloc[0] == pytest.approx(ols("mis ~ " + " + ".join(terms), data=data).fit().rsquared)
    # Type II for main effects: each term against the model without it, F = (ΔSSR / df) / (SSR / df_resid)
    full, df_full = ssr("mis ~ " + " + ".join(terms), data)
    for term in terms:
        reduced, df_reduced = ssr("mis ~ " + " + ".join(t for t in terms if t != term), data)
        f = ((reduced - full) / (df_reduced - df_full)) / (full / df_full)
        assert got.loc[term, "sum_sq"] == pytest.approx(reduced - full, rel=1e-9)
        assert got.loc[term, "df"] == df_reduced - df_full
        assert got.loc[term, "F"] == pytest.approx(f, rel=1e-9)
        assert got.loc[term, "p"] == pytest.approx(stats.f.sf(f, df_reduced - df_full, df_full), rel=1e-8)
    assert got.loc["Residual", "sum_sq"] == pytest.approx(full) and got.loc["Residual", "df"] == df_full


def test_balanced_one_factor_sum_of_squares_is_between_groups():
    rng = np.random.default_rng(0)
    rows = [{"run": f"{m}{i}", "round": 1, "density": 0.5, "rate": 0.5, "rate_nominal": 0.5, "method": m, "schedule": "one-shot",
             "epochs": 5, "optimizer": "sgd", "accuracy": 0.9, "mis": float(v)}
            for m, centre in zip(METHODS, (0.6, 0.7, 0.9)) for i, v in enumerate(centre + 0.05 * rng.standard_normal(6))]  # fmt: skip
    table = pd.DataFrame(rows)
    got = anova(table, with_accuracy=False).set_index("term")
    y = table["mis"].to_numpy()
    groups = [table[table["method"] == m]["mis"].to_numpy() for m in METHODS]
    between = sum(len(g) * (g.mean() - y.mean()) ** 2 for g in groups)
    within = sum(((g - g.mean()) ** 2).sum() for g in groups)
    assert got.loc["C(method)", "sum_sq"] == pytest.approx(between, rel=1e-10)
    assert got.loc["Residual", "sum_sq"] == pytest.approx(within, rel=1e-10)
    assert got.loc["C(method)", "F"] == pytest.approx((between / 2) / (within / 15), rel=1e-10)
    assert got["r_squared"].iloc[0] == pytest.approx(between / (between + within))
    assert "C(rate_nominal) (one level)" in got["dropped"].iloc[0] and "accuracy" not in got["dropped"].iloc[0]
    assert "accuracy (one level)" in anova(table, with_accuracy=True)["dropped"].iloc[0]


def test_anova_drops_aliased_factors_and_survives_degenerate_designs():
    table = known_table()
    confounded = table.assign(epochs=np.where(table["optimizer"] == "sgd", 5, 10))  # optimizer ≡ epochs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = anova(confounded, with_accuracy=False)
        first = table[
            (table["round"] == 1)
            & (table["method"] == METHODS[0])
            & (table["optimizer"] == "sgd")
            & table["run"].str.endswith("-0")
        ]
        saturated = anova(first.head(2), with_accuracy=False)  # two models, two rates: no residual df
        single = anova(table.head(2), with_accuracy=False)  # one pruned model
    assert got["term"].tolist() == ["C(method)", "C(rate_nominal)", "C(epochs)", "Residual"]
    assert "C(optimizer) (aliased)" in got["dropped"].iloc[0]
    assert saturated["term"].tolist() == ["C(rate_nominal)", "Residual"] and saturated["F"].isna().all()
    assert saturated["df"].iloc[-1] == 0
    assert single["term"].tolist() == ["Residual"] and single["n"].iloc[0] == 1


# --- real runs ----------------------------------------------------------------------------------------------


def mis_config(tmp_path, **sections):
    return tiny_config(tmp_path, lenses=[{"name": "mis", "options": MIS_OPTIONS}], **sections)


@pytest.fixture(scope="module")
def mis_runs(tmp_path_factory):
    """Two 2-round runs with the mis lens: magnitude pruning, and random pruning retrained for 2 epochs."""
    root = tmp_path_factory.mktemp("mis")
    configs = [mis_config(root), mis_config(root, pruning={"method": "random"}, retraining={"epochs": 2})]
    return root, [Run(experiment.run(cfg, quiet=True).run_dir) for cfg in configs]


def stored_table(run: Run, key: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(run.store.read(f"lens_{key}.csv")))


def test_collect_matches_lens_tables_and_records(mis_runs):
    _, runs = mis_runs
    key = lens_key(LENSES.get("mis")(MIS_OPTIONS))
    table = collect(runs, key)
    assert list(table.columns) == COLUMNS and len(table) == 6 and table.attrs == {"key": key, "metric": "mis"}
    for run, rows in zip(runs, (table.iloc[:3], table.iloc[3:])):
        lens = stored_table(run, key)
        model = lens[(lens["kind"] == "model") & (lens["metric"] == "mis")].set_index("round")["value"]
        records = {r: run.round(r).record() for r in run.rounds()}
        assert rows["run"].eq(run.root.name).all() and rows["round"].tolist() == [0, 1, 2]
        assert rows["mis"].tolist() == pytest.approx([model[r] for r in (0, 1, 2)])
        assert rows["density"].tolist() == [records[r]["density"] for r in (0, 1, 2)]
        assert rows["rate"].tolist() == pytest.approx([1 - records[r]["density"] for r in (0, 1, 2)])
        assert rows["accuracy"].tolist() == [records[r]["test_top1"] for r in (0, 1, 2)]
        assert rows["rate_nominal"].tolist() == [0.0, 0.3, 0.51]  # 1 − 0.7^r, float noise rounded away
        assert rows["schedule"].eq("iterative").all() and rows["optimizer"].eq("sgd").all()
    assert table["method"].tolist() == ["magnitude/global/unstructured"] * 3 + ["random/global/unstructured"] * 3
    assert table["epochs"].tolist() == [1, 1, 1, 1, 2, 2]  # pruned rounds of the second run: its retraining section
    stats_ = mis_statistics(runs, key)
    assert set(stats_) == {"mis_models", "mis_correlations", "mis_anova", "mis_anova_accuracy"}
    assert stats_["mis_correlations"]["n"].tolist() == [2, 2, 4, 2, 2, 4]  # rounds ≥ 1 only
    assert (stats_["mis_anova"]["n"] == 4).all() and stats_["mis_anova"]["term"].iloc[-1] == "Residual"


def test_collect_without_the_lens_table_names_run_and_file(mis_runs):
    _, runs = mis_runs
    with pytest.raises(PrunelensError, match=rf"{runs[0].root.name}: no lens table lens_mis\.csv"):
        collect(runs, "mis")
    with pytest.raises(PrunelensError, match="no model-level 'mis_confidence' rows"):
        collect(runs, lens_key(LENSES.get("mis")(MIS_OPTIONS)), metric="mis_confidence")


def test_lens_figures_are_registered_drawn_and_render(mis_runs):
    _, runs = mis_runs
    run, key = runs[0], lens_key(LENSES.get("mis")(MIS_OPTIONS))
    assert all(run.store.has(f"lenses/{key}/{name}.png") for name in ("mis_density", "mis_layers"))
    setup = load_result(run, key, "setup")
    view = LensView(
        stored_table(run, key), setup.tensors, setup.artefacts, lambda r: load_result(run, key, f"round_{r:03d}").tensors
    )
    figures = mis_lens_figures(view)
    assert set(figures) == {"mis_density", "mis_layers"}
    for figure in figures.values():
        assert isinstance(figure, Figure) and figure.axes and png(figure)[:4] == b"\x89PNG"
    labels = [t.get_text() for t in mis_layer_figure(view).axes[0].get_legend().get_texts()]
    assert labels[0] == "dense" and labels[1].startswith("round 2") and labels[2] == "floor: random init"


def test_cross_run_figures_render():
    table = known_table()
    for draw in (mis_vs_density, mis_vs_accuracy):
        figure = draw(table)
        assert isinstance(figure, Figure) and len(figure.axes) == 1 and len(png(figure)) > 1000
    assert len(mis_vs_density(table).axes[0].get_legend().get_texts()) == 2 * len(METHODS) + 1  # per method × optimizer, dense
    assert len(mis_vs_density(table.iloc[:0]).axes) == 1  # an empty table still draws


def test_sweep_writes_mis_statistics(mis_runs):
    """The two runs again as a sweep (resumed: nothing trains) → the MIS tables and figures in its directory."""
    root, runs = mis_runs
    base = yaml.safe_load(runs[0].store.read("config.yaml").decode())
    base["sweep"] = {"variants": [{}, {"pruning": {"method": "random"}, "retraining": {**base["training"], "epochs": 2}}]}
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(base))
    sweep = load_sweep(path)
    assert [p.cfg.run_dir for p in sweep.points] == [run.root for run in runs]
    run_sweep(sweep, quiet=True)
    out = sweep.out_dir
    for name in ("mis_models", "mis_correlations", "mis_anova", "mis_anova_accuracy"):
        assert len(pd.read_csv(out / f"{name}.csv"))
    assert pd.read_csv(out / "mis_models.csv")["run"].tolist() == [run.root.name for run in runs for _ in range(3)]
    assert all((out / f"{name}.png").read_bytes()[:4] == b"\x89PNG" for name in ("mis_vs_density", "mis_vs_accuracy"))


def test_cli_compare_mis_writes_the_statistics(mis_runs, tmp_path, capsys):
    from prunelens.cli import main

    root, runs = mis_runs
    key = lens_key(LENSES.get("mis")(MIS_OPTIONS))
    out = tmp_path / "stats"
    assert main(["compare", str(runs[0].root), str(runs[1].root), "--mis", key, "--out", str(out)]) == 0
    assert "MIS vs pruning rate and accuracy" in capsys.readouterr().out
    written = pd.read_csv(out / "mis_correlations.csv")
    pd.testing.assert_frame_equal(written, mis_statistics(runs, key)["mis_correlations"], check_dtype=False)
    assert (out / "mis_vs_density.png").stat().st_size > 0
    assert main(["compare", str(runs[0].root), "--mis", "--out", str(out)]) == 2  # default key: no such table


def test_identical_networks_enter_once():
    """Points that differ only in the optimiser of 0 retraining epochs hold the same weights: counted once."""
    table = known_table(seeds=1)
    twin = table[table["round"] == 1].iloc[:4].assign(run=lambda t: t["run"] + "-twin")
    both = pd.concat([table, twin], ignore_index=True)
    pd.testing.assert_frame_equal(correlations(both), correlations(table))
