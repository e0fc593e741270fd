"""`idx`: MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST...), and `fashion_mnist` from Debian's package."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from prunelens.config import DatasetConfig
from prunelens.data.base import DATASETS, DataBundle, TensorSplit
from prunelens.data.common import check_options, make_bundle, require_root, to_nchw
from prunelens.errors import PrunelensError

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX type code → numpy dtype (multi-byte values are big-endian)."""

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's `dataset-fashion-mnist` package installs the (gzipped) IDX files."""
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def read_idx(path: Path) -> np.ndarray:
    """The array stored in an IDX file (gzipped or not, detected from its content); any defect is a
    one-line `PrunelensError` naming the file."""
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise PrunelensError(f"{path}: cannot read ({err})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_DTYPES:
        raise PrunelensError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty file'})")
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise PrunelensError(f"{path}: truncated IDX header ({ndim} dimensions need {header} bytes, found {len(data)})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected, found = int(np.prod(shape)) * dtype.itemsize, len(data) - header
    if found != expected:
        problem = "truncated IDX file" if found < expected else "IDX file with trailing bytes"
        raise PrunelensError(f"{path}: {problem} (expected {expected} bytes of data, found {found})")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, prefix: str, kind: str) -> Path:
    """`<prefix>-<kind>-idxN-ubyte` or the dotted `<prefix>-<kind>.idxN-ubyte`, optionally gzipped."""
    ndim = 3 if kind == "images" else 1
    names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise PrunelensError(f"{root}: no {prefix} {kind} file (expected {' or '.join(n + '[.gz]' for n in names)})")


def load_split(root: Path, prefix: str) -> TensorSplit:
    """The `train` or `t10k` images (N, 1, H, W) uint8 and labels of an IDX directory."""
    images_path, labels_path = _find(root, prefix, "images"), _find(root, prefix, "labels")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise PrunelensError(f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise PrunelensError(f"{labels_path}: expected integer labels (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise PrunelensError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}")
    return TensorSplit(to_nchw(images), torch.from_numpy(labels.astype(np.int64)))


def _load(cfg: DatasetConfig, seed: int, root: Path, class_names: list[str] | None = None) -> DataBundle:
    check_options(cfg, {})
    return make_bundle(cfg, seed, load_split(root, "train"), load_split(root, "t10k"), class_names=class_names)


@DATASETS.register("idx")
def idx(cfg: DatasetConfig, seed: int) -> DataBundle:
    """A directory (`dataset.root`) of MNIST-format IDX files; val is carved from train."""
    return _load(cfg, seed, require_root(cfg, hint="a directory with train-images-idx3-ubyte[.gz] etc."))


@DATASETS.register("fashion_mnist")
def fashion_mnist(cfg: DatasetConfig, seed: int) -> DataBundle:
    """Fashion-MNIST from `dataset.root`, by default where Debian's `dataset-fashion-mnist` installs it."""
    hint = "install it with `apt-get install dataset-fashion-mnist` or set dataset.root"
    return _load(cfg, seed, require_root(cfg, FASHION_MNIST_ROOT, hint), FASHION_MNIST_CLASSES)
