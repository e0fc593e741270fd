"""The Grad-CAM engine (docs/methods.md §7): batched, on the device, raw maps at the layer's native grid.

`GradCAM(model, layer, variant, backend)(images, targets)` returns raw maps at the target layer's native
resolution (B, h, w), their per-image peak and a `degenerate` flag:

- `variant="standard"` (default): y^c the pre-softmax logit, α_k = (1/hw) Σ_ij ∂y^c/∂A^k_ij per image,
  L = ReLU(Σ_k α_k A^k), unnormalised. One forward and one backward of Σ_b y_b^{c_b} in eval mode give every
  image's gradient (in train mode BatchNorm would couple the images).
- `variant="seed_ghosh"` (the code of Ghosh & Batmanghelich; docs/methods.md §7.4): backward of the mean cross-entropy with the target
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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunelens.errors import PrunelensError
from prunelens.lenses import similarity as sim
from prunelens.modules import eval_mode

Variant = Literal["standard", "seed_ghosh"]
NATIVE = "native"
LIBRARY = "pytorch_grad_cam:"


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
        with torch.no_grad(), eval_mode(model, keep_grads=True):
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
        with eval_mode(self.model, keep_grads=True), torch.enable_grad():
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

