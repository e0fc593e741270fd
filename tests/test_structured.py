"""Structured (filter) and connection (input-channel) pruning, and the physical shrink of pruned models."""

import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as tprune

from prunelens.config import PruningConfig
from prunelens.errors import PrunelensError
from prunelens.flops import profile
from prunelens.masks import MaskSet, prunable_names
from prunelens.models import MODELS
from prunelens.pruning import group_density, prune, select_groups


def conv(seed: int = 0, groups: int = 1) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(8, 10, 3, groups=groups)


def one(module: nn.Module) -> tuple[dict[str, torch.Tensor], MaskSet]:
    return {"weight": module.weight.detach()}, MaskSet({"weight": torch.ones_like(module.weight, dtype=torch.bool)})


@pytest.mark.parametrize(("granularity", "dim", "k"), [("filters", 0, 3), ("channels", 1, 2)])
def test_matches_torch_ln_structured(granularity, dim, k):
    weights, masks = one(conv())
    new = select_groups(weights, masks, 0.3, granularity, norm=1)  # round(0.3 · 10) = 3 filters, round(0.3 · 8) = 2 channels
    ref = conv()
    tprune.ln_structured(ref, "weight", amount=k, n=1, dim=dim)
    assert torch.equal(ref.weight_mask.bool(), new["weight"])
    removed = ~new["weight"].transpose(0, dim).flatten(1).any(1)
    assert int(removed.sum()) == k
    assert new["weight"].transpose(0, dim)[~removed].all()  # every other group untouched


def test_removed_filter_fully_false_other_entries_untouched():
    weights, _ = one(conv())
    partial = torch.rand(weights["weight"].shape, generator=torch.Generator().manual_seed(1)) > 0.3
    new = select_groups(weights, MaskSet({"weight": partial}), 0.5, "filters")["weight"]
    removed = ~new.flatten(1).any(1)
    assert int(removed.sum()) == 5
    assert torch.equal(new[~removed], partial[~removed])


def test_norm_and_ties():
    w = torch.zeros(4, 2, 1, 1)
    w[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # L1 7, L2 5
    w[1, :, 0, 0] = torch.tensor([6.0, 0.0])  # L1 6, L2 6
    masks = MaskSet({"w": torch.ones(4, 2, 1, 1)})
    # filters 2 and 3 tie at 0: the lower index goes first
    assert select_groups({"w": w}, masks, 0.75, "filters", norm=1)["w"].flatten(1).any(1).tolist() == [True, False, False, False]
    assert select_groups({"w": w}, masks, 0.75, "filters", norm=2)["w"].flatten(1).any(1).tolist() == [False, True, False, False]
    assert select_groups({"w": w}, masks, 0.25, "filters")["w"].flatten(1).any(1).tolist() == [True, True, False, True]


def test_random_is_deterministic_per_seed():
    weights, masks = one(conv())
    draw = lambda seed: select_groups(weights, masks, 0.5, "filters", random=True, seed=seed)["weight"]  # noqa: E731
    assert torch.equal(draw(1), draw(1))
    assert not all(torch.equal(draw(1), draw(s)) for s in range(2, 6))
    assert int((~draw(3).flatten(1).any(1)).sum()) == 5


def test_repeated_rounds_act_on_remaining_groups():
    weights, masks = one(conv())
    for _ in range(2):
        masks = select_groups(weights, masks, 0.5, "filters")  # 10 → 5 → round(2.5) = 2 removed → 3
    assert group_density(masks, "filters") == {"weight": 0.3}
    ref = conv()
    tprune.ln_structured(ref, "weight", amount=5, n=1, dim=0)
    tprune.ln_structured(ref, "weight", amount=2, n=1, dim=0)
    assert torch.equal(ref.weight_mask.bool(), masks["weight"])


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)
    )


def test_actual_rate_differs_from_nominal():
    model = small_net()
    masks = MaskSet.ones(model, prunable_names(model))
    convs = {n: p.detach() for n, p in model.named_parameters() if n in ("0.weight", "2.weight")}
    new = select_groups(convs, masks, 0.2, "filters")
    zeroed = 1 - new.density()
    # conv 0: round(1.6) = 2 filters × 27; conv 2: round(3.2) = 3 filters × 72; the Linear (160) untouched
    assert zeroed == pytest.approx((2 * 27 + 3 * 72) / (8 * 27 + 16 * 72 + 160))
    assert zeroed != pytest.approx(0.2, abs=0.01)
    assert group_density(new, "filters") == {"0.weight": 0.75, "2.weight": 13 / 16, "6.weight": 1.0}


def test_bias_follows_filters_one_d_untouched_for_channels():
    model = small_net()
    masks = MaskSet.ones(model, prunable_names(model, include_bias=True))
    weights = {"0.weight": model[0].weight.detach()}
    new = select_groups(weights, masks, 0.5, "filters")
    assert torch.equal(new["0.bias"], new["0.weight"].flatten(1).any(1))
    assert new["0.bias"].sum() == 4
    assert torch.equal(select_groups(weights, masks, 0.5, "channels")["0.bias"], masks["0.bias"])


def test_prune_dispatch():
    model = small_net()
    masks = MaskSet.ones(model, prunable_names(model))
    weights = {n: p.detach() for n, p in model.named_parameters() if n in masks}
    got = prune(model, masks, PruningConfig(granularity="filters", method="l2", fraction=0.25))
    assert list(got) == list(masks)
    want = select_groups(weights, masks, 0.25, "filters", norm=2)
    assert all(torch.equal(got[n], want[n]) for n in masks)
    got = prune(model, masks, PruningConfig(granularity="channels", method="random", fraction=0.25), seed=4)
    want = select_groups(weights, masks, 0.25, "channels", random=True, seed=4)
    assert all(torch.equal(got[n], want[n]) for n in masks)
    got = prune(model, masks, PruningConfig(granularity="filters", norm=3.0, layer_fractions={"6.*": 0.5}))
    assert group_density(got, "filters") == {"0.weight": 0.75, "2.weight": 0.8125, "6.weight": 0.5}


def test_prune_unknown_method_for_structured():
    model = small_net()
    with pytest.raises(PrunelensError, match="pruning.method: 'snip' is not available for granularity 'filters'"):
        prune(model, MaskSet.ones(model, prunable_names(model)), PruningConfig(granularity="filters", method="snip"))


def test_channels_skip_grouped_convs():
    model = nn.Sequential(conv(groups=2), nn.Conv2d(10, 4, 1))
    masks = MaskSet.ones(model, prunable_names(model))
    new = prune(model, masks, PruningConfig(granularity="channels", fraction=0.5))
    assert new["0.weight"].all() and group_density(new, "channels")["1.weight"] == 0.5


# --- physical shrink ---------------------------------------------------------------------------------------------


def randomise(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine, and conv biases, so that masked filters emit non-zero constants."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen))
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(n, generator=gen))
                m.bias.copy_(torch.randn(n, generator=gen))
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.out_channels, generator=gen))
    return model.eval()


def conv_bn_net(padding: int) -> nn.Sequential:
    """conv-BN-ReLU ×3 → pool → Linear (padded convs: constants merge into one channel), or unpadded
    convs → flatten → Linear (constants fold into the next bias, per flattened column)."""
    torch.manual_seed(0)
    layers, channels = [], 3
    for width in (8, 16, 16):
        layers += [nn.Conv2d(channels, width, 3, padding=padding), nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)] if padding else [nn.Flatten(), nn.Linear(16 * 4 * 4, 5)]
    return nn.Sequential(*layers, *head)


NETS = {
    "padded_pool": lambda: conv_bn_net(1),
    "unpadded_flatten": lambda: conv_bn_net(0),
    "cifar_resnet": lambda: MODELS.get("cifar_resnet")(10, 3, (10, 10), {"depth": 8, "width": 8}, None),
}


def pruned(name: str, granularity: str = "filters") -> tuple[nn.Module, MaskSet, torch.Tensor]:
    model = randomise(NETS[name]())
    masks = MaskSet.ones(model, prunable_names(model, prune_classifier=False))
    masks = prune(model, masks, PruningConfig(granularity=granularity, fraction=0.5))
    masks.apply(model)
    return model, masks, torch.randn(6, 3, 10, 10, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", list(NETS))
def test_shrink_equals_masked_model(name):
    pytest.importorskip("torch_pruning")
    from prunelens.pruning.shrink import footprint, shrink

    model, masks, x = pruned(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = shrink(model, masks, x)
    fresh = torch.randn(5, 3, 10, 10)
    with torch.no_grad():
        assert torch.allclose(small(fresh), model(fresh), atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the masked model is untouched
    big, little = footprint(model, x, masks), footprint(small, x)
    assert little["params"] < 0.75 * big["params"]
    assert little["flops"] < 0.75 * big["flops"]


def test_shrink_connection_sparsity():
    """Channels pruned by their only reader go, with the writer's filter: the output is unchanged."""
    pytest.importorskip("torch_pruning")
    from prunelens.pruning.shrink import shrink

    model, masks, x = pruned("padded_pool", "channels")
    small = shrink(model, masks, x)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5)
    assert [m.out_channels for m in small if isinstance(m, nn.Conv2d)] == [4, 8, 16]  # the last conv feeds the pool


def test_shrink_without_torch_pruning(monkeypatch):
    from prunelens.pruning.shrink import shrink

    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    model, masks, x = pruned("padded_pool")
    with pytest.raises(PrunelensError, match="pip install torch-pruning"):
        shrink(model, masks, x)


def test_latency_reports():
    from prunelens.pruning.shrink import compare_latency, latency

    model, x = small_net(), torch.randn(2, 3, 8, 8)
    single = latency(model, x, repeats=3)
    assert single["min"] <= single["median"] <= single["max"]
    both = compare_latency(model, small_net(), x, repeats=3)
    assert set(both) == {"masked", "shrunk", "speedup"} and both["speedup"] > 0
    assert model.training  # modes restored


def test_flops_effective_vs_actual():
    pytest.importorskip("torch_pruning")
    from prunelens.pruning.shrink import footprint, shrink

    model, masks, x = pruned("unpadded_flatten")
    counts = footprint(model, x, masks)
    assert counts["flops"] == profile(model, x).total
    assert counts["flops_effective"] < counts["flops"]
    assert footprint(shrink(model, masks, x), x)["flops"] < counts["flops"]
