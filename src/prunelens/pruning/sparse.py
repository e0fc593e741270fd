"""Unstructured sparsity with sparse kernels: what a connection mask buys in CPU latency (docs/methods.md §17).

A mask only simulates pruning (§1.4); `shrink` removes whole filters only. `sparsify` keeps every weight
position but stores the masked weights of each `nn.Linear` and ungrouped `nn.Conv2d` as a sparse CSR matrix,
so the multiply touches the kept weights only:

- Linear: y = (b + W_csr · xᵀ)ᵀ, one `torch.addmm` with the CSR matrix first and xᵀ made contiguous (a chain
  of such layers hands each the layout it wants; `torch.sparse.mm` and `torch.mm` measured within ±7 %);
- Conv2d: im2col as a strided view of the padded input, copied once to (C·kh·kw, N·H'·W') (about 3× faster
  than `F.unfold` here), then the same CSR matmul. The im2col copy itself costs about as much as a dense
  3×3 convolution (mkldnn), which is why sparse convs rarely win on a CPU.

`crossover` times dense `F.linear` / `F.conv2d` against these kernels at random masks of given densities;
`semi_structured` times 2:4 kernels, which exist on CUDA GPUs only.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunelens.masks import MaskSet
from prunelens.modules import eval_mode
from prunelens.pruning.shrink import _timed

DENSITIES = (0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01)
KERNEL = "torch.addmm(bias, W_csr, x^T) (MKL sparse CSR)"


def _csr(weight: Tensor) -> Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return weight.detach().reshape(weight.shape[0], -1).to_sparse_csr()


def _matmul(csr: Tensor, bias: Tensor | None, columns: Tensor) -> Tensor:
    """csr (O, K) · columns (K, M) + bias per row: (O, M)."""
    columns = columns.contiguous()
    if bias is None:
        return torch.sparse.mm(csr, columns)
    return torch.addmm(bias.unsqueeze(1), csr, columns)


class SparseLinear(nn.Module):
    """y = x Wᵀ + b with W stored as sparse CSR (buffer `weight`)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", _csr(linear.weight))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        y = _matmul(self.weight, self.bias, x.reshape(-1, self.in_features).T)
        return y.T.reshape(*x.shape[:-1], self.out_features)


class SparseConv2d(nn.Module):
    """An ungrouped, zero-padded Conv2d as im2col + sparse CSR matmul (buffer `weight`: (O, C·kh·kw))."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        if conv.padding == "same":  # stride 1 (torch's rule); the extra pixel goes right / bottom, as torch does
            total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
            self.pad = (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)
        else:
            ph, pw = (0, 0) if conv.padding == "valid" else conv.padding
            self.pad = (pw, pw, ph, ph)
        self.out_channels = conv.out_channels
        self.register_buffer("weight", _csr(conv.weight))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        batched = x.dim() == 4
        x = F.pad(x if batched else x.unsqueeze(0), self.pad)
        (n, c, h, w), (kh, kw), (sh, sw), (dh, dw) = x.shape, self.kernel_size, self.stride, self.dilation
        ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
        sn, sc, sy, sx = x.stride()
        view = x.as_strided((c, kh, kw, n, ho, wo), (sc, sy * dh, sx * dw, sn, sy * sh, sx * sw))
        y = _matmul(self.weight, self.bias, view.reshape(c * kh * kw, n * ho * wo))
        y = y.reshape(self.out_channels, n, ho, wo).transpose(0, 1)
        return y if batched else y[0]


def dense_reason(module: nn.Module) -> str | None:
    """Why a masked layer stays dense in `sparsify` (None: it gets a sparse kernel)."""
    if isinstance(module, nn.Linear):
        return None
    if type(module) is not nn.Conv2d:
        return f"{type(module).__name__}: no sparse kernel (Linear and Conv2d only)"
    if module.groups != 1:
        return f"grouped conv (groups={module.groups})"
    if module.padding_mode != "zeros":
        return f"padding_mode={module.padding_mode!r}"
    return None


def _sparse(module: nn.Module) -> nn.Module:
    return SparseLinear(module) if isinstance(module, nn.Linear) else SparseConv2d(module)


def sparsify(model: nn.Module, masks: MaskSet) -> nn.Module:
    """A copy of `model` ⊙ `masks` whose masked Linear / ungrouped Conv2d layers use sparse CSR kernels.

    Other masked layers stay dense (masked; see `dense_reason`). Eval-mode outputs equal the masked dense
    model's up to float rounding; the copy keeps `model`'s train/eval mode and has no trainable sparse weights.
    """
    masks.check(model)
    copied = copy.deepcopy(model)
    masks.apply(copied)
    swap = {
        module: _sparse(module)
        for name, module in copied.named_modules()
        if name and f"{name}.weight" in masks and dense_reason(module) is None
    }
    for parent in list(copied.modules()):
        for key, child in parent._modules.items():
            if child in swap:
                parent._modules[key] = swap[child].train(child.training)
    return copied


@dataclass(frozen=True)
class Layer:
    """A layer shape to time: weight (out, in) for a Linear or (out, in, kh, kw) for a Conv2d, and the
    per-sample input shape ((…, in) or (in, H, W))."""

    name: str
    weight: tuple[int, ...]
    input: tuple[int, ...]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] | str = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    def dense(self, generator: torch.Generator) -> nn.Module:
        if len(self.weight) == 2:
            module: nn.Module = nn.Linear(self.weight[1], self.weight[0])
        else:
            out, cin, kh, kw = self.weight
            module = nn.Conv2d(cin, out, (kh, kw), self.stride, self.padding, self.dilation)
        with torch.no_grad():
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
        return module.eval()


def layers_of(model: nn.Module, masks: MaskSet, example: Tensor) -> list[Layer]:
    """The shapes of `model`'s layers that `sparsify` gives sparse kernels, with their inputs on `example`."""
    found: dict[str, Layer] = {}
    named = {m: n for n, m in model.named_modules() if n and f"{n}.weight" in masks and dense_reason(m) is None}

    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        name = named[module]
        extra = {} if isinstance(module, nn.Linear) else {
            "stride": module.stride, "padding": module.padding, "dilation": module.dilation}  # fmt: skip
        found.setdefault(name, Layer(name, tuple(module.weight.shape), tuple(args[0].shape[1:]), **extra))

    handles = [m.register_forward_pre_hook(hook) for m in named]
    try:
        with torch.no_grad(), eval_mode(model):
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return [found[n] for n in named.values() if n in found]


def random_mask(shape: Sequence[int], density: float, generator: torch.Generator) -> Tensor:
    """A bool mask keeping exactly round(density · numel) entries chosen uniformly at random."""
    n = int(torch.Size(shape).numel())
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.randperm(n, generator=generator)[: round(density * n)]] = True
    return keep.reshape(*shape)


def crossover(
    layers: Sequence[Layer], densities: Sequence[float] = DENSITIES, batch: int = 32, repeats: int = 10, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, float | None]]:
    """Dense vs sparse-kernel latency of each layer at random masks of each density, interleaved (median ms).

    Returns the table (layer, density, nnz, dense_ms, sparse_ms, speedup = dense / sparse; with several layers
    also `all`: the sums) and per layer the crossover: the highest density at which sparse is faster, or None.
    Layers of equal shape are timed once.
    """
    generator, cache, rows = torch.Generator().manual_seed(seed), {}, []
    for layer in layers:
        for density in densities:
            key = (layer.weight, layer.input, layer.stride, layer.padding, layer.dilation, density)
            if key not in cache:
                dense = layer.dense(generator)
                with torch.no_grad():
                    dense.weight.mul_(random_mask(dense.weight.shape, density, generator))
                sparse = _sparse(dense)
                x = torch.randn(batch, *layer.input, generator=generator)
                t = _timed({"dense": dense, "sparse": sparse}, x, repeats, warmup=1)
                cache[key] = (sparse.weight._nnz(), t["dense"]["median"] * 1e3, t["sparse"]["median"] * 1e3)
            nnz, dense_ms, sparse_ms = cache[key]
            rows.append({"layer": layer.name, "density": density, "nnz": nnz, "dense_ms": dense_ms, "sparse_ms": sparse_ms})
    table = pd.DataFrame(rows, columns=["layer", "density", "nnz", "dense_ms", "sparse_ms"])
    if len(layers) > 1:
        total = table.groupby("density", sort=False)[["nnz", "dense_ms", "sparse_ms"]].sum().reset_index()
        table = pd.concat([table, total.assign(layer="all")[table.columns]], ignore_index=True)
    table["speedup"] = table["dense_ms"] / table["sparse_ms"]
    return table, crossover_density(table)


def crossover_density(table: pd.DataFrame) -> dict[str, float | None]:
    """Per layer of a `crossover` table: the highest density with speedup > 1, or None."""
    wins = table[table["speedup"] > 1]
    return {name: (float(wins.loc[wins["layer"] == name, "density"].max()) if (wins["layer"] == name).any() else None)
            for name in table["layer"].unique()}  # fmt: skip


def two_four(weight: Tensor) -> Tensor:
    """The 2:4 mask of `weight` (out, in): in every 4 consecutive inputs keep the 2 of largest |w|."""
    groups = weight.detach().abs().reshape(weight.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, groups.topk(2, dim=2).indices, True)
    return keep.reshape(weight.shape)


def semi_structured(layers: Sequence[Layer], batch: int = 32, repeats: int = 20) -> dict[str, Any]:
    """2:4 sparse (`torch.sparse.to_sparse_semi_structured`, fp16) vs dense fp16 F.linear of each Linear layer
    shape on the GPU. On a machine without CUDA: {"status": "needs a CUDA GPU"} and no number."""
    if not torch.cuda.is_available():
        return {"status": "needs a CUDA GPU"}
    from torch.sparse import to_sparse_semi_structured

    device, rows = torch.device("cuda"), []
    for layer in (one for one in layers if len(one.weight) == 2):
        out, cin = (-(-d // 64) * 64 for d in layer.weight)  # rounded up to multiples of 64 (the kernels' tiles)
        weight = torch.randn(out, cin, device=device, dtype=torch.float16)
        weight = weight * two_four(weight)
        x = torch.randn(max(batch, 8), cin, device=device, dtype=torch.float16)
        try:
            packed = to_sparse_semi_structured(weight)
            F.linear(x, packed)
        except RuntimeError as err:  # no kernel for this GPU / shape: say so, time nothing
            rows.append({"layer": layer.name, "error": f"{type(err).__name__}: {err}"[:300]})
            continue
        times: dict[str, list[float]] = {"dense": [], "sparse": []}
        for i in range(repeats + 3):
            for name, w in (("dense", weight), ("sparse", packed))[:: 1 if i % 2 == 0 else -1]:
                torch.cuda.synchronize()
                began = time.perf_counter()
                F.linear(x, w)
                torch.cuda.synchronize()
                if i >= 3:
                    times[name].append(time.perf_counter() - began)
        dense_ms, sparse_ms = (statistics.median(times[k]) * 1e3 for k in ("dense", "sparse"))
        diff = float((F.linear(x, weight) - F.linear(x, packed)).abs().max())
        rows.append({"layer": layer.name, "padded": [out, cin], "dense_ms": dense_ms, "sparse_ms": sparse_ms,
                     "speedup": dense_ms / sparse_ms, "max_abs_diff": diff})  # fmt: skip
    return {"status": "measured", "device": torch.cuda.get_device_name(), "layers": rows}
