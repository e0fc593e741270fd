"""The `mis` lens (docs/methods.md §16): the Machine Interpretability Score of every unit of every round.

Setup: the image pool (a seeded sample of a split, or of an image folder), its encoder embeddings (cached across
rounds and runs by content), the dense network's MIS and the floor's (a random-init network), all on the same
pool, encoder, draws and exclusions. Per round: the round's MIS per unit, excluding constant units and filters
removed by pruning, aggregated per layer and per model, and the paired per-unit ΔMIS against the dense network
(units keep their identity under every masked pruning; structured pruning excludes the removed ones).

Record columns: `kind` (`model`, `layer`, `paired`, `excluded`; the floor's as `floor_model`, `floor_layer`),
`metric` (`mis`, `mis_layer_weighted`, `mis_confidence` with the slope, `margin`, `p05`, `p95`, `delta_mis`,
`constant`, `pruned`), `value`, `n` (units scored), `layer` ("" for the model), `encoder`, `calibrated`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from prunelens.errors import PrunelensError
from prunelens.lenses.base import LENSES, Lens, LensContext, LensResult, LensRound
from prunelens.lenses.data import LensBatch
from prunelens.lenses.mis.encoders import build_encoder
from prunelens.lenses.mis.options import MISOptions, fit_slope
from prunelens.lenses.mis.pool import Pool, load_pool
from prunelens.lenses.mis.tasks import TaskSpec, cosine_matrix, draw, margins, scores
from prunelens.lenses.mis.units import activations, exclusions, unit_layers
from prunelens.masks import MaskSet


@LENSES.register("mis")
class MISLens(Lens):
    """Unit-level interpretability of every round (module docstring)."""

    name = "mis"
    version = 1
    Options = MISOptions
    options: MISOptions

    def references(self) -> tuple[str, ...]:
        return tuple(self.options.references)

    @property
    def spec(self) -> TaskSpec:
        o = self.options
        return TaskSpec(o.tasks, o.k, o.quantile, o.query)

    def check(self, model: nn.Module, batch: LensBatch) -> None:
        o = self.options
        layers = unit_layers(model, o.layers, o.classifier)
        activations(model, [batch.images[:2]], layers, o.tap)
        if o.pool_root is not None and not o.pool_root.is_dir():
            raise PrunelensError(f"{o.pool_root}: not a directory (mis option pool_root)")
        if o.calibration_csv is not None:
            fit_slope(o.calibration_csv)
        build_encoder(o.encoder, o.encoder_arch, o.encoder_weights, o.encoder_size)

    # -- shared by every network

    def _pool(self, ctx: LensContext, digest: str | None = None) -> tuple[Pool, Tensor, str]:
        """The pool, the cosine matrix of its embeddings and the encoder's name (embeddings cached by content;
        rounds pass the digest the setup stored, so the pool's pixels are hashed once per run)."""
        o = self.options
        pool = load_pool(ctx.data, o.pool, o.pool_size, ctx.seed, o.pool_root, digest)
        if len(pool.images) < 2 * self.spec.pool_size(len(pool.images)):
            raise PrunelensError(f"mis: a pool of {len(pool.images)} images is too small for K = {o.k} and q = {o.quantile}")
        encoder = build_encoder(o.encoder, o.encoder_arch, o.encoder_weights, o.encoder_size)
        key = {"what": "mis pool embeddings", "encoder": encoder.name, **encoder.identity, "pool": pool.digest}
        embedded = ctx.cache.tensors(key, lambda: {"embeddings": encoder(pool.pixels.cpu())})["embeddings"]
        return pool, cosine_matrix(embedded), encoder.name

    def _slope(self) -> tuple[float | None, bool]:
        o = self.options
        if o.calibration_csv is not None:
            return fit_slope(o.calibration_csv), True
        return o.slope, False

    def _score(self, model: nn.Module, masks: MaskSet | None, pool: Pool, similarity: Tensor, seed: int) -> dict[str, Tensor]:
        """Per layer: `<layer>.mis`, `.margin` (and `.mis_confidence` with a slope) per unit, NaN where
        excluded, and `<layer>.code` (0 kept, 1 constant, 2 pruned filter)."""
        o = self.options
        layers = unit_layers(model, o.layers, o.classifier)
        acts = activations(model, pool.batches(), layers, o.tap)
        codes = exclusions(acts, model, masks)
        slope, _ = self._slope()
        out: dict[str, Tensor] = {}
        for layer, a in acts.items():
            d = margins(a, similarity, draw(a.shape[1], self.spec, self.spec.pool_size(len(a)), seed, layer), self.spec)
            per_unit = scores(d, slope or 1.0)
            dropped = codes[layer] != 0
            for metric in ("mis", "margin", *(("mis_confidence",) if slope else ())):
                out[f"{layer}.{metric}"] = per_unit[metric].masked_fill(dropped, math.nan)
            out[f"{layer}.code"] = codes[layer]
        return out

    def _records(self, tensors: dict[str, Tensor], prefix: str = "") -> list[dict[str, Any]]:
        """Per layer and per model: means of the kept units (unit- and layer-weighted), 5th/95th percentiles,
        and the excluded counts; rows with no kept unit carry n = 0 and no value row."""
        layers = [name.removesuffix(".code") for name in tensors if name.endswith(".code")]
        metrics = [m for m in ("mis", "mis_confidence", "margin") if f"{layers[0]}.{m}" in tensors] if layers else []
        rows: list[dict[str, Any]] = []
        for layer in layers:
            code = tensors[f"{layer}.code"]
            rows += [{"kind": f"{prefix}excluded", "metric": what, "value": float((code == c).sum()), "n": len(code), "layer": layer}
                     for c, what in ((1, "constant"), (2, "pruned"))]  # fmt: skip
        for metric in metrics:
            per_layer = {layer: tensors[f"{layer}.{metric}"] for layer in layers}
            kept = {layer: v[torch.isfinite(v)] for layer, v in per_layer.items()}
            for layer, v in kept.items():
                if len(v):
                    rows.append(_row(f"{prefix}layer", metric, v, layer))
            pooled = torch.cat(list(kept.values())) if kept else torch.empty(0)
            if len(pooled):
                rows.append(_row(f"{prefix}model", metric, pooled, ""))
                means = [float(v.mean()) for v in kept.values() if len(v)]
                rows.append({"kind": f"{prefix}model", "metric": f"{metric}_layer_weighted", "value": float(np.mean(means)), "n": len(means), "layer": ""})
        return rows

    def _tag(self, records: list[dict[str, Any]], encoder: str) -> list[dict[str, Any]]:
        _, calibrated = self._slope()
        return [{**r, "encoder": encoder, "calibrated": calibrated} for r in records]

    # -- the dense network and the floor

    def setup(self, ctx: LensContext) -> LensResult:
        pool, similarity, encoder = self._pool(ctx)
        dense = self._score(ctx.dense, None, pool, similarity, ctx.seed)
        records = self._records(dense)
        tensors = {f"dense.{k}": v for k, v in dense.items()}
        for kind in self.options.references:
            scored = self._score(ctx.references[kind], None, pool, similarity, ctx.seed)
            records += self._records(scored, prefix=f"{kind}_")
            tensors |= {f"{kind}.{k}": v for k, v in scored.items()}
        slope, calibrated = self._slope()
        artefacts = {"encoder": encoder, "pool": pool.describe(), "slope": slope, "calibrated": calibrated,
                     "label": "MIS" if encoder == "dreamsim" else "MIS-proxy"}  # fmt: skip
        return LensResult(self._tag(records, encoder), tensors, artefacts)

    # -- one round

    def __call__(self, ctx: LensContext, rnd: LensRound) -> LensResult:
        if ctx.dense_result is None:
            raise ValueError("the mis lens needs its setup result (ctx.dense_result)")
        encoder = ctx.dense_result.artefacts["encoder"]
        if rnd.round == 0:
            return LensResult()
        pool, similarity, _ = self._pool(ctx, ctx.dense_result.artefacts["pool"]["sha256"])
        scored = self._score(rnd.model, rnd.masks, pool, similarity, ctx.seed)
        records = self._records(scored)
        dense = ctx.dense_result.tensors
        deltas = [scored[f"{layer}.mis"] - dense[f"dense.{layer}.mis"] for layer in (n.removesuffix(".mis") for n in scored if n.endswith(".mis"))]
        paired = torch.cat(deltas)[torch.isfinite(torch.cat(deltas))] if deltas else torch.empty(0)
        if len(paired):
            records.append(_row("paired", "delta_mis", paired, ""))
        return LensResult(self._tag(records, encoder), scored)

    # -- the terminal table

    @classmethod
    def headline(cls, table: pd.DataFrame) -> pd.DataFrame:
        """Per round: binary MIS (unit-weighted), its 5th–95th percentiles, units scored and excluded, the paired
        ΔMIS; the floor as an extra row."""
        rows: dict[str, dict[str, float]] = {}
        for rec in table.itertuples(index=False):
            label = "floor" if rec.kind.startswith("floor_") else str(rec.round)
            kind = rec.kind.removeprefix("floor_")
            cell = rows.setdefault(label, {})
            if kind == "model" and rec.metric == "mis":
                cell |= {"mis": rec.value, "p05": rec.p05, "p95": rec.p95, "units": rec.n}
            elif kind == "model" and rec.metric == "mis_layer_weighted":
                cell["mis_layer_weighted"] = rec.value
            elif kind == "excluded":
                cell["excluded"] = cell.get("excluded", 0.0) + rec.value
            elif kind == "paired":
                cell["delta_mis"] = rec.value
        order = sorted(rows, key=lambda r: (not r.isdigit(), int(r) if r.isdigit() else 0))
        wide = pd.DataFrame([rows[r] for r in order], index=pd.Index(order, name="round"))
        columns = ["mis", "p05", "p95", "mis_layer_weighted", "units", "excluded", "delta_mis"]
        return wide[[c for c in columns if c in wide]].reset_index()


def _row(kind: str, metric: str, values: Tensor, layer: str) -> dict[str, Any]:
    v = values.double()
    return {"kind": kind, "metric": metric, "value": float(v.mean()), "n": len(v), "layer": layer,
            "p05": float(torch.quantile(v, 0.05)), "p95": float(torch.quantile(v, 0.95))}  # fmt: skip
