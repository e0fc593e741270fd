"""FLOP counting with `torch.utils.flop_counter.FlopCounterMode`, and ShrinkBench-style effective FLOPs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunelens.masks import MaskSet
from prunelens.modules import eval_mode


@dataclass(frozen=True)
class FlopProfile:
    """Forward FLOPs of one sample (FLOPs = 2 · MACs): the total and the share of each module."""

    total: int
    per_module: dict[str, int]

    def effective(self, masks: MaskSet) -> float:
        """Total FLOPs with each masked layer's FLOPs scaled by its weight density (docs/methods.md §1.4)."""
        density = masks.layer_density()
        scaled = 0.0
        for module, flops in self.per_module.items():
            d = density.get(f"{module}.weight")
            if d is not None:
                scaled += flops * (1 - d)
        return self.total - scaled


@torch.no_grad()
def profile(model: nn.Module, example: torch.Tensor) -> FlopProfile:
    """Count the FLOPs of `model` on one sample shaped like `example[0]` (eval mode, restored afterwards)."""
    counter = FlopCounterMode(display=False, depth=None)
    with eval_mode(model), counter:
        model(example[:1])
    root = type(model).__name__
    counts = counter.get_flop_counts()
    per_module = {}
    for name, module in model.named_modules():
        if name and not list(module.children()) and f"{root}.{name}" in counts:
            per_module[name] = int(sum(counts[f"{root}.{name}"].values()))
    return FlopProfile(int(counter.get_total_flops()), per_module)
