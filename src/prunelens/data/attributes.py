"""Class-level attribute tables, the concepts of `cub` and of a `class_table` concept source: per-class
attribute frequencies, a CSV table of them, and their binarisation (the concept denoising of Koh et al., 2020)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from prunelens.errors import PrunelensError


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
