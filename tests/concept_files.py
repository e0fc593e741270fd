"""Helpers of the concept-dataset tests: tiny identifiable images and reading them back."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from torch.utils.data import Subset

from prunelens.config import DatasetConfig
from prunelens.data import DatasetSplit, TensorSplit, build_dataset


def build(name: str, root: Path, **options):
    return build_dataset(DatasetConfig(name=name, root=root, image_size=16, options=options))


def save_image(path: Path, value: int, size: tuple[int, int] = (16, 16)) -> None:
    """A solid RGB image whose red channel, `value`, identifies it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 60)).save(path)


def image_values(split: TensorSplit) -> list[int]:
    """The identifying value of each in-memory image, to the nearest 10 (JPEG shifts it slightly)."""
    return [int(round(v / 10) * 10) for v in split.images[:, 0].float().mean((1, 2)).tolist()]


def sample_paths(split: DatasetSplit) -> list[str]:
    dataset = split.dataset
    if isinstance(dataset, Subset):
        return [dataset.dataset.samples[i][0] for i in dataset.indices]
    return [path for path, _ in dataset.samples]
