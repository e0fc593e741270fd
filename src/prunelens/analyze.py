"""Run explanation lenses on the rounds of a stored run, caching each (lens, round) in the run store.

`analyze(cfg)` needs no retraining: models are rebuilt from the stored weights and masks. Results live under
`lenses/<lens>[-<options hash>]/`: `round_NNN.json` (records), `round_NNN.pt` (tensors), `round_NNN_<fig>.png`,
plus the long table `lens_<lens>.{csv,parquet}` over all rounds and the lens' summary figures.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from prunelens.config import ExperimentConfig, LensConfig
from prunelens.data import DataBundle
from prunelens.data.loader import Loader
from prunelens.errors import PrunelensError
from prunelens.lenses import LENSES
from prunelens.lenses.base import Lens, LensBatch, LensInput, LensResult
from prunelens.masks import MaskSet
from prunelens.progress import Reporter
from prunelens.store import RunStore, round_dir
from prunelens.train import seed_everything

ModelFactory = Callable[[], nn.Module]


def lens_dir(spec: LensConfig) -> str:
    if not spec.options:
        return f"lenses/{spec.name}"
    digest = hashlib.sha256(json.dumps(spec.options, sort_keys=True).encode()).hexdigest()[:8]
    return f"lenses/{spec.name}-{digest}"


def eval_batch(bundle: DataBundle, n: int, device: str) -> LensBatch:
    """The first `n` test images (fixed across rounds), normalised, with their extras and 0–1 pixels."""
    test = bundle.test
    if not hasattr(test, "images"):
        images, labels = zip(*(test.dataset[i] for i in range(min(n, len(test)))))
        x = torch.stack(images).to(device)
        std = torch.tensor(bundle.std, device=device).view(1, -1, 1, 1)
        pixels = x * std + torch.tensor(bundle.mean, device=device).view(1, -1, 1, 1)
        return LensBatch(x, torch.tensor(labels, device=device), pixels.clamp(0, 1), {}, bundle.class_names)
    part = test.subset(torch.arange(min(n, len(test)))).to(device)
    loader = Loader(part, n, mean=bundle.mean, std=bundle.std, device=device)
    x = loader.normalise(part.images)
    pixels = part.images.float() / 255 if part.images.dtype == torch.uint8 else part.images.float()
    return LensBatch(x, part.labels, pixels, dict(part.extras), bundle.class_names)


def figure_png(figure: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def save_result(store: RunStore, stem: str, result: LensResult) -> None:
    """Tensors and figures first, records last: the records file marks the (lens, round) as done."""
    if result.tensors:
        store.save_tensors(f"{stem}.pt", result.tensors)
    for name, figure in result.figures.items():
        store.write(f"{stem}_{name}.png", figure_png(figure))
    store.save_json(f"{stem}.json", result.records)


class References:
    """Reference models for floors and ceilings, built lazily once per analysis. `other_seed` returns the
    run directory of a dense model trained from another seed (the experiment provides it)."""

    def __init__(self, cfg: ExperimentConfig, build: ModelFactory, other_seed: Callable[[], Path]) -> None:
        self.cfg, self.build, self.other_seed = cfg, build, other_seed
        self._cache: dict[str, nn.Module] = {}

    def __call__(self, kind: str) -> nn.Module:
        if kind not in self._cache:
            self._cache[kind] = self._make(kind).eval()
        return self._cache[kind]

    def _make(self, kind: str) -> nn.Module:
        if kind == "random":
            seed_everything(self.cfg.seed + 10_000)
            return self.build()
        if kind == "other_seed":
            model = self.build()
            model.load_state_dict(RunStore(self.other_seed()).load_tensors(f"{round_dir(0)}/weights.pt"))
            return model
        raise ValueError(f"unknown reference model {kind!r} (known: random, other_seed)")


def load_round(store: RunStore, build: ModelFactory, r: int, device: str) -> tuple[nn.Module, MaskSet, dict[str, Any]]:
    model = build()
    model.load_state_dict(store.load_tensors(f"{round_dir(r)}/weights.pt"))
    masks = MaskSet(store.load_tensors(f"{round_dir(r)}/masks.pt"))
    return model.to(device).eval(), masks.to(device), store.load_json(f"{round_dir(r)}/metrics.json")


def headlines(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Each lens' per-round key numbers, from its long table (for lenses that define `headline`)."""
    out = {name: LENSES.get(name).headline(table) for name, table in tables.items()}
    return {name: table for name, table in out.items() if table is not None}


def analyze(
    cfg: ExperimentConfig,
    store: RunStore,
    bundle: DataBundle,
    build: ModelFactory,
    reporter: Reporter,
    other_seed: Callable[[], Path],
    force: bool = False,
) -> dict[str, pd.DataFrame]:
    """Run every lens of `cfg.lenses` on every finished round; returns each lens' long table.
    `other_seed()` gives the run directory of the same dense model trained from another seed (the ceiling)."""
    rounds = store.rounds_done()
    if not rounds or rounds[0] != 0:
        raise PrunelensError(f"{store.root}: no finished dense round 0 to analyse")
    batch = eval_batch(bundle, cfg.lens_images, cfg.device)
    references = References(cfg, build, other_seed)
    dense = None
    tables = {}
    for spec in cfg.lenses:
        lens: Lens = LENSES.get(spec.name)(**spec.options)
        where = lens_dir(spec)
        with reporter.task(f"lens {spec.name}", total=len(rounds)) as advance:
            for r in rounds:
                stem = f"{where}/round_{r:03d}"
                if force or not store.has(f"{stem}.json"):
                    if dense is None:
                        dense = load_round(store, build, 0, cfg.device)[0]
                    model, masks, metrics = load_round(store, build, r, cfg.device)
                    inp = LensInput(r, dense, model, masks, batch, metrics["density"], references)
                    save_result(store, stem, lens(inp))
                advance(1)
        rows = []
        for r in rounds:
            density = store.load_json(f"{round_dir(r)}/metrics.json")["density"]
            rows += [{"round": r, "density": density, **rec} for rec in store.load_json(f"{where}/round_{r:03d}.json")]
        table = pd.DataFrame(rows)
        store.save_table(f"lens_{spec.name}", table)
        for name, figure in lens.summarize(table).items():
            store.write(f"{where}/summary_{name}.png", figure_png(figure))
        tables[spec.name] = table
        reporter.log(f"lens {spec.name}: {len(rows)} records over {len(rounds)} rounds")
    return tables
