"""Sanity and faithfulness checks for any pixel explainer (docs/methods.md §10): correctness against object
masks, deletion/insertion curves, and cascading model-parameter randomisation (MPRT)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from prunelens.lenses import similarity as sim
from prunelens.lenses.cam import upsample
from prunelens.modules import eval_mode
from prunelens.seeding import forked

FAITHFULNESS_STEPS = 10

def correctness(maps: Tensor, objects: Tensor) -> dict[str, Tensor]:
    """Localisation against object masks (B, H, W) bool, with the maps upsampled to (H, W) (NaN for degenerate
    maps): `energy_inside` = Σ_{i∈object} L_i / Σ_i L_i (the share of the map's energy on the object),
    `energy_ratio` = energy_inside / (object area / image area) (1 = no better than uniform), `pointing_game` =
    1[argmax L ∈ object], `mask_iou` = IoU of the thresholded map {L > 0.75 · max L} with the object."""
    raw = upsample(maps, objects.shape[-2:]).double()
    up = sim.nonnegative(raw)
    objects = objects.to(up.device)
    inside = sim.safe_ratio((up * objects).sum((1, 2)), up.sum((1, 2)))
    out = {
        "energy_inside": inside,
        "energy_ratio": sim.safe_ratio(inside, objects.double().mean((1, 2))),
        "pointing_game": sim.pointing(up, objects),
        "mask_iou": sim.iou(sim.threshold_mask(raw), objects),
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
    with eval_mode(model, keep_grads=True):
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
    cumulatively, drawing from the (seed, "mprt") stream; after each step return (module name, `explain(randomised copy)`)."""
    randomised = copy.deepcopy(model)
    owners = [(n, m) for n, m in randomised.named_modules() if next(m.parameters(recurse=False), None) is not None]
    layers = [(n, m) for n, m in owners if hasattr(m, "reset_parameters")]
    out = []
    with forked(seed, "mprt"):
        for name, module in reversed(layers):
            module.reset_parameters()
            out.append((name, explain(randomised)))
    return out

