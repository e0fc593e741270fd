"""A network's features at one layer: the pooled embedding lenses and encoders read (PCBM, MIS encoders)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from prunelens.errors import PrunelensError
from prunelens.lenses.data import LensData
from prunelens.modules import eval_mode

EMBED_BATCH = 256


def embedding_module(model: nn.Module, layer: str | None) -> tuple[nn.Module, bool]:
    """The module whose output (`layer`) or, by default, whose input (the last `nn.Linear`: the penultimate
    features) is the embedding; the flag says whether the input is taken."""
    modules = dict(model.named_modules())
    if layer is not None:
        if layer not in modules:
            raise PrunelensError(f"option layer: {type(model).__name__} has no module {layer!r}")
        return modules[layer], False
    linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
    if not linears:
        raise PrunelensError(f"{type(model).__name__} has no nn.Linear classifier; set the layer option")
    return linears[-1], True


@torch.no_grad()
def embed(model: nn.Module, images: Iterable[Tensor], layer: str | None) -> tuple[Tensor, Tensor]:
    """(embeddings (n, D) float32, logits (n, classes)) of batches of normalised `images`, on the CPU; conv
    outputs are averaged over space."""
    module, take_input = embedding_module(model, layer)
    captured: list[Tensor] = []

    def keep(value: Tensor) -> None:
        captured.append((value.mean((2, 3)) if value.ndim == 4 else value.flatten(1)).float().cpu())

    handle = (
        module.register_forward_pre_hook(lambda _m, args: keep(args[0]))
        if take_input
        else module.register_forward_hook(lambda _m, _a, out: keep(out))
    )
    try:
        with eval_mode(model):
            logits = [model(x).float().cpu() for x in images]
    finally:
        handle.remove()
    return torch.cat(captured), torch.cat(logits)


def embed_rows(model: nn.Module, data: LensData, split: str, index: Tensor, layer: str | None) -> tuple[Tensor, Tensor]:
    """`embed` of the rows `index` of `split`, `EMBED_BATCH` images at a time."""
    chunks = (data.take(split, index[i : i + EMBED_BATCH]).images for i in range(0, len(index), EMBED_BATCH))
    return embed(model, chunks, layer)
