"""Module kinds the library reasons about, and running a model without side effects."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
"""Layers whose `.weight` is prunable by default, whose FLOPs are scaled by density, and whose outputs are channels."""
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
"""Normalisation layers (BatchNorm, InstanceNorm, LayerNorm, GroupNorm)."""


@contextmanager
def eval_mode(model: nn.Module, keep_grads: bool = False) -> Iterator[nn.Module]:
    """Eval mode for the duration; afterwards every module's own train/eval flag is restored and, with
    `keep_grads`, every parameter's `.grad` too (libraries such as pytorch-grad-cam leave gradients behind)."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()] if keep_grads else []
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
        for param, grad in grads:
            param.grad = grad
