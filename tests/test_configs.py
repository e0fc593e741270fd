"""The shipped study configs load, expand to the grids their comments promise, and keep their key settings."""

from pathlib import Path

import pytest

from prunelens.config import ExperimentConfig
from prunelens.sweep import Sweep, load

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    ("name", "points"),
    [("quickstart", 1), ("pruning_methods", 112), ("pruning_mis", 128), ("layerwise_importance", 15),
     ("lth_explain", 1), ("lth_explain_medmnist", 1)],
)  # fmt: skip
def test_config_expands(name, points):
    loaded = load(CONFIGS / f"{name}.yaml")
    found = loaded.points if isinstance(loaded, Sweep) else [loaded]
    assert len(found) == points
    cfgs = [p.cfg if not isinstance(p, ExperimentConfig) else p for p in found]
    assert len({c.run_id for c in cfgs}) == points  # every point is its own run


def test_study_settings():
    mis = load(CONFIGS / "pruning_mis.yaml")
    methods = {(p.cfg.pruning.method, p.cfg.pruning.scope, p.cfg.pruning.granularity) for p in mis.points}
    assert len(methods) == 4 and {m[2] for m in methods} == {"unstructured", "filters", "channels"}
    grid = {(m, p.cfg.pruning.rate, p.cfg.pruning.rounds, p.cfg.retraining.epochs, p.cfg.retraining.optimizer)
            for p in mis.points for m in [(p.cfg.pruning.method, p.cfg.pruning.scope, p.cfg.pruning.granularity)]}  # fmt: skip
    assert len(grid) == 4 * 4 * 2 * 2 * 2
    assert all(p.cfg.lenses[0].name == "mis" for p in mis.points)
    assert len({p.cfg.training.model_dump_json() for p in mis.points}) == 1  # one shared dense network
    lth = load(CONFIGS / "lth_explain.yaml")
    assert lth.pruning.rounds >= 10 and lth.pruning.fraction == 0.1 and [s.name for s in lth.lenses] == ["gradcam", "pcbm"]
    vo = load(CONFIGS / "layerwise_importance.yaml")
    assert {p.cfg.seed for p in vo.points} == {0, 1, 2} and all(p.cfg.pruning.rounds >= 15 for p in vo.points)
    assert {p.cfg.pruning.method for p in vo.points} == {"magnitude", "l1", "l2", "softmax", "minmax"}
