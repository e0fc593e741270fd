"""The `gradcam` lens (docs/methods.md §7–10): every round's Grad-CAM maps against the dense network's.

Setup (the dense network, once per run): the dense maps of the evaluation batch, the reference networks'
maps and their similarity to the dense maps (`floor`: random init; `same_init`: the dense network retrained
from the same θ₀ with another data order; `other_seed`: an independently trained dense network), their
correctness, and the cascading randomisation (MPRT) series of the dense network.

Per round: the round's maps, their similarity to the dense maps, the normalised position between the floor
and each trained reference, correctness against the object masks (when the data has them) and
deletion/insertion faithfulness.

Record columns: `kind`, `metric`, `value` (mean over the batch of the finite per-image values), `n` (finite
values), `nan` (undefined values: a NaN means the metric is undefined for that image, almost always because a
map is constant), `degenerate` (images whose map — or either map of a pair — is constant), plus `reference`
(position rows), `step`/`randomised` (MPRT rows) and `method`, `target`, `layer` on every row.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from prunelens.errors import PrunelensError
from prunelens.lenses import similarity as sim
from prunelens.lenses.base import LENSES, Lens, LensContext, LensOptions, LensResult, LensRound, reference_positions
from prunelens.lenses.cam import LIBRARY, NATIVE, CAMResult, GradCAM, find_target_layer, library_methods
from prunelens.lenses.data import LensBatch
from prunelens.lenses.sanity import cascading_randomisation, correctness, deletion_insertion

Reference = Literal["floor", "same_init", "other_seed"]
FIGURE_IMAGES = 8
"""Images of the evaluation batch kept (as uint8 pixels) for the per-round grid figures."""


class GradCAMOptions(LensOptions):
    """Options of the `gradcam` lens."""

    target: Literal["label", "predicted", "dense_predicted"] = Field(
        "label", description="class explained: the true label, each model's prediction, or the dense model's prediction"
    )
    layer: str | None = Field(None, description="dotted module name (default: the last conv block, found on the dense model)")
    variant: Literal["standard", "seed_ghosh"] = "standard"
    backend: str = Field(NATIVE, description="'native' or 'pytorch_grad_cam:<Method>' (GradCAMPlusPlus, ScoreCAM, …)")
    faithfulness: bool = Field(True, description="deletion/insertion curves per round")
    mprt: bool = Field(True, description="cascading randomisation of the dense network")
    references: list[Reference] = Field(["floor", "same_init", "other_seed"], description="reference networks (docs/methods.md §9)")

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        if value != NATIVE and (not value.startswith(LIBRARY) or value.removeprefix(LIBRARY) not in library_methods()):
            raise ValueError(f"expected '{NATIVE}' or '{LIBRARY}<method>' (methods: {', '.join(library_methods())})")
        return value

    @model_validator(mode="after")
    def _variant_backend(self) -> GradCAMOptions:
        if self.variant != "standard" and self.backend != NATIVE:
            raise ValueError("variant 'seed_ghosh' exists only for the native backend")
        return self


def _rows(kind: str, per_image: dict[str, Tensor], bad: Tensor, **extra: Any) -> list[dict[str, Any]]:
    """One record per (B,) metric: mean and count of the finite values, count of the others and of degenerate maps."""
    rows = []
    for metric, values in per_image.items():
        if values.ndim != 1 or metric == "degenerate":
            continue
        mean, n = sim.aggregate(values.double())
        rows.append({"kind": kind, "metric": metric, "value": mean, "n": n, "nan": int(values.numel() - n),
                     "degenerate": int(bad.sum()), **extra})  # fmt: skip
    return rows


@LENSES.register("gradcam")
class GradCAMLens(Lens):
    """Grad-CAM consistency, correctness and faithfulness of every round (module docstring)."""

    name = "gradcam"
    version = 2
    Options = GradCAMOptions
    options: GradCAMOptions

    @property
    def method(self) -> str:
        return self.options.variant if self.options.backend == NATIVE else self.options.backend.removeprefix(LIBRARY)

    def references(self) -> tuple[str, ...]:
        return tuple(self.options.references)

    def check(self, model: nn.Module, batch: LensBatch) -> None:
        layer = self.options.layer
        if layer is not None and layer not in dict(model.named_modules()):
            raise PrunelensError(f"gradcam option layer: {type(model).__name__} has no module {layer!r}")
        self._cam(model, layer or find_target_layer(model, batch.images), batch, None)

    def _cam(self, model: nn.Module, layer: str, batch: LensBatch, dense_targets: Tensor | None) -> CAMResult:
        """Maps of `model` at `layer` for the target rule (`dense_predicted` needs the dense targets)."""
        chosen = {"label": batch.labels, "predicted": None, "dense_predicted": dense_targets}[self.options.target]
        return GradCAM(model, layer, self.options.variant, self.options.backend)(batch.images, chosen)

    def _tag(self, records: list[dict[str, Any]], layer: str) -> list[dict[str, Any]]:
        return [{**r, "method": self.method, "target": self.options.target, "layer": layer} for r in records]

    # -- the dense network

    def setup(self, ctx: LensContext) -> LensResult:
        batch = ctx.data.eval_batch
        layer = self.options.layer or find_target_layer(ctx.dense, batch.images)
        dense = self._cam(ctx.dense, layer, batch, None)
        tensors = {"maps": dense.maps, "targets": dense.targets, "peak": dense.peak}
        tensors["figure_pixels"] = (batch.pixels[:FIGURE_IMAGES] * 255).round().to(torch.uint8)
        records: list[dict[str, Any]] = []
        for kind in self.options.references:
            ref = self._cam(ctx.references[kind], layer, batch, dense.targets)
            similar = sim.compare(ref.maps, dense.maps, input_size=tuple(batch.images.shape[-2:]))
            records += _rows(kind, similar, similar["degenerate"])
            tensors.update({f"{kind}.maps": ref.maps, **{f"{kind}.{k}": v for k, v in similar.items()}})
            if "masks" in batch.extras:
                records += _rows(f"correctness_{kind}", correctness(ref.maps, batch.extras["masks"]), ref.degenerate)
        if self.options.mprt:
            records += self._mprt(ctx, layer, dense, tensors)
        return LensResult(self._tag(records, layer), tensors, {"layer": layer, "method": self.method})

    def _mprt(self, ctx: LensContext, layer: str, dense: CAMResult, tensors: dict[str, Tensor]) -> list[dict[str, Any]]:
        """Cascading randomisation of the dense network: similarity to its maps after each re-initialised layer."""
        batch = ctx.data.eval_batch
        series = cascading_randomisation(ctx.dense, lambda m: self._cam(m, layer, batch, dense.targets).maps, ctx.seed)
        records, spearman = [], []
        for step, (module, maps) in enumerate(series, start=1):
            bad = sim.degenerate(maps) | dense.degenerate
            per_image = {
                "spearman": sim.spearman(maps, dense.maps),
                "spearman_abs": sim.spearman(maps, dense.maps, absolute=True),
                "ssim": sim.ssim(maps, dense.maps),
            }
            per_image = {k: v.masked_fill(bad, math.nan) for k, v in per_image.items()}
            records += _rows("mprt", per_image, bad, step=step, randomised=module)
            spearman.append(per_image["spearman"])
        if spearman:
            tensors["mprt.spearman"] = torch.stack(spearman)  # (steps, B)
        return records

    # -- one round

    def __call__(self, ctx: LensContext, rnd: LensRound) -> LensResult:
        if ctx.dense_result is None:
            raise ValueError("the gradcam lens needs its setup result (ctx.dense_result)")
        batch, stored = ctx.data.eval_batch, ctx.dense_result
        layer = stored.artefacts["layer"]
        dense = CAMResult(stored.tensors["maps"], stored.tensors["peak"], stored.tensors["targets"], torch.empty(0))
        current = dense if rnd.round == 0 else self._cam(rnd.model, layer, batch, dense.targets)
        similar = sim.compare(current.maps, dense.maps, input_size=tuple(batch.images.shape[-2:]))
        b, h, w = current.maps.shape
        bad = current.degenerate
        records = [
            {"kind": "maps", "metric": "degenerate", "value": float(bad.sum()), "n": b, "nan": 0, "degenerate": int(bad.sum())},
            *_rows("maps", {"peak": current.peak, "peak_ratio": sim.safe_ratio(current.peak, dense.peak)}, bad),
            {"kind": "maps", "metric": "grid_h", "value": float(h), "n": b, "nan": 0, "degenerate": int(bad.sum())},
            {"kind": "maps", "metric": "grid_w", "value": float(w), "n": b, "nan": 0, "degenerate": int(bad.sum())},
        ]
        records += _rows("pruned_vs_dense", similar, similar["degenerate"])
        records += reference_positions(records, stored.records, self.options.references)
        tensors = {"maps": current.maps, "targets": current.targets, "peak": current.peak}
        tensors.update({f"pruned_vs_dense.{k}": v for k, v in similar.items()})
        if "masks" in batch.extras:
            per_image = correctness(current.maps, batch.extras["masks"])
            records += _rows("correctness", per_image, bad)
            tensors.update({f"correctness.{k}": v for k, v in per_image.items()})
        if self.options.faithfulness:
            per_image = deletion_insertion(rnd.model, batch.images, current.maps, current.targets)
            records += _rows("faithfulness", {k: v for k, v in per_image.items() if k.endswith("_auc")}, bad)
            tensors.update({f"faithfulness.{k}": v for k, v in per_image.items()})
        return LensResult(self._tag(records, layer), tensors)

    # -- the terminal table

    @classmethod
    def headline(cls, table: pd.DataFrame) -> pd.DataFrame:
        """Per round: degenerate maps, consistency with the dense maps (Spearman, threshold IoU), its position
        between the floor and the same-init reference, and correctness (energy inside the object, pointing game,
        IoU with the object mask); the references' own values as extra rows (raw, side by side)."""
        wanted = {"pruned_vs_dense": ["spearman", "iou_thr"], "correctness": ["energy_inside", "pointing_game", "mask_iou"]}
        refs = {"floor", "same_init", "other_seed"} & set(table["kind"])
        rows = table[table["kind"].isin([*wanted, *refs, *(f"correctness_{r}" for r in refs)])].copy()
        rows["row"] = rows["round"].astype(str)
        for ref in refs:
            for kind, base in ((ref, "pruned_vs_dense"), (f"correctness_{ref}", "correctness")):
                hit = rows["kind"] == kind
                rows.loc[hit, "row"], rows.loc[hit, "kind"] = ref, base
        rows = rows[[m in wanted.get(k, []) for k, m in zip(rows["kind"], rows["metric"])]]
        wide = rows.pivot_table(index="row", columns="metric", values="value", sort=False, dropna=False)
        counts = table[(table["kind"] == "maps") & (table["metric"] == "degenerate")].set_index("round")["value"]
        wide["degenerate"] = [counts.get(int(r), math.nan) if r.isdigit() else math.nan for r in wide.index]
        position = table[(table["kind"] == "position") & (table["metric"] == "spearman") & (table.get("reference") == "same_init")]
        if len(position):
            pos = position.set_index("round")["value"]
            wide["spearman_pos_same_init"] = [pos.get(int(r), math.nan) if r.isdigit() else math.nan for r in wide.index]
        order = sorted(wide.index, key=lambda r: (not r.isdigit(), int(r) if r.isdigit() else ["floor", "same_init", "other_seed"].index(r)))
        columns = [c for c in ["degenerate", "spearman", "iou_thr", "spearman_pos_same_init", "energy_inside", "pointing_game", "mask_iou"] if c in wide]
        return wide.loc[order, columns].rename_axis("round").reset_index()
