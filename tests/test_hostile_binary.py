"""IDX and MedMNIST files that are hostile or broken (written here in the real formats): one-line errors naming
the file, raised before anything proportional to a claimed size is allocated."""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hostile import RNG, build, one_line_error, peak_bytes

from prunelens.data.common import MAX_CLASSES
from prunelens.data.idx import read_idx

# --- IDX ---------------------------------------------------------------------------------------------------


def idx_bytes(code: int, shape: tuple[int, ...], data: bytes) -> bytes:
    """An IDX file whose header claims `shape` (whatever `data` really holds)."""
    return struct.pack(">BBBB", 0, 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape) + data


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.mark.parametrize("name", ["labels-idx1-ubyte", "labels-idx1-ubyte.gz"])
def test_idx_huge_label_count_is_refused_fast_and_small(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, idx_bytes(0x08, (2**31 - 1,), bytes(10)))
    one_line_error(lambda: read_idx(path), path, "truncated IDX file (expected 2147483647 bytes of data, found 10)")
    peak, seconds = peak_bytes(lambda: read_idx(path))
    assert peak < 32 << 20 and seconds < 5


def test_idx_huge_image_count_and_overflowing_dims(tmp_path: Path) -> None:
    images = write(tmp_path / "images-idx3-ubyte", idx_bytes(0x08, (2**31 - 1, 28, 28), bytes(784)))
    one_line_error(lambda: read_idx(images), images, f"expected {(2**31 - 1) * 784} bytes of data, found 784")
    dims = (2**32 - 1,) * 4  # np.prod over int64 wraps; the check must use the exact product
    doubles = write(tmp_path / "wide-idx4-ubyte.gz", idx_bytes(0x0E, dims, bytes(64)))
    one_line_error(lambda: read_idx(doubles), doubles, f"expected {math.prod(dims) * 8} bytes of data, found 64")
    assert peak_bytes(lambda: read_idx(doubles))[0] < 32 << 20


def test_idx_too_many_dimensions(tmp_path: Path) -> None:
    path = write(tmp_path / "deep-idx", idx_bytes(0x0E, (2**32 - 1,) * 255, b""))
    one_line_error(lambda: read_idx(path), path, "IDX header claims 255 dimensions")
    ones = write(tmp_path / "ones-idx", idx_bytes(0x08, (1,) * 100, b"\x07"))  # beyond what numpy can reshape to
    one_line_error(lambda: read_idx(ones), ones, "100 dimensions")


def test_idx_gzip_surplus_stops_decompressing(tmp_path: Path) -> None:
    path = write(tmp_path / "labels.gz", idx_bytes(0x08, (10,), bytes(10 + (64 << 20))))  # 64 MiB of zeros after
    assert path.stat().st_size < 1 << 20
    one_line_error(lambda: read_idx(path), path, "IDX file with trailing bytes (expected 10 bytes of data, found more)")
    assert peak_bytes(lambda: read_idx(path))[0] < 8 << 20


def test_idx_trailing_bytes_and_truncated_header(tmp_path: Path) -> None:
    raw = write(tmp_path / "labels", idx_bytes(0x08, (3,), bytes(5)))
    one_line_error(lambda: read_idx(raw), raw, "IDX file with trailing bytes (expected 3 bytes of data, found 5)")
    short = write(tmp_path / "short.gz", idx_bytes(0x08, (3, 4, 4), b"")[:9])
    one_line_error(lambda: read_idx(short), short, "truncated IDX header (3 dimensions need 16 bytes, found 9)")
    empty = write(tmp_path / "empty", b"")
    one_line_error(lambda: read_idx(empty), empty, "not an IDX file (bad magic number empty file)")


def test_idx_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    one_line_error(lambda: read_idx(tmp_path / "d"), tmp_path / "d", "cannot read")


def idx_tree(root: Path, train: tuple[int, ...] = (8, 5, 5), labels: np.ndarray | None = None, t10k_size: int = 5) -> Path:
    root.mkdir()
    n = train[0]
    write(root / "train-images-idx3-ubyte", idx_bytes(0x08, train, bytes(math.prod(train))))
    labels = np.arange(n, dtype=np.int8) % 2 if labels is None else labels
    write(root / "train-labels-idx1-ubyte", idx_bytes(0x09, (n,), labels.astype(np.int8).tobytes()))
    write(root / "t10k-images-idx3-ubyte", idx_bytes(0x08, (4, t10k_size, t10k_size), bytes(4 * t10k_size**2)))
    write(root / "t10k-labels-idx1-ubyte", idx_bytes(0x08, (4,), bytes([0, 1, 0, 1])))
    return root


def test_idx_empty_negative_and_mismatched_splits(tmp_path: Path) -> None:
    root = idx_tree(tmp_path / "none", train=(0, 5, 5))
    one_line_error(lambda: build("idx", root), root / "train-images-idx3-ubyte", "holds no images")
    root = idx_tree(tmp_path / "flat", train=(8, 0, 5))
    one_line_error(lambda: build("idx", root), root / "train-images-idx3-ubyte", "holds no images")
    root = idx_tree(tmp_path / "negative", labels=np.array([0, 1, -1, 1, 0, 1, 0, 1]))
    one_line_error(lambda: build("idx", root), root / "train-labels-idx1-ubyte", "label -1 is not a class index")
    root = idx_tree(tmp_path / "sizes", t10k_size=6)
    one_line_error(lambda: build("idx", root), root / "t10k-images-idx3-ubyte", "6x6", "5x5", "set dataset.image_size")
    assert build("idx", root, image_size=5).test.images.shape == (4, 1, 5, 5)


def test_idx_label_too_large_for_a_classifier(tmp_path: Path) -> None:
    root = tmp_path / "big"
    idx_tree(root)
    labels = np.arange(8) % 2
    labels[3] = 2**31 - 1
    write(root / "train-labels-idx1-ubyte", idx_bytes(0x0C, (8,), labels.astype(">i4").tobytes()))
    one_line_error(lambda: build("idx", root), root / "train-labels-idx1-ubyte", f"label {2**31 - 1}", str(MAX_CLASSES - 1))


# --- MedMNIST ----------------------------------------------------------------------------------------------


def splits(n: dict[str, int] | None = None, size: int = 7) -> dict[str, np.ndarray]:
    n = {"train": 9, "val": 6, "test": 6, **(n or {})}
    arrays = {}
    for part, count in n.items():
        arrays[f"{part}_images"] = RNG.integers(0, 256, (count, size, size), dtype=np.uint8)
        arrays[f"{part}_labels"] = (np.arange(count) % 3)[:, None]
    return arrays


def npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_medmnist_split_without_images(tmp_path: Path) -> None:
    path = npz(tmp_path / "empty.npz", **splits({"train": 0}))
    one_line_error(lambda: build("medmnist", path), path, "train_images holds no images")
    path = npz(tmp_path / "flat.npz", **{**splits(), "val_images": np.zeros((6, 0, 7), dtype=np.uint8)})
    one_line_error(lambda: build("medmnist", path), path, "val_images holds no images")


def test_medmnist_bad_labels(tmp_path: Path) -> None:
    arrays = splits()
    path = npz(tmp_path / "negative.npz", **{**arrays, "train_labels": arrays["train_labels"] - 1})
    one_line_error(lambda: build("medmnist", path), path, "train_labels", "label -1 is not a class index")
    path = npz(tmp_path / "short.npz", **{**arrays, "test_labels": arrays["test_labels"][:5]})
    one_line_error(lambda: build("medmnist", path), path, "test_labels must be 6 integer labels")
    path = npz(tmp_path / "nocolumn.npz", **{**arrays, "val_labels": np.zeros((6, 0), dtype=np.int64)})
    one_line_error(lambda: build("medmnist", path), path, "val_labels must be 6 integer labels")
    path = npz(tmp_path / "huge.npz", **{**arrays, "val_labels": arrays["val_labels"] + 2**40})
    one_line_error(lambda: build("medmnist", path), path, "val_labels", "is not a class index")


def test_medmnist_split_sizes_differ(tmp_path: Path) -> None:
    path = npz(tmp_path / "sizes.npz", **{**splits(), "test_images": np.zeros((6, 5, 5), dtype=np.uint8)})
    one_line_error(lambda: build("medmnist", path), path, "test_images are (1, 5, 5)", "set dataset.image_size")
    assert build("medmnist", path, image_size=5).test.images.shape == (6, 1, 5, 5)
    rgb = npz(tmp_path / "rgb.npz", **{**splits(), "val_images": np.zeros((6, 7, 7, 3), dtype=np.uint8)})
    one_line_error(lambda: build("medmnist", rgb, image_size=7), rgb, "val_images are (3, 7, 7)")


def test_medmnist_pickles_are_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "pickle.npz"
    path.write_bytes(pickle.dumps(splits()))
    one_line_error(lambda: build("medmnist", path), path, "not a .npz (zip) archive")
    objects = tmp_path / "objects.npz"
    np.savez(objects, **{**splits(), "train_images": np.array([None] * 9, dtype=object)})
    one_line_error(lambda: build("medmnist", objects), objects, "train_images holds Python objects")
    (tmp_path / "nothing.npz").write_bytes(b"")
    one_line_error(lambda: build("medmnist", tmp_path / "nothing.npz"), tmp_path / "nothing.npz", "an empty file")


def npy_header(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_medmnist_header_claiming_a_huge_array(tmp_path: Path) -> None:
    path = tmp_path / "claims.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in splits().items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            fake = npy_header((2**40, 28, 28)) + bytes(100)
            archive.writestr(f"{key}.npy", fake if key == "train_images" else buffer.getvalue())
    one_line_error(lambda: build("medmnist", path), path, "train_images claims shape (1099511627776, 28, 28)")
    peak, seconds = peak_bytes(lambda: build("medmnist", path))
    assert peak < 32 << 20 and seconds < 5
    single = tmp_path / "single.npz"
    single.write_bytes(npy_header((2**40,)) + bytes(10))
    one_line_error(lambda: build("medmnist", single), single, "a single .npy array, not a .npz archive")


def test_medmnist_member_that_is_not_an_array(tmp_path: Path) -> None:
    path = tmp_path / "raw.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in splits().items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(
                key if key == "train_images" else f"{key}.npy", b"hello" if key == "train_images" else buffer.getvalue()
            )
    one_line_error(lambda: build("medmnist", path), path, "cannot read 'train_images'")


