"""The lens interface every explanation method shares.

A lens is a class registered with `@LENSES.register("name")`, built from its options (`Lens(**options)`).
It is called once per round with a `LensInput` — the dense model (round 0), this round's model, its masks,
a fixed evaluation batch, and access to reference models — and returns a `LensResult`: tidy records (one
dict per row, long format), tensors to cache (e.g. the raw maps) and figures. `summarize` turns the records
of all rounds into figures across rounds. The experiment caches results per round in the run store, so
`prunelens analyze RUN --explain NAME` re-runs a lens without retraining.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import nn

from prunelens.masks import MaskSet
from prunelens.registry import Registry


@dataclass
class LensBatch:
    """A fixed evaluation batch: normalised `images` on the device, `labels`, per-image `extras` (e.g. the
    `shapes` object `masks` and `concepts`), and `pixels`: the same images on the 0–1 scale, for overlays."""

    images: torch.Tensor
    labels: torch.Tensor
    pixels: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    class_names: list[str] | None = None


@dataclass
class LensInput:
    """What a lens sees in one round. `reference(kind)` returns a cached reference model: `"other_seed"` (a
    dense model trained from another seed: the ceiling) or `"random"` (the dense architecture at a fresh
    random init: the floor)."""

    round: int
    dense: nn.Module
    model: nn.Module
    masks: MaskSet
    batch: LensBatch
    density: float
    reference: Callable[[str], nn.Module]


@dataclass
class LensResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # name → matplotlib Figure


class Lens(ABC):
    """Base class: subclasses set `name` and implement `__call__`; `summarize` is optional."""

    name: ClassVar[str]

    @abstractmethod
    def __call__(self, inp: LensInput) -> LensResult:
        """Analyse one round."""

    def summarize(self, table: pd.DataFrame) -> dict[str, Any]:
        """Figures across rounds from the lens' long table of all rounds (default: none)."""
        return {}

    @classmethod
    def headline(cls, table: pd.DataFrame) -> pd.DataFrame | None:
        """A few key numbers per round for the terminal (default: none)."""
        return None


LENSES: Registry[type[Lens]] = Registry("lens")
