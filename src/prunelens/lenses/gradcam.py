"""Grad-CAM (METHODS §6), batched and on the device, and the `gradcam` lens (METHODS §7).

`GradCAM(model, layer, variant, backend)(images, targets)` returns raw maps at the target layer's native
resolution (B, h, w), their per-image peak and a `degenerate` flag:

- `variant="standard"` (default): y^c the pre-softmax logit, α_k = (1/hw) Σ_ij ∂y^c/∂A^k_ij per image,
  L = ReLU(Σ_k α_k A^k), unnormalised. One forward and one backward of Σ_b y_b^{c_b} in eval mode give every
  image's gradient (in train mode BatchNorm would couple the images).
- `variant="seed_ghosh"` (⚠ DEV-G3, the G&B code): backward of the mean cross-entropy with the target
  (true-label) class, g_k = mean over batch *and* space of ∂L_CE/∂A^k, H_b = (1/K) Σ_k (A_b^k + g_k) (an
  addition, no ReLU), H_b ← H_b / max H_b per image (`peak` keeps max H_b); the seed mask is H_b > 0.75.
  The map is the class-agnostic channel mean of A plus a scalar that depends on the whole batch: the gradient
  only shifts the threshold. The seed resized H to half the input size before thresholding; here maps stay
  native and `upsample` is for display.
- `backend="pytorch_grad_cam:<Method>"` (GradCAMPlusPlus, ScoreCAM, LayerCAM, XGradCAM, EigenCAM, …) runs
  that pytorch-grad-cam method (in a `with` block, one `ClassifierOutputTarget` per image). The library
  min-max normalises every map to [0, 1] and resizes it; the size is set to the native grid (all methods but
  FullGrad, which stays at input size), but the per-image normalisation stays, so magnitudes are lost and
  maps compare only after the same normalisation.

Hooks: a forward pre-hook on the target layer switches autograd on and detaches its input, and a forward
hook keeps its output A; the layers before it run without a graph, and `torch.autograd.grad(score, A)`
back-propagates from the score down to A only (no backward module hooks, no `.grad` on parameters, works
under `torch.no_grad()` and with in-place ReLUs elsewhere). Hooks are removed and the model's train/eval
modes restored in `finally` blocks.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunelens.errors import PrunelensError
from prunelens.lenses import similarity as sim
from prunelens.lenses.base import LENSES, Lens, LensBatch, LensInput, LensResult

Variant = Literal["standard", "seed_ghosh"]
References = dict[str, dict[str, Tensor]]
"""Per reference kind ("floor", "ceiling"): its `maps` and the per-image similarity metrics to the dense maps."""
Target = Literal["label", "predicted", "dense_predicted"]
NATIVE = "native"
LIBRARY = "pytorch_grad_cam:"
FAITHFULNESS_STEPS = 10
FIGURE_IMAGES = 8


@dataclass
class CAMResult:
    """`maps` (B, h, w) at the layer's resolution (raw for the standard variant), `peak` (B,) the per-image
    max before any normalisation, the explained `targets` (B,) and the model's `logits` (B, classes)."""

    maps: Tensor
    peak: Tensor
    targets: Tensor
    logits: Tensor

    @property
    def degenerate(self) -> Tensor:
        """(B,) bool: constant maps (all zero after the ReLU included); counted, never NaN-filled."""
        return sim.degenerate(self.maps)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (align_corners=False) resize of (B, h, w) maps to `size`, for display and pixel masks."""
    return F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


@contextmanager
def untouched(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration; afterwards every module's train/eval mode and every parameter's `.grad`
    are what they were (pytorch-grad-cam calls `model.eval()` and leaves gradients behind)."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
        for param, grad in grads:
            param.grad = grad


def find_target_layer(model: nn.Module, images: Tensor) -> str:
    """The default target layer: of the modules that are or contain an `nn.Conv2d`, the last to *finish* in a
    probe forward with a 4-D output larger than 1×1 (the outermost block producing the last conv feature map:
    `blocks` of `cifar_resnet`, `features` of `conv*`/VGG-style nets, `layer4` of torchvision ResNets)."""
    finished: list[tuple[str, int]] = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, Tensor) and output.ndim == 4:
                finished.append((name, output.shape[-2] * output.shape[-1]))

        return record

    blocks = [(n, m) for n, m in model.named_modules() if n and any(isinstance(s, nn.Conv2d) for s in m.modules())]
    handles = [m.register_forward_hook(hook(n)) for n, m in blocks]
    try:
        with torch.no_grad(), untouched(model):
            model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    names = [n for n, hw in finished if hw > 1] or [n for n, _ in finished]
    if not names:
        raise PrunelensError(f"{type(model).__name__}: no conv block with a 4-D output; set the lens option layer")
    return names[-1]


def hooked_forward(model: nn.Module, layer: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """(A, logits): the layer's output (its last call) and the model's logits, with an autograd graph from the
    layer's input onwards only. Call under `torch.enable_grad()`."""
    kept: dict[str, Any] = {}

    def start_graph(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        torch.set_grad_enabled(True)  # undone when the surrounding no_grad block exits
        return tuple(a.detach().requires_grad_() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        kept.update(output=output, version=getattr(output, "_version", None))

    handles = [layer.register_forward_pre_hook(start_graph), layer.register_forward_hook(keep)]
    try:
        with torch.no_grad():
            logits = model(images)
    finally:
        for handle in handles:
            handle.remove()
    if "output" not in kept:
        raise PrunelensError("the Grad-CAM target layer is not called in the model's forward pass")
    output = kept["output"]
    if not isinstance(output, Tensor) or output.ndim != 4:
        raise PrunelensError(f"the Grad-CAM target layer returns {type(output).__name__}, not a (B, K, h, w) tensor")
    if output._version != kept["version"]:
        raise PrunelensError(
            "the Grad-CAM target layer's output is modified in place later (e.g. by an in-place ReLU); target that later module"
        )
    if not logits.requires_grad:
        raise PrunelensError("the model's logits do not depend differentiably on the Grad-CAM target layer")
    return output, logits


def library_methods() -> list[str]:
    """Names of the pytorch-grad-cam CAM classes usable as `backend="pytorch_grad_cam:<name>"`."""
    import pytorch_grad_cam
    from pytorch_grad_cam.base_cam import BaseCAM

    return sorted(n for n, c in vars(pytorch_grad_cam).items() if isinstance(c, type) and issubclass(c, BaseCAM))


def check_options(variant: str, backend: str) -> None:
    """Raise a one-line error for an unknown variant or backend, or the seed variant on a library backend."""
    if variant not in ("standard", "seed_ghosh"):
        raise PrunelensError(f"Grad-CAM variant {variant!r}: expected 'standard' or 'seed_ghosh'")
    if backend == NATIVE:
        return
    if not backend.startswith(LIBRARY) or backend.removeprefix(LIBRARY) not in library_methods():
        known = ", ".join(library_methods())
        raise PrunelensError(f"Grad-CAM backend {backend!r}: expected 'native' or '{LIBRARY}<method>' (methods: {known})")
    if variant != "standard":
        raise PrunelensError("Grad-CAM variant 'seed_ghosh' exists only for the native backend")


class GradCAM:
    """Batched Grad-CAM of `model` at `layer` (a dotted module name; default `find_target_layer`).

    `cam(images, targets)` explains, per image, the class `targets[b]` (a (B,) tensor), one class for all (an
    int), or the predicted class (None) and returns a `CAMResult`.
    """

    def __init__(self, model: nn.Module, layer: str | None = None, variant: Variant = "standard", backend: str = NATIVE):
        check_options(variant, backend)
        self.model, self.layer, self.variant, self.backend = model, layer, variant, backend

    def __call__(self, images: Tensor, targets: Tensor | int | None = None) -> CAMResult:
        if self.layer is None:
            self.layer = find_target_layer(self.model, images)
        if isinstance(targets, int):
            targets = torch.full((len(images),), targets, dtype=torch.long, device=images.device)
        with untouched(self.model), torch.enable_grad():
            if self.backend == NATIVE:
                return self._native(images, targets)
            return self._library(images, targets)

    def _native(self, images: Tensor, targets: Tensor | None) -> CAMResult:
        activation, logits = hooked_forward(self.model, self.model.get_submodule(self.layer), images)
        targets = logits.detach().argmax(1) if targets is None else targets.to(logits.device)
        if self.variant == "standard":
            (grads,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), activation)
            maps = torch.einsum("bk,bkhw->bhw", grads.mean((2, 3)), activation.detach()).relu()
            return CAMResult(maps, maps.flatten(1).amax(1), targets, logits.detach())
        (grads,) = torch.autograd.grad(F.cross_entropy(logits, targets), activation)
        raw = (activation.detach() + grads.mean((0, 2, 3))[None, :, None, None]).mean(1)
        peak = raw.flatten(1).amax(1)
        maps = raw / torch.where(peak == 0, 1, peak)[:, None, None]  # an all-zero map stays zero, not NaN
        return CAMResult(maps, peak, targets, logits.detach())

    def _library(self, images: Tensor, targets: Tensor | None) -> CAMResult:
        import pytorch_grad_cam
        from pytorch_grad_cam.base_cam import BaseCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        method = getattr(pytorch_grad_cam, self.backend.removeprefix(LIBRARY))
        chosen = None if targets is None else [ClassifierOutputTarget(int(c)) for c in targets]
        with method(model=self.model, target_layers=[self.model.get_submodule(self.layer)]) as cam:
            if type(cam).compute_cam_per_layer is BaseCAM.compute_cam_per_layer:
                cam.get_target_width_height = lambda _: tuple(cam.activations_and_grads.activations[-1].shape[:-3:-1])
            maps = torch.from_numpy(cam(input_tensor=images, targets=chosen)).to(images.device)
            logits = cam.outputs.detach()
        targets = logits.argmax(1) if targets is None else targets.to(logits.device)
        return CAMResult(maps, maps.flatten(1).amax(1), targets, logits)


# ---------------------------------------------------------------- correctness, faithfulness, randomisation


def nonnegative(maps: Tensor) -> Tensor:
    """Maps shifted by their per-image minimum where it is negative (seed-variant maps have no ReLU)."""
    return maps - maps.flatten(1).amin(1).clamp(max=0).view(-1, *[1] * (maps.ndim - 1))


def correctness(maps: Tensor, objects: Tensor) -> dict[str, Tensor]:
    """Localisation against object masks (B, H, W) bool, with the maps upsampled to (H, W) (NaN for degenerate maps):
    `energy_inside` = Σ_{i∈object} L_i / Σ_i L_i, `energy_ratio` = energy_inside / (object area / image area)
    (1 = no better than uniform), `pointing_game` = 1[argmax L ∈ object]."""
    up = nonnegative(upsample(maps, objects.shape[-2:])).double()
    objects = objects.to(up.device)
    inside = sim.safe_ratio((up * objects).sum((1, 2)), up.sum((1, 2)))
    out = {
        "energy_inside": inside,
        "energy_ratio": sim.safe_ratio(inside, objects.double().mean((1, 2))),
        "pointing_game": sim.pointing(up, objects),
    }
    bad = sim.degenerate(maps)
    return {name: value.masked_fill(bad, math.nan) for name, value in out.items()}


def blur(images: Tensor) -> Tensor:
    """Gaussian blur with σ = max(H, W)/8 (the insertion baseline of Petsiuk et al. 2018, scaled to the image)."""
    from torchvision.transforms.v2.functional import gaussian_blur

    sigma = max(images.shape[-2:]) / 8
    size = min(2 * math.ceil(2 * sigma) + 1, 2 * (min(images.shape[-2:]) // 2) - 1)
    return gaussian_blur(images, kernel_size=[size, size], sigma=[sigma, sigma])


@torch.no_grad()
def deletion_insertion(
    model: nn.Module, images: Tensor, maps: Tensor, targets: Tensor, steps: int = FAITHFULNESS_STEPS
) -> dict[str, Tensor]:
    """Deletion and insertion curves (Petsiuk et al. 2018): at fractions f = 0, 1/steps, …, 1 the top-f
    pixels of the upsampled map (ties in flat index order) are set to the zero (= dataset mean) image
    (deletion) or revealed on a blurred image (insertion); the curve is the softmax probability of the target
    class. Returns the (B, steps+1) curves and their trapezoidal AUCs over f ∈ [0, 1] (deletion: lower is
    more faithful; insertion: higher). Degenerate maps give NaN."""
    b, _, height, width = images.shape
    saliency = upsample(maps, (height, width)).reshape(b, -1)
    order = torch.sort(saliency, dim=1, descending=True, stable=True).indices
    positions = torch.arange(height * width, device=order.device).expand(b, -1)
    rank = torch.empty_like(order).scatter_(1, order, positions).view(b, 1, height, width)
    baseline, background = torch.zeros_like(images), blur(images)
    fractions = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    curves: dict[str, list[Tensor]] = {"deletion": [], "insertion": []}
    with untouched(model):
        for f in fractions:
            top = rank < round(float(f) * height * width)
            both = torch.cat([torch.where(top, baseline, images), torch.where(top, images, background)])
            probs = model(both).softmax(1).gather(1, targets.repeat(2)[:, None])[:, 0].double()
            curves["deletion"].append(probs[:b])
            curves["insertion"].append(probs[b:])
    bad = sim.degenerate(maps)
    out = {}
    for name, values in curves.items():
        curve = torch.stack(values, 1).masked_fill(bad[:, None], math.nan)
        out[f"{name}_curve"] = curve
        out[f"{name}_auc"] = torch.trapezoid(curve, fractions.to(curve.device), dim=1)
    return out


def cascading_randomisation(model: nn.Module, explain: Callable[[nn.Module], Tensor], seed: int = 0) -> list[tuple[str, Tensor]]:
    """MPRT, cascading (Adebayo et al. 2018; Quantus' `top_down` order): on a copy of `model`, re-initialise
    (`reset_parameters`) the modules with own parameters one after another from the logits downward,
    cumulatively; after each step return (module name, `explain(randomised copy)`)."""
    randomised = copy.deepcopy(model)
    owners = [(n, m) for n, m in randomised.named_modules() if next(m.parameters(recurse=False), None) is not None]
    layers = [(n, m) for n, m in owners if hasattr(m, "reset_parameters")]
    devices = sorted({p.device.index or 0 for p in randomised.parameters() if p.device.type == "cuda"})
    out = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for name, module in reversed(layers):
            module.reset_parameters()
            out.append((name, explain(randomised)))
    return out


# ---------------------------------------------------------------- the lens


def _row(kind: str, metric: str, values: Tensor, **extra: Any) -> dict[str, Any]:
    """One long-format record: the nanmean of per-image `values`, `n` finite values and `nan` the others."""
    mean, n = sim.aggregate(values)
    return _record(kind, metric, mean, n, int(values.numel() - n), **extra)


def _record(kind: str, metric: str, value: float, n: int, nan: int = 0, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "metric": metric, "value": value, "n": n, "nan": nan, **extra}


def _rows(kind: str, per_image: dict[str, Tensor], **extra: Any) -> list[dict[str, Any]]:
    """A `_row` per (B,) metric of `per_image` (maps and the `degenerate` flags are skipped)."""
    return [_row(kind, name, v.double(), **extra) for name, v in per_image.items() if v.ndim == 1 and name != "degenerate"]


@LENSES.register("gradcam")
class GradCAMLens(Lens):
    """Grad-CAM maps of every round compared with the dense model's, between a floor and a ceiling.

    Options: `target` ("label": the true class; "dense_predicted": the dense model's prediction — both the same
    class for every model; "predicted": each model's own prediction), `layer` (dotted module name, default
    `find_target_layer` on the dense model), `variant` ("standard" | "seed_ghosh"), `backend` ("native" |
    "pytorch_grad_cam:<Method>"), `faithfulness` (deletion/insertion curves, default on).

    Record kinds (column `kind`; `metric`, `value` = mean over the evaluation batch, `n` images with a finite
    value, `nan` the others, e.g. degenerate maps; every row also names `method`, `target` and `layer`):
    - `maps`: `degenerate` (count), `peak` (mean per-image max), `peak_ratio` (peak / dense peak), `grid_h`, `grid_w`;
    - `pruned_vs_dense`: every `similarity.compare` metric of this round's maps vs the dense maps;
    - `normalised`: (S − S_floor) / (S_ceil − S_floor) of each of those (works for distances too);
    - round 0 only: `floor` (dense vs a fresh random init, `reference("random")`), `ceiling` (dense vs the dense
      model of another seed, `reference("other_seed")`), `mprt` (cascading randomisation of the dense model:
      `spearman`, `spearman_abs`, `ssim` per `step`, the module re-initialised last in `randomised`),
      `correctness_floor` and `correctness_ceiling`;
    - `correctness` (when the batch has object `masks`): `energy_inside`, `energy_ratio`, `pointing_game`;
    - `faithfulness`: `deletion_auc`, `insertion_auc`.
    Tensors keep the raw maps, targets, peaks and every per-image value; the figure `grid` shows up to 8 images
    (overlay on the dense map's colour scale, and the 0.75 × max mask) for the dense model and this round.
    """

    name = "gradcam"

    def __init__(self, target: Target = "label", layer: str | None = None, variant: Variant = "standard",
                 backend: str = NATIVE, faithfulness: bool = True):  # fmt: skip
        if target not in ("label", "predicted", "dense_predicted"):
            raise PrunelensError(f"gradcam target {target!r}: expected 'label', 'predicted' or 'dense_predicted'")
        check_options(variant, backend)
        self.target, self.layer, self.variant, self.backend, self.faithfulness = target, layer, variant, backend, faithfulness
        self.method = variant if backend == NATIVE else backend.removeprefix(LIBRARY)
        self._dense: CAMResult | None = None
        self._references: References = {}

    # -- maps

    def explain(self, model: nn.Module, batch: LensBatch) -> CAMResult:
        """The maps of `model` on `batch` for this lens' target rule (same layer for every model)."""
        dense = self._dense
        chosen = {"label": batch.labels, "predicted": None, "dense_predicted": dense.targets if dense else None}[self.target]
        cam = GradCAM(model, self.layer, self.variant, self.backend)
        result = cam(batch.images, chosen)
        self.layer = cam.layer
        return result

    def dense_maps(self, inp: LensInput) -> CAMResult:
        if self._dense is None:
            self._dense = self.explain(inp.dense, inp.batch)
        return self._dense

    def references(self, inp: LensInput) -> References:
        """Per reference ("floor", "ceiling"): its maps and per-image similarity to the dense maps (cached)."""
        if not self._references:
            dense = self.dense_maps(inp)
            for kind, model in (("floor", "random"), ("ceiling", "other_seed")):
                result = self.explain(inp.reference(model), inp.batch)
                self._references[kind] = {"maps": result.maps, **self.compare(result.maps, dense.maps, inp.batch)}
        return self._references

    @staticmethod
    def compare(maps: Tensor, dense: Tensor, batch: LensBatch) -> dict[str, Tensor]:
        return sim.compare(maps, dense, input_size=tuple(batch.images.shape[-2:]))

    # -- one round

    def __call__(self, inp: LensInput) -> LensResult:
        dense, batch = self.dense_maps(inp), inp.batch
        current = dense if inp.round == 0 else self.explain(inp.model, batch)
        refs = self.references(inp)
        similar = self.compare(current.maps, dense.maps, batch)
        tensors = {"maps": current.maps, "targets": current.targets, "peak": current.peak}
        records = self._map_records(current, dense)
        records += _rows("pruned_vs_dense", similar)
        records += self._normalised(records, refs)
        tensors.update({f"pruned_vs_dense.{k}": v for k, v in similar.items()})
        if inp.round == 0:
            records += self._reference_records(inp, refs, tensors)
        if "masks" in batch.extras:
            per_image = correctness(current.maps, batch.extras["masks"])
            records += _rows("correctness", per_image)
            tensors.update({f"correctness.{k}": v for k, v in per_image.items()})
        if self.faithfulness:
            per_image = deletion_insertion(inp.model, batch.images, current.maps, current.targets)
            records += _rows("faithfulness", {k: v for k, v in per_image.items() if k.endswith("_auc")})
            tensors.update({f"faithfulness.{k}": v for k, v in per_image.items()})
        for record in records:
            record.update(method=self.method, target=self.target, layer=self.layer)
        where = f"round {inp.round}, density {inp.density:.3g}"
        title = f"Grad-CAM ({self.method}, target {self.target}, layer {self.layer}): {where}"
        return LensResult(records, tensors, {"grid": grid_figure(batch, dense, current, title)})

    def _map_records(self, current: CAMResult, dense: CAMResult) -> list[dict[str, Any]]:
        b, h, w = current.maps.shape
        return [
            _record("maps", "degenerate", int(current.degenerate.sum()), b),
            _row("maps", "peak", current.peak.double()),
            _row("maps", "peak_ratio", sim.safe_ratio(current.peak, dense.peak)),
            _record("maps", "grid_h", h, b),
            _record("maps", "grid_w", w, b),
        ]

    @staticmethod
    def _normalised(records: list[dict[str, Any]], refs: References) -> list[dict[str, Any]]:
        """(S − S_floor) / (S_ceil − S_floor) of each `pruned_vs_dense` record (NaN where floor = ceiling)."""
        out = []
        for rec in records:
            if rec["kind"] != "pruned_vs_dense":
                continue
            floor, ceil = (sim.aggregate(refs[k][rec["metric"]].double())[0] for k in ("floor", "ceiling"))
            value = (rec["value"] - floor) / (ceil - floor) if ceil != floor else math.nan
            out.append({**rec, "kind": "normalised", "value": value})
        return out

    def _reference_records(self, inp: LensInput, refs: References, tensors: dict[str, Tensor]) -> list[dict[str, Any]]:
        """Round 0: floor, ceiling, their correctness, and the MPRT series of the dense model."""
        dense, batch = self.dense_maps(inp), inp.batch
        records = []
        for kind, values in refs.items():
            records += _rows(kind, values)
            tensors.update({f"{kind}.{k}": v for k, v in values.items()})
            if "masks" in batch.extras:
                records += _rows(f"correctness_{kind}", correctness(values["maps"], batch.extras["masks"]))
        series = cascading_randomisation(inp.dense, lambda m: self.explain(m, batch).maps)
        spearman = []
        for step, (layer, maps) in enumerate(series, start=1):
            per_image = {
                "spearman": sim.spearman(maps, dense.maps),
                "spearman_abs": sim.spearman(maps, dense.maps, absolute=True),
                "ssim": sim.ssim(maps, dense.maps),
            }
            bad = sim.degenerate(maps) | dense.degenerate
            records += _rows("mprt", {k: v.masked_fill(bad, math.nan) for k, v in per_image.items()}, step=step, randomised=layer)
            spearman.append(per_image["spearman"].masked_fill(bad, math.nan))
        tensors["mprt.spearman"] = torch.stack(spearman)  # (steps, B)
        return records

    # -- across rounds

    def summarize(self, table: pd.DataFrame) -> dict[str, Any]:
        title = f"Grad-CAM ({self.method}): consistency with the dense maps"
        figures = {"consistency": density_figure(table, ["pruned_vs_dense"], title)}
        if table["kind"].isin(["correctness", "faithfulness"]).any():
            title = f"Grad-CAM ({self.method}): correctness and faithfulness"
            figures["correctness_faithfulness"] = density_figure(table, ["correctness", "faithfulness"], title)
        if (table["kind"] == "mprt").any():
            figures["mprt"] = mprt_figure(table[table["kind"] == "mprt"], self.method)
        return figures


    @classmethod
    def headline(cls, table: pd.DataFrame) -> pd.DataFrame:
        """Per round: consistency with the dense maps and correctness against the object masks, with the
        floor (random model) and ceiling (other seed) as extra rows."""
        wanted = {"pruned_vs_dense": ["spearman", "iou_thr"], "correctness": ["energy_ratio", "pointing_game"]}
        refs = {"floor": "pruned_vs_dense", "ceiling": "pruned_vs_dense", "correctness_floor": "correctness",
                "correctness_ceiling": "correctness"}  # fmt: skip
        rows = table[table["kind"].isin([*wanted, *refs])].copy()
        rows["row"] = rows["round"].astype(str)
        for ref, kind in refs.items():
            hit = rows["kind"] == ref
            rows.loc[hit, "row"] = ref.removeprefix("correctness_")
            rows.loc[hit, "kind"] = kind
        rows = rows[[m in wanted.get(k, []) for k, m in zip(rows["kind"], rows["metric"])]]
        wide = rows.pivot_table(index="row", columns=["kind", "metric"], values="value", sort=False)
        wide.columns = [metric for _, metric in wide.columns]
        order = sorted(wide.index, key=lambda row: (not row.isdigit(), int(row) if row.isdigit() else row != "floor"))
        return wide.loc[order].rename_axis("round").reset_index()


# ---------------------------------------------------------------- figures


def _image(pixels: Tensor) -> np.ndarray:
    """(C, H, W) 0–1 → (H, W, 3) for imshow (grey images replicated)."""
    img = pixels.detach().float().cpu().clamp(0, 1)
    return (img.expand(3, -1, -1) if img.shape[0] == 1 else img[:3]).permute(1, 2, 0).numpy()


def grid_figure(batch: LensBatch, dense: CAMResult, current: CAMResult, title: str) -> Any:
    """Columns: up to 8 images. Rows: the jet overlay on the dense map's per-image colour scale (so a weaker
    pruned map looks fainter) and the binary mask 1[L > 0.75 × max L] (upsampled), for the dense model and,
    if different, this round's model."""
    from matplotlib.figure import Figure

    n = min(FIGURE_IMAGES, len(batch.images))
    size = tuple(batch.images.shape[-2:])
    rows = [("dense", dense)] + ([("this round", current)] if current is not dense else [])
    fig = Figure(figsize=(1.4 * n, 1.5 * 2 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(2 * len(rows), n, squeeze=False)
    scale = dense.maps[:n].flatten(1).amax(1).clamp_min(1e-12).cpu()
    for r, (label, result) in enumerate(rows):
        up = upsample(result.maps[:n], size).cpu()
        masks = sim.threshold_mask(up)
        for i in range(n):
            image = _image(batch.pixels[i])
            overlay, binary = axes[2 * r, i], axes[2 * r + 1, i]
            overlay.imshow(image)
            overlay.imshow(up[i].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=float(scale[i]))
            binary.imshow(masks[i].numpy(), cmap="gray", vmin=0, vmax=1)
            overlay.set_title(f"c={int(result.targets[i])}", fontsize=7)
        axes[2 * r, 0].set_ylabel(f"{label}\noverlay", fontsize=7)
        axes[2 * r + 1, 0].set_ylabel(f"{label}\nmask > 0.75·max", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    return fig


REFERENCE_LINES = {"pruned_vs_dense": ("floor", "ceiling"), "correctness": ("correctness_floor", "correctness_ceiling")}
"""Record kind → the round-0 kinds drawn as its floor and ceiling lines."""


def density_figure(table: pd.DataFrame, kinds: list[str], title: str) -> Any:
    """One panel per (kind, metric) of `kinds`: the value against density (log scale, decreasing to the right,
    ticks at the rounds), with the floor (random init, red) and ceiling (other seed, green) of
    `REFERENCE_LINES` as dashed horizontal lines."""
    from matplotlib.figure import Figure

    rows = table[table["kind"].isin(kinds)]
    keys = list(dict.fromkeys(zip(rows["kind"], rows["metric"])))
    cols = min(4, len(keys))
    fig = Figure(figsize=(3.2 * cols, 2.5 * math.ceil(len(keys) / cols)), layout="constrained")
    axes = fig.subplots(math.ceil(len(keys) / cols), cols, squeeze=False).ravel()
    for ax, (kind, metric) in zip(axes, keys):
        curve = rows[(rows["kind"] == kind) & (rows["metric"] == metric)].sort_values("round")
        ax.plot(curve["density"], curve["value"], marker="o", markersize=3, label=kind)
        for level_kind, colour in zip(REFERENCE_LINES.get(kind, ()), ("tab:red", "tab:green")):
            level = table[(table["kind"] == level_kind) & (table["metric"] == metric)]["value"]
            if len(level):
                ax.axhline(float(level.iloc[0]), color=colour, linestyle="--", linewidth=1, label=level_kind)
        ticks = sorted(set(curve["density"]))
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{d:.2g}" for d in ticks], fontsize=7)
        ax.minorticks_off()
        ax.invert_xaxis()
        ax.set_xlabel("density")
        ax.set_title(metric if len(kinds) == 1 else f"{kind}: {metric}", fontsize=8)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize="x-small")
    fig.suptitle(title, fontsize=9)
    return fig


def mprt_figure(rows: pd.DataFrame, method: str) -> Any:
    """Similarity to the trained dense maps as layers are randomised from the logits downward."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(5.0, 0.25 * rows["step"].nunique()), 3.5), layout="constrained")
    ax = fig.subplots()
    for metric, curve in rows.groupby("metric", sort=False):
        curve = curve.sort_values("step")
        ax.plot(curve["step"], curve["value"], marker="o", markersize=3, label=metric)
    steps = rows.drop_duplicates("step").sort_values("step")
    ax.set_xticks(steps["step"], steps["randomised"], rotation=90, fontsize=6)
    ax.set(ylabel="similarity to dense maps", title=f"Cascading randomisation (MPRT), Grad-CAM ({method})")
    ax.legend(fontsize="x-small")
    return fig
