"""Ticket comparison (docs/methods.md §11–12): overlap, Jaccard, chance levels, weight stability, layer collapse,
compare_runs."""

import math

import pandas as pd
import pytest
import torch
from torch import nn

from prunelens.analysis.tickets import (
    compare_runs,
    intersection,
    layer_density_table,
    overlap,
    pairwise_jaccard,
    run_labels,
    stability_summary,
    weight_stability,
)
from prunelens.errors import PrunelensError
from prunelens.experiment import run
from prunelens.masks import MaskSet
from prunelens.pruning.collapse import collapse_report, empty_layers, functional_collapse, has_path, structural_collapse
from prunelens.report.figures import layer_density_figure, png
from prunelens.runs import Run


def masks(**rows):
    """Hand-made masks from 0/1 lists: masks(a=[1, 0], b=[[1], [0]])."""
    return {name: torch.tensor(values, dtype=torch.bool) for name, values in rows.items()}


def row(table, layer, ticket):
    return table[(table.layer == layer) & (table.ticket == ticket)].iloc[0]


def test_overlap_with_itself_is_one_and_with_disjoint_mask_zero():
    ticket = masks(a=[1, 1, 0, 0], b=[[1, 0], [0, 1]])
    disjoint = masks(a=[0, 0, 1, 1], b=[[0, 1], [1, 0]])
    same = overlap([ticket, ticket])
    assert (same.frac_kept == 1).all()
    assert row(same, "all", "0").frac_all == 0.5
    assert (pairwise_jaccard([ticket, ticket]).jaccard == 1).all()
    other = overlap([ticket, disjoint])
    assert (other.overlap == 0).all() and (other.frac_kept == 0).all() and (other.frac_all == 0).all()
    assert (pairwise_jaccard([ticket, disjoint]).jaccard == 0).all()


def test_three_tickets_intersection_chance_and_jaccard():
    t = [masks(a=[1, 1, 1, 0], b=[1, 1]), masks(a=[1, 1, 0, 1], b=[1, 0]), masks(a=[0, 1, 1, 1], b=[1, 1])]
    assert intersection(t)["a"].tolist() == [False, True, False, False]
    table = overlap(t, names=["x", "y", "z"])
    a, b, total = row(table, "a", "x"), row(table, "b", "y"), row(table, "all", "y")
    assert (a.overlap, a.kept, a.frac_all, a.frac_kept) == (1, 3, 0.25, pytest.approx(1 / 3))
    assert a.chance == pytest.approx(0.75**3) and a.ratio == pytest.approx(0.25 / 0.75**3)
    assert (b.overlap, b.kept, b.frac_kept, b.chance) == (1, 1, 1.0, 0.5)
    # all: O = {a1, b0} of N = 6; densities 5/6, 4/6, 5/6
    assert (total.overlap, total.n, total.frac_all) == (2, 6, pytest.approx(2 / 6))
    # chance at the per-layer densities: a (n=4) 3/4 · 3/4 · 3/4, b (n=2) 1 · 1/2 · 1, pooled Σ n_l ∏ d / N
    assert total.chance == pytest.approx((4 * 0.75**3 + 2 * 0.5) / 6)
    jac = pairwise_jaccard(t, names=["x", "y", "z"]).set_index(["a", "b", "layer"]).jaccard
    assert jac["x", "y", "a"] == pytest.approx(2 / 4) and jac["x", "z", "b"] == 1.0
    assert jac["y", "z", "all"] == pytest.approx(3 / 6)


def test_chance_uses_per_layer_densities_not_pooled_ones():
    """Two layers with very different densities: a (n=8) keeps 1 and 2 of 8; b (n=2) keeps both in both."""
    t1 = masks(a=[1, 0, 0, 0, 0, 0, 0, 0], b=[1, 1])
    t2 = masks(a=[1, 1, 0, 0, 0, 0, 0, 0], b=[1, 1])
    total = row(overlap([t1, t2]), "all", "0")
    expected = (8 * (1 / 8) * (2 / 8) + 2 * 1 * 1) / 10  # 0.225, where pooled densities give 0.3 · 0.4 = 0.12
    assert total.chance == pytest.approx(expected) and total.ratio == pytest.approx((3 / 10) / expected)
    jac = pairwise_jaccard([t1, t2]).set_index("layer")
    # E|∩| = n d1 d2, E|∪| = n (d1 + d2 − d1 d2): a: 8·(1/32) = 0.25 over 8·(3/8 − 1/32) = 2.75; b: 2 over 2
    assert jac.loc["a", "chance"] == pytest.approx(0.25 / 2.75) and jac.loc["b", "chance"] == 1.0
    assert jac.loc["all", "chance"] == pytest.approx((0.25 + 2) / (2.75 + 2))
    assert jac.loc["all", "jaccard"] == pytest.approx(3 / 4) and jac.loc["all", "ratio"] == pytest.approx(0.75 / (2.25 / 4.75))


def test_incompatible_tickets_raise():
    with pytest.raises(PrunelensError, match="'b'"):
        overlap([masks(a=[1], b=[1, 0]), masks(a=[1], b=[1, 0, 1])])


def test_weight_stability_hand_computed():
    values = [1.0, -1.0, -2.0, 3.0]
    weights = [{"w": torch.tensor([v, 5.0, 7.0])} for v in values]
    alive = [masks(w=[1, 1, 1]), masks(w=[1, 0, 1]), masks(w=[1, 0, 0]), masks(w=[1, 0, 1])]
    stab = weight_stability(weights, alive)["w"]
    assert stab.alive.tolist() == [4, 1, 3]
    # w0: signs + − − + → 2 flips; population std of [1, −1, −2, 3] = √(14.75/4)
    # w2: alive in rounds 0, 1, 3 → only (0, 1) is a consecutive alive pair; std of [7, 7, 7] = 0
    assert stab.flips.tolist() == [2, 0, 0]
    assert stab.std[0].item() == pytest.approx(math.sqrt(14.75 / 4))
    assert math.isnan(stab.std[1].item()) and stab.std[2].item() == 0
    summary = stability_summary({"w": stab}, masks(w=[1, 1, 0])).set_index(["layer", "group"])
    inside, outside = summary.loc[("all", "in")], summary.loc[("all", "out")]
    assert (inside.n_weights, inside.flips_mean, inside.std_median) == (1, 2.0, pytest.approx(math.sqrt(14.75 / 4)))
    assert (outside.n_weights, outside.flips_mean, outside.std_mean) == (1, 0.0, 0.0)


def test_flip_counted_only_between_consecutive_alive_rounds():
    weights = [{"w": torch.tensor([v])} for v in (1.0, -1.0, 4.0, 3.0)]
    stab = weight_stability(weights, [masks(w=[a]) for a in (1, 1, 0, 1)])["w"]
    assert stab.flips.item() == 1
    assert stab.std.item() == pytest.approx(math.sqrt(8 / 3))  # std of [1, −1, 3]


def mlp():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_empty_layer_detected():
    m = masks(**{"0.weight": torch.zeros(4, 3).tolist(), "2.weight": torch.ones(2, 4).tolist()})
    assert empty_layers(m) == ["0.weight"]
    assert structural_collapse(mlp(), m, (3,)) == {"empty_layers": ["0.weight"], "path": False}


def cut_masks(second_column):
    first = torch.zeros(4, 3, dtype=torch.bool)
    first[0] = True  # hidden unit 0 is the only one fed
    second = torch.zeros(2, 4, dtype=torch.bool)
    second[:, second_column] = True  # the output reads hidden unit `second_column` only
    return {"0.weight": first, "2.weight": second}


def test_path_collapse_without_empty_layer():
    model = mlp()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    assert structural_collapse(model, cut_masks(1), (3,)) == {"empty_layers": [], "path": False}
    assert structural_collapse(model, cut_masks(0), (3,)) == {"empty_layers": [], "path": True}
    with_bias = {**cut_masks(1), "0.bias": torch.ones(4, dtype=torch.bool), "2.bias": torch.ones(2, dtype=torch.bool)}
    assert not has_path(model, with_bias, (3,))  # kept biases open no path from the input
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())  # the model is untouched
    assert isinstance(model[1], nn.ReLU)


def test_path_through_conv_bn_maxpool():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)
    )
    full = {"0.weight": torch.ones(2, 1, 3, 3, dtype=torch.bool), "5.weight": torch.ones(3, 32, dtype=torch.bool)}
    assert has_path(model, full, (1, 8, 8))
    channel0 = full | {"0.weight": torch.tensor([1, 0], dtype=torch.bool).view(2, 1, 1, 1).expand(2, 1, 3, 3)}
    reads1 = torch.zeros(3, 32, dtype=torch.bool)
    reads1[:, 16:] = True  # flattened features of channel 1
    assert not has_path(model, channel0 | {"5.weight": reads1}, (1, 8, 8))
    assert has_path(model, channel0 | {"5.weight": ~reads1}, (1, 8, 8))
    assert isinstance(model[3], nn.MaxPool2d) and isinstance(model[1], nn.BatchNorm2d)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two finished tiny runs from the same seed: global and layerwise magnitude pruning."""
    from conftest import tiny_config

    tmp = tmp_path_factory.mktemp("tickets")
    scopes = ("global", "layerwise")
    return [Run(run(tiny_config(tmp / scope, pruning={"scope": scope}), quiet=True).run_dir) for scope in scopes]


def test_compare_runs_tables(two_runs, tmp_path):
    tables = compare_runs(two_runs)
    assert set(tables) == {"overlap", "jaccard", "stability", "collapse", "density"}
    ov = tables["overlap"]
    assert set(ov.ticket) == {"pruning.scope=global", "pruning.scope=layerwise"}  # labelled by what differs
    assert ((ov.frac_kept > 0) & (ov.frac_kept <= 1)).all()
    total = ov[ov.layer == "all"]
    assert total.density.to_numpy() == pytest.approx(0.7**2, abs=2e-3)
    assert (total.frac_all <= total.density).all()
    jac = tables["jaccard"]
    assert len(jac) == len(ov.layer.unique()) and ((jac.jaccard > 0) & (jac.jaccard <= 1)).all()
    stab = tables["stability"]
    assert set(stab.group) == {"in", "out"} and (stab.n_weights > 0).all()
    inside = stab[(stab.layer == "all") & (stab.group == "in")].set_index("run").n_weights
    assert (inside == total.overlap.iloc[0]).all()  # the overlap is alive in every round
    collapse = tables["collapse"]
    assert len(collapse) == 6 and not collapse.collapsed_structural.any() and collapse.path.all()
    assert png(layer_density_figure(tables["density"]))[:8] == b"\x89PNG\r\n\x1a\n"


def test_round_selection_and_errors(two_runs, tmp_path):
    from conftest import tiny_config

    at1 = compare_runs(two_runs, round=1)
    assert at1["collapse"]["round"].max() == 1 and set(at1["density"]["round"]) == {0, 1}
    assert compare_runs(two_runs[:1], round=0)["overlap"].frac_kept.eq(1).all()
    with pytest.raises(PrunelensError, match="round 7 is not finished"):
        compare_runs(two_runs, round=7)
    wider = Run(run(tiny_config(tmp_path, model={"options": {"width": 0.25}}, pruning={"rounds": 0}), quiet=True).run_dir)
    with pytest.raises(PrunelensError, match="not the architecture of"):
        compare_runs([two_runs[0], wider])


def test_layer_density_table_and_round_model(two_runs):
    table = layer_density_table(two_runs[1])
    assert isinstance(table, pd.DataFrame) and set(table["round"]) == {0, 1, 2}
    assert (table[table["round"] == 0].density == 1).all()
    last = table[table["round"] == 2]
    assert last.density.to_numpy() == pytest.approx(0.7**2, abs=0.01)  # layerwise: every layer at 0.7²
    view = two_runs[1].round(2)
    model, masks = view.model(), view.masks()
    assert masks.density() == pytest.approx(last.global_density.iloc[0])
    masks.check_zero(model)


def test_survival_hand_computed():
    from prunelens.analysis.reinit import mixed_start, survival

    overlap = {"a": torch.tensor([True, True, False, False]), "b": torch.tensor([True, False])}
    masks = MaskSet({"a": torch.tensor([True, False, True, False]), "b": torch.tensor([True, True])})
    table = survival(overlap, masks).set_index("layer")
    assert table.loc["a", "survival"] == 0.5 and table.loc["a", "chance"] == 0.5 and table.loc["a", "gain"] == 0
    assert table.loc["b", "survival"] == 1.0 and table.loc["b", "chance"] == 1.0
    assert table.loc["all", "overlap"] == 3 and table.loc["all", "survivors"] == 2
    assert table.loc["all", "chance"] == pytest.approx((2 * 0.5 + 1 * 1.0) / 3)  # Σ_l |O_l| d'_l / |O|
    mixed = mixed_start({"a": torch.ones(4), "bias": torch.ones(1)}, {"a": torch.zeros(4), "bias": torch.zeros(1)}, {"a": overlap["a"]})
    assert mixed["a"].tolist() == [1, 1, 0, 0] and mixed["bias"].tolist() == [1]


def test_functional_collapse_fires_on_constant_logits(tmp_path):
    """A network whose last hidden layer is fully pruned outputs its bias for every image: structurally it is
    collapsed too, but the functional check must see constant logits (and chance accuracy) on its own."""
    from conftest import tiny_config

    from prunelens.data import build_dataset
    from prunelens.models import build_model
    from prunelens.progress import Reporter
    from prunelens.rounds import Context, measure

    cfg = tiny_config(tmp_path)
    bundle = build_dataset(cfg.dataset)
    model = build_model(cfg.model, bundle.num_classes, bundle.in_channels, bundle.image_size).eval()
    ctx = Context(cfg, bundle, model, Reporter(quiet=True))
    masks = MaskSet.ones(model, ctx.names)
    constant = MaskSet({**masks, "fc.weight": torch.zeros_like(masks["fc.weight"])})
    constant.apply(model)
    record = measure(ctx, model, constant)
    assert record["constant_outputs"] and record["output_range"] == 0 and record["collapsed_functional"]
    assert "constant outputs" in record["collapse"] and "empty layer" in record["collapse"]
    assert record["test_top1"] == pytest.approx(record["chance_top1"], abs=0.2)


def test_functional_collapse_binomial_test_by_hand():
    from scipy.stats import binom

    # 10 classes, majority share 0.1: 30/200 correct has P(X ≥ 30 | p=0.1) ≈ 0.0144 > 0.01 → at chance
    at = functional_collapse(30 / 200, 200, 0.1, 0.5)
    assert at["chance_p"] == pytest.approx(binom.sf(29, 200, 0.1)) and at["at_chance"] and not at["constant_outputs"]
    above = functional_collapse(40 / 200, 200, 0.1, 0.5)
    assert above["chance_p"] == pytest.approx(binom.sf(39, 200, 0.1)) and not above["at_chance"]
    fired = collapse_report({"empty_layers": [], "path": True}, at)
    assert fired["collapse"] == "at chance" and fired["collapsed"] and not fired["collapsed_structural"]


def test_run_labels_name_the_differing_fields(two_runs):
    assert run_labels(two_runs) == ["pruning.scope=global", "pruning.scope=layerwise"]
