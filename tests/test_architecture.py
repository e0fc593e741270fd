"""The architecture step: runs of prunelens 0.1 stay readable, the dense round is shared, references are runs of
their own, lens results are keyed by their options and independent of the order rounds are analysed in."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import tiny_config
from test_reliability import snapshot

from prunelens.analyze import load_result
from prunelens.cache import FileCache
from prunelens.cli import main
from prunelens.data import build_dataset
from prunelens.dependencies import dense_config, reference_config
from prunelens.experiment import prepare, reference_models, run
from prunelens.lenses.base import LensContext, LensRound
from prunelens.lenses.data import LensData
from prunelens.lenses.gradcam import GradCAMLens
from prunelens.runs import Run

FIXTURE = Path(__file__).parent / "fixtures" / "old_runs"
OLD, OLD_CEILING = "old-81189aa1dd83", "old-ceiling-3247a9bf6df2"
PRIMARY = ("canonical.json", "config.yaml", "start.pt", "rounds/000/weights.pt", "rounds/002/masks.pt", "rounds/002/metrics.json")


@pytest.fixture
def old_runs(tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(FIXTURE, root)
    return root


def test_every_command_reads_a_run_of_prunelens_0_1(old_runs, capsys):
    before = {rel: (old_runs / OLD / rel).read_bytes() for rel in PRIMARY}
    old = Run.open(OLD, old_runs)
    assert old.format == 1 and old.rounds() == [0, 1, 2]
    assert old.input_shape == (3, 16, 16) and old.info["num_classes"] == 10  # read off its data, as 0.1 built it
    old.round(2).masks().check_zero(old.round(2).model())
    out = ["--output-dir", str(old_runs)]
    assert main(["show", "old-8118", *out]) == 0  # name + hash prefix
    assert "0.4897" in capsys.readouterr().out
    assert main(["compare", OLD, OLD_CEILING, *out, "--out", str(old_runs.parent / "cmp")]) == 0
    assert main(["shrink", OLD, *out, "--repeats", "1", "--batch", "4"]) == 0
    assert main(["control", OLD, *out, "--kind", "random_prune", "-q"]) == 0
    assert main(["analyze", OLD, *out, "-q"]) == 0  # the config's lens; its 0.1 results are recomputed
    assert {rel: (old_runs / OLD / rel).read_bytes() for rel in PRIMARY} == before
    lens = pd.read_csv(old_runs / OLD / "lens_gradcam-175b4f21.csv")
    assert {"position", "same_init", "other_seed"} <= set(lens["kind"]) and "ceiling" not in set(lens["kind"])
    assert Run(old_runs / OLD).store.stale() == []


def test_dense_round_is_shared_by_runs_that_differ_only_in_pruning(tmp_path):
    a = run(tiny_config(tmp_path, pruning={"method": "l1", "rounds": 1}), quiet=True)
    dense_dir = tmp_path / "runs" / dense_config(tiny_config(tmp_path)).run_dir.name
    stamp = (dense_dir / "rounds/000/weights.pt").stat().st_mtime_ns
    b = run(tiny_config(tmp_path, pruning={"method": "random", "scope": "layerwise", "rounds": 1}, retraining={"lr": 0.01}), quiet=True)
    assert a.run_dir != b.run_dir and a.records[0]["dense_run"] == b.records[0]["dense_run"] == dense_dir.name
    assert (dense_dir / "rounds/000/weights.pt").stat().st_mtime_ns == stamp  # trained once
    wa, wb = (Run(r.run_dir).round(0).weights() for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "runs").iterdir()) == ["dense", "tiny", "tiny"]
    step = run(tiny_config(tmp_path, pruning={"rewind": "step", "rewind_step": 3, "rounds": 0}), quiet=True)
    assert step.records[0]["dense_run"] != dense_dir.name  # a rewind step changes round 0: its own dense run


def test_references_are_dense_runs_sharing_or_not_sharing_the_initialisation(tmp_path):
    cfg = tiny_config(tmp_path, pruning={"rounds": 0})
    same, other = reference_config(cfg, "same_init"), reference_config(cfg, "other_seed")
    dense = dense_config(cfg)
    assert {k for k in same.canonical() if same.canonical()[k] != dense.canonical().get(k)} == {"order_seed"}
    assert same.seed == dense.seed and same.noise_seed != dense.noise_seed and other.seed == dense.seed + 1
    p = prepare(cfg)
    from prunelens.progress import Reporter

    models = reference_models(p, ["floor", "same_init", "other_seed"], Reporter(quiet=True))
    start = {kind: Run(r.run_dir).start() for kind, r in (("dense", run(dense, quiet=True)), ("same_init", run(same, quiet=True)), ("other_seed", run(other, quiet=True)))}
    assert all(torch.equal(start["dense"][k], start["same_init"][k]) for k in start["dense"])  # the same θ₀
    assert not all(torch.equal(start["dense"][k], start["other_seed"][k]) for k in start["dense"])
    trained = Run(run(dense, quiet=True).run_dir).round(0).weights()
    assert not all(torch.equal(trained[k], models["same_init"].state_dict()[k]) for k in trained)  # another data order
    from prunelens.rounds import Context

    orders = [next(iter(Context(c, p.bundle, p.build(), Reporter(quiet=True)).loader(c.training).epoch(0)))[1] for c in (dense, same)]
    assert not torch.equal(*orders)
    assert set(models) == {"floor", "same_init", "other_seed"} and not models["floor"].training


@pytest.fixture(scope="module")
def two_lens_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lenses")
    lenses = [{"name": "gradcam", "options": {"faithfulness": False}}, {"name": "gradcam", "options": {"faithfulness": False, "target": "predicted"}}]
    cfg = tiny_config(tmp, lenses=lenses, lens_images=8)
    return cfg, run(cfg, quiet=True)


def test_two_option_sets_of_one_lens_keep_separate_tables(two_lens_run):
    cfg, result = two_lens_run
    keys = [lens.key for lens in result.lenses]
    assert len(set(keys)) == 2 and all(k.startswith("gradcam-") for k in keys)
    tables = [pd.read_csv(cfg.run_dir / f"lens_{k}.csv") for k in keys]
    assert set(tables[0]["target"]) == {"label"} and set(tables[1]["target"]) == {"predicted"}


def test_rounds_in_reverse_order_give_identical_records(two_lens_run):
    cfg, result = two_lens_run
    found = Run(cfg.run_dir)
    key = result.lenses[0].key
    p = prepare(cfg)
    lens = GradCAMLens(cfg.lenses[0].options)
    from prunelens.progress import Reporter

    refs = reference_models(p, lens.references(), Reporter(quiet=True))
    data = LensData(p.bundle, "cpu", cfg.lens_images)
    ctx = LensContext(data, found.round(0).model(), refs, FileCache(cfg.output_dir / "cache"), cfg.seed, load_result(found, key, "setup"))
    for r in reversed(found.rounds()):
        view = found.round(r)
        fresh = lens(ctx, LensRound(r, view.model(), view.masks(), view.record()["density"]))
        stored = load_result(found, key, f"round_{r:03d}")
        assert pd.DataFrame(fresh.records).equals(pd.DataFrame(stored.records))
        assert all(torch.equal(fresh.tensors[k], stored.tensors[k]) for k in stored.tensors)


def test_position_is_the_hand_formula_labelled_with_its_reference(two_lens_run):
    cfg, result = two_lens_run
    table = result.lenses[0].table
    level = table[table["round"] == 0].set_index(["kind", "metric"])["value"]
    rows = table[(table["kind"] == "position") & (table["metric"] == "spearman")]
    assert set(rows["reference"]) == {"same_init", "other_seed"}
    for _, pos in rows.iterrows():
        x = table[(table["round"] == pos["round"]) & (table["kind"] == "pruned_vs_dense") & (table["metric"] == "spearman")]["value"].item()
        floor, ref = level["floor", "spearman"], level[pos["reference"], "spearman"]
        assert pos["value"] == pytest.approx((x - floor) / (ref - floor))


def test_analyze_on_a_renamed_directory_writes_there_only(two_lens_run, tmp_path):
    cfg, _ = two_lens_run
    moved = tmp_path / "moved"
    shutil.copytree(cfg.run_dir, moved)
    before = snapshot(cfg.output_dir)
    assert main(["analyze", str(moved), "-q", "--force"]) == 0
    assert snapshot(cfg.output_dir) == before
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["dense", "dense", "moved"]


def test_round_zero_record_is_measured_per_run(tmp_path):
    base = run(tiny_config(tmp_path, pruning={"rounds": 0}), quiet=True).records[0]
    kept = run(tiny_config(tmp_path, pruning={"rounds": 0, "prune_classifier": False}), quiet=True).records[0]
    assert base["test_top1"] == kept["test_top1"] and base["prunable_params"] > kept["prunable_params"]


def test_quickstart_config_validates_and_builds(tmp_path, capsys):
    assert main(["check", "--output-dir", str(tmp_path)]) == 0
    assert "ok: 1 run(s)" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # check writes nothing


def test_same_data_for_every_seed():
    a = build_dataset(tiny_config(Path("/tmp")).dataset)
    b = build_dataset(tiny_config(Path("/tmp"), seed=3).dataset)
    assert torch.equal(a.test.images, b.test.images)


def test_floor_is_random_even_with_a_weights_file(tmp_path):
    from prunelens.progress import Reporter

    cfg = tiny_config(tmp_path, pruning={"rounds": 0})
    weights = tmp_path / "w.pt"
    torch.save({k: v + 1 for k, v in prepare(cfg).build().state_dict().items()}, weights)
    p = prepare(cfg.with_overrides(model={"weights": str(weights)}))
    loaded, floor = p.build().state_dict(), reference_models(p, ["floor"], Reporter(quiet=True))["floor"].state_dict()
    saved = torch.load(weights, weights_only=True)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert not torch.equal(floor["fc.weight"], saved["fc.weight"]) and not torch.equal(floor["fc.weight"], loaded["fc.weight"] - 1)
