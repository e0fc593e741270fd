"""The pure pruning core: importance scores → masks. Knows nothing about training."""

from __future__ import annotations

import torch
from torch import nn

from prunelens.config import PruningConfig
from prunelens.errors import PrunelensError
from prunelens.masks import MaskSet
from prunelens.pruning.scores import SCORES, ScoreContext
from prunelens.pruning.select import select
from prunelens.pruning.structured import group_density, layer_rates, select_groups, structured_weights

__all__ = ["SCORES", "ScoreContext", "check", "group_density", "prune", "select", "select_groups"]

STRUCTURED_METHODS = ("magnitude", "l1", "l2", "random")


def prune(
    model: nn.Module,
    masks: MaskSet,
    cfg: PruningConfig,
    batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    seed: int = 0,
) -> MaskSet:
    """One pruning round: remove `cfg.round_fraction` of the alive weights (`unstructured`, scored by
    `cfg.method`) or of the alive filters / input channels of each tensor (`filters`, `channels`).

    With `cfg.score_iterations` = n > 1 (unstructured), the round re-scores n times, each step keeping
    (1 − p)^(1/n) of the alive weights — SynFlow's exponential schedule within one round (`layer_fractions`
    likewise, so a tensor's round rate is its fraction whatever n is)."""
    if cfg.granularity != "unstructured":
        return prune_groups(model, masks, cfg, seed)
    score = SCORES.get(cfg.method)
    n = cfg.score_iterations
    step = 1 - (1 - cfg.round_fraction) ** (1 / n)
    own = {pattern: 1 - (1 - f) ** (1 / n) for pattern, f in cfg.layer_fractions.items()}  # same per-round rate
    for _ in range(n):
        masks = select(score(ScoreContext(model, masks, batch, seed=seed)), masks, step, cfg.scope, own)
    return masks


def check(cfg: PruningConfig) -> None:
    """Fail early (before any training) on a method unknown for the configured granularity."""
    if cfg.granularity == "unstructured":
        SCORES.get(cfg.method)
    elif cfg.method not in STRUCTURED_METHODS:
        raise PrunelensError(
            f"pruning.method: {cfg.method!r} is not available for granularity {cfg.granularity!r} "
            f"(use {', '.join(STRUCTURED_METHODS)})"
        )


def prune_groups(model: nn.Module, masks: MaskSet, cfg: PruningConfig, seed: int = 0) -> MaskSet:
    """Structured round, always at a rate per tensor (`cfg.scope` does not apply; `layer_fractions` does).

    `magnitude`/`l1` score a group by its Ln norm with n = `cfg.norm`, `l2` with n = 2, `random` by a draw
    fixed by (`seed`, tensor name)."""
    check(cfg)
    rates = layer_rates(list(masks), cfg.round_fraction, cfg.layer_fractions)
    norm = 2.0 if cfg.method == "l2" else cfg.norm
    weights = structured_weights(model, masks, cfg.granularity)
    return select_groups(weights, masks, rates, cfg.granularity, norm, random=cfg.method == "random", seed=seed)
