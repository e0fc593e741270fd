"""`imagefolder`: `root/{train,val,test}/<class>/<image>` (val optional), in memory when small, else streamed;
optionally with per-image concepts from a CSV (`concepts_csv`). Its image readers also serve `cub`, `ham10000`
and `derm7pt` through `ImageList` (image files with per-image extras such as `concepts`) and `image_bundle`."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.transforms.v2 import functional as TF

from prunelens.config import DatasetConfig
from prunelens.data.base import DATASETS, DataBundle, DatasetSplit, Split, TensorSplit
from prunelens.data.common import check_options, make_bundle, option_error, require_root
from prunelens.data.concept_csv import apply_missing_policy, binary_concepts, check_missing_policy, read_concepts_csv
from prunelens.errors import PrunelensError

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGE_OPTIONS: dict[str, Any] = {"in_memory_max": 20000, "mean": None, "std": None, "num_workers": 0}
"""The options of every image-list dataset, as for `imagefolder`."""
DEFAULT_SIZE = 224
"""Images of these datasets differ in size: they are resized to `dataset.image_size`, else to this."""
_OPTIONS: dict[str, Any] = {
    "in_memory_max": 20000, "mean": None, "std": None, "num_workers": 0,
    "concepts_csv": "", "concepts_id_column": "image_id", "missing_concepts": "error",
}  # fmt: skip
_ID_FALLBACKS = ("image", "path")
"""First-column names taken as the id column of a concepts CSV without an `image_id` column, unless
`concepts_id_column` is set."""
_ID_FORMS = ("path relative to the dataset root", "path relative to its split folder", "file name", "file name stem")
_GREY_MODES = {"1", "L"}
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, Image.DecompressionBombError)
"""What PIL raises for a file it cannot read or decode (truncated, corrupt, not an image, a decompression bomb)."""
T = TypeVar("T")


def _folders(root: Path) -> dict[str, ImageFolder | None]:
    """The ImageFolder of each split directory (None for a missing val); all must list the same classes."""
    folders: dict[str, ImageFolder | None] = {}
    for part in ("train", "val", "test"):
        path = root / part
        if not path.is_dir():
            if part != "val":
                raise PrunelensError(f"{path}: missing {part} split directory (expected {part}/<class>/<image files>)")
            folders[part] = None
            continue
        try:
            folders[part] = ImageFolder(str(path), loader=load_rgb)
        except (FileNotFoundError, OSError) as err:
            raise PrunelensError(f"{path}: {err}") from None
    classes = folders["train"].classes  # type: ignore[union-attr]
    for part, folder in folders.items():
        if folder is not None and folder.classes != classes:
            raise PrunelensError(f"{root / part}: classes {folder.classes} differ from train's {classes}")
    return folders


def _unreadable(path: str, err: Exception) -> PrunelensError:
    """The error for a file PIL cannot read, without the file name PIL's message repeats."""
    reason = str(err).replace(f" {path!r}", "").strip() or type(err).__name__
    return PrunelensError(f"{path}: {reason}")


def _open(path: str) -> Image.Image:
    if not os.path.isfile(path):
        raise PrunelensError(f"{path}: not a regular file")
    try:
        return Image.open(path)
    except _IMAGE_ERRORS as err:
        raise _unreadable(path, err) from None


def _header(path: str) -> tuple[str, tuple[int, int]]:
    """Mode and (width, height) of an image, read without decoding it."""
    with _open(path) as image:
        return image.mode, image.size


def load_rgb(path: str) -> Image.Image:
    """The streamed splits' loader: the image as RGB; a decode error is a one-line `PrunelensError` naming the file."""
    try:
        with _open(path) as image:
            return image.convert("RGB")
    except _IMAGE_ERRORS as err:
        raise _unreadable(path, err) from None


def _keep_readable(folder: ImageFolder, read: Callable[[str], T]) -> tuple[list[T], list[str]]:
    """`read(path)` of every sample, and the messages of those where it raised `PrunelensError`: these are removed
    from `folder` (samples, imgs, targets). A split left without images is an error naming its directory."""
    results, kept, skipped = [], [], []
    for path, target in folder.samples:
        try:
            results.append(read(path))
            kept.append((path, target))
        except PrunelensError as err:
            skipped.append(str(err))
    if not kept:
        raise PrunelensError(f"{folder.root}: no readable image ({len(skipped)} unreadable file(s), first: {skipped[0]})")
    folder.samples = folder.imgs = kept
    folder.targets = [target for _, target in kept]
    return results, skipped


def _load_in_memory(folders: dict[str, ImageFolder], size: int | None) -> tuple[dict[str, TensorSplit], dict[str, list[str]]]:
    """Every readable image as uint8 (C, size, size) (Resize + CenterCrop when needed), grey (C=1) if all images
    are, and per split the files skipped as unreadable (header or pixel data)."""
    modes, skipped = [], {}
    for part, folder in folders.items():
        headers, skipped[part] = _keep_readable(folder, _header)
        modes += [mode for mode, _ in headers]
    mode = "L" if all(m in _GREY_MODES for m in modes) else "RGB"
    tensors = {}
    for part, folder in folders.items():
        tensors[part], failed = _keep_readable(folder, lambda path: _image_tensor(path, mode, size))
        skipped[part] += failed
    sizes = {(t.shape[2], t.shape[1]): path for part in folders for (path, _), t in zip(folders[part].samples, tensors[part])}
    if len(sizes) > 1:
        (a, first), (b, second) = list(sizes.items())[:2]
        raise PrunelensError(f"{first} is {a[0]}x{a[1]} but {second} is {b[0]}x{b[1]}; set dataset.image_size")
    splits = {part: TensorSplit(torch.stack(tensors[part]), torch.tensor(folder.targets)) for part, folder in folders.items()}
    return splits, skipped


def _image_tensor(path: str, mode: str, size: int | None) -> torch.Tensor:
    try:
        with _open(path) as image:
            tensor = TF.pil_to_tensor(image.convert(mode))
    except _IMAGE_ERRORS as err:
        raise _unreadable(path, err) from None
    if size is None or tuple(tensor.shape[1:]) == (size, size):
        return tensor
    return TF.center_crop(TF.resize(tensor, [size], antialias=True), [size])


def _notes(skipped: dict[str, list[str]]) -> list[str]:
    """One line per split with skipped files: how many, and the first with its reason."""
    return [
        f"imagefolder: skipped {len(files)} unreadable image file(s) in {part} (first: {files[0]})"
        for part, files in skipped.items()
        if files
    ]


def _stats(options: dict[str, Any], channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The `mean`/`std` options (both or neither), one value (for every channel) or one per channel."""
    if options["mean"] is None and options["std"] is None:
        return None
    stats = []
    for key in ("mean", "std"):
        value = options[key]
        if (
            not isinstance(value, list)
            or len(value) not in (1, channels)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise option_error(key, f"expected a list of 1 or {channels} numbers (with both mean and std), got {value!r}")
        stats.append(tuple(float(v) for v in value) * (channels // len(value)))
    return stats[0], stats[1]


class ImageList(Dataset):
    """Labelled image files, shaped like an ImageFolder (`root`, `samples`, `targets`, `transform`) so the
    readers of this module apply, with `extras` aligned with `samples` as given (each file listed once).

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


@DATASETS.register("imagefolder")
def imagefolder(cfg: DatasetConfig, seed: int) -> DataBundle:
    """An ImageFolder tree; with at most `in_memory_max` images all are loaded as uint8 tensors (stats from
    train), else splits are streamed with Resize+CenterCrop (`image_size`, default 224) and Normalize
    (ImageNet mean/std unless the `mean`/`std` options are given). Unreadable files are skipped (`bundle.notes`).

    `concepts_csv` (a path as given, like `dataset.root`): per-image concepts, the `concepts` extra of every
    split and the bundle's `concept_names` (`_concepts`); `concepts_id_column`, `missing_concepts` as there."""
    root = require_root(cfg, hint="a directory with train/<class>/… and test/<class>/…")
    options = check_options(cfg, _OPTIONS)
    folders = _folders(root)
    classes = folders["train"].classes  # type: ignore[union-attr]
    present: dict[str, Any] = {part: folder for part, folder in folders.items() if folder is not None}
    concept_names, notes = None, []
    if options["concepts_csv"]:
        present, concept_names, notes = _concepts(root, present, options, explicit_id="concepts_id_column" in cfg.options)
    if sum(len(folder) for folder in present.values()) <= options["in_memory_max"]:
        loaded, skipped = _load_in_memory(present, cfg.image_size)
        loaded = {part: TensorSplit(s.images, s.labels, _extras(present[part])) for part, s in loaded.items()}
        stats = _stats(options, loaded["train"].images.shape[1])
        bundle = make_bundle(
            cfg, seed, loaded["train"], loaded["test"], loaded.get("val"),
            class_names=classes, concept_names=concept_names, stats=stats,
        )  # fmt: skip
    else:  # validated before make_bundle carves val from train by index
        skipped = {part: _keep_readable(folder, _header)[1] for part, folder in present.items()}
        bundle = _streamed(cfg, seed, present, options, classes, concept_names)
    bundle.notes.extend(notes + _notes(skipped))
    return bundle


def _extras(folder: ImageFolder | ImageList) -> dict[str, torch.Tensor]:
    """The extras of the images still in `folder` (an `ImageList` when there are concepts)."""
    return folder.kept_extras() if hasattr(folder, "kept_extras") else {}


def _streamed(
    cfg: DatasetConfig,
    seed: int,
    folders: dict[str, Any],
    options: dict[str, Any],
    classes: list[str],
    concept_names: list[str] | None,
) -> DataBundle:
    size = cfg.image_size or 224
    stats = _stats(options, 3) or IMAGENET_STATS
    transform = transforms.Compose(
        [transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(*stats)]
    )
    splits: dict[str, DatasetSplit] = {}
    for part, folder in folders.items():
        folder.transform = transform
        splits[part] = DatasetSplit(folder, options["num_workers"], _extras(folder))
    return make_bundle(
        cfg, seed, splits["train"], splits["test"], splits.get("val"), class_names=classes,
        concept_names=concept_names, stats=stats, image_size=(size, size), in_channels=3,
    )  # fmt: skip


def _concepts(
    root: Path, folders: dict[str, ImageFolder], options: dict[str, Any], explicit_id: bool
) -> tuple[dict[str, ImageList], list[str], list[str]]:
    """The splits as `ImageList`s with the `concepts` extra of `options["concepts_csv"]`, the concept names
    and notes (images dropped, rows naming no image).

    The CSV: an id column (`concepts_id_column`, default `image_id`; when the CSV has no such column and the
    option is not set, a first column named `image` or `path`) and one column per concept, each value 0/1 or
    true/false. Every other column is a concept. An id (spaces around it ignored, `\\` read as `/`, a leading
    `./` dropped) names an image by the first of these forms that any image has, and that form must name one
    image only (else the id is ambiguous, an error): (1) its path relative to `dataset.root`
    (`train/cat/001.png`), (2) relative to its split folder (`cat/001.png`), (3) its file name (`001.png`),
    (4) its file name stem (`001`). Two rows naming one image are an error; rows naming none are noted.
    Every image file found needs a row, readable or not, unless `missing_concepts: drop` drops those without."""
    policy = check_missing_policy(options)
    csv = Path(options["concepts_csv"])
    hint = "set dataset.options.concepts_id_column"
    frame, ids, id_column = read_concepts_csv(csv, options["concepts_id_column"], () if explicit_id else _ID_FALLBACKS, hint)
    names = [str(column) for column in frame.columns if column != id_column]
    if not names:
        raise PrunelensError(f"{csv}: no concept columns besides {id_column!r}")
    table = binary_concepts(frame, names, csv)
    images = [(part, path, target) for part, folder in folders.items() for path, target in folder.samples]
    relative = [Path(path).relative_to(root).as_posix() for _, path, _ in images]
    rows, unmatched = _match_ids(csv, [_normal_id(i) for i in ids], relative, root)
    notes = apply_missing_policy(csv, relative, rows >= 0, policy, "imagefolder", root)
    if unmatched:
        notes.append(f"imagefolder: {len(unmatched)} row(s) of {csv} name no image (first: {unmatched[0]!r})")
    lists = {}
    for part, folder in folders.items():
        kept = [k for k, (p, _, _) in enumerate(images) if p == part and rows[k] >= 0]
        if not kept:
            raise PrunelensError(f"{csv}: no image of {folder.root} has a row (missing_concepts: drop left it empty)")
        samples = [images[k][1:] for k in kept]
        lists[part] = ImageList(Path(folder.root), samples, {"concepts": table[torch.from_numpy(rows[kept])]})
    return lists, names, notes


def _normal_id(image_id: str) -> str:
    image_id = image_id.replace("\\", "/")
    while image_id.startswith("./"):
        image_id = image_id[2:]
    return image_id


def _match_ids(csv: Path, ids: list[str], relative: list[str], root: Path) -> tuple[np.ndarray, list[str]]:
    """The CSV row of each image (`relative`: its path relative to `root`), -1 where none, and the ids that
    name no image; forms and errors as in `_concepts`."""
    index: list[dict[str, list[int]]] = [{} for _ in _ID_FORMS]
    for k, path in enumerate(relative):
        name = path.rsplit("/", 1)[-1]
        for form, key in enumerate((path, path.split("/", 1)[1], name, PurePosixPath(name).stem)):
            index[form].setdefault(key, []).append(k)
    rows = np.full(len(relative), -1, dtype=np.int64)
    unmatched = []
    for row, image_id in enumerate(ids):
        form, hits = next(((f, index[f][image_id]) for f in range(len(_ID_FORMS)) if image_id in index[f]), (0, []))
        if not hits:
            unmatched.append(image_id)
            continue
        if len(hits) > 1:
            listed = ", ".join(relative[k] for k in hits[:3]) + (", …" if len(hits) > 3 else "")
            raise PrunelensError(
                f"{csv}: image id {image_id!r} is ambiguous: it is the {_ID_FORMS[form]} of {len(hits)} images "
                f"({listed}); use the path relative to {root}"
            )
        if rows[hits[0]] >= 0:
            raise PrunelensError(
                f"{csv}: image {relative[hits[0]]} has more than one row (ids {ids[rows[hits[0]]]!r} and {image_id!r})"
            )
        rows[hits[0]] = row
    return rows, unmatched
