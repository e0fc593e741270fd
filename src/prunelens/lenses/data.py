"""The data a lens sees: a fixed evaluation batch, whole splits in batches, and seeded image pools."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import torch

from prunelens.data.base import DataBundle, DatasetSplit, Split
from prunelens.data.common import split_labels
from prunelens.data.loader import Loader
from prunelens.errors import PrunelensError
from prunelens.seeding import generator


@dataclass(frozen=True)
class LensBatch:
    """Images for a lens: normalised `images` on the device, `labels`, per-image `extras` (e.g. the `shapes`
    object `masks` and `concepts`), `pixels`: the same images on the 0–1 scale (for overlays), and `index`:
    their row numbers in the split they come from."""

    images: torch.Tensor
    labels: torch.Tensor
    pixels: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    class_names: list[str] | None = None
    index: torch.Tensor | None = None


@dataclass(frozen=True)
class LensData:
    """Access to a run's data for lenses: `eval_batch` (the first `lens_images` test images, the same for every
    round and reference), `split`/`batches` (train, val, test with their extras), `pool(n)` (a seeded sample)."""

    bundle: DataBundle
    device: str
    eval_size: int

    @cached_property
    def eval_batch(self) -> LensBatch:
        return self.take("test", torch.arange(min(self.eval_size, len(self.bundle.test))))

    @property
    def concept_names(self) -> list[str] | None:
        return self.bundle.concept_names

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise PrunelensError(f"unknown split {name!r}: expected train, val or test")
        return getattr(self.bundle, name)

    def labels(self, name: str) -> torch.Tensor:
        """All labels of split `name` (on the CPU)."""
        return split_labels(self.split(name)).cpu()

    def take(self, name: str, index: torch.Tensor) -> LensBatch:
        """The rows `index` of split `name` as a `LensBatch`."""
        split = self.split(name)
        if isinstance(split, DatasetSplit):
            return self._from_dataset(split, index)
        part = split.subset(index.cpu()).to(self.device)
        loader = Loader(part, max(len(part), 1), mean=self.bundle.mean, std=self.bundle.std, device=self.device)
        pixels = part.images.float() / 255 if part.images.dtype == torch.uint8 else part.images.float()
        return LensBatch(loader.normalise(part.images), part.labels, pixels, dict(part.extras), self.bundle.class_names, index)

    def batches(self, name: str, batch_size: int) -> Iterator[LensBatch]:
        """The whole split `name` in order, `batch_size` images at a time."""
        n = len(self.split(name))
        for start in range(0, n, batch_size):
            yield self.take(name, torch.arange(start, min(start + batch_size, n)))

    def pool_index(self, n: int, name: str = "test", seed: int = 0) -> torch.Tensor:
        """Sorted rows of `n` images of split `name` drawn without replacement from the (seed, "pool") stream
        (all if n ≥ size)."""
        size = len(self.split(name))
        return torch.randperm(size, generator=generator(seed, "pool", size))[: min(n, size)].sort().values

    def pool(self, n: int, name: str = "test", seed: int = 0) -> LensBatch:
        """The images of `pool_index(n, name, seed)`."""
        return self.take(name, self.pool_index(n, name, seed))

    def _from_dataset(self, split: DatasetSplit, index: torch.Tensor) -> LensBatch:
        images, labels = zip(*(split.dataset[int(i)] for i in index))
        x = torch.stack(images).to(self.device)
        std = torch.tensor(self.bundle.std, device=self.device).view(1, -1, 1, 1)
        pixels = x * std + torch.tensor(self.bundle.mean, device=self.device).view(1, -1, 1, 1)
        extras = {k: v[index.cpu()].to(self.device) for k, v in split.extras.items()}
        return LensBatch(x, torch.tensor(labels, device=self.device), pixels.clamp(0, 1), extras, self.bundle.class_names, index)
