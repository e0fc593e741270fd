"""The lens interface every explanation method shares (docs/extending.md).

A lens is a class registered with `@LENSES.register("name")` with a typed `Options` model (pydantic, checked
when the config loads, so a bad option fails before anything trains). The runner (`analyze.py`) calls:

1. `check(model, batch)` before any training: can the lens explain this architecture at all?
2. `setup(ctx)` once per run, on the dense network: e.g. its maps, reference comparisons, a concept bank.
   The result is stored in the run and handed back as `ctx.dense_result`;
3. `__call__(ctx, rnd)` once per finished round.

Both return a `LensResult`: tidy records (one dict per row, long format), tensors and JSON artefacts, all
stored in safe formats. A lens keeps no state between calls — everything a round needs comes from the
context — so any order of rounds gives the same results. Figures are drawn from the stored results by
`report/figures.py`, never inside a lens.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from prunelens.lenses.data import LensBatch, LensData
from prunelens.masks import MaskSet
from prunelens.registry import Registry


class LensOptions(BaseModel):
    """Base of every lens' options: unknown fields and non-finite numbers are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Cache(Protocol):
    """A persistent cache keyed by content, shared across rounds and runs (e.g. pool embeddings)."""

    def tensors(self, key: Mapping[str, Any], compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class LensResult:
    """What a lens returns: `records` (long-format rows), `tensors` and JSON-able `artefacts`."""

    records: list[dict[str, Any]] = field(default_factory=list)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    artefacts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LensContext:
    """What a lens sees of a run: its data, the dense network and the lens' result on it (`dense_result`,
    None while `setup` runs), reference networks by kind (`floor`: random init; `same_init`: the dense
    network retrained from the same θ₀ with another data order; `other_seed`: an independently trained dense
    network — see docs/methods.md §9), a content-keyed cache and the run's seed (for the lens' own draws)."""

    data: LensData
    dense: nn.Module
    references: Mapping[str, nn.Module]
    cache: Cache
    seed: int
    dense_result: LensResult | None = None

    @property
    def device(self) -> str:
        return self.data.device


@dataclass(frozen=True)
class LensRound:
    """One finished round: its number, trained network (eval mode), masks and density."""

    round: int
    model: nn.Module
    masks: MaskSet
    density: float


class Lens(ABC):
    """Base class: set `name`, `Options` (a `LensOptions` subclass) and implement `__call__`."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    """Bump when stored results of an older version must be recomputed."""
    Options: ClassVar[type[LensOptions]] = LensOptions

    def __init__(self, options: LensOptions | Mapping[str, Any] | None = None) -> None:
        self.options = options if isinstance(options, LensOptions) else self.Options.model_validate(dict(options or {}))

    def references(self) -> tuple[str, ...]:
        """Reference networks this configured lens needs (default: none)."""
        return ()

    def check(self, model: nn.Module, batch: LensBatch) -> None:
        """Raise a one-line `PrunelensError` if this lens cannot explain `model` (called before training)."""

    def setup(self, ctx: LensContext) -> LensResult:
        """The lens on the dense network, once per run (default: nothing)."""
        return LensResult()

    @abstractmethod
    def __call__(self, ctx: LensContext, rnd: LensRound) -> LensResult:
        """Analyse one round."""

    @classmethod
    def headline(cls, table: pd.DataFrame) -> pd.DataFrame | None:
        """A few key numbers per round for the terminal (default: none)."""
        return None


LENSES: Registry[type[Lens]] = Registry("lens")


def options_key(lens: Lens) -> dict[str, Any]:
    """The lens' options that differ from their defaults (what names its results)."""
    return lens.options.model_dump(mode="json", exclude_defaults=True)
