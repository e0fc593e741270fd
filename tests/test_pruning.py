"""Masks and the pruning core against hand-computed masks and torch.nn.utils.prune."""


import pytest
import torch
from conftest import exact_ceil
from torch import nn
from torch.nn.utils import prune as tprune

from prunelens.config import PruningConfig, TrainingConfig
from prunelens.errors import PrunelensError
from prunelens.masks import MaskSet, classifier_name, prunable_names
from prunelens.pruning import prune, select
from prunelens.train import build_optimizer


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 3))


def test_global_selection_hand_computed():
    scores = {"a": torch.tensor([[0.5, 0.1], [0.9, 0.3]]), "b": torch.tensor([0.2, 0.8, 0.05])}
    masks = MaskSet({"a": torch.ones(2, 2), "b": torch.tensor([1, 1, 0])})
    # alive scores: a: .5 .1 .9 .3, b: .2 .8 → 6 alive, remove ceil(0.5*6)=3 lowest: .1 (a), .2 (b), .3 (a)
    new = select(scores, masks, 0.5, "global")
    assert new["a"].tolist() == [[True, False], [True, False]]
    assert new["b"].tolist() == [False, True, False]


def test_layerwise_selection_hand_computed():
    scores = {"a": torch.tensor([4.0, 3.0, 2.0, 1.0]), "b": torch.tensor([1.0, 2.0])}
    masks = MaskSet({"a": torch.ones(4), "b": torch.ones(2)})
    new = select(scores, masks, 0.25, "layerwise")  # a: ceil(1)=1 removed, b: ceil(0.5)=1 removed
    assert new["a"].tolist() == [True, True, True, False]
    assert new["b"].tolist() == [False, True]


def test_ties_break_by_position():
    scores = {"a": torch.zeros(5)}
    new = select(scores, MaskSet({"a": torch.ones(5)}), 0.4, "global")
    assert new["a"].tolist() == [False, False, True, True, True]


def test_dead_entries_never_counted_or_revived():
    scores = {"a": torch.tensor([0.0, 5.0, 1.0, 2.0])}
    masks = MaskSet({"a": torch.tensor([0, 1, 1, 1])})
    new = select(scores, masks, 0.3, "global")  # 3 alive → remove 1: score 1.0
    assert new["a"].tolist() == [False, True, False, True]


def test_layerwise_matches_torch_l1_unstructured():
    model = tiny()
    names = prunable_names(model)
    masks = prune(model, MaskSet.ones(model, names), PruningConfig(scope="layerwise", fraction=0.3))
    ref = tiny()
    for name in names:
        module = ref.get_submodule(name.rsplit(".", 1)[0])
        amount = exact_ceil(0.3, module.weight.numel())
        tprune.l1_unstructured(module, "weight", amount=amount)
        assert torch.equal(module.weight_mask.bool(), masks[name])


def test_global_matches_torch_global_unstructured():
    model = tiny()
    names = prunable_names(model)
    masks = prune(model, MaskSet.ones(model, names), PruningConfig(scope="global", fraction=0.45))
    ref = tiny()
    params = [(ref.get_submodule(n.rsplit(".", 1)[0]), "weight") for n in names]
    total = sum(m.weight.numel() for m, _ in params)
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=exact_ceil(0.45, total))
    for name, (module, _) in zip(names, params):
        assert torch.equal(module.weight_mask.bool(), masks[name])


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_density_after_k_rounds(scope):
    model = nn.Sequential(nn.Linear(100, 60), nn.ReLU(), nn.Linear(60, 40))
    names = prunable_names(model)
    masks = MaskSet.ones(model, names)
    alive = {n: masks[n].numel() for n in names}
    for k in range(1, 8):
        masks = prune(model, masks, PruningConfig(scope=scope, fraction=0.2))
        masks.apply(model)
        # exact count with ⌈·⌉ rounding, and within rounding of (1 − p)^k
        if scope == "layerwise":
            alive = {n: a - exact_ceil(0.2, a) for n, a in alive.items()}
            assert masks.alive() == sum(alive.values())
        assert abs(masks.density() - 0.8**k) < k / masks.total() + 1e-12


def test_prunable_set_options():
    model = tiny()
    assert classifier_name(model) == "6"
    assert prunable_names(model) == ["0.weight", "4.weight", "6.weight"]
    assert prunable_names(model, prune_classifier=False) == ["0.weight", "4.weight"]
    assert prunable_names(model, include_bias=True, include_bn=True) == [
        "0.weight", "0.bias", "1.weight", "4.weight", "4.bias", "6.weight", "6.bias"
    ]  # fmt: skip
    assert prunable_names(model, exclude=["0.*"]) == ["4.weight", "6.weight"]
    with pytest.raises(PrunelensError, match="pruning.exclude"):
        prunable_names(model, exclude=["nothing.*"])


def test_layer_fraction_override_prunes_separately():
    model = tiny()
    names = prunable_names(model)
    cfg = PruningConfig(fraction=0.5, layer_fractions={"6.*": 0.2})
    masks = prune(model, MaskSet.ones(model, names), cfg)
    assert masks["6.weight"].sum() == 15 - exact_ceil(0.2, 15)
    rest = masks["0.weight"].sum() + masks["4.weight"].sum()
    assert rest == 18 + 160 - exact_ceil(0.5, (18 + 160))


@pytest.mark.parametrize(
    "training",
    [
        TrainingConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-2),
        TrainingConfig(optimizer="adam", lr=0.01, weight_decay=1e-2),
        TrainingConfig(optimizer="adamw", lr=0.01, weight_decay=1e-2),
    ],
)
def test_pruned_weights_stay_exactly_zero(training):
    """Prune mid-training (optimizer state built) and keep training: masked entries must stay 0."""
    model = tiny()
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))
    opt = build_optimizer(list(model.parameters()), training)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    names = prunable_names(model)
    masks = prune(model, MaskSet.ones(model, names), PruningConfig(fraction=0.6))
    masks.apply(model, opt)
    enforce = masks.enforcer(model)
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        enforce()
    params = dict(model.named_parameters())
    for name in names:
        assert params[name][~masks[name]].abs().max() == 0
        assert params[name][masks[name]].abs().min() > 0
    masks.check_zero(model)


def test_check_zero_detects_leak():
    model = tiny()
    masks = MaskSet.ones(model, ["4.weight"])
    masks = MaskSet({"4.weight": torch.zeros_like(masks["4.weight"])})
    with pytest.raises(PrunelensError, match="non-zero"):
        masks.check_zero(model)
