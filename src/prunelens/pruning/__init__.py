"""The pure pruning core: importance scores → masks. Knows nothing about training."""

from __future__ import annotations

import torch
from torch import nn

from prunelens.config import PruningConfig
from prunelens.masks import MaskSet
from prunelens.pruning.scores import SCORES, ScoreContext
from prunelens.pruning.select import select

__all__ = ["SCORES", "ScoreContext", "prune", "select"]


def prune(
    model: nn.Module, masks: MaskSet, cfg: PruningConfig, batch: tuple[torch.Tensor, torch.Tensor] | None = None
) -> MaskSet:
    """One pruning round: score `model`'s weights with `cfg.method`, remove `cfg.round_fraction` of the alive ones."""
    scores = SCORES.get(cfg.method)(ScoreContext(model, masks, batch))
    return select(scores, masks, cfg.round_fraction, cfg.scope, cfg.layer_fractions)
