"""Grad-CAM speed and agreement: prunelens `GradCAM` vs pytorch-grad-cam `GradCAM` on the CPU.

`python benchmarks/bench_gradcam.py [--repeats N] [--threads T]`

Cases (random weights, eval mode, random inputs and one random target class per image):
- `cifar_resnet_20` from the prunelens registry, 32×32 RGB, batch 64, target layer `blocks` (8×8 maps);
- torchvision `resnet18` (10 classes), 64×64 RGB, batch 16, target layer `layer4` (2×2 maps).
The layer is `find_target_layer`'s default, passed to both libraries.

Timed (interleaved: one call of each method per repeat, the order rotated every repeat, so load drift on a shared
machine hits all alike; the spread is min / median / max over repeats, the speed-up uses medians; each case reports
how many cores other processes kept busy meanwhile):
- library: `with GradCAM(model, [layer]) as cam: cam(x, [ClassifierOutputTarget(c) …])` — its maps are
  min-max normalised and resized to the input size;
- prunelens: `GradCAM(model, layer)(x, targets)` (raw maps at the layer's resolution), and the same plus
  `upsample` to the input size (the library's output size; the headline ratio uses this one).

Threads: 1 by default (`--threads`), for both methods. On a shared 2-core machine two OpenMP threads spin
against other processes and a resnet18 forward+backward gets ~6× slower than on one thread, so ratios would
measure contention rather than the methods.

Reference rows (same interleaving): the model's plain forward under `no_grad` (F) and forward + full backward
into the parameters (F + B). Any Grad-CAM needs at least one forward, and the library's call costs about F + B,
so (F + B) / F bounds the speed-up: about 3.7 for cifar_resnet_20 here, but only ~3 for resnet18 at 64×64,
where the miss of the 3× target is therefore structural, not overhead.

Agreement: our raw maps put through the library's own post-processing (`scale_cam_image` with its cv2 resize,
applied twice as `BaseCAM` does: once per layer, once after averaging layers) vs the library's maps; max
absolute difference. Tolerance 1e-5: both maps lie in [0, 1] and come from the same float32 products summed in
a different order (numpy vs torch), ~1e-7 apart; any real difference (α, ReLU, target, batch mix-up) is O(0.1).

Why prunelens is faster: the library back-propagates `sum(target(output))` through the whole network into every
parameter's `.grad` and copies activations and gradients to numpy; prunelens runs the layers before the target
without an autograd graph and `torch.autograd.grad` stops at the target layer's output (no parameter gradients).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
import torchvision
from _harness import CpuMeter, environment, header, interleaved, spread, timed, verdict
from pytorch_grad_cam import GradCAM as LibraryGradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from prunelens.config import ModelConfig
from prunelens.lenses.cam import GradCAM, find_target_layer, upsample
from prunelens.models import build_model

TOLERANCE = 1e-5
TARGET_SPEEDUP = 3.0


def cases() -> list[tuple[str, nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    resnet20 = build_model(ModelConfig(name="cifar_resnet_20"), 10, 3, (32, 32))
    resnet18 = torchvision.models.resnet18(num_classes=10)
    return [
        ("cifar_resnet_20, 32×32, batch 64", resnet20.eval(), torch.randn(64, 3, 32, 32)),
        ("torchvision resnet18, 64×64, batch 16", resnet18.eval(), torch.randn(16, 3, 64, 64)),
    ]


def library_maps(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    with LibraryGradCAM(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in targets])


def forward(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def forward_backward(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model(x).gather(1, targets[:, None]).sum().backward()
    model.zero_grad(set_to_none=True)


def bench(name: str, model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    targets = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(1))
    layer_name = find_target_layer(model, x)
    layer = model.get_submodule(layer_name)
    cam = GradCAM(model, layer_name)
    size = tuple(x.shape[-2:])
    methods: dict[str, Callable[[], object]] = {
        "pytorch-grad-cam": lambda: library_maps(model, layer, x, targets),
        "prunelens (native maps)": lambda: cam(x, targets),
        "prunelens (+ upsample)": lambda: upsample(cam(x, targets).maps, size),
        "reference: forward F": lambda: forward(model, x),
        "reference: F + backward B": lambda: forward_backward(model, x, targets),
    }
    for fn in methods.values():  # warm-up
        fn()
    meter = CpuMeter()
    seconds = interleaved({m: partial(timed, fn) for m, fn in methods.items()}, repeats, meter)

    ours = cam(x, targets).maps.numpy()
    reference = library_maps(model, layer, x, targets)
    difference = float(np.abs(scale_cam_image(scale_cam_image(ours, size[::-1])) - reference).max())
    median = {m: statistics.median(s) for m, s in seconds.items()}
    speedup = median["pytorch-grad-cam"] / median["prunelens (+ upsample)"]
    header(f"{name}; layer {layer_name!r}, maps {ours.shape[1]}×{ours.shape[2]}; {repeats} interleaved repeats")
    for method, s in seconds.items():
        print(f"  {method:26s} {spread([len(x) / t for t in s], '{:8.0f}')} img/s (min / median / max)")
    native = median["pytorch-grad-cam"] / median["prunelens (native maps)"]
    bound = median["reference: F + backward B"] / median["reference: forward F"]
    print(f"  speed-up (medians, prunelens + upsample vs library): {speedup:.2f}× (native maps only: {native:.2f}×); "
          f"target ≥ {TARGET_SPEEDUP:g}×: {verdict(speedup >= TARGET_SPEEDUP)}; bound (F + B) / F = {bound:.2f}×")  # fmt: skip
    agreement = "equal" if difference <= TOLERANCE else "DIFFERENT"
    print(f"  max |Δ| of normalised maps: {difference:.2e} (tolerance {TOLERANCE:g}: {agreement})")
    meter.report()
    return speedup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(environment())
    print(f"Tolerance {TOLERANCE:g} on maps min-max normalised to [0, 1]: same float32 products summed in another order "
          "(~1e-7); a real difference (α, ReLU, target) is O(0.1).")  # fmt: skip
    for name, model, x in cases():
        bench(name, model, x, args.repeats)


if __name__ == "__main__":
    main()
