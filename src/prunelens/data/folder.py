"""`imagefolder`: `root/{train,val,test}/<class>/<image>` (val optional), in memory when small, else streamed."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.transforms.v2 import functional as TF

from prunelens.config import DatasetConfig
from prunelens.data.base import DATASETS, DataBundle, DatasetSplit, TensorSplit
from prunelens.data.common import check_options, make_bundle, option_error, require_root
from prunelens.errors import PrunelensError

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_OPTIONS: dict[str, Any] = {"in_memory_max": 20000, "mean": None, "std": None, "num_workers": 0}
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


@DATASETS.register("imagefolder")
def imagefolder(cfg: DatasetConfig, seed: int) -> DataBundle:
    """An ImageFolder tree; with at most `in_memory_max` images all are loaded as uint8 tensors (stats from
    train), else splits are streamed with Resize+CenterCrop (`image_size`, default 224) and Normalize
    (ImageNet mean/std unless the `mean`/`std` options are given). Unreadable files are skipped (`bundle.notes`)."""
    root = require_root(cfg, hint="a directory with train/<class>/… and test/<class>/…")
    options = check_options(cfg, _OPTIONS)
    folders = _folders(root)
    classes = folders["train"].classes  # type: ignore[union-attr]
    present = {part: folder for part, folder in folders.items() if folder is not None}
    if sum(len(folder) for folder in present.values()) <= options["in_memory_max"]:
        loaded, skipped = _load_in_memory(present, cfg.image_size)
        stats = _stats(options, loaded["train"].images.shape[1])
        bundle = make_bundle(cfg, seed, loaded["train"], loaded["test"], loaded.get("val"), class_names=classes, stats=stats)
    else:  # validated before make_bundle carves val from train by index
        skipped = {part: _keep_readable(folder, _header)[1] for part, folder in present.items()}
        bundle = _streamed(cfg, seed, present, options, classes)
    bundle.notes.extend(_notes(skipped))
    return bundle


def _streamed(
    cfg: DatasetConfig, seed: int, folders: dict[str, ImageFolder], options: dict[str, Any], classes: list[str]
) -> DataBundle:
    size = cfg.image_size or 224
    stats = _stats(options, 3) or IMAGENET_STATS
    transform = transforms.Compose(
        [transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(*stats)]
    )
    splits: dict[str, DatasetSplit] = {}
    for part, folder in folders.items():
        folder.transform = transform
        splits[part] = DatasetSplit(folder, options["num_workers"])
    return make_bundle(
        cfg, seed, splits["train"], splits["test"], splits.get("val"),
        class_names=classes, stats=stats, image_size=(size, size), in_channels=3,
    )  # fmt: skip
