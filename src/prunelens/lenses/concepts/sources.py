"""Where each image's binary concept vector comes from (docs/concepts_data.md, docs/methods.md §15.1).

Sources (the `concepts` option of the pcbm lens):
- `dataset`: the data's own labels (the `concepts` extra: `shapes`, `cub`, `ham10000`/`derm7pt` with concept
  files); for `shapes` also one `tint:<class>` concept per class (the background tint, the spurious cue);
- `morphometrics`: Morpho-MNIST-style measures of grey digits, binarised at quantiles of the train subset;
- `fashion`: our per-class attribute table of Fashion-MNIST;
- `class_table`: a CSV of per-class attribute values (`concepts_path`), present above `class_threshold`,
  attributes present in fewer than `min_classes` classes dropped;
- `auto` (default): `dataset` when the data has concept labels, else `fashion` for Fashion-MNIST's classes,
  else `morphometrics` for single-channel images.
A class-level source also gives each class's concepts (`class_concepts`), the ground truth of correctness.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from prunelens.data.attributes import binarise_class_table, read_class_table
from prunelens.data.fashion_attributes import FASHION_ATTRIBUTES, fashion_class_concepts
from prunelens.data.idx import FASHION_MNIST_CLASSES
from prunelens.data.morpho import MORPHO_CONCEPTS, morpho_concepts
from prunelens.errors import PrunelensError
from prunelens.lenses.data import LensBatch, LensData

SOURCES = ("auto", "dataset", "morphometrics", "fashion", "class_table")
CHUNK = 1024


@dataclass(frozen=True)
class ConceptSet:
    """Concept `names`, (rows, K) bool labels of the train and val subsets, and (classes, K) `class_concepts`
    (None when the source does not know which concepts belong to a class)."""

    names: list[str]
    train: Tensor
    val: Tensor
    class_concepts: Tensor | None


def resolve(source: str, batch: LensBatch) -> str:
    """The concrete source for `auto`; a one-line error when the data cannot give the requested one."""
    has_labels = "concepts" in batch.extras
    if source == "auto":
        if has_labels:
            return "dataset"
        if batch.class_names == FASHION_MNIST_CLASSES:
            return "fashion"
        if batch.images.shape[1] == 1:
            return "morphometrics"
        raise PrunelensError("pcbm option concepts: the data has no concept labels; set concepts: class_table with concepts_path")
    if source == "dataset" and not has_labels:
        raise PrunelensError("pcbm option concepts: 'dataset' but the data has no concept labels")
    if source == "morphometrics" and batch.images.shape[1] != 1:
        raise PrunelensError(f"pcbm option concepts: morphometrics need single-channel images, got {batch.images.shape[1]} channels")
    if source in ("fashion", "class_table") and not batch.class_names:
        raise PrunelensError(f"pcbm option concepts: {source!r} needs class names, the data has none")
    if source == "fashion":
        fashion_class_concepts(batch.class_names)
    return source


def _rows(data: LensData, split: str, index: Tensor) -> list[LensBatch]:
    return [data.take(split, index[i : i + CHUNK]) for i in range(0, len(index), CHUNK)]


def _labels(data: LensData, split: str, index: Tensor) -> Tensor:
    return torch.cat([b.labels.cpu() for b in _rows(data, split, index)])


def _with_tint(data: LensData, split: str, index: Tensor, concepts: Tensor) -> Tensor:
    tint = torch.cat([b.extras["tint"].cpu() for b in _rows(data, split, index)])
    return torch.cat([concepts, tint[:, None] == torch.arange(data.bundle.num_classes)], dim=1)


def concept_set(
    source: str, data: LensData, train: Tensor, val: Tensor, *, path: Path | None = None,
    class_threshold: float = 0.5, min_classes: int = 1, tint: bool = True,
) -> ConceptSet:  # fmt: skip
    """The concept labels of the rows `train` of the train split and `val` of the val split."""
    source = resolve(source, data.take("train", train[:1]))
    bundle = data.bundle
    if source == "dataset":
        names = list(bundle.concept_names or [])
        labels = [torch.cat([b.extras["concepts"].cpu().bool() for b in _rows(data, s, i)]) for s, i in (("train", train), ("val", val))]
        truth = bundle.class_concepts
        if tint and "tint" in data.take("train", train[:1]).extras:
            labels = [_with_tint(data, s, i, lab) for (s, i), lab in zip((("train", train), ("val", val)), labels)]
            classes = bundle.class_names or [str(c) for c in range(bundle.num_classes)]
            names += [f"tint:{c}" for c in classes]
            if truth is not None:
                truth = torch.cat([truth, torch.zeros(len(truth), bundle.num_classes, dtype=torch.bool)], dim=1)
        return ConceptSet(names, labels[0], labels[1], truth)
    if source == "morphometrics":
        pixels = [torch.cat([(b.pixels.cpu() * 255).round().to(torch.uint8) for b in _rows(data, s, i)]) for s, i in (("train", train), ("val", val))]
        names, (t, v) = morpho_concepts(pixels[0], pixels[1])
        return ConceptSet(list(names or MORPHO_CONCEPTS), torch.as_tensor(t).bool(), torch.as_tensor(v).bool(), None)
    if source == "fashion":
        table, names = fashion_class_concepts(bundle.class_names), list(FASHION_ATTRIBUTES)
    else:
        if path is None:
            raise PrunelensError("pcbm option concepts_path: required for concepts: class_table")
        values, attributes = read_class_table(path, bundle.class_names)
        table, names = binarise_class_table(values, attributes, class_threshold, min_classes)
    table = torch.as_tensor(table).bool()
    return ConceptSet(list(names), table[_labels(data, "train", train)], table[_labels(data, "val", val)], table)
