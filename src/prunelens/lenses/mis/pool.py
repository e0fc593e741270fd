"""The MIS image pool: a seeded sample of a split, or of an image folder, with its pixels (for the encoder)
and network inputs (for the units), and a content digest (the cache key of its embeddings)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from prunelens.errors import PrunelensError
from prunelens.lenses.data import LensData
from prunelens.seeding import generator

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
BATCH = 256


@dataclass(frozen=True)
class Pool:
    """`pixels` (N, C, H, W) on the 0–1 scale, `images` the same normalised for the network (on its device),
    where it came from and a digest of its pixels."""

    pixels: Tensor
    images: Tensor
    source: str
    digest: str

    def batches(self) -> Iterator[Tensor]:
        for start in range(0, len(self.images), BATCH):
            yield self.images[start : start + BATCH]

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "images": len(self.images), "sha256": self.digest}


def pixel_digest(pixels: Tensor) -> str:
    """sha256 of the pixels on the 0–255 scale."""
    return hashlib.sha256((pixels * 255).round().to(torch.uint8).cpu().numpy().tobytes()).hexdigest()


def load_pool(data: LensData, split: str, size: int, seed: int, root: Path | None, digest: str | None = None) -> Pool:
    """`size` images drawn from the (seed, "pool") stream: of `split`, or of the image files under `root`
    (read as the data's channels and resized to its image size); `digest` (known from an earlier load of the same
    pool) saves hashing the pixels again."""
    if root is None:
        batch = data.take(split, data.pool_index(size, split, seed))
        return Pool(batch.pixels, batch.images, f"{split} split", digest or pixel_digest(batch.pixels))
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    if not files:
        raise PrunelensError(f"{root}: no image files (mis option pool_root)")
    order = torch.randperm(len(files), generator=generator(seed, "pool", len(files)))[:size].sort().values
    bundle = data.bundle
    pixels = torch.stack([_read(files[i], bundle.in_channels, bundle.image_size) for i in order.tolist()])
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
    return Pool(pixels, ((pixels - mean) / std).to(data.device), str(root), digest or pixel_digest(pixels))


def _read(path: Path, channels: int, size: tuple[int, int]) -> Tensor:
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise PrunelensError(f"{path}: unreadable image ({err})") from None
    x = torch.from_numpy(array).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1)[None]
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
