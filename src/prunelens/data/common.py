"""Helpers shared by the dataset loaders: options, paths, stratified splits, resizing, statistics, bundling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch.utils.data import Subset

from prunelens.config import DatasetConfig
from prunelens.data.base import DataBundle, DatasetSplit, Split, TensorSplit
from prunelens.errors import PrunelensError

_CHUNK_PIXELS = 1 << 24
"""Elements processed at once by the chunked image operations (bounds temporary float memory)."""
MAX_CLASSES = 100_000
"""Labels are class indices below this: a larger one is a corrupted file (it would size the classifier)."""


def check_labels(labels: np.ndarray, where: str) -> None:
    """Labels must be class indices in 0..MAX_CLASSES-1; else a one-line error starting with `where`."""
    if len(labels) and (labels.min() < 0 or labels.max() >= MAX_CLASSES):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise PrunelensError(f"{where}: label {bad} is not a class index in 0..{MAX_CLASSES - 1}")


def check_options(cfg: DatasetConfig, allowed: dict[str, Any]) -> dict[str, Any]:
    """`cfg.options` merged over the defaults `allowed`; unknown keys or values of the wrong type raise.

    A value must have the type of its default (an int is accepted for a float); options whose default is None
    are left to the dataset to check.
    """
    for key, value in cfg.options.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise option_error(key, f"unknown option for dataset {cfg.name!r} (known: {known})")
        default = allowed[key]
        if default is None:
            continue
        expected = (int, float) if type(default) is float else type(default)
        if isinstance(value, bool) is not isinstance(default, bool) or not isinstance(value, expected):
            raise option_error(key, f"expected {type(default).__name__}, got {value!r}")
    return {**allowed, **cfg.options}


def option_error(key: str, message: str) -> PrunelensError:
    """The error for a bad `dataset.options.<key>`."""
    return PrunelensError(f"dataset.options.{key}: {message}")


def check_fraction(options: dict[str, Any], key: str) -> float:
    """`options[key]` checked to lie strictly between 0 and 1."""
    value = options[key]
    if not 0.0 < value < 1.0:
        raise option_error(key, f"{value!r} is not in (0, 1)")
    return float(value)


def require_root(cfg: DatasetConfig, default: Path | None = None, hint: str = "") -> Path:
    """`cfg.root` (or `default`), which must exist; the error names the path and, if given, a `hint`."""
    root = cfg.root if cfg.root is not None else default
    if root is None:
        raise PrunelensError(f"dataset.root: required for dataset {cfg.name!r}{'; ' + hint if hint else ''}")
    if not root.exists():
        raise PrunelensError(f"{root}: not found (dataset {cfg.name!r}){'; ' + hint if hint else ''}")
    return root


def split_labels(split: Split) -> torch.Tensor:
    """The labels of a split; a `DatasetSplit` needs a dataset with `targets` (e.g. ImageFolder) or a Subset of one."""
    if isinstance(split, TensorSplit):
        return split.labels
    return _dataset_targets(split.dataset)


def _dataset_targets(dataset: Any) -> torch.Tensor:
    if isinstance(dataset, Subset):
        return _dataset_targets(dataset.dataset)[torch.as_tensor(dataset.indices)]
    if not hasattr(dataset, "targets"):
        raise PrunelensError(f"{type(dataset).__name__}: labels unknown (no `targets`), cannot split it")
    return torch.as_tensor(dataset.targets).long()


def subset(split: Split, index: np.ndarray) -> Split:
    """The rows `index` of a split, of the same kind."""
    if isinstance(split, TensorSplit):
        return split.subset(torch.as_tensor(index))
    extras = {k: v[torch.as_tensor(index)] for k, v in split.extras.items()}
    return DatasetSplit(Subset(split.dataset, index.tolist()), split.num_workers, extras)


def stratified_indices(labels: np.ndarray, held: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled (kept, held) row indices, `held` a fraction or a count, stratified by label when every class allows it."""
    index = np.arange(len(labels))
    state = seed % 2**32
    try:
        return tuple(train_test_split(index, test_size=held, stratify=labels, random_state=state))  # type: ignore[return-value]
    except ValueError:  # a class with a single image, or fewer held images than classes
        pass
    try:
        return tuple(train_test_split(index, test_size=held, random_state=state))  # type: ignore[return-value]
    except ValueError as err:
        raise PrunelensError(f"cannot split {len(labels)} images ({err})") from None


def split_off(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(rest, held): a stratified, seeded `fraction` of `split` held out (e.g. val carved from train)."""
    kept, held = stratified_indices(split_labels(split).numpy(), fraction, seed)
    return subset(split, kept), subset(split, held)


def limit(split: Split, n: int, seed: int) -> Split:
    """A stratified, seeded subset of `n` rows (the whole split if it is not larger)."""
    if n >= len(split):
        return split
    return subset(split, stratified_indices(split_labels(split).numpy(), n, seed)[1])


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) grey or (N, H, W, C) images as an (N, C, H, W) tensor of the same dtype."""
    array = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(array))


def _chunks(images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    per_image = max(1, images[0].numel())
    return images.split(max(1, _CHUNK_PIXELS // per_image))


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images resized to size × size (antialiased bilinear); uint8 stays uint8 (rounded)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = []
    for chunk in _chunks(images):
        resized = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(resized.round().clamp(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else resized)
    return torch.cat(out)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the 0–1 scale (uint8 images are divided by 255)."""
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in _chunks(images):
        x = chunk.double() / scale
        total += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean**2).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def make_bundle(
    cfg: DatasetConfig,
    seed: int,
    train: Split,
    test: Split,
    val: Split | None = None,
    *,
    class_names: list[str] | None = None,
    concept_names: list[str] | None = None,
    class_concepts: torch.Tensor | None = None,
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    image_size: tuple[int, int] | None = None,
    in_channels: int | None = None,
) -> DataBundle:
    """The `DataBundle` of `cfg.name`: in-memory splits resized to `cfg.image_size`, val carved from train
    (`cfg.val_fraction`, stratified) when absent, mean/std from train unless `stats` is given.

    `image_size`/`in_channels` are needed only when train is a `DatasetSplit`.
    """
    train, test = _resized(train, cfg.image_size), _resized(test, cfg.image_size)
    if val is None:
        train, val = split_off(train, cfg.val_fraction, seed)
    val = _resized(val, cfg.image_size)
    splits = {"train": train, "val": val, "test": test}
    if isinstance(train, TensorSplit):
        in_channels, height, width = train.images.shape[1:]
        image_size = (height, width)
        stats = stats or channel_stats(train.images)
    if stats is None or image_size is None or in_channels is None:
        raise ValueError("stats, image_size and in_channels are required when train is a DatasetSplit")
    empty = [part for part, split in splits.items() if len(split) == 0]
    if empty:
        raise PrunelensError(f"dataset {cfg.name!r}: the {empty[0]} split is empty")
    num_classes = len(class_names) if class_names else 1 + max(int(split_labels(s).max()) for s in splits.values())
    for part, split in splits.items():
        _check_split(cfg.name, part, split, num_classes, in_channels, image_size)
    return DataBundle(
        name=cfg.name, train=train, val=val, test=test, num_classes=num_classes, in_channels=in_channels,
        image_size=image_size, mean=stats[0], std=stats[1], class_names=class_names, concept_names=concept_names,
        class_concepts=class_concepts,
    )  # fmt: skip


def _resized(split: Split, size: int | None) -> Split:
    if size is None or not isinstance(split, TensorSplit):
        return split
    return TensorSplit(resize_images(split.images, size), split.labels, split.extras)


def _check_split(name: str, part: str, split: Split, num_classes: int, channels: int, size: tuple[int, int]) -> None:
    labels = split_labels(split)
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise PrunelensError(
            f"dataset {name!r}: {part} labels must lie in 0..{num_classes - 1}, found {int(labels.min())}..{int(labels.max())}"
        )
    if isinstance(split, TensorSplit) and tuple(split.images.shape[1:]) != (channels, *size):
        raise PrunelensError(
            f"dataset {name!r}: {part} images are {tuple(split.images.shape[1:])}, train images are {(channels, *size)}"
        )
