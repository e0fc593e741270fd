"""`ham10000` and `derm7pt`: dermoscopic images of skin lesions, with the 8 seven-point-checklist concepts that
PCBM (Yuksekgonul et al., 2023) takes from Derm7pt's annotations (Kawahara et al., 2019)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from prunelens.config import DatasetConfig
from prunelens.data.base import DATASETS, DataBundle
from prunelens.data.common import check_fraction, check_options, option_error, require_root, stratified_indices
from prunelens.data.concept_csv import apply_missing_policy, binary_concepts, check_missing_policy, read_concepts_csv, read_csv
from prunelens.data.folder import IMAGE_OPTIONS, ImageList, image_bundle
from prunelens.errors import PrunelensError

CONCEPT_NAMES = [
    "BWV", "RegularDG", "IrregularDG", "RegressionStructures", "IrregularStreaks", "RegularStreaks",
    "AtypicalPigmentNetwork", "TypicalPigmentNetwork",
]  # fmt: skip
DERM7PT_VALUES: dict[str, tuple[str, ...]] = {
    "blue_whitish_veil": ("absent", "present"),
    "dots_and_globules": ("absent", "regular", "irregular"),
    "regression_structures": ("absent", "blue areas", "white areas", "combinations", "present"),
    "streaks": ("absent", "regular", "irregular"),
    "pigment_network": ("absent", "typical", "atypical"),
}
"""The Derm7pt columns the concepts come from, and the values each may take (`present`: the grouped release)."""
DX_CODES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
MALIGNANT = ("akiec", "bcc", "mel")
HAM_IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "images")
_HAM_OPTIONS: dict[str, Any] = {
    "task": "binary", "concepts_csv": "", "missing_concepts": "error", "test_fraction": 0.2, **IMAGE_OPTIONS,
}  # fmt: skip
_DERM7PT_FILES = ("meta/meta.csv", "meta/train_indexes.csv", "meta/valid_indexes.csv", "meta/test_indexes.csv")


def derm7pt_concepts(frame: pd.DataFrame, path: Path) -> torch.Tensor:
    """(N, 8) bool `CONCEPT_NAMES` from Derm7pt's categorical columns (`DERM7PT_VALUES`) of `frame`, read from
    `path`: BWV = blue-whitish veil present; Regular/IrregularDG = dots and globules regular/irregular;
    RegressionStructures = any regression structure; Irregular/RegularStreaks; Atypical/TypicalPigmentNetwork."""
    values = {}
    for column, allowed in DERM7PT_VALUES.items():
        if column not in frame.columns:
            raise PrunelensError(f"{path}: no {column!r} column")
        values[column] = frame[column].astype(str).str.strip().str.lower()
        bad = ~values[column].isin(allowed).to_numpy()
        if bad.any():
            row = int(bad.argmax())
            raise PrunelensError(
                f"{path}: data row {row + 1}: {column} {frame[column].iloc[row]!r} is not one of {', '.join(allowed)}"
            )
    concepts = (
        values["blue_whitish_veil"] == "present",
        values["dots_and_globules"] == "regular",
        values["dots_and_globules"] == "irregular",
        values["regression_structures"] != "absent",
        values["streaks"] == "irregular",
        values["streaks"] == "regular",
        values["pigment_network"] == "atypical",
        values["pigment_network"] == "typical",
    )
    return torch.from_numpy(np.stack([concept.to_numpy(bool) for concept in concepts], axis=1))


@DATASETS.register("ham10000")
def ham10000(cfg: DatasetConfig, seed: int) -> DataBundle:
    """HAM10000 at `cfg.root`: `HAM10000_metadata.csv` and `<image_id>.jpg` in `HAM_IMAGE_DIRS`.

    `task: binary`: benign (0) or malignant (1: mel, bcc, akiec); `task: dx`: the 7 diagnoses (`DX_CODES`).
    Test (`test_fraction`) and then val (`dataset.val_fraction`) are whole lesions, stratified by label, so no
    lesion's images straddle two splits. `concepts_csv` (a path as given, like `dataset.root`): per-image
    concepts, an `image_id` column and either the 0/1 columns `CONCEPT_NAMES` or Derm7pt's categorical
    columns (`concept_csv.read_concepts_csv`, `binary_concepts`: 0/1 or true/false); an image without a row is
    an error unless `missing_concepts: drop`."""
    root = require_root(cfg, hint="the directory with HAM10000_metadata.csv and the image folders")
    options = check_options(cfg, _HAM_OPTIONS)
    if options["task"] not in ("binary", "dx"):
        raise option_error("task", f"{options['task']!r} is not 'binary' or 'dx'")
    policy = check_missing_policy(options)
    check_fraction(options, "test_fraction")
    path = root / "HAM10000_metadata.csv"
    if not path.is_file():
        raise PrunelensError(f"{root}: not a HAM10000 directory (missing HAM10000_metadata.csv)")
    meta = read_csv(path, ("lesion_id", "image_id", "dx"))
    dx = meta["dx"].str.strip().str.lower()
    _check_values(dx, DX_CODES, path, "dx")
    if options["task"] == "binary":
        labels, class_names = dx.isin(MALIGNANT).to_numpy(np.int64), ["benign", "malignant"]
    else:
        labels, class_names = dx.map({code: k for k, code in enumerate(DX_CODES)}).to_numpy(np.int64), list(DX_CODES)
    image_ids = meta["image_id"].str.strip().to_numpy()
    extras, notes = {}, []
    if options["concepts_csv"]:
        csv = Path(options["concepts_csv"])
        concepts, found = _ham_concepts(csv, image_ids)
        notes = apply_missing_policy(csv, image_ids, found, policy, "ham10000", path)
        meta, image_ids, labels = meta[found], image_ids[found], labels[found]
        extras = {"concepts": concepts[torch.from_numpy(found)]}
    lesions = meta["lesion_id"].str.strip().to_numpy()
    lesions = np.where(lesions == "", image_ids, lesions)  # an image without a lesion id is its own lesion
    rest, test = _split_by_lesion(np.arange(len(labels)), lesions, labels, options["test_fraction"], seed)
    train, val = _split_by_lesion(rest, lesions, labels, cfg.val_fraction, seed)
    files = _ham_files(root, image_ids)
    lists = {
        part: ImageList(
            root, [(files[r], int(labels[r])) for r in rows], {k: v[torch.from_numpy(rows)] for k, v in extras.items()}
        )
        for part, rows in (("train", train), ("val", val), ("test", test))
    }
    concept_names = CONCEPT_NAMES if extras else None
    bundle = image_bundle(cfg, seed, lists, options, class_names=class_names, concept_names=concept_names)
    bundle.notes[:0] = notes
    return bundle


@DATASETS.register("derm7pt")
def derm7pt(cfg: DatasetConfig, seed: int) -> DataBundle:
    """The Derm7pt release at `cfg.root`: `meta/meta.csv` (the `derm` column: dermoscopic image paths under
    `images/`), and its train/valid/test splits as `meta/*_indexes.csv` (an `indexes` column of meta.csv rows).

    `task: melanoma`: any melanoma diagnosis (1) or not (0); `task: diagnosis`: every distinct diagnosis, sorted.
    Concepts: `derm7pt_concepts` of each case."""
    root = require_root(cfg, hint="the Derm7pt release directory (meta/, images/)")
    options = check_options(cfg, {"task": "melanoma", **IMAGE_OPTIONS})
    if options["task"] not in ("melanoma", "diagnosis"):
        raise option_error("task", f"{options['task']!r} is not 'melanoma' or 'diagnosis'")
    missing = [name for name in _DERM7PT_FILES if not (root / name).is_file()]
    if missing:
        raise PrunelensError(f"{root}: not a Derm7pt directory (missing {', '.join(missing)})")
    path = root / _DERM7PT_FILES[0]
    meta = read_csv(path, ("diagnosis", "derm", *DERM7PT_VALUES))
    diagnosis = meta["diagnosis"].str.strip().str.lower()
    if options["task"] == "melanoma":
        labels, class_names = diagnosis.str.contains("melanoma", regex=False).to_numpy(np.int64), ["not melanoma", "melanoma"]
    else:
        class_names = sorted(set(diagnosis))
        labels = diagnosis.map({name: k for k, name in enumerate(class_names)}).to_numpy(np.int64)
    concepts = derm7pt_concepts(meta, path)
    images = root / "images"
    lists = {}
    for part, name in zip(("train", "val", "test"), _DERM7PT_FILES[1:]):
        rows = _indexes(root / name, len(meta))
        samples = [(str(images / meta["derm"].iloc[r].strip()), int(labels[r])) for r in rows]
        lists[part] = ImageList(images, samples, {"concepts": concepts[torch.from_numpy(rows)]})
    return image_bundle(cfg, seed, lists, options, class_names=class_names, concept_names=CONCEPT_NAMES)


def _check_values(values: pd.Series, allowed: tuple[str, ...], path: Path, column: str) -> None:
    bad = ~values.isin(allowed).to_numpy()
    if bad.any():
        row = int(bad.argmax())
        raise PrunelensError(f"{path}: data row {row + 1}: {column} {values.iloc[row]!r} is not one of {', '.join(allowed)}")


def _ham_concepts(path: Path, image_ids: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """(N, 8) bool concepts of `image_ids` from the CSV `path`, and (N,) bool: whether the image has a row."""
    frame, ids, _ = read_concepts_csv(path)
    if all(name in frame.columns for name in CONCEPT_NAMES):
        table = binary_concepts(frame, CONCEPT_NAMES, path)
    elif all(column in frame.columns for column in DERM7PT_VALUES):
        table = derm7pt_concepts(frame, path)
    else:
        raise PrunelensError(
            f"{path}: expected the 0/1 columns {', '.join(CONCEPT_NAMES)} or Derm7pt's columns {', '.join(DERM7PT_VALUES)}"
        )
    row = {image_id: i for i, image_id in enumerate(ids)}
    positions = np.array([row.get(image_id, -1) for image_id in image_ids])
    return table[torch.from_numpy(positions.clip(min=0))], positions >= 0


def _split_by_lesion(
    rows: np.ndarray, lesions: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) parts of `rows`: a seeded `fraction` of their lesions held out, stratified by each
    lesion's label (that of its first image)."""
    unique, first = np.unique(lesions[rows], return_index=True)
    _, held = stratified_indices(labels[rows][first], fraction, seed)
    is_held = np.isin(lesions[rows], unique[held])
    return rows[~is_held], rows[is_held]


def _ham_files(root: Path, image_ids: np.ndarray) -> list[str]:
    """The path of each `<image_id>.jpg`, from the first of `HAM_IMAGE_DIRS` that has it; a missing file gets a
    path in the first directory present, and is skipped as unreadable."""
    directories = [root / name for name in HAM_IMAGE_DIRS if (root / name).is_dir()]
    if not directories:
        raise PrunelensError(f"{root}: no image directory (expected {', '.join(name + '/' for name in HAM_IMAGE_DIRS)})")
    found: dict[str, str] = {}
    for directory in reversed(directories):
        found.update((entry.name, entry.path) for entry in os.scandir(directory))
    return [found.get(f"{image_id}.jpg", str(directories[0] / f"{image_id}.jpg")) for image_id in image_ids]


def _indexes(path: Path, count: int) -> np.ndarray:
    """The `indexes` column of a Derm7pt split file: rows 0..count-1 of meta.csv."""
    values = pd.to_numeric(read_csv(path, ("indexes",))["indexes"].str.strip(), errors="coerce").to_numpy()
    bad = ~np.isin(values, np.arange(count))
    if bad.any():
        row = int(bad.argmax())
        raise PrunelensError(f"{path}: data row {row + 1}: {values[row]} is not a row of meta.csv (0..{count - 1})")
    return values.astype(np.int64)
