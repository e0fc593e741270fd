"""MIS: the task algebra against a plain loop and a hand case, a brightness unit vs a random unit, exclusions,
the slope fit, the encoders' errors, and the lens end to end."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config
from torch import nn

from prunelens.errors import PrunelensError
from prunelens.experiment import prepare, run
from prunelens.lenses.mis.encoders import build_encoder
from prunelens.lenses.mis.options import fit_slope
from prunelens.lenses.mis.tasks import TaskSpec, cosine_matrix, draw, margins, scores
from prunelens.lenses.mis.units import activations, exclusions, unit_layers
from prunelens.masks import MaskSet


def _loop_margins(a: torch.Tensor, s: torch.Tensor, positions: torch.Tensor, spec: TaskSpec) -> torch.Tensor:
    """The definition, one task at a time."""
    pool = spec.pool_size(len(a))
    out = torch.empty(a.shape[1], spec.tasks)
    for u in range(a.shape[1]):
        order = sorted(range(len(a)), key=lambda i: (-float(a[i, u]), i))  # highest first, ties by index
        sides = [order[:pool], order[::-1][:pool]]
        for n in range(spec.tasks):
            drawn = [[sides[side][int(p)] for p in positions[u, n, side]] for side in (0, 1)]
            pick = -1 if spec.query == "least_extreme" else 0
            q = [d[pick] for d in drawn]
            e = [[x for j, x in enumerate(d) if j != (pick % len(d))] for d in drawn]
            sim = [[float(np.mean([s[q[i], x] for x in e[j]])) for j in (0, 1)] for i in (0, 1)]
            out[u, n] = (sim[0][0] - sim[0][1]) - (sim[1][0] - sim[1][1])
    return out


@pytest.mark.parametrize("query", ["least_extreme", "most_extreme"])
def test_vectorised_tasks_equal_a_plain_loop(query):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(40, 5, generator=gen)
    a[:, 4] = a[:, 3].round()  # ties
    s = cosine_matrix(torch.randn(40, 6, generator=gen))
    spec = TaskSpec(tasks=7, k=3, quantile=0.2, query=query)
    positions = draw(5, spec, spec.pool_size(40), seed=1, layer="conv")
    assert torch.allclose(margins(a, s, positions, spec), _loop_margins(a, s, positions, spec), atol=1e-6)


def test_draws_are_distinct_sorted_and_fixed_by_seed_and_layer():
    spec = TaskSpec(tasks=5, k=9)
    p = draw(130, spec, 10, seed=3, layer="a")  # more than one chunk of units
    assert p.shape == (130, 5, 2, 10) and (p.diff(dim=-1) > 0).all()  # all 10 of 10 drawn, in order
    q = draw(70, TaskSpec(tasks=4, k=2), 50, seed=3, layer="a")
    assert torch.equal(q, draw(70, TaskSpec(tasks=4, k=2), 50, seed=3, layer="a"))
    assert not torch.equal(q, draw(70, TaskSpec(tasks=4, k=2), 50, seed=3, layer="b"))
    assert (q.diff(dim=-1) > 0).all() and q.max() < 50


def test_binary_mis_by_hand():
    """Pool of 4 images, q = 0.5 → pools of 2, K = 1: the top pool is {0, 1}, the bottom {3, 2}; with the least
    extreme as query, q⁺ = 1, E⁺ = {0}, q⁻ = 2, E⁻ = {3}. Δ⁺ − Δ⁻ = (s10 − s13) − (s20 − s23)."""
    a = torch.tensor([[4.0], [3.0], [2.0], [1.0]])
    s = torch.tensor([[1.0, 0.9, 0.1, 0.0], [0.9, 1.0, 0.2, 0.3], [0.1, 0.2, 1.0, 0.8], [0.0, 0.3, 0.8, 1.0]])
    spec = TaskSpec(tasks=3, k=1, quantile=0.5)
    positions = torch.tensor([[[0, 1], [0, 1]]]).expand(1, 3, 2, 2)
    d = margins(a, s, positions, spec)
    expected = (0.9 - 0.3) - (0.1 - 0.8)
    assert torch.allclose(d, torch.full((1, 3), expected))
    misleading = s.clone()  # each query now resembles the other side's explanation: decided wrongly
    misleading[1, 0], misleading[1, 3], misleading[2, 0], misleading[2, 3] = 0.1, 0.9, 0.8, 0.2
    wrong = margins(a, misleading, positions, spec)
    assert torch.allclose(wrong, torch.full((1, 3), (0.1 - 0.9) - (0.8 - 0.2)))
    assert scores(d, 1.0)["mis"].item() == 1.0 and scores(wrong, 1.0)["mis"].item() == 0.0
    assert scores(d, 2.0)["mis_confidence"].item() == pytest.approx(1 / (1 + math.exp(-2 * expected)))


def test_brightness_unit_near_one_random_unit_near_half():
    gen = torch.Generator().manual_seed(0)
    brightness = torch.rand(400, generator=gen)
    pixels = (brightness.view(-1, 1, 1, 1) + 0.05 * torch.randn(400, 3, 16, 16, generator=gen)).clamp(0, 1)
    # unit 0: the mean brightness; units 1–60: random (one unit's tasks share its pools, so average many)
    a = torch.cat([pixels.mean((1, 2, 3))[:, None], torch.randn(400, 60, generator=gen)], 1)
    s = cosine_matrix(build_encoder("descriptor", None, None, 0)(pixels))
    spec = TaskSpec(tasks=50)
    mis = scores(margins(a, s, draw(61, spec, spec.pool_size(400), 0, "u"), spec), 1.0)["mis"]
    assert mis[0] > 0.95 and abs(float(mis[1:].mean()) - 0.5) < 0.05


def test_constant_units_and_removed_filters_are_excluded():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].weight[1] = 0
        model[0].bias[1] = 0.5  # a zeroed filter with a bias: constant output, still "pruned"
        model[0].weight[2] = 0
        model[0].bias[2] = 0.0  # constant, not pruned by the mask
    masks = MaskSet({"0.weight": (torch.arange(4) != 1).view(4, 1, 1, 1).expand(4, 3, 3, 3)})
    x = torch.randn(10, 3, 8, 8)
    layers = unit_layers(model, None, classifier=True)
    assert layers == ["0", "5"]
    acts = activations(model, [x[:6], x[6:]], layers, "conv")
    assert torch.allclose(acts["0"], model[0](x).mean((2, 3))) and torch.allclose(acts["5"], model(x))
    codes = exclusions(acts, model, masks)
    assert codes["0"].tolist() == [0, 2, 1, 0] and codes["5"].tolist() == [0, 0]
    post = activations(model, [x], ["0"], "post_relu")["0"]
    assert torch.allclose(post, model[:3](x).mean((2, 3)))
    with pytest.raises(PrunelensError, match="no module 'nope'"):
        unit_layers(model, ["nope"], False)


def test_slope_fit_recovers_a_known_slope(tmp_path):
    gen = np.random.default_rng(0)
    d = gen.normal(0, 0.2, 4000)
    correct = gen.random(4000) < 1 / (1 + np.exp(-12.0 * d))
    path = tmp_path / "trials.csv"
    pd.DataFrame({"margin": d, "correct": correct.astype(int)}).to_csv(path, index=False)
    assert fit_slope(path) == pytest.approx(12.0, rel=0.15)
    pd.DataFrame({"margin": [0.1, 0.2], "correct": [1, 2]}).to_csv(path, index=False)
    with pytest.raises(PrunelensError, match="correct 0 or 1"):
        fit_slope(path)


def test_encoders_without_weights_name_what_is_missing(tmp_path):
    with pytest.raises(PrunelensError, match="dino_vitb16_pretrain.pth.*cannot download"):
        build_encoder("dreamsim", None, tmp_path, 224)
    with pytest.raises(PrunelensError, match="needs encoder_arch"):
        build_encoder("torchvision", None, None, 224)
    with pytest.raises(PrunelensError, match="not found"):
        build_encoder("torchvision", "resnet18", tmp_path / "r18.pth", 224)
    with pytest.raises(PrunelensError, match="unknown encoder|not registered|known"):
        build_encoder("nope", None, None, 224)


def test_torchvision_encoder_from_a_local_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(PrunelensError, match="not a resnet50 state_dict"):
        build_encoder("torchvision", "resnet50", tmp_path / "r18.pth", 32)
    encoder = build_encoder("torchvision", "resnet18", tmp_path / "r18.pth", 32)
    pixels = torch.rand(3, 1, 20, 20)
    features = encoder(pixels)
    assert features.shape == (3, 512) and encoder.name == "torchvision:resnet18"


# ------------------------------------------------------------------ the lens


MIS = {"name": "mis", "options": {"encoder": "descriptor", "pool_size": 120}}


def test_lens_end_to_end_filters_excluded_and_deterministic(tmp_path):
    pruning = {"granularity": "filters", "method": "l1", "scope": "layerwise", "fraction": 0.5, "rounds": 1}
    cfg = tiny_config(tmp_path / "a", lenses=[MIS], pruning=pruning)
    result = run(cfg, quiet=True)
    table = next(t.table for t in result.lenses if t.name == "mis")
    pruned = table[(table["kind"] == "excluded") & (table["metric"] == "pruned")]
    masks = torch.load(result.run_dir / "rounds" / "001" / "masks.pt", weights_only=True)
    removed = {name.removesuffix(".weight"): int((~m.flatten(1).any(1)).sum()) for name, m in masks.items() if m.ndim == 4}
    assert {r.layer: int(r.value) for r in pruned[pruned["round"] == 1].itertuples()} == removed
    assert sum(removed.values()) > 0 and (pruned[pruned["round"] == 0]["value"] == 0).all()
    model_rows = table[(table["kind"] == "model") & (table["metric"] == "mis")].set_index("round")
    kept = table[(table["kind"] == "layer") & (table["metric"] == "mis") & (table["round"] == 1)]["n"].sum()
    assert model_rows.loc[1, "n"] == kept and table["value"].notna().all()
    assert {"floor_model", "paired"} <= set(table["kind"])
    again = run(tiny_config(tmp_path / "b", lenses=[MIS], pruning=pruning), quiet=True)
    key = next(t.key for t in result.lenses if t.name == "mis")
    assert (again.run_dir / f"lens_{key}.csv").read_bytes() == (result.run_dir / f"lens_{key}.csv").read_bytes()


def test_bad_mis_options_fail_before_training(tmp_path):
    with pytest.raises(PrunelensError, match=r"lenses\[0\]\.options\.quantile"):
        tiny_config(tmp_path, lenses=[{"name": "mis", "options": {"quantile": 0.7}}])
    cfg = tiny_config(tmp_path, lenses=[{"name": "mis", "options": {"encoder": "dreamsim", "encoder_weights": str(tmp_path)}}])
    with pytest.raises(PrunelensError, match=r"lenses\[0\] \(mis\): mis encoder dreamsim"):
        prepare(cfg)
    assert not cfg.output_dir.exists()
