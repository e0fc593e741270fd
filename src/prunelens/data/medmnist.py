"""`medmnist`: a MedMNIST `.npz` file (`{train,val,test}_{images,labels}`), multi-class only."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelens.config import DatasetConfig
from prunelens.data.base import DATASETS, DataBundle, TensorSplit
from prunelens.data.common import check_options, make_bundle, option_error, require_root, to_nchw
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
        return npz[key]
    except _NPZ_ERRORS as err:
        raise PrunelensError(f"{path}: cannot read {key!r}, not a valid .npz file (truncated or corrupted: {err})") from None


def _split(npz: Any, path: Path, part: str) -> TensorSplit:
    images, labels = _array(npz, path, f"{part}_images"), _array(npz, path, f"{part}_labels")
    if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise PrunelensError(f"{path}: {part}_images must be uint8 (N, H, W) or (N, H, W, 3), got {images.dtype} {images.shape}")
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise PrunelensError(f"{path}: {part}_labels has {labels.shape[1]} columns (multi-label); only multi-class is supported")
    if labels.dtype.kind not in "iu" or labels.ndim not in (1, 2) or len(labels) != len(images):
        raise PrunelensError(f"{path}: {part}_labels must be {len(images)} integer labels, got {labels.dtype} {labels.shape}")
    return TensorSplit(to_nchw(images), torch.from_numpy(labels.reshape(-1).astype(np.int64)))


@DATASETS.register("medmnist")
def medmnist(cfg: DatasetConfig, seed: int) -> DataBundle:
    """A MedMNIST `.npz` (`dataset.root`, or a directory with options `flag` and `size`); grey or RGB."""
    root = require_root(cfg, hint="a MedMNIST .npz file, or a directory plus dataset.options.flag")
    path = npz_path(root, check_options(cfg, _OPTIONS))
    try:
        npz = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS:
        raise PrunelensError(f"{path}: not a valid .npz file (truncated or corrupted)") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise PrunelensError(f"{path}: a single .npy array, not a .npz archive of splits")
    with npz:
        train, val, test = (_split(npz, path, part) for part in ("train", "val", "test"))
    return make_bundle(cfg, seed, train, test, val)
