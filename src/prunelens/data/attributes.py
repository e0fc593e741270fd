"""Concept-labelled image data shared by `cub`, `ham10000` and `derm7pt`: class-level attribute tables (the
concept denoising of Koh et al., 2020) and lists of image files with per-image extras such as `concepts`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision import transforms

from prunelens.config import DatasetConfig
from prunelens.data.base import DataBundle, DatasetSplit, Split, TensorSplit
from prunelens.data.common import make_bundle
from prunelens.data.folder import IMAGENET_STATS, _header, _keep_readable, _load_in_memory, _stats, load_rgb
from prunelens.errors import PrunelensError

IMAGE_OPTIONS: dict[str, Any] = {"in_memory_max": 20000, "mean": None, "std": None, "num_workers": 0}
"""The options of every image-list dataset, as for `imagefolder`."""
DEFAULT_SIZE = 224
"""Images of these datasets differ in size: they are resized to `dataset.image_size`, else to this."""


def class_frequencies(
    concepts: torch.Tensor, labels: torch.Tensor, num_classes: int, known: torch.Tensor | None = None
) -> torch.Tensor:
    """(C, A) float: the fraction of each class's images with each attribute, among the images whose label of
    that attribute is `known` ((N, A) bool, default all); 0 where a class has no known label."""
    known = torch.ones_like(concepts) if known is None else known
    labels = labels.long()
    present = torch.zeros(num_classes, concepts.shape[1], dtype=torch.float64).index_add_(0, labels, (concepts & known).double())
    counted = torch.zeros_like(present).index_add_(0, labels, known.double())
    return (present / counted.clamp_min(1)).float()


def binarise_class_table(
    values: torch.Tensor, names: list[str], threshold: float, min_classes: int
) -> tuple[torch.Tensor, list[str]]:
    """(C, A') bool table and the kept names: an attribute is present for a class where its value exceeds
    `threshold`, and kept only if present in at least `min_classes` classes (Koh et al.: 0.5 and 10 on CUB)."""
    table = values > threshold
    keep = table.sum(0) >= min_classes
    return table[:, keep], [name for name, kept in zip(names, keep.tolist()) if kept]


def read_class_table(path: Path, class_names: list[str]) -> tuple[torch.Tensor, list[str]]:
    """(C, A) float values in `class_names` order, and the A attribute names, from a CSV with a `class` column
    (one row per class, matched by name) and one numeric column per attribute: fractions 0–1, or percentages
    0–100 (a value above 1 anywhere means the whole table is in percent; it is divided by 100)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as err:
        raise PrunelensError(f"{path}: not a readable CSV file ({err})") from None
    if "class" not in frame.columns:
        raise PrunelensError(f"{path}: no 'class' column (columns: {', '.join(map(str, frame.columns))})")
    names = [str(column) for column in frame.columns if column != "class"]
    if not names:
        raise PrunelensError(f"{path}: no attribute columns besides 'class'")
    classes = frame.pop("class").str.strip()
    repeated = classes[classes.duplicated()]
    if len(repeated):
        raise PrunelensError(f"{path}: class {repeated.iloc[0]!r} has more than one row")
    known, listed = set(class_names), set(classes)
    unknown = [c for c in classes if c not in known]
    if unknown:
        raise PrunelensError(f"{path}: unknown class {unknown[0]!r} (not one of the dataset's {len(class_names)} classes)")
    missing = [c for c in class_names if c not in listed]
    if missing:
        raise PrunelensError(f"{path}: no row for class {missing[0]!r} ({len(missing)} class(es) missing)")
    frame = frame.set_axis(classes).loc[class_names]
    values = frame.apply(lambda column: pd.to_numeric(column.str.strip(), errors="coerce")).to_numpy(np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values > 100)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        cell = f"class {class_names[row]!r}, column {names[column]!r}: {frame.iat[row, column]!r}"
        raise PrunelensError(f"{path}: {cell} is not a number in 0–1 or 0–100")
    if (values > 1).any():
        values = values / 100
    return torch.tensor(values, dtype=torch.float32), names


class ImageList(Dataset):
    """Labelled image files, shaped like an ImageFolder (`root`, `samples`, `targets`, `transform`) so the
    readers of `folder.py` apply, with `extras` aligned with `samples` as given (each file listed once).

    Images load as RGB. Readers drop unreadable files from `samples`; `kept_extras()` follows them."""

    def __init__(self, root: Path, samples: list[tuple[str, int]], extras: dict[str, torch.Tensor]) -> None:
        self.root = str(root)
        self.samples = self.imgs = samples
        self.targets = [target for _, target in samples]
        self.transform: Callable[[Any], torch.Tensor] | None = None
        self.extras = extras
        self._rows: dict[str, int] = {}
        for row, (path, _) in enumerate(samples):
            if path in self._rows:
                raise PrunelensError(f"{path}: listed twice")
            self._rows[path] = row

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        image = load_rgb(path)
        return (self.transform(image) if self.transform else image), target

    def kept_extras(self) -> dict[str, torch.Tensor]:
        """The extras of the files still in `samples`."""
        rows = torch.tensor([self._rows[path] for path, _ in self.samples], dtype=torch.long)
        return {key: value[rows] for key, value in self.extras.items()}


def image_bundle(
    cfg: DatasetConfig,
    seed: int,
    lists: dict[str, ImageList],
    options: dict[str, Any],
    *,
    class_names: list[str],
    concept_names: list[str] | None = None,
    class_concepts: torch.Tensor | None = None,
) -> DataBundle:
    """The bundle of `lists` (train, test and optionally val, else carved from train) with their extras.

    With at most `in_memory_max` images all load as uint8 at `cfg.image_size` (default 224; Resize +
    CenterCrop), mean/std from train; else they stream with Normalize (ImageNet mean/std). The `mean`/`std`
    options override either. Unreadable files are skipped, with a note per split."""
    size = cfg.image_size or DEFAULT_SIZE
    splits: dict[str, Split] = {}
    if sum(len(images) for images in lists.values()) <= options["in_memory_max"]:
        loaded, skipped = _load_in_memory(lists, size)  # type: ignore[arg-type]
        for part, split in loaded.items():
            splits[part] = TensorSplit(split.images, split.labels, lists[part].kept_extras())
        stats = _stats(options, loaded["train"].images.shape[1])
        streamed: dict[str, Any] = {}
    else:  # validated before make_bundle carves val from train by index
        skipped = {part: _keep_readable(images, _header)[1] for part, images in lists.items()}  # type: ignore[arg-type]
        stats = _stats(options, 3) or IMAGENET_STATS
        transform = transforms.Compose(
            [transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(*stats)]
        )
        for part, images in lists.items():
            images.transform = transform
            splits[part] = DatasetSplit(images, options["num_workers"], images.kept_extras())
        streamed = {"image_size": (size, size), "in_channels": 3}
    bundle = make_bundle(
        cfg, seed, splits["train"], splits["test"], splits.get("val"), class_names=class_names,
        concept_names=concept_names, class_concepts=class_concepts, stats=stats, **streamed,
    )  # fmt: skip
    bundle.notes.extend(
        f"{cfg.name}: skipped {len(files)} unreadable image file(s) in {part} (first: {files[0]})"
        for part, files in skipped.items()
        if files
    )
    return bundle
