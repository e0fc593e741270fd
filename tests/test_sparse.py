"""Sparse CSR kernels for unstructured masks (pruning/sparse.py) and the `sparse` part of `prunelens shrink`.

Outputs are checked against functional forwards on the masked weights written out here; no timing is asserted
(the benchmark measures speed: benchmarks/bench_sparse.py).
"""

import json

import matplotlib.image
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from torch import nn

from prunelens.cli import main
from prunelens.experiment import run
from prunelens.masks import MaskSet, prunable_names
from prunelens.models import MODELS
from prunelens.pruning.sparse import (
    Layer,
    SparseConv2d,
    SparseLinear,
    crossover,
    crossover_density,
    layers_of,
    random_mask,
    semi_structured,
    sparsify,
    two_four,
)
from prunelens.runs import Run
from prunelens.store import RunStore

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")


@pytest.fixture
def threads():
    """`prunelens shrink --threads` sets torch's thread count for the process: restore it afterwards."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def random_masks(model: nn.Module, density: float, seed: int = 0) -> MaskSet:
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return MaskSet({n: random_mask(params[n].shape, density, generator) for n in prunable_names(model)})


def masked(model: nn.Module, masks: MaskSet, name: str) -> torch.Tensor:
    return dict(model.named_parameters())[name].detach() * masks[name]


def test_sparsified_lenet_equals_masked_linear_layers():
    torch.manual_seed(0)
    model = MODELS.get("lenet_300_100")(10, 1, (28, 28), {}, None).eval()
    masks = random_masks(model, 0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sparse = sparsify(model, masks).eval()
    x = torch.randn(7, 1, 28, 28)
    h = x.flatten(1)
    for name in ("fc_layers.0", "fc_layers.2"):
        h = F.relu(F.linear(h, masked(model, masks, f"{name}.weight"), dict(model.named_parameters())[f"{name}.bias"]))
    expected = F.linear(h, masked(model, masks, "fc.weight"), model.fc.bias)
    with torch.no_grad():
        got = sparse(x)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)
    assert sum(isinstance(m, SparseLinear) for m in sparse.modules()) == 3
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # the original stays dense, unmasked
    assert not any(isinstance(m, SparseLinear) for m in model.modules())


class Mixed(nn.Module):
    """Every conv form `SparseConv2d` handles, a grouped conv it keeps dense, BN and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 12, 3, stride=2, dilation=2, bias=False)
        self.c = nn.Conv2d(12, 12, (4, 2), padding="same", dilation=(1, 2))
        self.g = nn.Conv2d(12, 12, 3, padding=1, groups=3)
        self.bn = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.g(self.c(F.relu(self.b(F.relu(self.a(x)))))))
        return self.fc(x.mean((2, 3)))


def test_sparsified_conv_model_equals_masked_convolutions():
    torch.manual_seed(0)
    model = Mixed()
    with torch.no_grad():  # a BN that is not the identity
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    model.eval()
    masks = random_masks(model, 0.3, seed=1)
    sparse = sparsify(model, masks).eval()
    x = torch.randn(3, 3, 17, 19)
    w = {n: masked(model, masks, n) for n in masks}
    h = F.relu(F.conv2d(x, w["a.weight"], model.a.bias, padding=1))
    h = F.relu(F.conv2d(h, w["b.weight"], None, stride=2, dilation=2))
    h = F.pad(h, (1, 2, 1, 2))  # "same" for a (4, 2) kernel dilated (1, 2): 3 rows and 2·1 columns, the extra after
    h = F.conv2d(h, w["c.weight"], model.c.bias, dilation=(1, 2))
    h = F.conv2d(h, w["g.weight"], model.g.bias, padding=1, groups=3)
    h = F.batch_norm(h, model.bn.running_mean, model.bn.running_var, model.bn.weight, model.bn.bias, eps=model.bn.eps)
    expected = F.linear(h.mean((2, 3)), w["fc.weight"], model.fc.bias)
    with torch.no_grad():
        got = sparse(x)
        unbatched = sparse.a(x[0])
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)
    assert torch.allclose(unbatched, F.conv2d(x[:1], w["a.weight"], model.a.bias, padding=1)[0], atol=1e-4, rtol=0)
    assert [type(m) for m in (sparse.a, sparse.b, sparse.c, sparse.g, sparse.fc)] == [
        SparseConv2d, SparseConv2d, SparseConv2d, nn.Conv2d, SparseLinear]  # fmt: skip
    assert torch.equal(sparse.g.weight, w["g.weight"])  # kept dense, but masked


def test_csr_weights_hold_exactly_the_kept_weights():
    torch.manual_seed(0)
    model = Mixed().eval()
    masks = random_masks(model, 0.2, seed=2)
    sparse = sparsify(model, masks)
    modules = dict(sparse.named_modules())
    checked = 0
    for name in masks:
        module = modules[name.removesuffix(".weight")]
        if not isinstance(module, (SparseLinear, SparseConv2d)):
            continue
        mask = masks[name]
        assert module.weight.layout == torch.sparse_csr
        assert module.weight._nnz() == int(mask.sum()) == round(0.2 * mask.numel())
        assert torch.equal(module.weight.to_dense(), masked(model, masks, name).reshape(mask.shape[0], -1))
        checked += 1
    assert checked == 4


def test_layers_of_reads_the_input_shapes():
    model = Mixed().eval()
    layers = {layer.name: layer for layer in layers_of(model, random_masks(model, 0.5), torch.randn(2, 3, 17, 19))}
    assert set(layers) == {"a", "b", "c", "fc"}  # g is grouped: no sparse kernel, no crossover
    assert layers["a"] == Layer("a", (8, 3, 3, 3), (3, 17, 19), padding=(1, 1))
    assert layers["b"].input == (8, 17, 19) and layers["b"].stride == (2, 2) and layers["b"].dilation == (2, 2)
    assert layers["fc"] == Layer("fc", (5, 12), (12,))


def test_crossover_has_one_row_per_layer_and_density_and_agrees_with_its_table():
    layers = [Layer("fc", (40, 64), (64,)), Layer("conv", (8, 4, 3, 3), (4, 6, 6), padding=(1, 1)),
              Layer("fc_twin", (40, 64), (64,))]  # fmt: skip
    densities = [1.0, 0.5, 0.1]
    table, wins = crossover(layers, densities, batch=2, repeats=1)
    assert list(table.columns) == ["layer", "density", "nnz", "dense_ms", "sparse_ms", "speedup"]
    assert len(table) == 4 * 3 and not table.duplicated(["layer", "density"]).any()
    assert set(table["layer"]) == {"fc", "conv", "fc_twin", "all"}
    one = table.set_index(["layer", "density"])
    assert one.loc[("fc", 0.1), "nnz"] == 256 and one.loc[("conv", 1.0), "nnz"] == 288
    assert one.loc[("all", 0.5), "nnz"] == 1280 + 144 + 1280
    for d in densities:  # the sums, and equal shapes timed once
        parts = one.loc[[("fc", d), ("conv", d), ("fc_twin", d)]]
        assert one.loc[("all", d), "dense_ms"] == pytest.approx(parts["dense_ms"].sum())
        assert one.loc[("fc", d), "sparse_ms"] == one.loc[("fc_twin", d), "sparse_ms"]
    assert (table[["dense_ms", "sparse_ms"]] > 0).all().all()
    assert table["speedup"].tolist() == pytest.approx((table["dense_ms"] / table["sparse_ms"]).tolist())
    assert set(wins) == {"fc", "conv", "fc_twin", "all"}
    for name, density in wins.items():
        faster = table[(table["layer"] == name) & (table["speedup"] > 1)]["density"]
        assert density == (faster.max() if len(faster) else None)
    single, single_wins = crossover(layers[:1], [0.5], batch=1, repeats=1)
    assert single["layer"].tolist() == ["fc"] and set(single_wins) == {"fc"}


def test_crossover_density_is_the_highest_density_where_sparse_wins():
    table = pd.DataFrame({
        "layer": ["x"] * 4 + ["y"] * 2,
        "density": [0.5, 0.2, 0.1, 0.05, 0.5, 0.1],
        "speedup": [0.5, 1.2, 0.9, 3.0, 0.2, 1.0],  # x wins at 0.2 (not at 0.1: noise), y never (1.0 is a tie)
    })  # fmt: skip
    assert crossover_density(table) == {"x": 0.2, "y": None}


def test_two_four_keeps_the_two_largest_of_every_four():
    weight = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.5, -0.2, 0.0]])
    assert two_four(weight).tolist() == [[False, True, True, False, True, True, False, False]]
    assert two_four(torch.randn(16, 32)).reshape(16, 8, 4).sum(2).eq(2).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: 2:4 kernels are timed, not refused")
def test_semi_structured_gives_no_number_without_a_gpu():
    assert semi_structured([Layer("fc", (64, 64), (64,))]) == {"status": "needs a CUDA GPU"}


def test_shrink_command_reports_sparse_kernels_of_an_unstructured_run(tmp_path, capsys, threads):
    cfg = tiny_config(
        tmp_path,
        dataset={"name": "digits", "image_size": None, "options": {}},
        model={"name": "lenet_300_100", "options": {}},
        pruning={"rounds": 1, "fraction": 0.5},
    )
    run(cfg, quiet=True)
    capsys.readouterr()
    assert main(["shrink", str(cfg.run_dir), "--batch", "8", "--repeats", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "unstructured sparsity cannot be removed physically" in out
    assert "masked dense vs sparse CSR kernels" in out
    assert ("sparse kernels win below density" in out) != ("sparse kernels never won at the densities measured" in out)
    assert "2:4 semi-structured kernels:" in out

    store = RunStore(cfg.run_dir)
    report = store.load_json("rounds/001/shrink.json")
    sparse = report["sparse"]
    masks = Run(cfg.run_dir).round(1).masks()
    assert sparse["density"] == pytest.approx(masks.density()) and sparse["density"] == pytest.approx(0.5, abs=1e-3)
    assert set(sparse["layer_density"]) == {"fc_layers.0", "fc_layers.2", "fc"} and sparse["dense_layers"] == {}
    assert sparse["flops_effective"] == report["masked"]["flops_effective"] < sparse["flops"]
    assert sparse["max_abs_diff"] < 1e-4
    times = sparse["latency_ms"]
    assert times["speedup"] == pytest.approx(times["masked"]["median"] / times["sparse"]["median"])
    assert sparse["faster"] == (times["speedup"] > 1)
    assert sparse["threads"] == 1 and len(sparse["load_average"]) == 2
    assert all(times[k]["min"] <= times[k]["median"] <= times[k]["max"] for k in ("masked", "sparse"))
    if not torch.cuda.is_available():
        assert sparse["semi_structured"] == {"status": "needs a CUDA GPU"}
        assert "2:4 semi-structured kernels: needs a CUDA GPU" in out

    cross = sparse["crossover"]
    assert cross["table"] == "rounds/001/sparse_crossover.csv" and cross["figure"] == "rounds/001/sparse_crossover.png"
    table = pd.read_csv(cfg.run_dir / cross["table"])
    assert json.loads(json.dumps(cross["densities"])) == sorted(set(table["density"]), reverse=True)
    assert round(masks.density(), 4) in set(table["density"])
    assert len(table) == 4 * len(cross["densities"])
    assert cross["density"] == crossover_density(table)["all"] and cross["layers"] == crossover_density(table)
    if cross["density"] is not None:
        assert f"sparse kernels win below density {cross['density']:g}" in out
    data = store.read(cross["figure"])  # listed in the manifest with its checksum
    assert data.startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(cfg.run_dir / cross["figure"])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[2] in (3, 4)
    assert str(cfg.run_dir / cross["figure"]) in out
