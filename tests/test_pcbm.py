"""The PCBM lens: projection by hand, CAV recovery on synthetic embeddings, a separable toy PCBM, the heads
against scikit-learn, a trained network on `shapes` against a random one, skipped concepts, the fixed bank under
filter pruning, and the lens end to end (tables, no pickle)."""

import json
import math

import pandas as pd
import pytest
import torch
from conftest import tiny_config
from sklearn.linear_model import SGDClassifier
from torch import nn

from prunelens.cli import main
from prunelens.config import DatasetConfig, LensConfig, ModelConfig, TrainingConfig
from prunelens.data import build_dataset
from prunelens.errors import PrunelensError
from prunelens.experiment import analyze_run, prepare, run
from prunelens.lenses.base import LensContext
from prunelens.lenses.concepts.bank import ConceptBank, draw_samples, fit_svm_bank
from prunelens.lenses.concepts.heads import fit_head
from prunelens.lenses.concepts.lens import PCBMLens
from prunelens.lenses.concepts.pcbm import correctness
from prunelens.lenses.data import LensData
from prunelens.lenses.features import embed
from prunelens.models import build_model
from prunelens.runs import Run
from prunelens.seeding import seed_global
from prunelens.train import make_loader, train


def test_projection_is_the_signed_distance():
    v = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    bank = ConceptBank("svm", v, torch.tensor([1.0, -2.0]), *(torch.zeros(2),) * 5)
    f = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    # (3·1 + 4·1 + 1)/5 = 1.6, (0 + 2 − 2)/2 = 0; (0 − 4 + 1)/5 = −0.6, (−2 − 2)/2 = −2
    assert torch.allclose(bank.project(f), torch.tensor([[1.6, 0.0], [-0.6, -2.0]], dtype=torch.float64))
    logistic = ConceptBank("multilabel_logistic", v, torch.tensor([1.0, -2.0]), *(torch.zeros(2),) * 5)
    assert torch.allclose(logistic.project(f), torch.sigmoid(torch.tensor([[8.0, 0.0], [-3.0, -4.0]], dtype=torch.float64)))


def _synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings (n, 8) whose concept i shifts them along a known unit direction; concepts (n, 3) random."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(8, 3, generator=torch.Generator().manual_seed(99)))[0].T  # (3, 8) orthonormal
    concepts = torch.rand(n, 3, generator=gen) < 0.5
    features = 0.3 * torch.randn(n, 8, generator=gen) + (concepts.float() * 2 - 1) @ directions
    return features, concepts, directions


def test_svm_bank_recovers_known_directions():
    f_train, c_train, directions = _synthetic(400, 0)
    f_val, c_val, _ = _synthetic(200, 1)
    samples = draw_samples(c_train, c_val, 50, seed=0)
    bank = fit_svm_bank(f_train, f_val, samples, [0.01, 0.1, 1.0])
    cosine = torch.nn.functional.cosine_similarity(bank.vectors.float(), directions, dim=1)
    assert (cosine > 0.95).all(), cosine
    assert (bank.val_acc > 0.95).all() and set(bank.c.tolist()) <= {0.01, 0.1, 1.0}
    # the samples: n per side, positives have the concept, negatives not, drawn from the given subsets
    assert samples.train_pos.shape == (3, 50)
    assert all(c_train[samples.train_pos[i], i].all() and not c_train[samples.train_neg[i], i].any() for i in range(3))
    assert all(c_val[samples.val_pos[i], i].all() for i in range(3))


def test_too_few_positives_are_drawn_with_replacement():
    labels = torch.zeros(30, 1, dtype=torch.bool)
    labels[:3] = True
    samples = draw_samples(labels, labels, 10, seed=0)
    assert samples.train_pos.shape == (1, 10) and set(samples.train_pos[0].tolist()) <= {0, 1, 2}
    assert len(set(samples.train_neg[0].tolist())) == 10  # enough negatives: without replacement


def test_separable_toy_pcbm_puts_the_true_concepts_on_top():
    """Class c is present exactly when concepts 2c and 2c+1 are; projections = the noisy concept indicators."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(600) % 3
    truth = torch.zeros(3, 8, dtype=torch.bool)
    for c in range(3):
        truth[c, [2 * c, 2 * c + 1]] = True
    concepts = truth[labels] | (torch.rand(600, 8, generator=gen) < 0.1) & ~truth.any(0)  # 6, 7: noise concepts
    projections = concepts.double() * 2 - 1 + 0.2 * torch.randn(600, 8, generator=gen, dtype=torch.float64)
    for kind in ("sklearn", "torch"):
        head, scores = fit_head(projections, labels, 3, kind, None, [1e-4, 1e-3, 1e-2], 0.99, seed=0)
        assert len(scores) == 3 and max(scores.values()) > 0.95
        assert (head.logits(projections).argmax(1) == labels).double().mean() > 0.95
        top = torch.topk(head.weight, 2, dim=1).indices.sort(1).values
        assert top.tolist() == [[0, 1], [2, 3], [4, 5]], (kind, head.weight)
        per_class = correctness(head.weight, truth, [f"c{i}" for i in range(8)], k=2, by="signed")
        assert per_class["topk_precision"].tolist() == [1.0, 1.0, 1.0]
        assert per_class["defining_auc"].min() == 1.0 and per_class["defining_rank"].tolist() == [1.5] * 3


def test_sklearn_head_is_sgdclassifier_with_the_chosen_lambda():
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(300, 5, generator=gen, dtype=torch.float64)
    y = (p[:, 0] + 0.5 * p[:, 1] > 0).long()
    head, _ = fit_head(p, y, 2, "sklearn", 1e-3, [], 0.99, seed=4)
    from prunelens.seeding import seed_int

    reference = SGDClassifier(loss="log_loss", penalty="elasticnet", alpha=1e-3, l1_ratio=0.99, max_iter=10_000,
                              random_state=seed_int(4, "pcbm_head") % 2**32).fit(p.numpy(), y.numpy())  # fmt: skip
    w = torch.from_numpy(reference.coef_[0])
    assert torch.equal(head.weight, torch.stack([-w, w])) and head.lam == 1e-3
    assert torch.allclose(head.logits(p)[:, 1], torch.from_numpy(reference.decision_function(p.numpy())))


def test_correctness_with_the_tint_cue():
    names = ["a", "b", "tint:x", "tint:y"]
    weight = torch.tensor([[0.1, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 0.5]])
    truth = torch.tensor([[True, False, False, False], [False, True, False, False]])
    out = correctness(weight, truth, names, k=1, by="signed")
    assert out["tint_rank"].tolist() == [1.0, 2.0] and out["tint_in_topk"].tolist() == [1.0, 0.0]
    assert out["topk_precision"].tolist() == [0.0, 1.0]


# ------------------------------------------------------------------ a quickly trained network on `shapes`


@pytest.fixture(scope="module")
def trained():
    """cifar_resnet depth 8 width 8 on 16×16 `shapes`, 1500 SGD steps (77 % test accuracy), and the same
    architecture untrained."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        options = {"n_train": 2000, "n_val": 400, "n_test": 400}
        bundle = build_dataset(DatasetConfig(name="shapes", image_size=16, options=options))
        seed_global(0, "init")
        arch = ModelConfig(name="cifar_resnet", options={"depth": 8, "width": 8})
        model, untrained = (build_model(arch, 10, 3, (16, 16)) for _ in range(2))
        cfg = TrainingConfig(epochs=100, batch_size=32, lr=0.05, momentum=0.9, schedule="constant")
        train(model, make_loader(bundle, bundle.train, 32, "cpu", train=True), cfg, None, start_step=0, end_step=1500)
        yield model.eval(), untrained.eval(), bundle
    finally:
        torch.set_num_threads(threads)


def _setup(model: nn.Module, bundle, **options):
    lens = PCBMLens({"references": [], **options})
    ctx = LensContext(LensData(bundle, "cpu", 16), model, {}, cache=None, seed=0)  # type: ignore[arg-type]
    result = lens.setup(ctx)
    return pd.DataFrame(result.records).set_index(["kind", "metric"])["value"], result


def test_trained_network_beats_chance_and_ranks_defining_concepts(trained):
    model, untrained, bundle = trained
    good, result = _setup(model, bundle)
    bad, _ = _setup(untrained, bundle)
    chance = 1 / bundle.num_classes
    assert good["accuracy", "black_box"] > 0.7 and good["accuracy", "pcbm"] > 5 * chance
    assert good["accuracy", "pcbm"] > bad["accuracy", "pcbm"] + 0.3
    # Random conv features still carry colour, so even the random network's PCBM ranks defining concepts above
    # the others (AUC 0.77 here, chance 0.5): the floor of correctness is not chance, and it is reported.
    assert good["correctness", "defining_auc"] > 0.8 and good["correctness", "defining_auc"] > bad["correctness", "defining_auc"] + 0.05
    assert good["correctness", "defining_rank"] < bad["correctness", "defining_rank"] - 0.5
    assert good["bank", "val_acc_mean"] > bad["bank", "val_acc_mean"] + 0.05
    assert len(result.artefacts["concepts"]) == 13 + 10  # the shapes concepts and one tint per class


def test_a_rare_concept_is_skipped_with_a_note(trained):
    model, _, bundle = trained
    values, result = _setup(model, bundle, min_positives=300)
    concepts = bundle.train.extras["concepts"]  # every train image is used (2000 < max_images)
    tints = bundle.train.extras["tint"][:, None] == torch.arange(10)
    counts = torch.cat([concepts, tints], 1).sum(0)
    names = [*bundle.concept_names, *(f"tint:{c}" for c in bundle.class_names)]
    expected = {n for n, c in zip(names, counts.tolist()) if min(c, 2000 - c) < 300}
    notes = result.artefacts["notes"]
    assert 0 < len(expected) < len(names)
    assert {n.split("'")[1] for n in notes} == expected and all("skipped" in n for n in notes)
    assert values["bank", "skipped"] == len(notes) and result.artefacts["concepts"] == [n for n in names if n not in expected]
    with pytest.raises(PrunelensError, match="no concept has ≥ 100000"):
        _setup(model, bundle, min_positives=100_000, max_images=100_000)


# ------------------------------------------------------------------ through the experiment


def test_fixed_bank_is_refused_under_filter_pruning_before_training(tiny):
    cfg = tiny(pruning={"granularity": "filters", "method": "l1", "scope": "layerwise"},
               lenses=[{"name": "pcbm", "options": {"fixed_bank": True}}])  # fmt: skip
    with pytest.raises(PrunelensError, match=r"lenses\[0\] \(pcbm\): pcbm option fixed_bank: filter pruning"):
        prepare(cfg)
    assert not (cfg.output_dir).exists()


def test_bad_options_fail_when_the_config_loads(tiny):
    with pytest.raises(PrunelensError, match=r"lenses\[0\]\.options\.head"):
        tiny(lenses=[{"name": "pcbm", "options": {"head": "svm"}}])
    with pytest.raises(PrunelensError, match="concepts_path"):
        tiny(lenses=[{"name": "pcbm", "options": {"concepts": "class_table"}}])
    cfg = tiny(dataset={"name": "digits", "options": {}, "image_size": None},
               lenses=[{"name": "pcbm", "options": {"concepts": "fashion"}}])  # fmt: skip
    with pytest.raises(PrunelensError, match="not a Fashion-MNIST class|unknown"):
        prepare(cfg)


LENS = {"name": "pcbm", "options": {"n_samples": 20}}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("pcbm"), lenses=[LENS], lens_images=16)
    return cfg, run(cfg, quiet=True)


def test_lens_end_to_end_tables_and_no_pickle(finished):
    cfg, result = finished
    lens = next(t for t in result.lenses if t.name == "pcbm")
    table = lens.table
    rounds = sorted(table["round"].unique())
    assert rounds == [0, 1, 2]
    assert set(table[table["round"] == 0]["kind"]) >= {"accuracy", "bank", "correctness", "topk", "pruned_vs_dense",
                                                      "floor", "same_init", "other_seed", "position"}  # fmt: skip
    dense_self = table[(table["round"] == 0) & (table["kind"] == "pruned_vs_dense")].set_index("metric")["value"]
    assert dense_self["topk_jaccard"] == 1.0 and dense_self["kendall_tau_b"] == pytest.approx(1.0)
    jaccard = table[(table["kind"] == "pruned_vs_dense") & (table["metric"] == "topk_jaccard")]
    assert jaccard["value"].between(0, 1).all() and (jaccard["n"] + jaccard["nan"] == 10).all()
    run_dir = Run.open(result.run_dir)
    topk = pd.read_csv(run_dir.root / f"lens_{lens.key}_topk.csv")
    assert list(topk.columns[:3]) == ["round", "density", "class"] and {"concept_1", "weight_1"} <= set(topk.columns)
    assert len(topk) == 3 * 10
    stored = [p for p in run_dir.store.manifest if p.startswith(f"lenses/{lens.key}/") and p.endswith(".pt")]
    assert len(stored) == 3 and any(p.endswith("topk.png") for p in run_dir.store.manifest)
    for rel in stored:
        tensors = torch.load(run_dir.root / rel, weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    setup = json.loads((run_dir.root / f"lenses/{lens.key}/setup.json").read_text())
    assert setup["artefacts"]["concepts"][:2] == ["shape:circle", "shape:square"]
    again = run(cfg, quiet=True)  # cached: the same table
    pd.testing.assert_frame_equal(next(t.table for t in again.lenses if t.name == "pcbm"), table)


def test_same_config_same_table_bytes(finished, tmp_path):
    cfg, result = finished
    key = next(t.key for t in result.lenses if t.name == "pcbm")
    fresh = run(tiny_config(tmp_path, lenses=[LENS], lens_images=16), quiet=True)
    for name in (f"lens_{key}.csv", f"lens_{key}_topk.csv"):
        assert (fresh.run_dir / name).read_bytes() == (result.run_dir / name).read_bytes()


def test_cli_analyze_and_the_variants(finished, capsys):
    """`prunelens analyze --explain pcbm` (defaults), then the fixed dense bank, the seed's logistic bank and
    the torch head on the same run: each its own key, the fixed bank's vectors the dense ones in every round."""
    _, result = finished
    assert main(["analyze", str(result.run_dir), "--explain", "pcbm"]) == 0
    out = capsys.readouterr().out
    assert "pcbm: explanations vs density" in out and "topk_jaccard" in out
    assert (result.run_dir / "lens_pcbm.csv").is_file() and (result.run_dir / "lens_pcbm_topk.csv").is_file()
    variants = [{"fixed_bank": True}, {"concept_bank": "multilabel_logistic"}, {"head": "torch", "residual": False}]
    variants = [{**v, "references": ["floor"], "n_samples": 20} for v in variants]
    tables = analyze_run(Run.open(result.run_dir), [LensConfig(name="pcbm", options=o) for o in variants], quiet=True)
    assert len({t.key for t in tables}) == 3
    fixed, logistic, torch_head = (t.table for t in tables)
    setup = torch.load(result.run_dir / "lenses" / tables[0].key / "setup.pt", weights_only=True)
    later = torch.load(result.run_dir / "lenses" / tables[0].key / "round_002.pt", weights_only=True)
    assert torch.equal(setup["bank.vectors"], later["bank.vectors"])
    assert set(logistic["bank"]) == {"multilabel_logistic"} and set(torch_head["head"]) == {"torch"}
    assert not (torch_head["kind"] == "accuracy")[torch_head["metric"] == "pcbm_h"].any()
    for table in (fixed, logistic, torch_head):
        acc = table[(table["kind"] == "accuracy") & (table["metric"] == "pcbm")]["value"]
        assert len(acc) == 3 and acc.between(0, 1).all()


def test_embedding_defaults_to_the_classifier_input():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(5, 1, 6, 6)
    features, logits = embed(model, [x[:3], x[3:]], None)
    expected = model[:4](x)
    assert torch.allclose(features, expected) and torch.allclose(logits, model(x))
    conv, _ = embed(model, [x], "0")
    assert torch.allclose(conv, model[0](x).mean((2, 3)))
    assert not math.isnan(float(features.sum()))
    with pytest.raises(PrunelensError, match="option layer: Sequential has no module .nope."):
        embed(model, [x], "nope")
