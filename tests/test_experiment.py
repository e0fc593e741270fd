"""End-to-end IMP runs: store contents, densities, determinism, resume/extend, rewinding."""

import pandas as pd
import pytest
import torch

from prunelens.experiment import run
from prunelens.masks import MaskSet
from prunelens.rounds import rewind
from prunelens.runs import Run
from prunelens.store import RunStore

TIMINGS = {"train_seconds", "eval_seconds", "prune_seconds"}


def outcome(run_dir, rounds):
    """Masks and metrics (without timings) of every round, read back from the store."""
    store = RunStore(run_dir)
    masks = [store.load_tensors(f"rounds/{r:03d}/masks.pt") for r in range(rounds + 1)]
    metrics = [{k: v for k, v in store.load_json(f"rounds/{r:03d}/metrics.json").items() if k not in TIMINGS} for r in range(rounds + 1)]
    return masks, metrics


def assert_same(a, b):
    for ma, mb in zip(a[0], b[0]):
        assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    assert a[1] == b[1]


def test_imp_run_end_to_end(tiny):
    cfg = tiny()
    result = run(cfg, quiet=True)
    assert [r["round"] for r in result.records] == [0, 1, 2]
    store = RunStore(result.run_dir)
    for rec in result.records:
        r = rec["round"]
        masks = MaskSet(store.load_tensors(f"rounds/{r:03d}/masks.pt"))
        weights = store.load_tensors(f"rounds/{r:03d}/weights.pt")
        assert rec["density"] == pytest.approx(0.7**r, abs=2e-3)
        assert rec["remaining_params"] == masks.alive()
        for name, mask in masks.items():
            assert weights[name][~mask].abs().sum() == 0  # stored weights are masked
        assert rec["nonzero_params"] <= rec["total_params"] - (masks.total() - masks.alive())
        assert rec["flops_effective"] < rec["flops_dense"] or r == 0
        assert 0 <= rec["test_top1"] <= rec["test_top5"] <= 1
    table = pd.read_parquet(result.run_dir / "metrics.parquet")
    assert set(table.columns) == {"round", "metric", "layer", "value"}
    assert table.equals(pd.read_csv(result.run_dir / "metrics.csv", keep_default_na=False).astype(table.dtypes))
    top1 = table[(table.metric == "test_top1")].set_index("round")["value"]
    assert top1.tolist() == [rec["test_top1"] for rec in result.records]


def test_same_seed_same_masks_and_metrics(tmp_path, tiny):
    a = run(tiny(), quiet=True)
    b = run(tiny(output_dir=str(tmp_path / "other")), quiet=True)
    assert a.run_dir.name == b.run_dir.name and a.run_dir != b.run_dir
    assert_same(outcome(a.run_dir, 2), outcome(b.run_dir, 2))
    c = run(tiny(seed=1, pruning={"rounds": 1}), quiet=True)
    assert c.run_dir.name != a.run_dir.name


def test_rerun_resumes_and_more_rounds_extend(tmp_path, tiny):
    first = run(tiny(pruning={"rounds": 1}), quiet=True)
    stamp = (first.run_dir / "rounds/001/weights.pt").stat().st_mtime_ns
    extended = run(tiny(), quiet=True)  # rounds: 2 — same run id
    assert extended.run_dir == first.run_dir
    assert (first.run_dir / "rounds/001/weights.pt").stat().st_mtime_ns == stamp  # not retrained
    fresh = run(tiny(output_dir=str(tmp_path / "fresh")), quiet=True)
    assert_same(outcome(extended.run_dir, 2), outcome(fresh.run_dir, 2))


def test_rewind_restores_saved_surviving_weights():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    mask = torch.rand(3, 4) > 0.5
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model[1].running_mean.fill_(7.0)
    rewind(model, saved, MaskSet({"0.weight": mask}))
    assert torch.equal(model[0].weight[mask], saved["0.weight"][mask])
    assert model[0].weight[~mask].abs().sum() == 0
    assert torch.equal(model[0].bias, saved["0.bias"]) and torch.equal(model[1].running_mean, saved["1.running_mean"])


@pytest.mark.parametrize("mode", ["step", "none"])
def test_rewind_modes_run(tiny, mode):
    result = run(tiny(pruning={"rewind": mode, "rewind_step": 3, "rounds": 1}), quiet=True)
    start = RunStore(result.run_dir).load_tensors("start.pt")
    init = RunStore(run(tiny(pruning={"rounds": 0}), quiet=True).run_dir).load_tensors("start.pt")
    differs = any(not torch.equal(start[k], init[k]) for k in start)
    assert differs == (mode == "step")  # θ_k after 3 dense steps differs from θ_0
    assert result.records[1]["density"] == pytest.approx(0.7, abs=2e-3)


def test_layer_collapse_is_flagged(tiny):
    result = run(tiny(pruning={"layer_fractions": {"fc.weight": 0.99}, "rounds": 2}), quiet=True)
    flags = [(rec["collapsed_structural"], rec["empty_layers"]) for rec in result.records]
    assert flags[0] == (False, []) and flags[2] == (True, ["fc.weight"])
    assert result.records[2]["collapsed"] and "empty layer" in result.records[2]["collapse"]


# 10 steps per round. none: rounds start at step 0, so round r continues at 10·r. step (k = 3): every round
# trains steps 3…9 (7 steps, round 0 too), so round r's step 3 maps to schedule step 7·r: offset 7·r − 3.
@pytest.mark.parametrize("rewind, expected", [("none", [0, 10, 20, 30]), ("step", [0, 4, 11, 18])])
def test_lr_offset_continues_the_schedule(rewind, expected):
    """Round r's LR schedule step = steps trained before round r + (s − its start)."""
    from types import SimpleNamespace

    from prunelens.config import PruningConfig
    from prunelens.rounds import lr_offset

    pruning = PruningConfig(rewind=rewind, rewind_step=3, lr_reset=False)
    ctx = SimpleNamespace(cfg=SimpleNamespace(pruning=pruning), steps=lambda r: 10)
    k = 3 if rewind == "step" else 0
    assert [lr_offset(ctx, r, k) for r in range(4)] == expected
    reset = SimpleNamespace(cfg=SimpleNamespace(pruning=PruningConfig(rewind=rewind, rewind_step=3)), steps=lambda r: 10)
    assert [lr_offset(reset, r, k) for r in range(4)] == [0, 0, 0, 0]


def test_random_masks_keep_per_layer_counts():
    from prunelens.analysis.controls import random_masks

    masks = MaskSet({"a": torch.rand(20, 30) > 0.7, "b": torch.rand(50) > 0.2})
    shuffled = random_masks(masks, seed=3)
    assert all(int(shuffled[n].sum()) == int(masks[n].sum()) for n in masks)
    assert not torch.equal(shuffled["a"], masks["a"])
    assert all(torch.equal(shuffled[n], random_masks(masks, seed=3)[n]) for n in masks)


@pytest.mark.parametrize("kind", ["random_reinit", "random_prune"])
def test_controls_train_per_round_and_cache(tiny, kind):
    from prunelens.analysis.controls import run_controls

    result = run(tiny(), quiet=True)
    table = run_controls(Run(result.run_dir), kind, quiet=True)
    assert table["round"].tolist() == [1, 2]
    assert table["ticket_test_top1"].tolist() == [rec["test_top1"] for rec in result.records[1:]]
    stored = RunStore(result.run_dir).load_json(f"controls/{kind}/round_001.json")
    assert stored["density"] == pytest.approx(result.records[1]["density"])  # same per-layer counts
    stamp = (result.run_dir / f"controls/{kind}/round_001.json").stat().st_mtime_ns
    assert run_controls(Run(result.run_dir), kind, quiet=True).equals(table)
    assert (result.run_dir / f"controls/{kind}/round_001.json").stat().st_mtime_ns == stamp
