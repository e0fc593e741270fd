"""Image folders and pixel CSVs that are hostile or broken (written here in the real formats): unreadable
images are skipped and counted, every other defect is a one-line error naming the file and row."""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hostile import RNG, build, one_line_error
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

from prunelens.data import DatasetSplit, TensorSplit
from prunelens.data.common import MAX_CLASSES

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

