"""`medmnist`: a MedMNIST `.npz` file (`{train,val,test}_{images,labels}`), multi-class only."""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelens.config import DatasetConfig
from prunelens.data.base import DATASETS, DataBundle, TensorSplit
from prunelens.data.common import check_labels, check_options, make_bundle, option_error, require_root, to_nchw
from prunelens.errors import PrunelensError

_OPTIONS: dict[str, Any] = {"flag": None, "size": None}
_NPZ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def npz_path(root: Path, options: dict[str, Any]) -> Path:
    """`root` itself if it is a file, else `<root>/<flag>.npz` (or `<flag>_<size>.npz` for size ≠ 28)."""
    if root.is_file():
        return root
    flag, size = options["flag"], options["size"]
    if not isinstance(flag, str) or not flag:
        raise option_error("flag", f"required when dataset.root is a directory ({root}), e.g. 'pathmnist'")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
        raise option_error("size", f"expected an image size such as 64, got {size!r}")
    path = root / (f"{flag}.npz" if size in (None, 28) else f"{flag}_{size}.npz")
    if not path.is_file():
        raise PrunelensError(f"{path}: not found (dataset.options.flag={flag!r}, size={size!r})")
    return path


def _array(npz: Any, path: Path, key: str) -> np.ndarray:
    if key not in npz.files:
        raise PrunelensError(f"{path}: missing key {key!r}")
    try:
        _check_header(npz, path, key)
        return npz[key]
    except (*_NPZ_ERRORS, MemoryError) as err:
        raise PrunelensError(f"{path}: cannot read {key!r}, not a valid .npz file (truncated or corrupted: {err})") from None


def _check_header(npz: Any, path: Path, key: str) -> None:
    """The member `key` must be a .npy array whose header claims no more data than the member holds (checked before
    numpy allocates the claimed shape)."""
    name = f"{key}.npy" if f"{key}.npy" in npz.zip.namelist() else key
    info = npz.zip.getinfo(name)
    with npz.zip.open(info) as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(member)
    if dtype.hasobject:
        raise PrunelensError(f"{path}: {key} holds Python objects (pickled data is never loaded)")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > info.file_size:
        raise PrunelensError(f"{path}: {key} claims shape {shape} ({claimed} bytes) but holds {info.file_size} bytes (corrupted)")


def _split(npz: Any, path: Path, part: str) -> TensorSplit:
    images, labels = _array(npz, path, f"{part}_images"), _array(npz, path, f"{part}_labels")
    if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise PrunelensError(f"{path}: {part}_images must be uint8 (N, H, W) or (N, H, W, 3), got {images.dtype} {images.shape}")
    if 0 in images.shape:
        raise PrunelensError(f"{path}: {part}_images holds no images (shape {images.shape})")
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise PrunelensError(f"{path}: {part}_labels has {labels.shape[1]} columns (multi-label); only multi-class is supported")
    if labels.dtype.kind not in "iu" or labels.shape not in ((len(images),), (len(images), 1)):
        raise PrunelensError(f"{path}: {part}_labels must be {len(images)} integer labels, got {labels.dtype} {labels.shape}")
    labels = labels.reshape(-1)
    check_labels(labels, f"{path}: {part}_labels")
    return TensorSplit(to_nchw(images), torch.from_numpy(labels.astype(np.int64)))


def _check_shapes(path: Path, splits: dict[str, TensorSplit], resized: bool) -> None:
    """Every split's images must have train's channels, and its size unless all are resized."""
    train = tuple(splits["train"].images.shape[1:])
    for part, split in splits.items():
        shape = tuple(split.images.shape[1:])
        if shape[0] != train[0] or (not resized and shape != train):
            hint = "" if shape[0] != train[0] else "; set dataset.image_size"
            raise PrunelensError(f"{path}: {part}_images are {shape} (C, H, W) but train_images are {train}{hint}")


def _open_npz(path: Path) -> Any:
    """The `NpzFile` at `path`; its start is checked first, as numpy would load a lone .npy array (any size) or
    try to unpickle anything else."""
    try:
        with path.open("rb") as file:
            magic = file.read(6)
        if magic == b"\x93NUMPY":
            raise PrunelensError(f"{path}: a single .npy array, not a .npz archive of splits")
        if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            found = f"a file starting with {magic.hex()}" if magic else "an empty file"
            raise PrunelensError(f"{path}: not a .npz (zip) archive, found {found}")
        npz = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as err:
        raise PrunelensError(f"{path}: not a valid .npz file (truncated or corrupted: {err})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise PrunelensError(f"{path}: not a .npz archive of splits")
    return npz


@DATASETS.register("medmnist")
def medmnist(cfg: DatasetConfig, seed: int) -> DataBundle:
    """A MedMNIST `.npz` (`dataset.root`, or a directory with options `flag` and `size`); grey or RGB."""
    root = require_root(cfg, hint="a MedMNIST .npz file, or a directory plus dataset.options.flag")
    path = npz_path(root, check_options(cfg, _OPTIONS))
    with _open_npz(path) as npz:
        splits = {part: _split(npz, path, part) for part in ("train", "val", "test")}
    _check_shapes(path, splits, cfg.image_size is not None)
    return make_bundle(cfg, seed, splits["train"], splits["test"], splits["val"])
