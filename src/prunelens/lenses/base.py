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

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
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
    headline_metric: ClassVar[str | None] = None
    """The `headline` column the report's summary quotes at the sparsest round against the references (default:
    the first column with a value there and in a reference row)."""

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

    def check_pruning(self, granularity: str) -> None:
        """Raise a one-line `PrunelensError` if this lens cannot follow networks pruned at `granularity`."""

    @classmethod
    def headline(cls, table: pd.DataFrame) -> pd.DataFrame | None:
        """A few key numbers per round for the terminal (default: none)."""
        return None

    @classmethod
    def tables(cls, table: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Extra tables derived from the long table, saved as `lens_<key>_<name>` (default: none)."""
        return {}


LENSES: Registry[type[Lens]] = Registry("lens")
TRAINED_REFERENCES = ("same_init", "other_seed")


def reference_positions(
    records: list[dict[str, Any]], levels: list[dict[str, Any]], references: Sequence[str], kind: str = "pruned_vs_dense"
) -> list[dict[str, Any]]:
    """`position` rows: (x − floor) / (reference − floor) of every `kind` record, per trained reference, from the
    references' own values (`levels`: records whose kind is the reference); NaN where reference = floor. Above 1:
    closer to the dense network than the reference is. None without the floor."""
    if "floor" not in references:
        return []
    level = {(r["kind"], r["metric"]): r["value"] for r in levels}
    out = []
    for rec in records:
        if rec["kind"] != kind:
            continue
        floor = level.get(("floor", rec["metric"]), math.nan)
        for ref in (k for k in references if k in TRAINED_REFERENCES):
            reference = level.get((ref, rec["metric"]), math.nan)
            value = (rec["value"] - floor) / (reference - floor) if reference != floor else math.nan
            out.append({**rec, "kind": "position", "reference": ref, "value": value})
    return out


def options_key(lens: Lens) -> dict[str, Any]:
    """The lens' options that differ from their defaults (what names its results)."""
    return lens.options.model_dump(mode="json", exclude_defaults=True)
