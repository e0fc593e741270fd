"""`imagefolder` with a per-image concepts CSV: every id form, in memory and streamed, and the errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from concept_files import build, image_values, sample_paths, save_image

from prunelens.data import DatasetSplit, TensorSplit
from prunelens.errors import PrunelensError

# --- imagefolder with a concepts CSV ------------------------------------------------------------------------

FOLDER_IMAGES = {  # path relative to the root: identifying value (PNG, so exact)
    **{f"train/{c}/{c[0]}{i:02d}.png": 20 + 10 * (4 * k + i) for k, c in enumerate(("cat", "dog")) for i in range(4)},
    **{f"test/{c}/{c[0]}{i:02d}.png": 100 + 10 * (2 * k + i) for k, c in enumerate(("cat", "dog")) for i in range(4, 6)},
}
FOLDER_CONCEPTS = ["bright", "odd_tens"]


def folder_concepts(value: int) -> list[bool]:
    return [value >= 90, (value // 10) % 2 == 1]


def folder_id(relative: str, form: str) -> str:
    return {
        "root": relative,
        "split": relative.split("/", 1)[1],
        "name": relative.rsplit("/", 1)[1],
        "stem": Path(relative).stem,
    }[form]


def write_folder(root: Path, extra: dict[str, int] | None = None) -> dict[str, int]:
    images = {**FOLDER_IMAGES, **(extra or {})}
    for relative, value in images.items():
        save_image(root / relative, value)
    return images


def write_folder_csv(
    path: Path, images: dict[str, int], form: str = "root", id_column: str = "image_id", truth: bool = False
) -> Path:
    def cell(flag: bool) -> str:
        return ("True" if flag else "false") if truth else str(int(flag))

    rows = [
        {id_column: folder_id(r, form), **dict(zip(FOLDER_CONCEPTS, map(cell, folder_concepts(v))))} for r, v in images.items()
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def folder_values(split, root: Path, images: dict[str, int]) -> list[int]:
    """The identifying value of each image of a split, in memory or streamed."""
    if isinstance(split, TensorSplit):
        return image_values(split)
    return [images[Path(path).relative_to(root).as_posix()] for path in sample_paths(split)]


def assert_folder_concepts(bundle, root: Path, images: dict[str, int]) -> list[int]:
    """Each split's `concepts` extra matches its images (bool, one row per image); the values seen."""
    assert bundle.concept_names == FOLDER_CONCEPTS and bundle.class_names == ["cat", "dog"]
    seen = []
    for part in ("train", "val", "test"):
        split = getattr(bundle, part)
        concepts = split.extras["concepts"]
        assert concepts.dtype == torch.bool and concepts.shape == (len(split), 2)
        values = folder_values(split, root, images)
        assert [folder_concepts(v) for v in values] == concepts.tolist()
        seen += values
    return seen


@pytest.mark.parametrize("in_memory_max", [20000, 0])
@pytest.mark.parametrize("form", ["root", "split", "name", "stem"])
def test_imagefolder_concepts_in_each_id_form(tmp_path: Path, form: str, in_memory_max: int) -> None:
    root = tmp_path / "data"
    images = write_folder(root)
    csv = write_folder_csv(tmp_path / "concepts.csv", images, form, truth=form == "name")
    bundle = build("imagefolder", root, concepts_csv=str(csv), in_memory_max=in_memory_max)
    assert isinstance(bundle.train, TensorSplit if in_memory_max else DatasetSplit)
    assert sorted(assert_folder_concepts(bundle, root, images)) == sorted(images.values())
    assert bundle.notes == [] and len(bundle.test) == 4
    known = FOLDER_IMAGES["test/dog/d05.png"]  # 130: bright, odd tens
    position = folder_values(bundle.test, root, images).index(known)
    assert bundle.test.extras["concepts"][position].tolist() == [True, True]


def test_imagefolder_without_concepts_csv_has_no_concepts(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_folder(root)
    bundle = build("imagefolder", root)
    assert bundle.concept_names is None and "concepts" not in bundle.train.extras


@pytest.mark.parametrize("first", ["image", "path"])
def test_imagefolder_concepts_id_column(tmp_path: Path, first: str) -> None:
    root = tmp_path / "data"
    images = write_folder(root)
    csv = write_folder_csv(tmp_path / "concepts.csv", images, id_column=first)
    assert_folder_concepts(build("imagefolder", root, concepts_csv=str(csv)), root, images)  # first column taken
    with pytest.raises(PrunelensError, match=f"concepts.csv: no 'file' column \\(columns: {first}, bright, odd_tens\\); set "):
        build("imagefolder", root, concepts_csv=str(csv), concepts_id_column="file")
    with pytest.raises(PrunelensError, match="no 'image_id' column"):  # set explicitly: no fallback
        build("imagefolder", root, concepts_csv=str(csv), concepts_id_column="image_id")
    named = write_folder_csv(tmp_path / "named.csv", images, id_column="file")
    assert_folder_concepts(build("imagefolder", root, concepts_csv=str(named), concepts_id_column="file"), root, images)


def test_imagefolder_concepts_ambiguous_ids(tmp_path: Path) -> None:
    root = tmp_path / "data"
    extra = {"test/cat/c00.png": 250, "test/dog/c01.jpg": 240}  # stems c00 and c01 twice; c01.jpg once
    images = write_folder(root, extra)
    csv = write_folder_csv(tmp_path / "concepts.csv", FOLDER_IMAGES, "stem")  # each stem once, naming 2 images
    with pytest.raises(PrunelensError) as error:
        build("imagefolder", root, concepts_csv=str(csv))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{csv}: image id 'c00' is ambiguous: it is the file name stem")
    assert "of 2 images (train/cat/c00.png, test/cat/c00.png); use the path relative to" in message
    split = write_folder_csv(tmp_path / "split.csv", FOLDER_IMAGES, "split")
    with pytest.raises(PrunelensError, match="image id 'cat/c00.png' is ambiguous: it is the path relative to its split"):
        build("imagefolder", root, concepts_csv=str(split))
    frame = pd.read_csv(csv)  # ids of either form resolve where unique: the root path for the repeated ones
    frame.loc[[0, 1], "image_id"] = ["train/cat/c00.png", "train/cat/c01.png"]
    frame.loc[12] = ["test/cat/c00.png", *map(int, folder_concepts(250))]
    frame.loc[13] = ["c01.jpg", *map(int, folder_concepts(240))]
    frame.to_csv(csv, index=False)
    assert sorted(assert_folder_concepts(build("imagefolder", root, concepts_csv=str(csv)), root, images)) == sorted(
        images.values()
    )
    frame.loc[14] = ["./train\\cat\\c00.png", 0, 0]  # a second row for train/cat/c00.png
    frame.to_csv(csv, index=False)
    with pytest.raises(PrunelensError, match=r"image train/cat/c00.png has more than one row \(ids 'train/cat/c00.png' and"):
        build("imagefolder", root, concepts_csv=str(csv))


def test_imagefolder_concepts_bad_values(tmp_path: Path) -> None:
    root = tmp_path / "data"
    images = write_folder(root)
    csv = write_folder_csv(tmp_path / "concepts.csv", images)
    frame = pd.read_csv(csv, dtype=str)
    frame.loc[2, "odd_tens"] = "2"
    frame.to_csv(csv, index=False)
    with pytest.raises(PrunelensError, match=r"concepts.csv: data row 3, column 'odd_tens': '2' is not 0/1 or true/false"):
        build("imagefolder", root, concepts_csv=str(csv))
    frame.loc[2, "odd_tens"] = ""
    frame.to_csv(csv, index=False)
    with pytest.raises(PrunelensError, match=r"data row 3, column 'odd_tens': '' is not 0/1"):
        build("imagefolder", root, concepts_csv=str(csv))
    frame[["image_id"]].to_csv(csv, index=False)
    with pytest.raises(PrunelensError, match="concepts.csv: no concept columns besides 'image_id'"):
        build("imagefolder", root, concepts_csv=str(csv))
    with pytest.raises(PrunelensError, match="dataset.options.concepts_csv: .*nothere.csv: not found"):
        build("imagefolder", root, concepts_csv=str(tmp_path / "nothere.csv"))
    with pytest.raises(PrunelensError, match="dataset.options.missing_concepts: 'skip' is not 'error' or 'drop'"):
        build("imagefolder", root, concepts_csv=str(csv), missing_concepts="skip")


@pytest.mark.parametrize("in_memory_max", [20000, 0])
def test_imagefolder_missing_concepts(tmp_path: Path, in_memory_max: int) -> None:
    root = tmp_path / "data"
    images = write_folder(root)
    missing = ("train/cat/c01.png", "test/dog/d04.png")
    listed = {**{r: v for r, v in images.items() if r not in missing}, "train/cat/gone.png": 0}
    csv = write_folder_csv(tmp_path / "concepts.csv", listed)
    with pytest.raises(PrunelensError, match=r"concepts.csv: no row for image train/cat/c01.png \(2 image\(s\) of .*data have"):
        build("imagefolder", root, concepts_csv=str(csv), in_memory_max=in_memory_max)
    bundle = build("imagefolder", root, concepts_csv=str(csv), missing_concepts="drop", in_memory_max=in_memory_max)
    seen = assert_folder_concepts(bundle, root, images)
    assert sorted(seen) == sorted(v for r, v in images.items() if r not in missing) and len(bundle.test) == 3
    assert bundle.notes == [
        f"imagefolder: dropped 2 image(s) without concepts in {csv} (first: train/cat/c01.png)",
        f"imagefolder: 1 row(s) of {csv} name no image (first: 'train/cat/gone.png')",
    ]
    only_train = write_folder_csv(tmp_path / "train.csv", {r: v for r, v in images.items() if r.startswith("train/")})
    with pytest.raises(PrunelensError, match=r"train.csv: no image of .*test has a row"):
        build("imagefolder", root, concepts_csv=str(only_train), missing_concepts="drop")


@pytest.mark.parametrize("in_memory_max", [20000, 0])
def test_imagefolder_concepts_skip_unreadable_images_aligned(tmp_path: Path, in_memory_max: int) -> None:
    root = tmp_path / "data"
    images = write_folder(root)
    csv = write_folder_csv(tmp_path / "concepts.csv", images, "stem")
    (root / "train" / "cat" / "c02.png").write_bytes(b"not an image")  # has a row: skipped, its row with it
    bundle = build("imagefolder", root, concepts_csv=str(csv), in_memory_max=in_memory_max)
    assert len(bundle.notes) == 1 and bundle.notes[0].startswith("imagefolder: skipped 1 unreadable image file(s) in train")
    seen = assert_folder_concepts(bundle, root, images)
    assert sorted(seen) == sorted(v for r, v in images.items() if r != "train/cat/c02.png")
    if not in_memory_max:
        image, label = bundle.test.dataset[0]
        assert image.shape == (3, 16, 16) and label == 0
