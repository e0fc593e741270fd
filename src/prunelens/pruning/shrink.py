"""Physical shrink of filter- or connection-pruned models with Torch-Pruning, and what it buys (docs/methods.md §5.4).

A mask only *simulates* pruning: the masked layers still compute their zero filters. `shrink` exports a
smaller dense copy that computes the same function as the masked model in eval mode, so the effective FLOPs
of the masks can be set against the FLOPs and measured latency of a real network.

Which channels go. Torch-Pruning's dependency graph couples each channel of a Conv/Linear output with the
layers that *write* it (every conv feeding the same residual stream), the channel-wise ops on the way
(BatchNorm, ReLU, adds) and the layers that *read* it. A channel is removed when every reader can lose it
exactly:

- its column in the reader is all zero (connection sparsity where every reader dropped the channel, which
  amounts to dropping the writers' filter), or
- the channel is constant: every writer's filter is zero, so the channel carries bias → BN affine → ReLU …,
  one number c per channel at every position and for every input (read off `example_inputs`), and
  - c = 0 (e.g. no bias and BN β ≤ γ·μ/σ before a ReLU, as at initialisation), or
  - the reader is a Linear or a conv without zero padding: c · Σ W[:, j] is folded into its bias, or
  - the reader is a zero-padded conv: border outputs see c through fewer taps, so the contribution is not
    a bias. All such channels are merged into one kept constant channel s, W[:, s] += (c_j / c_s) · W[:, j],
    which is exact because every constant channel meets the same padding; only s stays.

Channels are kept when they reach the model output, feed a channel-mixing layer (LayerNorm, GroupNorm,
attention, LSTM), a grouped or transposed conv or a custom pruner, or when a layer would lose all of them.
Equality holds in eval mode, up to float rounding (folds reorder sums). Functional ops that mix channels
inside `forward` (e.g. `x.mean(1)`) are invisible to tracing, so `shrink` compares the outputs of both
models on `example_inputs` and raises if they differ.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunelens.errors import PrunelensError
from prunelens.flops import profile
from prunelens.masks import MaskSet
from prunelens.modules import WEIGHT_LAYERS
from prunelens.pruning.structured import by_group

_Conv = nn.modules.conv._ConvNd


def _torch_pruning() -> Any:
    try:
        import torch_pruning
    except ImportError:
        raise PrunelensError("shrinking needs the optional dependency torch-pruning: pip install torch-pruning") from None
    return torch_pruning


def _depthwise(module: nn.Module) -> bool:
    return isinstance(module, _Conv) and module.groups == module.in_channels == module.out_channels > 1


def _root(module: nn.Module) -> bool:
    """A layer whose output channels start a group: a Linear or an ungrouped, non-transposed conv."""
    return isinstance(module, nn.Linear) or (isinstance(module, _Conv) and module.groups == 1 and not module.transposed)


def _zero_padded(conv: nn.Module) -> bool:
    if not isinstance(conv, _Conv) or conv.padding_mode != "zeros":
        return False
    return conv.padding == "same" or (conv.padding != "valid" and any(conv.padding))


class _Roles:
    """What a dependency in a Torch-Pruning group is for the channel: a writer, a reader, a channel-wise op,
    a parameter-free op passing it on, or something that forbids removing it."""

    def __init__(self, tp: Any) -> None:
        self.tp = tp
        self.known = {
            tp.prune_conv_out_channels: "writer",
            tp.prune_linear_out_channels: "writer",
            tp.prune_depthwise_conv_out_channels: "writer",
            tp.prune_conv_in_channels: "reader",
            tp.prune_linear_in_channels: "reader",
            tp.prune_batchnorm_out_channels: "channelwise",
            tp.prune_prelu_out_channels: "channelwise",
            tp.prune_instancenorm_out_channels: "channelwise",
        }

    def __call__(self, dep: Any) -> str:
        module, pruner = dep.target.module, getattr(dep.handler, "__self__", None)
        ops = self.tp.ops
        if isinstance(module, _Conv) and (module.transposed or (module.groups > 1 and not _depthwise(module))):
            return "blocked"
        if dep.handler in self.known:
            return self.known[dep.handler]
        if isinstance(pruner, ops.DummyPruner) and not isinstance(pruner, (ops.OutputPruner, ops.CustomizedPruner)):
            return "pass"
        return "blocked"


@dataclass
class _Reader:
    """The columns of one reading layer that carry the group's channels."""

    module: nn.Module
    idx: torch.Tensor  # column in the reader
    root: torch.Tensor  # the group's channel each column carries
    value: torch.Tensor  # the channel's constant value at the reader's input (where constant)
    fold: torch.Tensor  # constant with a non-zero contribution: must be folded if removed


@torch.no_grad()
def _probe(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """Per Conv/Linear: min and max of each input channel (conv) or feature (Linear) over `example`."""
    ranges: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].movedim(1, -1) if isinstance(module, _Conv) else args[0]
        flat = x.reshape(-1, x.shape[-1]).to(torch.float64)
        lo, hi = flat.amin(0).cpu(), flat.amax(0).cpu()
        if module in ranges:
            lo, hi = torch.minimum(lo, ranges[module][0]), torch.maximum(hi, ranges[module][1])
        ranges[module] = (lo, hi)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    try:
        model(example)
    finally:
        for handle in handles:
            handle.remove()
    return ranges


_Item = tuple[Any, str, torch.Tensor, torch.Tensor]
"""A group member: (Torch-Pruning dependency, role, its indices, the group channel of each index)."""


def _readers(items: list[_Item], ranges: dict, width: int) -> tuple[list[_Reader], torch.Tensor]:
    """The group's readers, and per channel whether some reader needs it (neither zero column nor foldable)."""
    constant = torch.ones(width, dtype=torch.bool)
    for dep, role, idx, root in items:
        if role == "writer":
            constant[root[~by_group(dep.target.module.weight, 0).eq(0).all(1)[idx].cpu()]] = False
    needed = torch.zeros(width, dtype=torch.bool)
    readers = []
    for dep, role, idx, root in items:
        if role != "reader":
            continue
        module = dep.target.module
        lo, hi = (t[idx] for t in ranges[module])
        value = (lo + hi) / 2
        const = constant[root] & torch.isclose(lo, hi, rtol=1e-6, atol=1e-12)
        free = by_group(module.weight, 1).eq(0).all(1)[idx].cpu() | (const & value.eq(0))
        needed[root[~free & ~const]] = True
        readers.append(_Reader(module, idx, root, value, const & ~free))
    return readers, needed


def _surrogate(readers: list[_Reader], candidates: torch.Tensor) -> int | None:
    """The constant channel that absorbs the others at zero-padded readers: the candidate whose smallest
    |value| over those readers is largest (None if every candidate is 0 at one of them)."""
    padded = [r for r in readers if _zero_padded(r.module) and r.fold.any()]
    score = torch.where(candidates, torch.inf, 0.0).to(torch.float64)
    for reader in padded:
        size = torch.zeros_like(score)
        size[reader.root] = reader.value.abs()
        score = torch.minimum(score, size)
    best = int(score.argmax())
    return best if padded and score[best] > 0 else None


@torch.no_grad()
def _fold(reader: _Reader, remove: torch.Tensor, surrogate: int | None) -> None:
    """Move the contribution of the removed constant channels into the reader's bias or the surrogate."""
    cols = reader.fold & remove[reader.root]
    if not cols.any():
        return
    weight = reader.module.weight
    columns = weight[:, reader.idx[cols]].to(torch.float64)
    values = reader.value[cols].view(1, -1, *[1] * (weight.dim() - 2)).to(columns.device)
    summed = (columns * values).sum(1)
    if _zero_padded(reader.module):
        pick = reader.root == surrogate
        weight[:, int(reader.idx[pick][0])] += (summed / float(reader.value[pick][0])).to(weight.dtype)
        return
    if reader.module.bias is None:
        reader.module.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
    reader.module.bias += summed.reshape(weight.shape[0], -1).sum(1).to(weight.dtype)


def _removable(group: Any, roles: _Roles, ranges: dict, width: int) -> list[int]:
    """The channels of `group` that can go without changing the outputs; folds their contributions first."""
    items = [(it.dep, roles(it.dep), torch.tensor(it.idxs), torch.tensor(it.root_idxs)) for it in group.items]
    if any(role == "blocked" for _, role, _, _ in items):
        return []
    readers, needed = _readers(items, ranges, width)
    if not readers:
        return []
    merge = torch.zeros(width, dtype=torch.bool)
    for reader in readers:
        if _zero_padded(reader.module):
            merge[reader.root[reader.fold]] = True
    surrogate = _surrogate(readers, merge & ~needed) if (merge & ~needed).any() else None
    remove = ~needed
    if surrogate is None:
        remove &= ~merge
    else:
        remove[surrogate] = False
    if remove.all():
        remove[-1] = False
    for reader in readers:
        _fold(reader, remove, surrogate)
    return remove.nonzero().squeeze(1).tolist()


def _trace(tp: Any, model: nn.Module, example: torch.Tensor) -> Any:
    try:
        with torch.enable_grad():  # Torch-Pruning traces autograd
            return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    except Exception as err:  # tracing fails in many ways on unsupported models
        raise PrunelensError(f"shrink: torch-pruning cannot trace {type(model).__name__} ({type(err).__name__}: {err})") from None


@torch.no_grad()
def _check_outputs(masked: nn.Module, small: nn.Module, example: torch.Tensor) -> None:
    expected, got = masked(example), small(example)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    if expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-4, atol=1e-4 * scale + 1e-6):
        raise PrunelensError(
            f"shrink: the shrunk {type(small).__name__} does not reproduce the masked model's outputs "
            "(a functional op mixes channels, or the output depends on a removed channel); not supported"
        )


def shrink(model: nn.Module, masks: MaskSet, example_inputs: torch.Tensor) -> nn.Module:
    """A smaller dense copy of `model` ⊙ `masks` (eval mode outputs equal) with the dead channels removed.

    `example_inputs`: any batch the model accepts; it is traced, the constants of dead channels (which do not
    depend on it) are read off it, and both models' outputs on it are compared. `model` is left unchanged;
    the copy comes back in `model`'s train/eval mode. Raises PrunelensError if torch-pruning is missing,
    cannot trace the model, or the outputs differ (see the module docstring for what is removed).
    """
    tp = _torch_pruning()
    masks.check(model)
    masked = copy.deepcopy(model).eval().requires_grad_(True)
    masks.apply(masked)
    small = copy.deepcopy(masked)
    ranges = _probe(small, example_inputs)
    graph = _trace(tp, small, example_inputs)
    roles, covered, plans = _Roles(tp), set(), []
    for module in small.modules():
        if not _root(module) or module in covered or module not in graph.module2node:
            continue
        fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
        width = module.weight.shape[0]
        group = graph.get_pruning_group(module, fn, list(range(width)))
        covered.update(it.dep.target.module for it in group.items if roles(it.dep) == "writer")
        plans.append((module, fn, _removable(group, roles, ranges, width)))
    for module, fn, remove in plans:
        if remove:
            graph.get_pruning_group(module, fn, remove).prune()
    _check_outputs(masked, small, example_inputs)
    return small.train(model.training)


def footprint(model: nn.Module, example: torch.Tensor, masks: MaskSet | None = None) -> dict[str, float]:
    """Parameters and FLOPs per sample of `model`; with `masks`, also the effective FLOPs (docs/methods.md §1.4)."""
    flops = profile(model, example)
    counts: dict[str, float] = {"params": sum(p.numel() for p in model.parameters()), "flops": flops.total}
    if masks is not None:
        counts["flops_effective"] = flops.effective(masks)
    return counts


@torch.no_grad()
def _timed(models: dict[str, nn.Module], example: torch.Tensor, repeats: int, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Seconds per forward of `example` for each model in eval mode, interleaved (order alternating each
    repeat) so that drifts of a shared machine hit all models alike; median / min / max over `repeats`."""
    modes = {name: m.training for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    try:
        for m in models.values():
            m.eval()
        for i in range(warmup + repeats):
            for name in list(models)[:: 1 if i % 2 == 0 else -1]:
                began = time.perf_counter()
                models[name](example)
                if i >= warmup:
                    times[name].append(time.perf_counter() - began)
    finally:
        for name, m in models.items():
            m.train(modes[name])
    return {name: {"median": statistics.median(t), "min": min(t), "max": max(t)} for name, t in times.items()}


def latency(model: nn.Module, example: torch.Tensor, repeats: int = 20) -> dict[str, float]:
    """Median / min / max seconds per forward of the batch `example` (eval mode, no grad, after warm-up)."""
    return _timed({"model": model}, example, repeats)["model"]


def compare_latency(masked: nn.Module, shrunk: nn.Module, example: torch.Tensor, repeats: int = 20) -> dict[str, Any]:
    """Interleaved latency of the masked and the shrunk model, and speed-up = masked / shrunk median."""
    timed = _timed({"masked": masked, "shrunk": shrunk}, example, repeats)
    return {**timed, "speedup": timed["masked"]["median"] / timed["shrunk"]["median"]}

