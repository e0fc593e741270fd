"""Grad-CAM against pytorch-grad-cam and captum, the seed variant by hand, map similarity metrics on hand-built
maps, floor/correctness on a quickly trained model, and the `gradcam` lens end to end."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import LayerGradCam
from pytorch_grad_cam import GradCAM as LibraryGradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy.stats import spearmanr
from torch import nn

from prunelens.config import DatasetConfig, ModelConfig, TrainingConfig
from prunelens.data import build_dataset
from prunelens.errors import PrunelensError
from prunelens.experiment import analyze_run, run
from prunelens.lenses import similarity as sim
from prunelens.lenses.cam import GradCAM, find_target_layer
from prunelens.lenses.data import LensData
from prunelens.lenses.gradcam import GradCAMLens
from prunelens.lenses.sanity import correctness, deletion_insertion
from prunelens.models import build_model
from prunelens.runs import Run
from prunelens.seeding import seed_global
from prunelens.train import make_loader, train

NORMALISED_ATOL = 1e-5
"""Maps min-max normalised to [0, 1]: both sides sum the same float32 products in a different order (numpy vs
torch), ~1e-7 apart; a wrong α, a missing ReLU or a swapped target moves maps by O(0.1)."""


class SmallCNN(nn.Module):
    """Conv-BN-ReLU(in place) ×2, a 2×2 pool, conv, pool, linear: in-place ReLUs elsewhere than the target."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, classes))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture
def small():
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():
        model.features[1].running_mean.uniform_(-0.2, 0.2)
    x = torch.randn(6, 3, 12, 12)
    return model.train(), x, torch.tensor([0, 1, 2, 3, 4, 0])


def minmax(maps: torch.Tensor) -> np.ndarray:
    """pytorch-grad-cam's per-image scaling (x − min) / (1e-7 + max), applied twice as the library does."""
    return scale_cam_image(scale_cam_image(maps.numpy()))


def test_default_layer_and_no_side_effects(small):
    model, x, targets = small
    assert find_target_layer(model, x) == "features"
    with torch.no_grad():  # still works: autograd is switched on inside
        result = GradCAM(model)(x, targets)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert result.maps.shape == (6, 6, 6) and torch.equal(result.peak, result.maps.flatten(1).amax(1))
    assert (result.maps >= 0).all() and torch.equal(result.targets, targets)


def test_matches_pytorch_grad_cam_and_captum(small):
    model, x, targets = small
    ours = GradCAM(model, "features")(x, targets)
    assert (~ours.degenerate).sum() >= 4  # random weights: a map may be all zero (then both sides are zero)
    with LibraryGradCAM(model=model, target_layers=[model.features]) as cam:  # input size, normalised
        library = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in targets])
    expected = scale_cam_image(scale_cam_image(ours.maps.numpy(), (12, 12)))  # the library's own resize
    np.testing.assert_allclose(library, expected, atol=NORMALISED_ATOL, rtol=0)
    model.zero_grad(set_to_none=True)  # the library's backward left gradients behind
    native = GradCAM(model.train(), "features", backend="pytorch_grad_cam:GradCAM")(x, targets)
    assert model.training and all(p.grad is None for p in model.parameters())
    np.testing.assert_allclose(native.maps.numpy(), minmax(ours.maps), atol=NORMALISED_ATOL, rtol=0)
    model.eval()
    captum = LayerGradCam(model, model.features).attribute(x, target=targets, relu_attributions=True)[:, 0].detach()
    torch.testing.assert_close(ours.maps, captum, atol=1e-5 * float(ours.maps.max()), rtol=0)  # raw, unnormalised


def test_library_backends_return_native_maps(small):
    model, x, targets = small
    for method in ("GradCAMPlusPlus", "LayerCAM", "XGradCAM", "EigenCAM"):
        result = GradCAM(model, backend=f"pytorch_grad_cam:{method}")(x, targets)
        assert result.maps.shape == (6, 6, 6) and torch.isfinite(result.maps).all()
        assert result.maps.max() <= 1 + 1e-6 and torch.equal(result.targets, targets)
    with pytest.raises(PrunelensError, match="backend"):
        GradCAM(model, backend="pytorch_grad_cam:NoSuchCAM")


def test_batched_equals_one_at_a_time_and_predicted_targets(small):
    model, x, targets = small
    cam = GradCAM(model, "features")
    batched = cam(x, targets)
    single = torch.cat([cam(x[i : i + 1], targets[i : i + 1]).maps for i in range(len(x))])
    torch.testing.assert_close(batched.maps, single, atol=1e-6 * float(single.max()), rtol=0)
    predicted = cam(x)
    assert torch.equal(predicted.targets, model.eval()(x).argmax(1))
    torch.testing.assert_close(cam(x, 2).maps, cam(x, torch.full((6,), 2)).maps)


def test_inplace_modified_target_layer_is_refused(small):
    model, x, targets = small
    with pytest.raises(PrunelensError, match="in place"):
        GradCAM(model, "features.4")(x, targets)  # the conv whose output the in-place ReLU overwrites


def test_seed_variant_follows_the_seven_steps():
    """1×1 conv A = w ⊙ x (K = 2 channels), global mean pool, linear head: every step by hand."""
    torch.manual_seed(1)
    conv = nn.Conv2d(1, 2, 1, bias=False)
    head = nn.Linear(2, 3)
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    x, labels = torch.randn(4, 1, 3, 3), torch.tensor([0, 2, 1, 2])
    result = GradCAM(model, "0", variant="seed_ghosh")(x, labels)
    with torch.no_grad():
        a = conv(x)  # step 1: (B, K, h, w)
        p = head(a.mean((2, 3))).softmax(1)
        dlogits = (p - nn.functional.one_hot(labels, 3)) / 4  # step 2: mean cross-entropy, true label
        grad = (dlogits @ head.weight)[:, :, None, None].expand_as(a) / 9  # ∂L/∂A through the mean pool
        g = grad.mean((0, 2, 3))  # step 3: mean over batch and space
        h = (a + g[None, :, None, None]).mean(1)  # step 4: additive, no ReLU
        peak = h.flatten(1).amax(1)
        expected = h / peak[:, None, None]  # step 5: per-image max
    torch.testing.assert_close(result.maps, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(result.peak, peak, atol=1e-6, rtol=0)
    assert torch.equal(sim.threshold_mask(result.maps), expected > 0.75)  # step 7 (step 6 resizes for display)


def test_all_zero_map_is_flagged_never_nan():
    """Non-negative activations and a head whose target row is negative: α < 0 everywhere → ReLU → all zero."""
    conv = nn.Conv2d(1, 2, 1, bias=False)
    head = nn.Linear(2, 2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        head.weight.copy_(torch.tensor([[-1.0, -2.0], [1.0, 2.0]]))
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    x = torch.rand(3, 1, 4, 4)
    result = GradCAM(model, "1")(x, torch.tensor([0, 1, 0]))
    assert result.degenerate.tolist() == [True, False, True]
    assert torch.isfinite(result.maps).all() and (result.maps[[0, 2]] == 0).all() and result.peak[0] == 0
    scores = sim.compare(result.maps, result.maps)
    assert scores["degenerate"].tolist() == [True, False, True]
    assert math.isnan(scores["spearman"][0]) and scores["spearman"][1] == pytest.approx(1)
    assert sim.aggregate(scores["iou_thr"]) == (pytest.approx(1.0), 1)
    objects = torch.zeros(3, 4, 4, dtype=torch.bool)
    objects[:, :2] = True
    assert torch.isnan(correctness(result.maps, objects)["energy_inside"][[0, 2]]).all()
    curves = deletion_insertion(model, x, result.maps, result.targets, steps=4)
    assert torch.isnan(curves["deletion_auc"][0]) and torch.isfinite(curves["deletion_auc"][1])


# ------------------------------------------------------------------ similarity metrics on hand-built maps


def ramp() -> torch.Tensor:
    return torch.arange(16, dtype=torch.float32).view(1, 4, 4)


def test_identical_maps():
    a = torch.rand(5, 8, 8)
    scores = sim.compare(a, a.clone(), input_size=(32, 32))
    for name in ("iou_thr", "iou_top5", "iou_top20", "dice_top10", "spearman", "pearson", "cosine", "ssim", "pointing"):
        torch.testing.assert_close(scores[name], torch.ones(5, dtype=torch.float64), msg=name)
    assert (scores["com_shift"] == 0).all() and (scores["com_shift_px"] == 0).all() and not scores["degenerate"].any()


def test_disjoint_maps():
    a = ramp()
    scores = sim.compare(a, 15 - a)
    for name in ("iou_thr", "iou_top5", "iou_top10", "iou_top20", "dice_top20", "pointing"):
        assert scores[name].item() == 0, name
    assert scores["spearman"].item() == pytest.approx(-1)


def test_threshold_and_topk_sets():
    a = ramp()
    assert sim.threshold_mask(a).flatten().nonzero().flatten().tolist() == [12, 13, 14, 15]  # > 0.75 · 15
    ties = torch.zeros(1, 4, 4)
    ties[0, 3, 3] = 1
    assert sim.topk_mask(ties, 0.2).flatten().nonzero().flatten().tolist() == [0, 1, 2, 15]  # ⌈3.2⌉ = 4, ties by index
    assert sim.topk_count(20, 0.05) == 1 and sim.topk_count(100, 0.07) == 7


def test_spearman_equals_scipy_with_ties():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (6, 7, 7), generator=gen).float()
    b = torch.randint(0, 5, (6, 7, 7), generator=gen).float() + 0.5 * a
    ours = sim.spearman(a, b)
    for i in range(6):
        assert ours[i].item() == pytest.approx(spearmanr(a[i].flatten(), b[i].flatten()).statistic, abs=1e-12)
    ranks = sim.average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0]], dtype=torch.float64))
    assert ranks.tolist() == [[3.5, 1.0, 3.5, 2.0]]


def test_centre_of_mass_shift_by_hand():
    a = torch.zeros(1, 4, 5)
    a[0, 0, 0], a[0, 0, 4] = 1.0, 3.0  # CoM (0, 3)
    b = torch.zeros(1, 4, 5)
    b[0, 3, 1] = 2.0  # CoM (3, 1)
    assert sim.centre_of_mass(a).tolist() == [[0.0, 3.0]]
    assert sim.com_shift(a, b).item() == pytest.approx(math.hypot(3, 2))
    assert sim.compare(a, b, input_size=(8, 20))["com_shift_px"].item() == pytest.approx(math.hypot(6, 8))


def test_ssim_window_and_degenerate_pairs():
    assert [sim.ssim_window(*s) for s in ((4, 4), (8, 8), (14, 14), (6, 9), (2, 2))] == [3, 7, 7, 5, 0]
    assert sim.ssim(ramp(), ramp()).item() == pytest.approx(1)
    assert math.isnan(sim.ssim(torch.rand(1, 2, 2), torch.rand(1, 2, 2)).item())  # no 3×3 window fits
    scores = sim.compare(torch.stack([ramp()[0], torch.full((4, 4), 2.0)]), torch.stack([ramp()[0], ramp()[0]]))
    assert scores["degenerate"].tolist() == [False, True]
    assert all(math.isnan(v[1]) and not math.isnan(v[0]) for k, v in scores.items() if k != "degenerate")


# ------------------------------------------------------------------ a quickly trained model on `shapes`


@pytest.fixture(scope="module")
def trained():
    """cifar_resnet depth 8 width 8 on 16×16 `shapes`, 500 SGD steps (≈ 60 % test accuracy), plus the same
    architecture untrained. One thread: on a shared 2-core machine, OpenMP contention slows this 20×."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        options = {"n_train": 2000, "n_val": 10, "n_test": 64}
        bundle = build_dataset(DatasetConfig(name="shapes", image_size=16, options=options))
        seed_global(0, "init")
        arch = ModelConfig(name="cifar_resnet", options={"depth": 8, "width": 8})
        model, untrained = (build_model(arch, 10, 3, (16, 16)) for _ in range(2))
        cfg = TrainingConfig(epochs=100, batch_size=32, lr=0.05, momentum=0.9, schedule="constant")
        train(model, make_loader(bundle, bundle.train, 32, "cpu", train=True), cfg, None, start_step=0, end_step=500)
        yield model.eval(), untrained.eval(), LensData(bundle, "cpu", 64).eval_batch
    finally:
        torch.set_num_threads(threads)


def test_random_model_floor_below_same_seed(trained):
    model, untrained, batch = trained
    dense = GradCAM(model)(batch.images, batch.labels)
    again = GradCAM(model)(batch.images, batch.labels)
    floor = GradCAM(untrained)(batch.images, batch.labels)
    same, _ = sim.aggregate(sim.spearman(again.maps, dense.maps))
    random, n = sim.aggregate(sim.spearman(floor.maps, dense.maps))
    assert same == pytest.approx(1) and n >= 32 and random < 0.5


def test_correctness_higher_for_trained_model(trained):
    model, untrained, batch = trained
    scores = {}
    for name, m in (("trained", model), ("untrained", untrained)):
        per_image = correctness(GradCAM(m)(batch.images, batch.labels).maps, batch.extras["masks"])
        scores[name] = {k: sim.aggregate(v)[0] for k, v in per_image.items()}
    assert scores["trained"]["energy_inside"] > scores["untrained"]["energy_inside"]
    assert scores["trained"]["energy_ratio"] > 1.5 > scores["untrained"]["energy_ratio"]


# ------------------------------------------------------------------ the lens end to end


def test_lens_end_to_end_and_cached(tiny):
    cfg = tiny(
        dataset={"image_size": 16},
        model={"name": "cifar_resnet", "options": {"depth": 8, "width": 4}},
        pruning={"rounds": 1},
        lenses=["gradcam"],
        lens_images=16,
    )
    result = run(cfg, quiet=True)
    table = pd.read_csv(result.run_dir / "lens_gradcam.csv")
    kinds = {k: set(g["metric"]) for k, g in table.groupby("kind")}
    assert {"iou_thr", "iou_top5", "iou_top10", "iou_top20", "dice_top10", "spearman", "pearson", "cosine", "ssim",
            "pointing", "com_shift", "com_shift_px"} <= kinds["pruned_vs_dense"]  # fmt: skip
    assert kinds["pruned_vs_dense"] == kinds["floor"] == kinds["same_init"] == kinds["other_seed"] == kinds["position"]
    assert set(table[table.kind == "position"]["reference"]) == {"same_init", "other_seed"}
    assert kinds["maps"] == {"degenerate", "peak", "peak_ratio", "grid_h", "grid_w"}
    assert kinds["correctness"] == kinds["correctness_same_init"] == {"energy_inside", "energy_ratio", "pointing_game", "mask_iou"}
    assert (table["degenerate"] >= 0).all() and table["degenerate"].notna().all()
    assert kinds["faithfulness"] == {"deletion_auc", "insertion_auc"}
    assert kinds["mprt"] == {"spearman", "spearman_abs", "ssim"}
    assert set(table["round"]) == {0, 1} and set(table[table.kind == "mprt"]["round"]) == {0}
    dense = table[(table["round"] == 0) & (table.kind == "pruned_vs_dense")].set_index("metric")["value"]
    assert dense["spearman"] == pytest.approx(1) and dense["com_shift"] == pytest.approx(0)
    assert (table[table.kind == "maps"].set_index(["round", "metric"])["value"].xs("grid_h", level=1) == 4).all()
    lens = result.run_dir / "lenses/gradcam"
    cached = {p.name: p.stat().st_mtime_ns for p in lens.iterdir() if p.name.startswith(("round_", "setup"))}
    assert {"setup.json", "setup.pt", "round_000.json", "round_000.pt", "round_000_grid.png", "round_001.json"} <= set(cached)
    assert {"consistency.png", "mprt.png", "correctness_faithfulness.png", "lens.json"} <= {p.name for p in lens.iterdir()}
    (again,) = analyze_run(Run(result.run_dir), quiet=True)
    assert cached == {p.name: p.stat().st_mtime_ns for p in lens.iterdir() if p.name.startswith(("round_", "setup"))}
    pd.testing.assert_frame_equal(again.table, table, check_dtype=False)


def test_headline_orders_rounds_then_references():
    table = pd.DataFrame(
        [
            {"round": r, "kind": kind, "metric": metric, "value": value}
            for r, kind, metric, value in [
                (0, "pruned_vs_dense", "spearman", 1.0), (1, "pruned_vs_dense", "spearman", 0.7),
                (0, "floor", "spearman", 0.1), (0, "other_seed", "spearman", 0.6), (0, "same_init", "spearman", 0.8),
                (0, "correctness", "energy_inside", 0.3), (1, "correctness", "energy_inside", 0.35),
                (0, "correctness_floor", "energy_inside", 0.15), (0, "correctness_other_seed", "energy_inside", 0.29),
                (0, "correctness_same_init", "energy_inside", 0.31),
                (0, "maps", "degenerate", 0.0), (1, "maps", "degenerate", 3.0),
            ]
        ]
    )  # fmt: skip
    head = GradCAMLens.headline(table)
    assert head["round"].tolist() == ["0", "1", "floor", "same_init", "other_seed"]
    assert head["spearman"].tolist() == [1.0, 0.7, 0.1, 0.8, 0.6]
    assert head["energy_inside"].tolist() == [0.3, 0.35, 0.15, 0.31, 0.29]
    assert head["degenerate"].tolist()[:2] == [0.0, 3.0]


def test_jensen_shannon_matches_scipy():
    from scipy.spatial.distance import jensenshannon

    from prunelens.lenses.similarity import jensen_shannon

    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, 4, 4, generator=gen), torch.rand(5, 4, 4, generator=gen)
    a[0, :2] = 0  # zeros in one map
    ours = jensen_shannon(a, b)
    for i in range(5):
        assert float(ours[i]) == pytest.approx(jensenshannon(a[i].flatten().numpy(), b[i].flatten().numpy()) ** 2, abs=1e-6)
    disjoint = torch.zeros(2, 2, 2)
    disjoint[0, 0, 0] = disjoint[1, 1, 1] = 1.0
    assert float(jensen_shannon(disjoint[:1], disjoint[1:])[0]) == pytest.approx(math.log(2))
    assert float(jensen_shannon(a, a).abs().max()) < 1e-12
