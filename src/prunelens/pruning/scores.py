"""Importance scores: one registered function per criterion, (context) → {name: score tensor}.

Higher score = more important. Scores of already-pruned entries are ignored by selection, so a score need
not special-case them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prunelens.masks import MaskSet
from prunelens.registry import Registry


@dataclass
class ScoreContext:
    """What a score may look at: the (trained) model, the current masks and, for data-driven scores, a batch."""

    model: nn.Module
    masks: MaskSet
    batch: tuple[torch.Tensor, torch.Tensor] | None = None

    def weights(self) -> dict[str, torch.Tensor]:
        params = dict(self.model.named_parameters())
        return {name: params[name].detach() for name in self.masks}


Score = Callable[[ScoreContext], dict[str, torch.Tensor]]
SCORES: Registry[Score] = Registry("pruning method")


@SCORES.register("magnitude")
def magnitude(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """|w| (Frankle & Carbin; OpenLTH `sparse_global`)."""
    return {name: w.abs() for name, w in ctx.weights().items()}
