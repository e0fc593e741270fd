"""Importance scores and allocation scopes against hand computations and independent autograd."""

import math

import pytest
import torch
from conftest import exact_ceil
from torch import nn

from prunelens.config import PruningConfig
from prunelens.errors import PrunelensError
from prunelens.masks import MaskSet, prunable_names
from prunelens.pruning import SCORES, ScoreContext, prune, select

E = math.exp


def linear_net(*weights: list) -> nn.Sequential:
    """Bias-free Linear layers holding exactly `weights` (each a nested list, shape out × in)."""
    layers = []
    for w in weights:
        t = torch.tensor(w, dtype=torch.float64)
        layer = nn.Linear(t.shape[1], t.shape[0], bias=False).double()
        layer.weight.data.copy_(t)
        layers.append(layer)
    return nn.Sequential(*layers)


def score(method: str, model: nn.Module, masks: MaskSet, **ctx) -> dict[str, torch.Tensor]:
    return SCORES.get(method)(ScoreContext(model, masks, **ctx))


# ---------------------------------------------------------------- normalised magnitude scores, by hand

# W = [[-3, 1], [2, -0.5]] with (1, 1) dead: the alive magnitudes are a = 3, 1, 2 (the dead -0.5 must not count)
HAND = {
    "magnitude": [3, 1, 2],
    "l1": [3 / 6, 1 / 6, 2 / 6],
    "l2": [9 / 14, 1 / 14, 4 / 14],
    "softmax": [E(3) / (E(3) + E(1) + E(2)), E(1) / (E(3) + E(1) + E(2)), E(2) / (E(3) + E(1) + E(2))],
    "minmax": [(3 - 1) / (3 - 1), 0, (2 - 1) / (3 - 1)],
    # ascending 1, 2, 3 → squares 1, 4, 9; tail sums 14, 13, 9
    "lamp": [9 / 9, 1 / 14, 4 / 13],
}


@pytest.mark.parametrize("method", list(HAND))
def test_normalised_scores_hand_computed(method):
    model = linear_net([[-3.0, 1.0], [2.0, -0.5]])
    masks = MaskSet({"0.weight": torch.tensor([[1, 1], [1, 0]])})
    s = score(method, model, masks)["0.weight"]
    assert torch.allclose(s[masks["0.weight"]].double(), torch.tensor(HAND[method], dtype=torch.float64))


def test_minmax_single_alive_weight_scores_one():
    model = linear_net([[-3.0, 1.0]])
    s = score("minmax", model, MaskSet({"0.weight": torch.tensor([[0, 1]])}))
    assert s["0.weight"][0, 1] == 1


def test_softmax_subtracts_the_max():
    model = linear_net([[800.0, -801.0]])  # exp(801) overflows float64
    s = score("softmax", model, MaskSet({"0.weight": torch.ones(1, 2)}))["0.weight"]
    assert torch.allclose(s, torch.tensor([[1 / (1 + E(1)), E(1) / (1 + E(1))]], dtype=torch.float64))


def test_lamp_ties_break_by_position():
    model = linear_net([[2.0, -2.0, 2.0]])  # equal magnitudes: the earlier entry sorts first, 4/12, 4/8, 4/4
    s = score("lamp", model, MaskSet({"0.weight": torch.ones(1, 3)}))["0.weight"]
    assert s.tolist() == [[1 / 3, 1 / 2, 1.0]]


def test_all_zero_layer_scores_zero_not_nan():
    model = linear_net([[0.0, 0.0]])
    masks = MaskSet({"0.weight": torch.ones(1, 2)})
    for method in ("l1", "l2", "lamp", "softmax"):
        assert not score(method, model, masks)["0.weight"].isnan().any()


# A = [[3, -1], [-2, 0.5]] (a = 3, 1, 2, 0.5), B = [[1, -2]] (b = 1, 2), all alive; p = 0.5 → remove ⌈0.5·6⌉ = 3.
# magnitude: 0.5 (A3), 1 (A1), 1 (B0; tie with A1, A comes first)
# l1:      A /6.5 = .462 .154 .308 .077,  B /3 = .333 .667  → A3 .077, A1 .154, A2 .308
# l2:      A /14.25 = .632 .070 .281 .018, B /5 = .2 .8     → A3, A1, B0 .2
# softmax: A e^a/31.85 = .631 .085 .232 .052, B = .269 .731 → A3, A1, A2 .232
# minmax:  A (a−.5)/2.5 = 1 .2 .6 0, B = 0 1                → A3 0, B0 0 (tie, A first), A1 .2
# lamp:    A .25/14.25 = .018 (A3), 1/14 = .071 (A1), 4/13 = .308 (A2), 1; B 1/5 = .2, 1 → A3, A1, B0
KEEP_A2 = ([[True, False], [True, False]], [[False, True]])
DROP_A2 = ([[True, False], [False, False]], [[True, True]])
GLOBAL = {"magnitude": KEEP_A2, "l1": DROP_A2, "l2": KEEP_A2, "softmax": DROP_A2, "minmax": KEEP_A2, "lamp": KEEP_A2}


@pytest.mark.parametrize("method", list(GLOBAL))
def test_one_global_threshold_hand_derived(method):
    model = linear_net([[3.0, -1.0], [-2.0, 0.5]], [[1.0, -2.0]])
    masks = MaskSet.ones(model, ["0.weight", "1.weight"])
    new = prune(model, masks, PruningConfig(method=method, fraction=0.5))
    assert (new["0.weight"].tolist(), new["1.weight"].tolist()) == GLOBAL[method]


# ---------------------------------------------------------------- properties under one global threshold


def tiny_and_big(tiny_scale: float = 1e-3) -> nn.Sequential:
    """A 2×2 layer of tiny weights next to a 2×500 layer (Kaiming-like magnitudes)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 500, bias=False))
    with torch.no_grad():
        model[0].weight.mul_(tiny_scale)
    return model


def prune_rounds(model: nn.Module, method: str, rounds: int, fraction: float) -> list[MaskSet]:
    masks = MaskSet.ones(model, prunable_names(model))
    history = []
    for _ in range(rounds):
        masks = prune(model, masks, PruningConfig(method=method, fraction=fraction))
        masks.apply(model)
        history.append(masks)
    return history


def test_lamp_never_empties_a_layer():
    # 1004 → 502 → … → 7 alive: every round removes ⌈T/2⌉ ≤ T − 2 (one score-1 weight per layer survives)
    for masks in prune_rounds(tiny_and_big(), "lamp", 8, 0.5):
        assert all(m.any() for m in masks.values())
    assert not prune_rounds(tiny_and_big(), "magnitude", 1, 0.5)[0]["0.weight"].any()  # magnitude does empty it


def test_minmax_prunes_every_layer_every_round():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 10), nn.ReLU(), nn.Linear(10, 30), nn.ReLU(), nn.Linear(30, 3))
    before = MaskSet.ones(model, prunable_names(model))
    for masks in prune_rounds(model, "minmax", 5, 0.2):
        assert all(masks[n].sum() < before[n].sum() for n in masks)
        before = masks


def test_sum_to_one_scores_prune_the_big_layer_preferentially():
    model = tiny_and_big(tiny_scale=1.0)
    l1 = prune_rounds(model, "l1", 1, 0.5)[0]
    assert l1["0.weight"].all()  # mean score 1/4 vs 1/1000: all ⌈0.5·1004⌉ = 502 come from the big layer
    assert l1["1.weight"].sum() == 1000 - 502


def test_random_is_deterministic_per_seed():
    model = tiny_and_big()
    masks = MaskSet.ones(model, prunable_names(model))
    a, b, c = (score("random", model, masks, seed=s)["1.weight"] for s in (0, 0, 1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert ((a >= 0) & (a < 1)).all()


# ---------------------------------------------------------------- data-driven and data-free scores


def mlp_case():
    """A tiny float64 MLP with some dead (zeroed) weights and a batch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    masks = MaskSet({"0.weight": torch.rand(6, 4) > 0.3, "2.weight": torch.rand(3, 6) > 0.3})
    masks.apply(model)
    batch = (torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,)))
    return model, masks, batch


def reference_gw(model, batch):
    """(W, ∂L/∂W) straight from the model's parameters with torch.autograd.grad."""
    weights = [model[0].weight, model[2].weight]
    loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
    return weights, torch.autograd.grad(loss, weights)


def test_taylor_and_snip_match_autograd():
    model, masks, batch = mlp_case()
    (w1, w2), (g1, g2) = reference_gw(model, batch)
    taylor = [(w1 * g1).abs(), (w2 * g2).abs()]
    total = sum(t.sum() for t in taylor)
    got_taylor, got_snip = score("taylor", model, masks, batch=batch), score("snip", model, masks, batch=batch)
    with torch.no_grad():
        model[0].weight[~masks["0.weight"]] = 5.0  # a leaked dead weight still counts as zero
    got_leaked = score("snip", model, masks, batch=batch)
    for name, t in zip(["0.weight", "2.weight"], taylor):
        assert torch.allclose(got_taylor[name], t.detach())
        assert torch.allclose(got_snip[name], (t / total).detach())
        assert torch.allclose(got_leaked[name], got_snip[name])


def test_grasp_matches_hessian_vector_product():
    model, masks, batch = mlp_case()
    x, y = batch
    b1, b2 = model[0].bias.detach(), model[2].bias.detach()

    def loss(w1, w2):
        return nn.functional.cross_entropy((torch.relu(x @ w1.T + b1) @ w2.T + b2) / 200, y)

    w = (model[0].weight.detach(), model[2].weight.detach())
    wg = tuple(t.clone().requires_grad_() for t in w)
    g = torch.autograd.grad(loss(*wg), wg)
    _, hg = torch.autograd.functional.hvp(loss, w, g)
    got = score("grasp", model, masks, batch=batch)
    for name, wi, hi in zip(["0.weight", "2.weight"], w, hg):
        assert torch.allclose(got[name], wi * hi, rtol=1e-8, atol=1e-15)


def test_synflow_closed_form_two_layer_linear():
    # y = |W2||W1|1, R = 1ᵀy: s1[i,j] = (1ᵀ|W2|)[i]·|W1[i,j]|, s2[k,i] = |W2[k,i]|·(|W1|1)[i]; masked W1 entry = 0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False))
    masks = MaskSet({"0.weight": torch.ones(4, 3).index_put((torch.tensor([1]), torch.tensor([2])), torch.tensor(0.0)),
                     "1.weight": torch.ones(2, 4)})  # fmt: skip
    w1 = model[0].weight.detach().double().abs() * masks["0.weight"]
    w2 = model[1].weight.detach().double().abs()
    expected = {"0.weight": w2.sum(0)[:, None] * w1, "1.weight": w2 * w1.sum(1)[None, :]}
    from_shape = score("synflow", model, masks, input_shape=(3,))
    from_batch = score("synflow", model, masks, batch=(torch.randn(5, 3), torch.zeros(5, dtype=torch.long)))
    for name, s in expected.items():
        assert torch.allclose(from_shape[name], s)
        assert torch.allclose(from_batch[name], s)


@pytest.mark.parametrize("method", ["snip", "grasp", "taylor"])
def test_data_driven_scores_need_a_batch(method):
    model, masks, _ = mlp_case()
    with pytest.raises(PrunelensError, match=f"pruning.method: '{method}' needs a data batch"):
        score(method, model, masks)


def test_synflow_needs_an_input_shape():
    model, masks, _ = mlp_case()
    with pytest.raises(PrunelensError, match="synflow"):
        score("synflow", model, masks)


@pytest.mark.parametrize("method", SCORES.names())
def test_scores_leave_model_untouched(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(32, 3))
    masks = prune(model, MaskSet.ones(model, prunable_names(model)), PruningConfig(fraction=0.3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = score(method, model, masks, batch=(torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights and BN running stats
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())
    assert {k: v.shape for k, v in s.items()} == {k: m.shape for k, m in masks.items()}
    assert not any(v.isnan().any() for v in s.values())


# ---------------------------------------------------------------- allocation scopes


def shaped_masks(*shapes: tuple[int, ...]) -> MaskSet:
    return MaskSet({f"{i}.weight": torch.ones(shape) for i, shape in enumerate(shapes)})


def random_scores(masks: MaskSet) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {n: torch.rand(m.shape, generator=gen) for n, m in masks.items()}


def kept(masks: MaskSet) -> list[int]:
    return [int(m.sum()) for m in masks.values()]


def test_erk_densities_match_the_formula():
    masks = shaped_masks((8, 4, 3, 3), (16, 32), (4, 16))  # 288 + 512 + 64 = 864 weights
    new = select(random_scores(masks), masks, 0.5, "erk")
    assert sum(kept(new)) == 864 - 432
    # ε · 86 = 432 would give the last layer ε·20 ≈ 100 > 64 weights: it stays dense, ε = (432 − 64) / (18 + 48)
    eps = (432 - 64) / ((8 + 4 + 3 + 3) + (16 + 32))
    density = [eps * (8 + 4 + 3 + 3) / (8 * 4 * 3 * 3), eps * (16 + 32) / (16 * 32), 1.0]
    for n_kept, d, m in zip(kept(new), density, new.values()):
        assert abs(n_kept - d * m.numel()) < 1


def test_erk_meets_the_global_count_every_round_and_never_revives():
    masks = shaped_masks((8, 4, 3, 3), (16, 32), (4, 16))
    scores = random_scores(masks)
    for _ in range(6):
        new = select(scores, masks, 0.3, "erk")
        assert masks.alive() - new.alive() == exact_ceil(0.3, masks.alive())
        assert all(not (new[n] & ~masks[n]).any() for n in masks)
        masks = new


def test_uniform_plus_first_dense_classifier_floor():
    masks = shaped_masks((4, 1, 3, 3), (10, 40), (3, 10))  # 36 + 400 + 30
    scores = random_scores(masks)
    first = select(scores, masks, 0.5, "uniform_plus")
    # round 1: ⌈233⌉ removed at one rate 233/430 from the last two layers: 216.7 → 217, 16.3 → 16
    assert kept(first) == [36, 400 - 217, 30 - 16]
    for _ in range(2):  # rounds 2, 3: the classifier is held at its floor ⌈0.2 · 30⌉ = 6
        new = select(scores, first, 0.5, "uniform_plus")
        assert first.alive() - new.alive() == exact_ceil(0.5, first.alive())
        assert kept(new)[0] == 36 and kept(new)[2] == 6
        first = new
    with pytest.raises(PrunelensError, match="uniform_plus"):  # 36 + 16 + 6 alive: 29 to remove, 16 prunable
        select(scores, first, 0.5, "uniform_plus")


@pytest.mark.parametrize("scope", ["global", "layerwise", "uniform_plus", "erk"])
def test_every_scope_through_prune(scope):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 5))
    masks = MaskSet.ones(model, prunable_names(model))
    new = prune(model, masks, PruningConfig(scope=scope, fraction=0.4, layer_fractions={"5.*": 0.1}))
    assert new["5.weight"].sum() == 100 - exact_ceil(0.1, 100)
    pooled = ["0.weight", "3.weight"]
    removed = {n: int(masks[n].sum() - new[n].sum()) for n in pooled}
    if scope == "layerwise":
        assert removed == {n: exact_ceil(0.4, masks[n].numel()) for n in pooled}
    else:
        assert sum(removed.values()) == exact_ceil(0.4, (36 + 1280))
    if scope == "uniform_plus":
        assert removed["0.weight"] == 0


def test_score_iterations_follow_exponential_schedule():
    """n re-scoring steps per round keep (1 − p)^(1/n) each, ending near 1 − p overall."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    names = prunable_names(model)
    start = MaskSet.ones(model, names)
    x = torch.randn(8, 20)
    one = prune(model, start, PruningConfig(method="synflow", fraction=0.5), batch=(x, torch.zeros(8, dtype=torch.long)))
    many = prune(model, start, PruningConfig(method="synflow", fraction=0.5, score_iterations=4), batch=(x, torch.zeros(8, dtype=torch.long)))
    total = start.alive()
    assert one.alive() == total - exact_ceil(0.5, total)
    assert abs(many.alive() - 0.5 * total) <= 4  # four ⌈·⌉ roundings
    assert many.alive() < total * 0.5 ** 0.75  # it did take four steps, not one of 1 − 0.5^(1/4)
