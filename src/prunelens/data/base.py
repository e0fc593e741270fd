"""Containers every dataset returns: splits held in memory as tensors, or a torch Dataset for big data."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from prunelens.registry import Registry


@dataclass
class TensorSplit:
    """A split that fits in memory: `images` (N, C, H, W) uint8 (0–255) or float, `labels` (N,) int64.

    `extras` carries per-image side information aligned with `labels`, e.g. `concepts` (N, K) bool and
    `masks` (N, H, W) bool for the synthetic `shapes` data.
    """

    images: torch.Tensor
    labels: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> TensorSplit:
        """The rows `index` of this split (images, labels and extras)."""
        return TensorSplit(self.images[index], self.labels[index], {k: v[index] for k, v in self.extras.items()})

    def to(self, device: torch.device | str) -> TensorSplit:
        return TensorSplit(
            self.images.to(device), self.labels.to(device), {k: v.to(device) for k, v in self.extras.items()}
        )


@dataclass
class DatasetSplit:
    """A split too big for memory: a torch `Dataset` yielding (float image tensor, int label), already
    transformed and normalised; batched by a `DataLoader`. `extras` are per-image tensors aligned with the
    dataset's rows (e.g. `concepts`), small enough for memory even when the images are not."""

    dataset: Dataset
    num_workers: int = 0
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


Split = TensorSplit | DatasetSplit


@dataclass
class DataBundle:
    """Train/val/test splits plus what models and loaders need to know about them.

    For `TensorSplit`s, `mean`/`std` (per channel, on the 0–1 scale) are applied per batch on the device;
    `DatasetSplit`s normalise in their own transforms.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] | None = None
    concept_names: list[str] | None = None
    class_concepts: torch.Tensor | None = None
    """(num_classes, K) bool: the concepts that define or describe each class, where the data knows them
    (`shapes`: the class definitions; class-level attribute tables) — the ground truth of concept correctness"""
    notes: list[str] = field(default_factory=list)
    """one-line remarks for the user (e.g. skipped unreadable files), printed by the experiment"""


DATASETS: Registry = Registry("dataset")
"""name → `fn(cfg: DatasetConfig, seed: int) -> DataBundle`."""
