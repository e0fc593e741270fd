"""Datasets: the registry, its containers, and `build_dataset` (importing the loaders registers them)."""

from __future__ import annotations

from dataclasses import replace

from prunelens.config import DatasetConfig
from prunelens.data import attributes, csv_pixels, cub, derm7pt, folder, idx, medmnist, shapes  # noqa: F401  (register their datasets)
from prunelens.data.base import DATASETS, DataBundle, DatasetSplit, TensorSplit
from prunelens.data.common import limit

__all__ = ["DATASETS", "DataBundle", "DatasetSplit", "TensorSplit", "build_dataset"]


def build_dataset(cfg: DatasetConfig) -> DataBundle:
    """The train/val/test bundle of `cfg.name`, its randomness (synthetic images, val split) seeded by `cfg.seed`;
    `cfg.max_train` keeps a stratified, seeded subset of train (val and test are unaffected)."""
    bundle = DATASETS.get(cfg.name)(cfg, cfg.seed)
    if cfg.max_train is not None:
        bundle = replace(bundle, train=limit(bundle.train, cfg.max_train, cfg.seed))
    return bundle
