"""`idx`: MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST...), and `fashion_mnist` from Debian's package."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from prunelens.config import DatasetConfig
from prunelens.data.base import DATASETS, DataBundle, TensorSplit
from prunelens.data.common import check_labels, check_options, make_bundle, require_root, to_nchw
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
MAX_NDIM = 32
"""More dimensions than numpy arrays may have everywhere; real IDX files have 1 to 4."""
_CHUNK_BYTES = 1 << 24

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's `dataset-fashion-mnist` package installs the (gzipped) IDX files."""
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def read_idx(path: Path) -> np.ndarray:
    """The array stored in an IDX file (gzipped or not, detected from its content); any defect is a
    one-line `PrunelensError` naming the file. The size the header implies is checked against the data before
    anything that large is allocated, and gzipped data is decompressed in bounded chunks."""
    try:
        with path.open("rb") as file:
            gzipped = file.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gzipped else path.open("rb") as stream:
            dtype, shape = _read_header(path, stream)
            expected = math.prod(shape) * dtype.itemsize
            if not gzipped:
                _check_size(path, expected, os.fstat(stream.fileno()).st_size - 4 - 4 * len(shape))
            data = _read_data(stream, expected + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise PrunelensError(f"{path}: cannot read ({err})") from None
    _check_size(path, expected, len(data), exact=not gzipped)
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def _read_header(path: Path, stream: BinaryIO) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and shape from an IDX header: magic (0, 0, type code, ndim), then ndim big-endian uint32."""
    magic = stream.read(4)
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in IDX_DTYPES:
        raise PrunelensError(f"{path}: not an IDX file (bad magic number {magic.hex() or 'empty file'})")
    dtype, ndim = IDX_DTYPES[magic[2]], magic[3]
    if ndim > MAX_NDIM:
        raise PrunelensError(f"{path}: IDX header claims {ndim} dimensions (at most {MAX_NDIM} are supported)")
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise PrunelensError(f"{path}: truncated IDX header ({ndim} dimensions need {4 + 4 * ndim} bytes, found {4 + len(dims)})")
    return dtype, struct.unpack(f">{ndim}I", dims)


def _check_size(path: Path, expected: int, found: int, exact: bool = True) -> None:
    """`found` bytes of data must be the `expected` ones; from a stream read `expected + 1` at most, a surplus
    is only known to be there (`exact` False)."""
    if found < expected:
        raise PrunelensError(f"{path}: truncated IDX file (expected {expected} bytes of data, found {found})")
    if found > expected:
        more = found if exact else "more"
        raise PrunelensError(f"{path}: IDX file with trailing bytes (expected {expected} bytes of data, found {more})")


def _read_data(stream: BinaryIO, limit: int) -> bytearray:
    """At most `limit` bytes of `stream`, read in chunks: memory follows the real content, not a header's claim."""
    data = bytearray()
    while len(data) < limit:
        chunk = stream.read(min(_CHUNK_BYTES, limit - len(data)))
        if not chunk:
            break
        data += chunk
    return data


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
    if 0 in images.shape:
        raise PrunelensError(f"{images_path}: holds no images (shape {images.shape})")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise PrunelensError(f"{labels_path}: expected integer labels (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise PrunelensError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}")
    check_labels(labels, str(labels_path))
    return TensorSplit(to_nchw(images), torch.from_numpy(labels.astype(np.int64)))


def _load(cfg: DatasetConfig, seed: int, root: Path, class_names: list[str] | None = None) -> DataBundle:
    check_options(cfg, {})
    train, test = load_split(root, "train"), load_split(root, "t10k")
    if cfg.image_size is None and train.images.shape[2:] != test.images.shape[2:]:
        (h, w), (th, tw) = test.images.shape[2:], train.images.shape[2:]
        raise PrunelensError(
            f"{_find(root, 't10k', 'images')}: images are {h}x{w}, train images {th}x{tw}; set dataset.image_size"
        )
    return make_bundle(cfg, seed, train, test, class_names=class_names)


@DATASETS.register("idx")
def idx(cfg: DatasetConfig, seed: int) -> DataBundle:
    """A directory (`dataset.root`) of MNIST-format IDX files; val is carved from train."""
    return _load(cfg, seed, require_root(cfg, hint="a directory with train-images-idx3-ubyte[.gz] etc."))


@DATASETS.register("fashion_mnist")
def fashion_mnist(cfg: DatasetConfig, seed: int) -> DataBundle:
    """Fashion-MNIST from `dataset.root`, by default where Debian's `dataset-fashion-mnist` installs it."""
    hint = "install it with `apt-get install dataset-fashion-mnist` or set dataset.root"
    return _load(cfg, seed, require_root(cfg, FASHION_MNIST_ROOT, hint), FASHION_MNIST_CLASSES)
