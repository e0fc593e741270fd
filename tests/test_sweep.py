"""Sweeps: grid × variants expand to ordinary runs; bad sweep specs are one-line errors."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from prunelens.cli import main
from prunelens.errors import PrunelensError
from prunelens.sweep import Sweep, load


def write(tmp_path, sweep, **base):
    data = {
        "name": "sw",
        "output_dir": str(tmp_path / "runs"),
        "dataset": {"name": "shapes", "image_size": 16, "options": {"n_train": 200, "n_val": 50, "n_test": 50}},
        "model": {"name": "conv2", "options": {"width": 0.125}},
        "pruning": {"rounds": 1},
        "training": {"epochs": 1, "batch_size": 50},
        **base,
        "sweep": sweep,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_expand_grid_and_variants(tmp_path):
    sweep = load(write(tmp_path, {"variants": [{}, {"model": {"name": "lenet_300_100", "options": {}}}], "grid": {"pruning.scope": ["global", "layerwise"], "seed": [0, 1]}}))
    assert isinstance(sweep, Sweep) and len(sweep.points) == 8
    assert {p.cfg.model.name for p in sweep.points} == {"conv2", "lenet_300_100"}
    assert all(p.cfg.model.options == {} for p in sweep.points if p.cfg.model.name == "lenet_300_100")
    assert len({p.cfg.run_id for p in sweep.points}) == 8
    assert sweep.points[3].labels == {"pruning.scope": "layerwise", "seed": 1}


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"grid": {"pruning.fraction": [0.2, 1.5]}}, "pruning.fraction: 1.5 is not in (0, 1)"),
        ({"grid": {"pruning.method": []}}, "sweep.grid"),
        ({"variants": {"model": {}}}, "sweep.variants"),
        ({"grids": {}}, "sweep: expected"),
    ],
)
def test_bad_sweeps(tmp_path, spec, message):
    with pytest.raises(PrunelensError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(write(tmp_path, spec))


def test_sweep_runs_and_writes_summary(tmp_path, capsys):
    path = write(tmp_path, {"grid": {"pruning.scope": ["global", "layerwise"]}, "compare": True})
    assert main(["run", str(path), "-q"]) == 0
    out = tmp_path / "runs" / "sweeps" / "sw"
    table = pd.read_csv(out / "summary.csv")
    assert len(table) == 4 and set(table["pruning.scope"]) == {"global", "layerwise"}
    assert table.groupby("run")["density"].min().round(3).tolist() == [0.8, 0.8]
    jaccard = pd.read_csv(out / "jaccard_variant0.csv")
    assert set(jaccard["a"]) | set(jaccard["b"]) == {"pruning.scope=global", "pruning.scope=layerwise"}


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    """Every shipped config validates, and names only registered datasets, models, methods and lenses."""
    from prunelens.data import DATASETS
    from prunelens.lenses import LENSES
    from prunelens.models import MODELS
    from prunelens.pruning import check

    loaded = load(path)
    configs = [p.cfg for p in loaded.points] if isinstance(loaded, Sweep) else [loaded]
    for cfg in configs:
        assert cfg.dataset.name in DATASETS and cfg.model.name in MODELS
        assert all(lens.name in LENSES for lens in cfg.lenses)
        check(cfg.pruning)
