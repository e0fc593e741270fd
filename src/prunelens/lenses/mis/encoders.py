"""Image encoders whose embeddings decide MIS tasks (docs/methods.md §16.6). Every score is stored with its
encoder's name; any encoder but DreamSim gives an "MIS-proxy", comparable only under the same encoder.

- `efficientnet_lite0` (default): the ImageNet-trained EfficientNet-Lite0 that installs offline with
  prunelens; its penultimate pooled features at `encoder_size` px.
- `descriptor`: weight-free, a sanity baseline: per-channel colour histograms and a 2×2 grid of gradient-
  orientation histograms, each L1-normalised, square-rooted (Hellinger) and concatenated.
- `torchvision`: any torchvision classifier (`encoder_arch`) with a local state_dict (`encoder_weights`);
  penultimate pooled features.
- `dreamsim`: the DreamSim ensemble from its package (`pip install dreamsim`) with its checkpoints in the
  directory `encoder_weights` (it cannot fetch them here).
An encoder maps 0–1 pixels (B, C, H, W) to embeddings (B, D); grey images are repeated to three channels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from prunelens.config import ModelConfig
from prunelens.errors import PrunelensError
from prunelens.lenses.features import embed
from prunelens.models import build_model
from prunelens.models.zoo import EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD, efficientnet_lite0_weights
from prunelens.registry import Registry

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DREAMSIM_FILES = ("dino_vitb16_pretrain.pth", "open_clip_vitb16_pretrain.pth.tar", "clip_vitb16_pretrain.pth.tar", "ensemble_lora")
BATCH = 64


class Encoder:
    """`name` and `identity` (what the cache key needs: the weights' checksum) and `__call__(pixels)`."""

    def __init__(self, name: str, fn: Callable[[Tensor], Tensor], identity: dict[str, Any]) -> None:
        self.name, self.fn, self.identity = name, fn, identity

    @torch.no_grad()
    def __call__(self, pixels: Tensor) -> Tensor:
        rgb = pixels.float().expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels.float()
        return torch.cat([self.fn(rgb[i : i + BATCH]).float().cpu() for i in range(0, len(rgb), BATCH)])


ENCODERS: Registry[Callable[..., Encoder]] = Registry("encoder")


def _checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _backbone(model: nn.Module, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Callable[[Tensor], Tensor]:
    """Penultimate pooled features of `model` on pixels resized to `size` and normalised."""
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    model.eval()

    def fn(rgb: Tensor) -> Tensor:
        x = F.interpolate(rgb, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return embed(model, [(x - m) / s], None)[0]

    return fn


@ENCODERS.register("efficientnet_lite0")
def efficientnet_lite0(size: int = 224, **_: Any) -> Encoder:
    model = build_model(ModelConfig(name="efficientnet_lite0"), 1000, 3, (size, size))
    weights = efficientnet_lite0_weights()
    return Encoder("efficientnet_lite0", _backbone(model, size, EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD),
                   {"size": size, "weights": _checksum(weights)})  # fmt: skip


def _histograms(rgb: Tensor, bins: int = 8) -> Tensor:
    """Per image and channel an L1-normalised `bins`-bin histogram of 0–1 values, (B, 3·bins)."""
    index = (rgb.clamp(0, 1) * bins).long().clamp_max(bins - 1).flatten(2)  # (B, 3, HW)
    counts = torch.zeros(*index.shape[:2], bins).scatter_add_(2, index, torch.ones_like(index, dtype=torch.float32))
    return (counts / counts.sum(-1, keepdim=True)).flatten(1)


def _orientations(rgb: Tensor, bins: int = 8, grid: int = 2) -> Tensor:
    """A `grid`×`grid` grid of gradient-orientation histograms (unsigned, `bins` bins, weighted by magnitude)."""
    grey = rgb.mean(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    gx, gy = F.conv2d(grey, kx, padding=1), F.conv2d(grey, kx.transpose(2, 3), padding=1)
    magnitude, angle = (gx**2 + gy**2).sqrt(), torch.atan2(gy, gx).remainder(torch.pi)
    index = (angle / torch.pi * bins).long().clamp_max(bins - 1)
    votes = torch.zeros(*grey.shape[:1], bins, *grey.shape[2:]).scatter_(1, index, magnitude)  # (B, bins, H, W)
    cells = F.adaptive_avg_pool2d(votes, grid).flatten(2)  # (B, bins, grid²)
    return (cells / cells.sum(1, keepdim=True).clamp_min(1e-12)).flatten(1)


@ENCODERS.register("descriptor")
def descriptor(**_: Any) -> Encoder:
    return Encoder("descriptor", lambda rgb: torch.cat([_histograms(rgb).sqrt(), _orientations(rgb).sqrt()], 1), {"version": 1})


@ENCODERS.register("torchvision")
def torchvision_encoder(arch: str | None = None, weights: Path | None = None, size: int = 224, **_: Any) -> Encoder:
    if arch is None or weights is None:
        raise PrunelensError("mis option encoder: 'torchvision' needs encoder_arch (e.g. resnet50) and encoder_weights (a local state_dict file)")
    if not Path(weights).is_file():
        raise PrunelensError(f"{weights}: not found (mis option encoder_weights)")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        classes = [v.shape[0] for v in state.values() if isinstance(v, Tensor) and v.ndim == 2][-1:]  # the head's rows
        model = torchvision.models.get_model(arch, weights=None, **({"num_classes": classes[0]} if classes else {}))
        model.load_state_dict(state)
    except (ValueError, RuntimeError, KeyError, AttributeError) as err:
        detail = " ".join(str(err).split())[:200]
        raise PrunelensError(f"{weights}: not a {arch} state_dict ({detail})") from None
    return Encoder(f"torchvision:{arch}", _backbone(model, size, IMAGENET_MEAN, IMAGENET_STD), {"arch": arch, "size": size,
                   "weights": _checksum(Path(weights))})  # fmt: skip


@ENCODERS.register("dreamsim")
def dreamsim_encoder(weights: Path | None = None, **_: Any) -> Encoder:
    folder = Path(weights) if weights is not None else None
    missing = [f for f in DREAMSIM_FILES if folder is None or not (folder / f).exists()]
    if missing:
        where = folder or "encoder_weights"
        raise PrunelensError(f"mis encoder dreamsim: {where} must hold {', '.join(DREAMSIM_FILES)} (missing: {', '.join(missing)}); DreamSim cannot download them here")
    try:
        from dreamsim import dreamsim
    except ImportError:
        raise PrunelensError("mis encoder dreamsim: needs the package dreamsim (pip install dreamsim)") from None
    model, _preprocess = dreamsim(pretrained=True, cache_dir=str(folder), device="cpu")

    def fn(rgb: Tensor) -> Tensor:
        return model.embed(F.interpolate(rgb, size=(224, 224), mode="bicubic", align_corners=False))

    return Encoder("dreamsim", fn, {"weights": str(folder)})


def build_encoder(name: str, arch: str | None, weights: Path | None, size: int) -> Encoder:
    """The encoder `name` with its options (a one-line error names what is missing)."""
    return ENCODERS.get(name)(arch=arch, weights=weights, size=size)
