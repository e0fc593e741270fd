"""What a researcher reads off the tables and figures: top-5 only where it means something, degenerate counts
shown wherever a metric is, readable density axes, the names `prunelens list` prints."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config

from prunelens.cli import main
from prunelens.experiment import run, summary
from prunelens.report.figures import MAX_TICKS, density_figure, density_ticks, mprt_figure


def test_top5_only_with_more_than_five_classes(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (120, 64))
    labels = np.arange(120) % 3
    path = tmp_path / "three.csv"
    pd.DataFrame(np.column_stack([pixels, labels]), columns=[*(f"p{i}" for i in range(64)), "label"]).to_csv(path, index=False)
    cfg = tiny_config(tmp_path, dataset={"name": "csv", "root": str(path), "image_size": None, "options": {}},
                      model={"name": "lenet_300_100", "options": {}}, pruning={"rounds": 0})  # fmt: skip
    record = run(cfg, quiet=True).records[0]
    assert "test_top1" in record and "test_top5" not in record and "val_top5" not in record
    assert "test_top5" not in summary([record]).columns
    assert record["chance_top1"] == pytest.approx(1 / 3, abs=0.05)  # majority share of the test split


def test_density_ticks_never_crowd():
    densities = [0.8**r for r in range(31)]
    ticks = density_ticks(densities)
    assert len(ticks) <= MAX_TICKS and ticks[0] == 1.0 and ticks[-1] == densities[-1]
    gaps = np.diff(np.log10(ticks))
    assert (gaps < 0).all() and gaps.max() / gaps.min() < 3  # evenly spread in log space
    assert density_ticks([1.0, 0.5]) == [1.0, 0.5]


def lens_rows(values: list[float], degenerate: list[int]) -> pd.DataFrame:
    return pd.DataFrame([{"round": r, "density": 0.5**r, "kind": "pruned_vs_dense", "metric": "spearman", "value": v, "n": 8 - d,
                          "nan": d, "degenerate": d} for r, (v, d) in enumerate(zip(values, degenerate))])  # fmt: skip


def test_degenerate_counts_are_written_on_the_figures():
    table = pd.concat([lens_rows([1.0, 0.6, math.nan], [0, 3, 8]),
                       pd.DataFrame([{"round": 0, "density": 1.0, "kind": "floor", "metric": "spearman", "value": 0.1, "n": 8, "nan": 0, "degenerate": 0}])])  # fmt: skip
    fig = density_figure(table, ["pruned_vs_dense"], "t", {"floor": "floor"})
    assert [t.get_text() for t in fig.axes[0].texts] == ["3 deg."]  # partly degenerate: counted at the point
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert "all maps degenerate" in labels and any("floor" in label for label in labels)  # no value: marked, not dropped
    mprt = pd.DataFrame([{"step": s, "randomised": f"l{s}", "metric": "spearman", "value": v, "n": n, "nan": 8 - n, "degenerate": 8 - n}
                         for s, v, n in ((1, 0.5, 8), (2, math.nan, 0))])  # fmt: skip
    fig = mprt_figure(mprt, "standard")
    assert "all maps degenerate" in [line.get_label() for line in fig.axes[0].lines]
    assert [round(bar.get_height(), 3) for bar in fig.axes[1].patches] == [0.0, 1.0]


def test_list_names_scopes_and_granularities(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "pruning scopes: global, layerwise, uniform_plus, erk" in out
    assert "granularities: unstructured, filters, channels" in out and "lenses: gradcam" in out


def test_pruning_to_nothing_draws_without_warnings(tmp_path):
    """Densities reaching 0 and rounds whose maps are all degenerate: every figure is drawn, nothing is printed."""
    import warnings

    lens = {"name": "gradcam", "options": {"faithfulness": False, "mprt": False, "references": ["floor"]}}
    cfg = tiny_config(tmp_path, pruning={"rounds": 12, "fraction": 0.7}, lenses=[lens], lens_images=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(cfg, quiet=True)
    assert result.records[-1]["density"] == 0 and result.records[-1]["collapsed"]
    assert [str(w.message) for w in caught if issubclass(w.category, (RuntimeWarning, UserWarning))] == []
    assert (result.run_dir / f"lenses/{result.lenses[0].key}/consistency.png").is_file()


@pytest.mark.slow
def test_thread_and_denormal_benchmark_prints_its_ratios():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "bench_threads.py"
    out = subprocess.run([sys.executable, str(script), "--quick", "--images", "200"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    for line in ("flushed ÷ not, alone (b ÷ a)", "2 threads ÷ 1 thread, 2 at once (c ÷ e)", "fair sharing: 2", "Subnormal values"):
        assert line in out.stdout
    assert "cores busy in OTHER processes" in out.stdout
