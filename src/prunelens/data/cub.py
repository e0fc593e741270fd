"""`cub`: Caltech-UCSD Birds-200-2011 (200 bird species) with its 312 binary attributes as concepts, denoised to
class level as in Koh et al. (2020), or per image."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelens.config import DatasetConfig
from prunelens.data.attributes import binarise_class_table, class_frequencies
from prunelens.data.base import DATASETS, DataBundle
from prunelens.data.common import check_options, option_error, require_root
from prunelens.data.folder import IMAGE_OPTIONS, ImageList, image_bundle
from prunelens.errors import PrunelensError

_FILES = ("images.txt", "image_class_labels.txt", "classes.txt", "train_test_split.txt", "attributes/image_attribute_labels.txt")
ATTRIBUTE_NAME_FILES = ("attributes.txt", "attributes/attributes.txt", "../attributes.txt")
"""Where `attributes.txt` is looked for, relative to the root (the archive keeps it beside CUB_200_2011/)."""
NOT_VISIBLE = 1
"""The certainty_id "not visible": an absent label with it is unknown, not evidence of absence (Koh et al.)."""
_OPTIONS: dict[str, Any] = {"concepts": "class", "class_threshold": 0.5, "min_classes": 10, "min_certainty": 1, **IMAGE_OPTIONS}


@DATASETS.register("cub")
def cub(cfg: DatasetConfig, seed: int) -> DataBundle:
    """CUB-200-2011 at `cfg.root` (the CUB_200_2011 directory), with its train/test split; val carved from train.

    `concepts: class` (Koh et al.'s denoising): over the train images, the fraction of each class's images
    with each attribute (absent labels marked "not visible" not counted) is binarised at `class_threshold`,
    attributes present in fewer than `min_classes` classes are dropped, and each image gets its class's
    attributes. `concepts: image`: each image's own labels of the kept attributes, those with a certainty_id
    below `min_certainty` (1–4) counted absent. `class_concepts` is the class table either way."""
    root = require_root(cfg, hint="the CUB_200_2011 directory")
    options = _checked(check_options(cfg, _OPTIONS))
    missing = [name for name in _FILES if not (root / name).is_file()]
    if missing:
        raise PrunelensError(f"{root}: not a CUB-200-2011 directory (missing {', '.join(missing)})")
    names = _attribute_names(root)
    paths = _read_names(root / "images.txt")
    ids = np.array(sorted(paths))
    classes = _read_names(root / "classes.txt")
    class_ids = sorted(classes)
    labels = _per_image(
        root / "image_class_labels.txt", ids, {c: k for k, c in enumerate(class_ids)}, "a class id of classes.txt"
    )
    train = _per_image(root / "train_test_split.txt", ids, {1: 1, 0: 0}, "1 (train) or 0 (test)").astype(bool)
    present, certainty = _attribute_labels(root / _FILES[-1], ids, len(names))
    known = (certainty > 0) & (present | (certainty != NOT_VISIBLE))
    frequencies = class_frequencies(
        torch.from_numpy(present[train]), torch.from_numpy(labels[train]), len(class_ids), torch.from_numpy(known[train])
    )
    table, kept = binarise_class_table(frequencies, names, options["class_threshold"], options["min_classes"])
    if not kept:
        raise option_error("min_classes", f"no attribute of {root} is present in {options['min_classes']} classes")
    if options["concepts"] == "class":
        concepts = table[torch.from_numpy(labels)]
    else:
        column = {name: i for i, name in enumerate(names)}
        concepts = torch.from_numpy((present & (certainty >= options["min_certainty"]))[:, [column[n] for n in kept]])
    images = root / "images"
    lists = {}
    for part, rows in (("train", train), ("test", ~train)):
        samples = [(str(images / paths[i]), int(label)) for i, label in zip(ids[rows].tolist(), labels[rows])]
        lists[part] = ImageList(images, samples, {"concepts": concepts[torch.from_numpy(rows)]})
    class_names = [re.sub(r"^\d+\.", "", classes[c]).replace("_", " ") for c in class_ids]
    return image_bundle(cfg, seed, lists, options, class_names=class_names, concept_names=kept, class_concepts=table)


def _checked(options: dict[str, Any]) -> dict[str, Any]:
    if options["concepts"] not in ("class", "image"):
        raise option_error("concepts", f"{options['concepts']!r} is not 'class' or 'image'")
    if not 0.0 <= options["class_threshold"] < 1.0:
        raise option_error("class_threshold", f"{options['class_threshold']!r} is not in [0, 1)")
    if options["min_classes"] < 0:
        raise option_error("min_classes", f"{options['min_classes']!r} must not be negative")
    if not 1 <= options["min_certainty"] <= 4:
        raise option_error("min_certainty", f"{options['min_certainty']!r} is not a certainty_id in 1..4")
    return options


def _attribute_names(root: Path) -> list[str]:
    """The names in the first `attributes.txt` of `ATTRIBUTE_NAME_FILES`, in id order (ids 1..A)."""
    for relative in ATTRIBUTE_NAME_FILES:
        path = root / relative
        if path.is_file():
            names = _read_names(path)
            if sorted(names) != list(range(1, len(names) + 1)):
                raise PrunelensError(f"{path}: attribute ids are not 1..{len(names)}")
            ordered = [names[i] for i in range(1, len(names) + 1)]
            if len(set(ordered)) < len(ordered):
                raise PrunelensError(f"{path}: an attribute name is listed twice")
            return ordered
    looked = ", ".join(str(root / relative) for relative in ATTRIBUTE_NAME_FILES)
    raise PrunelensError(f"{root}: no attribute names (looked for {looked})")


def _read_names(path: Path) -> dict[int, str]:
    """`<id> <text>` lines as {id: text}; blank lines are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise PrunelensError(f"{path}: not a readable text file ({err})") from None
    names: dict[int, str] = {}
    for number, line in enumerate(lines, 1):
        fields = line.split(maxsplit=1)
        if not fields:
            continue
        if len(fields) < 2 or not fields[0].isdigit():
            raise PrunelensError(f"{path}: line {number}: expected '<id> <name>', got {line.strip()!r}")
        if int(fields[0]) in names:
            raise PrunelensError(f"{path}: line {number}: id {fields[0]} listed twice")
        names[int(fields[0])] = fields[1].strip()
    if not names:
        raise PrunelensError(f"{path}: no lines")
    return names


def _read_ints(path: Path, columns: int) -> np.ndarray:
    """(n, columns) int64: the first `columns` fields of each line (later fields are ignored)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy's warning for an empty file, reported below
            rows = np.loadtxt(path, dtype=np.int64, usecols=tuple(range(columns)), ndmin=2)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise PrunelensError(f"{path}: {err}") from None
    if len(rows) == 0:
        raise PrunelensError(f"{path}: no lines")
    return rows


def _per_image(path: Path, ids: np.ndarray, values: dict[int, int], expected: str) -> np.ndarray:
    """(len(ids),) int64: the value of each image id in an `<image_id> <value>` file, mapped through `values`."""
    given = dict(_read_ints(path, 2).tolist())
    out = np.empty(len(ids), dtype=np.int64)
    for i, image_id in enumerate(ids.tolist()):
        if image_id not in given:
            raise PrunelensError(f"{path}: no line for image {image_id} of images.txt")
        if given[image_id] not in values:
            raise PrunelensError(f"{path}: image {image_id}: {given[image_id]} is not {expected}")
        out[i] = values[given[image_id]]
    return out


def _attribute_labels(path: Path, ids: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, A) bool is_present and (N, A) int64 certainty_id (0 where unlabelled) of the images `ids` (sorted)."""
    rows = _read_ints(path, 4)
    image, attribute, is_present, certainty = rows.T
    position = np.searchsorted(ids, image).clip(max=len(ids) - 1)
    checks = (
        (ids[position] != image, 0, "an image id of images.txt"),
        ((attribute < 1) | (attribute > count), 1, f"an attribute id 1..{count} of attributes.txt"),
        ((is_present != 0) & (is_present != 1), 2, "an is_present of 0 or 1"),
        ((certainty < 1) | (certainty > 4), 3, "a certainty_id 1..4"),
    )
    for bad, field, expected in checks:
        if bad.any():
            line = rows[bad.argmax()]
            raise PrunelensError(f"{path}: line '{' '.join(map(str, line))}': {line[field]} is not {expected}")
    present = np.zeros((len(ids), count), dtype=bool)
    certainties = np.zeros((len(ids), count), dtype=np.int64)
    present[position, attribute - 1] = is_present == 1
    certainties[position, attribute - 1] = certainty
    return present, certainties
