"""Dataset loaders fed hostile or broken files (written here in the real formats): every defect is a one-line
`PrunelensError` naming the file, raised before big allocations; unreadable images in a folder are skipped and
counted."""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import struct
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

from prunelens.config import DatasetConfig
from prunelens.data import DATASETS, DatasetSplit, TensorSplit
from prunelens.data.base import DataBundle
from prunelens.data.common import MAX_CLASSES
from prunelens.data.idx import read_idx
from prunelens.errors import PrunelensError

RNG = np.random.default_rng(1)


def build(name: str, root: Path, **fields) -> DataBundle:
    """The registered loader itself (seed 0), independent of `build_dataset`'s signature."""
    return DATASETS.get(name)(DatasetConfig(name=name, root=root, **fields), 0)


def one_line_error(action: Callable[[], object], path: Path | str, *fragments: str) -> str:
    """The message of the `PrunelensError` `action` raises: one line, naming `path` and every fragment."""
    with pytest.raises(PrunelensError) as err:
        action()
    message = str(err.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def peak_bytes(action: Callable[[], object]) -> tuple[int, float]:
    """(peak traced Python/numpy allocation, seconds) while `action` runs; its PrunelensError is swallowed."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        action()
    except PrunelensError:
        pass
    finally:
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, seconds


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


# --- ImageFolder -------------------------------------------------------------------------------------------


def jpeg_bytes(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def png_bomb() -> bytes:
    """A PNG whose header declares 100000 × 100000 pixels (PIL refuses it as a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def good_images(folder: Path, n: int, label: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = np.full((8, 8, 3), 60 * label, dtype=np.uint8) + RNG.integers(0, 30, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(8))


def hostile_tree(root: Path, truncate_at: int | None) -> dict[str, Path]:
    """train/{cat,dog} and test/{cat,dog} of good PNGs and JPEGs, plus in train a text file named .jpg and a JPEG
    cut at `truncate_at` bytes (None: keeping only its first half, a readable header), in test a decompression bomb."""
    for part, n in (("train", 5), ("test", 2)):
        for label, name in enumerate(("cat", "dog")):
            good_images(root / part / name, n, label)
    data = jpeg_bytes()
    bad = {
        "text": root / "train" / "cat" / "notes.jpg",
        "cut": root / "train" / "dog" / "cut.jpg",
        "bomb": root / "test" / "dog" / "bomb.png",
    }
    bad["text"].write_text("this is not an image\n")
    bad["cut"].write_bytes(data[: truncate_at or len(data) // 2])
    bad["bomb"].write_bytes(png_bomb())
    return bad


@pytest.fixture(autouse=True)
def _strict_pil(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)  # a truncated file must fail to decode


def test_imagefolder_in_memory_skips_and_counts_unreadable_files(tmp_path: Path) -> None:
    bad = hostile_tree(tmp_path, truncate_at=None)
    assert Image.open(bad["cut"]).size == (64, 64)  # its header is fine: only decoding finds the truncation
    bundle = build("imagefolder", tmp_path, image_size=8)
    assert isinstance(bundle.train, TensorSplit)
    assert len(bundle.train) + len(bundle.val) == 20 and len(bundle.test) == 8
    train_note, test_note = bundle.notes
    assert (
        train_note
        == f"imagefolder: skipped 2 unreadable image file(s) in train (first: {bad['text']}: cannot identify image file)"
    )
    assert test_note.startswith(f"imagefolder: skipped 1 unreadable image file(s) in test (first: {bad['bomb']}: ")
    assert "decompression bomb" in test_note and all("\n" not in note for note in bundle.notes)


def test_imagefolder_streamed_skips_unreadable_files_and_iterates(tmp_path: Path) -> None:
    bad = hostile_tree(tmp_path, truncate_at=100)  # cut inside the header
    bundle = build("imagefolder", tmp_path, image_size=8, options={"in_memory_max": 1})
    assert isinstance(bundle.train, DatasetSplit) and isinstance(bundle.test, DatasetSplit)
    assert len(bundle.train) + len(bundle.val) == 20 and len(bundle.test) == 8
    folder = bundle.test.dataset
    assert folder.imgs == folder.samples and folder.targets == [t for _, t in folder.samples] == [0] * 4 + [1] * 4
    train_folder = bundle.train.dataset.dataset
    paths = {path for path, _ in train_folder.samples}
    assert len(paths) == 20 and not {str(bad["text"]), str(bad["cut"])} & paths
    assert train_folder.targets == [t for _, t in train_folder.samples]
    assert (
        bundle.notes[0]
        == f"imagefolder: skipped 2 unreadable image file(s) in train (first: {bad['text']}: cannot identify image file)"
    )
    assert bundle.notes[1].startswith("imagefolder: skipped 1 unreadable image file(s) in test") and len(bundle.notes) == 2
    for split in (bundle.train, bundle.val, bundle.test):
        batches = list(DataLoader(split.dataset, batch_size=4))
        assert sum(len(y) for _, y in batches) == len(split) and batches[0][0].shape[1:] == (3, 8, 8)


def test_imagefolder_streamed_decode_error_names_the_file(tmp_path: Path) -> None:
    bad = hostile_tree(tmp_path, truncate_at=None)  # header readable, pixel data cut: only decoding can tell
    bundle = build("imagefolder", tmp_path, image_size=8, options={"in_memory_max": 1})
    assert len(bundle.train) + len(bundle.val) == 21 and len(bundle.notes) == 2
    folder = bundle.train.dataset.dataset
    index = [path for path, _ in folder.samples].index(str(bad["cut"]))
    one_line_error(lambda: folder[index], bad["cut"], "image file is truncated")
    assert folder[index - 1][0].shape == (3, 8, 8)


def test_imagefolder_split_without_readable_images(tmp_path: Path) -> None:
    for part in ("train", "test"):
        good_images(tmp_path / part / "cat", 3, 0)
    for image in (tmp_path / "test" / "cat").iterdir():
        image.write_bytes(b"GIF89a broken")
    for streamed in (False, True):
        options = {"in_memory_max": 1} if streamed else {}
        one_line_error(lambda o=options: build("imagefolder", tmp_path, options=o), tmp_path / "test", "no readable image")


def test_imagefolder_pixels_truncated_in_every_file_of_a_split(tmp_path: Path) -> None:
    good_images(tmp_path / "train" / "cat", 3, 0)
    (tmp_path / "test" / "cat").mkdir(parents=True)
    data = jpeg_bytes()
    (tmp_path / "test" / "cat" / "only.jpg").write_bytes(data[: len(data) // 2])
    one_line_error(lambda: build("imagefolder", tmp_path), tmp_path / "test", "no readable image", "image file is truncated")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_imagefolder_special_files_are_skipped_not_opened(tmp_path: Path) -> None:
    for part in ("train", "test"):
        good_images(tmp_path / part / "cat", 3, 0)
        good_images(tmp_path / part / "dog", 3, 1)
    os.symlink(tmp_path / "nowhere.png", tmp_path / "train" / "cat" / "dangling.png")
    os.mkfifo(tmp_path / "train" / "dog" / "pipe.png")  # opening it would block forever
    bundle = build("imagefolder", tmp_path)
    assert len(bundle.train) + len(bundle.val) == 12
    assert bundle.notes == [
        f"imagefolder: skipped 2 unreadable image file(s) in train (first: {tmp_path / 'train' / 'cat' / 'dangling.png'}: not a regular file)"
    ]


def test_imagefolder_empty_class_directory(tmp_path: Path) -> None:
    for part in ("train", "test"):
        good_images(tmp_path / part / "cat", 2, 0)
        (tmp_path / part / "dog").mkdir()
    one_line_error(lambda: build("imagefolder", tmp_path), tmp_path / "train", "Found no valid file for the classes dog")


# --- CSV ---------------------------------------------------------------------------------------------------


def csv_rows(n: int = 12, pixels: int = 4, labels: list[object] | None = None) -> list[list[object]]:
    labels = labels if labels is not None else [i % 2 for i in range(n)]
    return [[*RNG.integers(0, 256, pixels).tolist(), label] for label in labels]


def write_csv(path: Path, rows: list[list[object]], header: list[str] | None = None) -> Path:
    lines = [header] if header else []
    path.write_text("".join(",".join(map(str, row)) + "\n" for row in [*lines, *rows]))
    return path


def test_csv_non_numeric_pixel_after_the_first_row(tmp_path: Path) -> None:
    rows = csv_rows()
    rows[4][1] = "abc"
    path = write_csv(tmp_path / "abc.csv", rows)
    one_line_error(lambda: build("csv", path), path, "column 2 holds a non-numeric pixel value 'abc' in data row 5")
    rows = csv_rows()
    rows[2][3] = '"1,5"'
    path = write_csv(tmp_path / "comma.csv", rows, header=["p0", "p1", "p2", "p3", "label"])
    one_line_error(lambda: build("csv", path), path, "column 'p3' holds a non-numeric pixel value '1,5' in data row 3")
    rows = csv_rows()
    rows[7][0] = "True"
    path = write_csv(tmp_path / "bool.csv", rows)
    one_line_error(lambda: build("csv", path), path, "column 1 holds a non-numeric pixel value", "data row 8")


def test_csv_empty_or_out_of_range_pixel(tmp_path: Path) -> None:
    rows = [[row[-1], *row[:-1]] for row in csv_rows()]
    rows[5] = rows[5][:-1]  # a short row: its last pixel is an empty cell
    path = write_csv(tmp_path / "short.csv", rows, header=["label", "a", "b", "c", "d"])
    one_line_error(
        lambda: build("csv", path), path, "pixel values must be numbers in 0–255, found an empty cell in data row 6, column 'd'"
    )
    rows = csv_rows()
    rows[9][2] = "99999999999999999999999"
    path = write_csv(tmp_path / "huge.csv", rows)
    one_line_error(lambda: build("csv", path), path, "found 1e+23 in data row 10, column 3")


@pytest.mark.parametrize(
    ("label", "fragment"),
    [
        ("", "empty label in data row 4"),
        ("2.5", "label 2.5 in data row 4 is not an integer class index"),
        ("-1", "label -1 in data row 4 is negative"),
        (str(2**31), f"label {2**31} in data row 4 is not a class index below {MAX_CLASSES}"),
    ],
)
def test_csv_bad_label_names_the_row(tmp_path: Path, label: str, fragment: str) -> None:
    rows = csv_rows()
    rows[3][-1] = label
    path = write_csv(tmp_path / "labels.csv", rows)
    one_line_error(lambda: build("csv", path), path, fragment)


def test_csv_empty_name_label_and_names_still_allowed(tmp_path: Path) -> None:
    names = ["ant", "bee", "cow"] * 4
    path = write_csv(tmp_path / "names.csv", csv_rows(labels=names), header=["a", "b", "c", "d", "label"])
    assert build("csv", path).class_names == ["ant", "bee", "cow"]
    path = write_csv(tmp_path / "mixed.csv", csv_rows(labels=[1, "bee", 2] * 4))
    assert build("csv", path).class_names == ["1", "2", "bee"]
    path = write_csv(tmp_path / "ints.csv", csv_rows(labels=[0, 1, 2] * 4))
    bundle = build("csv", path)
    assert bundle.class_names is None and bundle.num_classes == 3
    path = write_csv(tmp_path / "gap.csv", csv_rows(labels=[*names[:6], "", *names[7:]]), header=["a", "b", "c", "d", "label"])
    one_line_error(lambda: build("csv", path), path, "empty label in data row 7 (column 'label')")


def test_csv_empty_header_only_and_no_pixels(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    one_line_error(lambda: build("csv", tmp_path / "empty.csv"), tmp_path / "empty.csv", "not a readable CSV file")
    path = write_csv(tmp_path / "header.csv", [], header=["a", "b", "c", "d", "label"])
    one_line_error(lambda: build("csv", path), path, "no data rows")
    path = tmp_path / "binary.csv"
    path.write_bytes(b"\x00\x01\x02")
    one_line_error(lambda: build("csv", path), path, "no data rows")
    path = write_csv(tmp_path / "labels.csv", [[i % 2] for i in range(10)])
    one_line_error(lambda: build("csv", path), path, "no pixel columns")


def test_csv_too_few_rows_to_split(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "one.csv", csv_rows(1), header=["a", "b", "c", "d", "label"])
    one_line_error(lambda: build("csv", path), path, "cannot split 1 images")


def test_csv_split_column(tmp_path: Path) -> None:
    rows = [[*row, "train"] for row in csv_rows()]
    rows[6][-1] = ""
    header = ["a", "b", "c", "d", "label", "split"]
    path = write_csv(tmp_path / "split.csv", rows, header)
    one_line_error(lambda: build("csv", path), path, "column 'split' must hold only train/val/test, found '' in data row 7")
    rows = [[*row, "test"] for row in csv_rows()]
    path = write_csv(tmp_path / "notrain.csv", rows, header)
    one_line_error(lambda: build("csv", path), path, "marks no row as train")
    rows = [[*row, "train" if i < 9 else "test"] for i, row in enumerate(csv_rows())]
    path = write_csv(tmp_path / "y.csv", rows, ["p0", "p1", "p2", "p3", "y", "split"])  # default label: last but split
    bundle = build("csv", path)
    assert bundle.num_classes == 2 and bundle.train.images.shape[1:] == (1, 2, 2) and len(bundle.test) == 3
    split_label = {"label_column": "split"}
    one_line_error(
        lambda: build("csv", path, options=split_label), path, "dataset.options.label_column: 'split' is the split column"
    )


def test_csv_gzip_truncated(tmp_path: Path) -> None:
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(gzip.compress("".join(",".join(map(str, r)) + "\n" for r in csv_rows(200)).encode())[:300])
    one_line_error(lambda: build("csv", path), path, "not a readable CSV file")


def test_notes_default_empty() -> None:
    assert build("digits", None).notes == []  # type: ignore[arg-type]
