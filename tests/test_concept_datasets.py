"""Concept-labelled image datasets: CUB-200-2011, HAM10000 and Derm7pt written here in their release layouts, and
the class-level attribute table helpers (`imagefolder` concepts: test_concept_folder.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from concept_files import build, image_values, sample_paths, save_image

from prunelens.config import DatasetConfig
from prunelens.data import DatasetSplit, TensorSplit, build_dataset
from prunelens.data.attributes import binarise_class_table, class_frequencies, read_class_table
from prunelens.data.derm7pt import CONCEPT_NAMES, derm7pt_concepts
from prunelens.data.folder import IMAGENET_STATS
from prunelens.errors import PrunelensError

# --- CUB-200-2011 -------------------------------------------------------------------------------------------

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
CUB_ATTRIBUTES = ["has_bill_shape::dagger", "has_wing_color::blue", "has_size::small", "has_tail_shape::forked"]
_ABSENT, _HIDDEN = (0, 3), (0, 1)  # (is_present, certainty_id); certainty 1 = not visible
CUB_LABELS = {  # image id: (class id, is_train, (is_present, certainty_id) per attribute)
    1: (1, 1, [(1, 3), (1, 4), (1, 2), _ABSENT]),
    2: (1, 1, [(1, 3), _HIDDEN, _ABSENT, _ABSENT]),
    3: (1, 1, [(1, 3), _HIDDEN, _HIDDEN, _ABSENT]),
    4: (1, 0, [_ABSENT, _ABSENT, (1, 3), _ABSENT]),  # test: would tip class 1's has_size::small if counted
    5: (2, 1, [(1, 3), (1, 3), _ABSENT, (1, 3)]),
    6: (2, 1, [(1, 3), _ABSENT, _ABSENT, (1, 3)]),
    7: (2, 1, [(1, 3), _ABSENT, _ABSENT, (1, 3)]),
    8: (2, 0, [_ABSENT, _ABSENT, _ABSENT, _ABSENT]),
    9: (3, 1, [(1, 3), (1, 2), (1, 3), _ABSENT]),
    10: (3, 1, [_ABSENT, (1, 2), (1, 3), _ABSENT]),
    11: (3, 1, [_ABSENT, _ABSENT, (1, 3), _ABSENT]),
    12: (3, 0, [_ABSENT, _ABSENT, _ABSENT, _ABSENT]),
}
TRAIN_FREQUENCIES = torch.tensor([[1, 1, 1 / 2, 0], [1, 1 / 3, 0, 1], [1 / 3, 2 / 3, 1, 0]])
"""Over train images, not-visible absences not counted."""
CLASS_TABLE = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 1], [0, 1, 1, 0]], dtype=torch.bool)
"""> 0.5: class 1's has_size::small is exactly 0.5, so absent."""


def cub_value(image_id: int) -> int:
    return 10 * image_id + 40


def write_cub(root: Path, names_at: str = "attributes.txt", bad_image: int | None = None) -> Path:
    root.mkdir(parents=True)
    (root / "attributes").mkdir()
    (root / "classes.txt").write_text("".join(f"{k} {name}\n" for k, name in enumerate(CUB_CLASSES, 1)))
    images, labels, split, attributes = [], [], [], []
    for image_id, (class_id, is_train, values) in CUB_LABELS.items():
        folder = CUB_CLASSES[class_id - 1]
        relative = f"{folder}/{folder[4:]}_{image_id:04d}_{image_id}.jpg"
        size = (16, 20) if image_id % 2 else (20, 16)
        save_image(root / "images" / relative, cub_value(image_id), size)
        images.append(f"{image_id} {relative}\n")
        labels.append(f"{image_id} {class_id}\n")
        split.append(f"{image_id} {is_train}\n")
        for attribute_id, (present, certainty) in enumerate(values, 1):
            extra = " 0" if (image_id, attribute_id) == (6, 2) else ""  # the real file has a few 6-field lines
            attributes.append(f"{image_id} {attribute_id} {present} {certainty}{extra} 3.27\n")
    if bad_image is not None:
        relative = images[bad_image - 1].split()[1]
        (root / "images" / relative).write_bytes(b"not an image")
    (root / "images.txt").write_text("".join(images))
    (root / "image_class_labels.txt").write_text("".join(labels))
    (root / "train_test_split.txt").write_text("".join(split))
    (root / "attributes" / "image_attribute_labels.txt").write_text("".join(attributes))
    names = root / names_at
    names.write_text("".join(f"{k} {name}\n" for k, name in enumerate(CUB_ATTRIBUTES, 1)))
    return root


def cub_id_of(value: int) -> int:
    return (value - 40) // 10


def test_class_frequencies_and_binarising_follow_koh() -> None:
    present = torch.tensor([[1, 0], [1, 1], [0, 0], [0, 1]], dtype=torch.bool)
    known = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]], dtype=torch.bool)
    labels = torch.tensor([0, 0, 1, 1])
    assert torch.allclose(class_frequencies(present, labels, 3), torch.tensor([[1, 0.5], [0, 0.5], [0, 0]]))
    assert torch.allclose(class_frequencies(present, labels, 3, known), torch.tensor([[1, 0], [0, 0.5], [0, 0]]))
    values = torch.tensor([[0.9, 0.5, 0.6], [0.7, 0.2, 0.4], [0.2, 0.8, 0.51]])
    table, names = binarise_class_table(values, ["a", "b", "c"], 0.5, 2)
    assert names == ["a", "c"]
    assert table.tolist() == [[True, True], [True, False], [False, True]]
    assert binarise_class_table(values, ["a", "b", "c"], 0.5, 1)[1] == ["a", "b", "c"]


def test_cub_class_concepts_labels_and_split(tmp_path: Path) -> None:
    bundle = build("cub", write_cub(tmp_path / "CUB_200_2011"), min_classes=1)
    assert bundle.class_names == ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]
    assert bundle.concept_names == CUB_ATTRIBUTES
    assert torch.equal(bundle.class_concepts, CLASS_TABLE)
    assert bundle.num_classes == 3 and bundle.image_size == (16, 16) and bundle.in_channels == 3
    seen = []
    for part in ("train", "val", "test"):
        split = getattr(bundle, part)
        assert isinstance(split, TensorSplit) and split.images.dtype == torch.uint8
        for value, label, concepts in zip(image_values(split), split.labels, split.extras["concepts"]):
            class_id, is_train, _ = CUB_LABELS[cub_id_of(value)]
            assert bool(is_train) == (part != "test")
            assert int(label) == class_id - 1
            assert torch.equal(concepts, CLASS_TABLE[class_id - 1])
            seen.append(cub_id_of(value))
    assert sorted(seen) == list(CUB_LABELS)
    assert len(bundle.test) == 3 and bundle.notes == []


def test_cub_min_classes_drops_rare_attributes(tmp_path: Path) -> None:
    root = write_cub(tmp_path / "cub")
    bundle = build("cub", root, min_classes=2)
    assert bundle.concept_names == CUB_ATTRIBUTES[:2]
    assert torch.equal(bundle.class_concepts, CLASS_TABLE[:, :2])
    assert bundle.train.extras["concepts"].shape[1] == 2
    lenient = build("cub", root, min_classes=1, class_threshold=0.4)  # class 1's 0.5 is now present
    assert lenient.class_concepts[0].tolist() == [True, True, True, False]
    with pytest.raises(PrunelensError, match="dataset.options.min_classes: no attribute .* is present in 10 classes"):
        build("cub", root)  # Koh's 10 classes: none of 3 classes' attributes survive


@pytest.mark.parametrize("min_certainty", [1, 3])
def test_cub_image_concepts(tmp_path: Path, min_certainty: int) -> None:
    bundle = build("cub", write_cub(tmp_path / "cub"), concepts="image", min_classes=1, min_certainty=min_certainty)
    assert torch.equal(bundle.class_concepts, CLASS_TABLE)
    for part in ("train", "val", "test"):
        split = getattr(bundle, part)
        for value, concepts in zip(image_values(split), split.extras["concepts"]):
            expected = [bool(p) and c >= min_certainty for p, c in CUB_LABELS[cub_id_of(value)][2]]
            assert concepts.tolist() == expected
    kept = build("cub", write_cub(tmp_path / "kept"), concepts="image", min_classes=2)
    assert kept.concept_names == CUB_ATTRIBUTES[:2] and kept.test.extras["concepts"].shape == (3, 2)


@pytest.mark.parametrize("names_at", ["attributes.txt", "attributes/attributes.txt", "../attributes.txt"])
def test_cub_finds_attribute_names(tmp_path: Path, names_at: str) -> None:
    bundle = build("cub", write_cub(tmp_path / "CUB_200_2011", names_at=names_at), min_classes=1)
    assert bundle.concept_names == CUB_ATTRIBUTES


def test_cub_streams_with_aligned_concepts(tmp_path: Path) -> None:
    root = write_cub(tmp_path / "cub")
    bundle = build("cub", root, concepts="image", min_classes=1, in_memory_max=0)
    assert (bundle.mean, bundle.std) == IMAGENET_STATS and bundle.image_size == (16, 16)
    for part in ("train", "val", "test"):
        split = getattr(bundle, part)
        assert isinstance(split, DatasetSplit)
        for path, concepts in zip(sample_paths(split), split.extras["concepts"]):
            image_id = int(Path(path).stem.split("_")[-1])
            assert concepts.tolist() == [bool(p) for p, _ in CUB_LABELS[image_id][2]]
    image, label = bundle.test.dataset[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 0


@pytest.mark.parametrize("in_memory_max", [0, 20000])
def test_cub_skips_unreadable_images_keeping_concepts_aligned(tmp_path: Path, in_memory_max: int) -> None:
    bundle = build("cub", write_cub(tmp_path / "cub", bad_image=5), concepts="image", min_classes=1, in_memory_max=in_memory_max)
    assert len(bundle.notes) == 1 and bundle.notes[0].startswith("cub: skipped 1 unreadable image file(s) in train")
    assert len(bundle.train) + len(bundle.val) == 8
    for part in ("train", "val"):
        split = getattr(bundle, part)
        if in_memory_max:
            ids = [cub_id_of(value) for value in image_values(split)]
        else:
            ids = [int(Path(path).stem.split("_")[-1]) for path in sample_paths(split)]
        assert 5 not in ids
        for image_id, concepts in zip(ids, split.extras["concepts"]):
            assert concepts.tolist() == [bool(p) for p, _ in CUB_LABELS[image_id][2]]


def test_cub_errors_name_the_file(tmp_path: Path) -> None:
    root = write_cub(tmp_path / "cub")
    (root / "attributes.txt").unlink()
    with pytest.raises(PrunelensError, match=r"no attribute names \(looked for .*attributes.txt.*attributes/attributes.txt"):
        build("cub", root, min_classes=1)
    root = write_cub(tmp_path / "cub2")
    (root / "train_test_split.txt").unlink()
    (root / "images.txt").unlink()
    with pytest.raises(PrunelensError, match=r"not a CUB-200-2011 directory \(missing images.txt, train_test_split.txt\)"):
        build("cub", root)
    root = write_cub(tmp_path / "cub3")
    with open(root / "image_class_labels.txt", "a") as file:
        file.write("13 x\n")
    with pytest.raises(PrunelensError, match="image_class_labels.txt: could not convert"):
        build("cub", root, min_classes=1)
    root = write_cub(tmp_path / "cub4")
    with open(root / "attributes" / "image_attribute_labels.txt", "a") as file:
        file.write("3 9 1 3 0.5\n")
    with pytest.raises(PrunelensError, match=r"image_attribute_labels.txt: line '3 9 1 3': 9 is not an attribute id 1..4"):
        build("cub", root, min_classes=1)
    with pytest.raises(PrunelensError, match="dataset.options.concepts: 'part' is not"):
        build("cub", root, concepts="part")


# --- class tables -------------------------------------------------------------------------------------------


def test_read_class_table(tmp_path: Path) -> None:
    classes = ["cat", "dog"]
    path = tmp_path / "table.csv"
    path.write_text("class,furry,barks\ndog,1,0.9\ncat,0.8,0\n")
    values, names = read_class_table(path, classes)
    assert names == ["furry", "barks"] and torch.allclose(values, torch.tensor([[0.8, 0.0], [1.0, 0.9]]))
    path.write_text("class,furry,barks\ncat,80,0\ndog,100,90\n")  # percentages
    assert torch.allclose(read_class_table(path, classes)[0], torch.tensor([[0.8, 0.0], [1.0, 0.9]]))
    bad = {
        "class,furry\ncat,1\n": r"table.csv: no row for class 'dog'",
        "class,furry\ncat,1\ndog,1\nbird,0\n": r"table.csv: unknown class 'bird'",
        "class,furry\ncat,1\ndog,yes\n": r"table.csv: class 'dog', column 'furry': 'yes' is not a number",
        "class,furry\ncat,1\ndog,\n": r"table.csv: class 'dog', column 'furry': '' is not a number",
        "class,furry\ncat,1\ndog,150\n": r"table.csv: class 'dog', column 'furry': '150' is not a number in 0–1 or 0–100",
        "name,furry\ncat,1\n": r"table.csv: no 'class' column",
        "class,furry\ncat,1\ncat,0\ndog,1\n": r"table.csv: class 'cat' has more than one row",
    }
    for text, message in bad.items():
        path.write_text(text)
        with pytest.raises(PrunelensError, match=message):
            read_class_table(path, classes)


# --- HAM10000 and Derm7pt -----------------------------------------------------------------------------------

HAM_DX = ["nv", "mel", "bkl", "bcc", "nv", "akiec", "df", "vasc", "nv", "mel"]
"""The diagnosis of each of 10 lesions, two images each."""
DERM_CATEGORIES = {  # pigment_network, streaks, dots_and_globules, regression_structures, blue_whitish_veil
    "absent": ("absent", "absent", "absent", "absent", "absent"),
    "all": ("atypical", "irregular", "irregular", "combinations", "present"),
    "mixed": ("typical", "regular", "regular", "blue areas", "absent"),
}
DERM_CONCEPTS = {  # in CONCEPT_NAMES order
    "absent": [0, 0, 0, 0, 0, 0, 0, 0],
    "all": [1, 0, 1, 1, 1, 0, 1, 0],
    "mixed": [0, 1, 0, 1, 0, 1, 0, 1],
}
_DERM_COLUMNS = ["pigment_network", "streaks", "dots_and_globules", "regression_structures", "blue_whitish_veil"]


def ham_id(i: int) -> str:
    return f"ISIC_{i:07d}"


def ham_kind(i: int) -> str:
    return list(DERM_CATEGORIES)[i % 3]


def write_ham(root: Path) -> Path:
    rows = []
    for i in range(20):
        lesion = i // 2
        folder = "HAM10000_images_part_1" if i < 10 else "HAM10000_images_part_2"
        save_image(root / folder / f"{ham_id(i)}.jpg", 10 * i + 20, (20, 16))
        rows.append({"lesion_id": f"HAM_{lesion:07d}", "image_id": ham_id(i), "dx": HAM_DX[lesion], "dx_type": "histo",
                     "age": 50, "sex": "male", "localization": "back"})  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


def ham_index(value: int) -> int:
    return (value - 20) // 10


def test_ham10000_labels_and_lesion_splits(tmp_path: Path) -> None:
    root = write_ham(tmp_path / "ham")
    for task, names in (("binary", ["benign", "malignant"]), ("dx", ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"])):
        bundle = build("ham10000", root, task=task)
        assert bundle.class_names == names and bundle.concept_names is None
        lesions = {}
        for part in ("train", "val", "test"):
            split = getattr(bundle, part)
            assert "concepts" not in split.extras
            for value, label in zip(image_values(split), split.labels.tolist()):
                dx = HAM_DX[ham_index(value) // 2]
                assert label == (int(dx in ("mel", "bcc", "akiec")) if task == "binary" else names.index(dx))
                lesions.setdefault(ham_index(value) // 2, set()).add(part)
        assert sorted(lesions) == list(range(10)) and all(len(parts) == 1 for parts in lesions.values())
        assert len(bundle.test) == 4 and len(bundle.val) == 2  # 2 of 10 lesions, then 1 of 8


def test_ham10000_lesion_split_is_seeded(tmp_path: Path) -> None:
    root = write_ham(tmp_path / "ham")
    tests = [sorted(image_values(build_dataset(DatasetConfig(name="ham10000", root=root, image_size=16, seed=s)).test))
             for s in (0, 0, 1, 2, 3)]  # fmt: skip
    assert tests[0] == tests[1] and any(t != tests[0] for t in tests[2:])


@pytest.mark.parametrize("form", ["binary", "categorical"])
def test_ham10000_concepts(tmp_path: Path, form: str) -> None:
    root = write_ham(tmp_path / "ham")
    rows = []
    for i in range(20):
        if form == "binary":
            rows.append({"image_id": ham_id(i), **dict(zip(CONCEPT_NAMES, DERM_CONCEPTS[ham_kind(i)]))})
        else:
            rows.append({"image_id": ham_id(i), **dict(zip(_DERM_COLUMNS, DERM_CATEGORIES[ham_kind(i)]))})
    pd.DataFrame(rows).to_csv(tmp_path / "concepts.csv", index=False)
    for in_memory_max in (20000, 0):
        bundle = build("ham10000", root, concepts_csv=str(tmp_path / "concepts.csv"), in_memory_max=in_memory_max)
        assert bundle.concept_names == CONCEPT_NAMES and bundle.class_concepts is None
        for part in ("train", "val", "test"):
            split = getattr(bundle, part)
            if in_memory_max:
                indices = [ham_index(v) for v in image_values(split)]
            else:
                indices = [int(Path(p).stem[5:]) for p in sample_paths(split)]
            for i, concepts in zip(indices, split.extras["concepts"]):
                assert concepts.int().tolist() == DERM_CONCEPTS[ham_kind(i)]


def test_ham10000_missing_concepts(tmp_path: Path) -> None:
    root = write_ham(tmp_path / "ham")
    rows = [{"image_id": ham_id(i), **dict(zip(CONCEPT_NAMES, DERM_CONCEPTS[ham_kind(i)]))} for i in range(20) if i != 7]
    pd.DataFrame(rows).to_csv(tmp_path / "concepts.csv", index=False)
    with pytest.raises(PrunelensError, match=r"concepts.csv: no row for image ISIC_0000007 \(1 image\(s\)"):
        build("ham10000", root, concepts_csv=str(tmp_path / "concepts.csv"))
    bundle = build("ham10000", root, concepts_csv=str(tmp_path / "concepts.csv"), missing_concepts="drop")
    assert sum(len(getattr(bundle, part)) for part in ("train", "val", "test")) == 19
    assert bundle.notes == [f"ham10000: dropped 1 image(s) without concepts in {tmp_path / 'concepts.csv'} (first: ISIC_0000007)"]


def test_ham10000_errors(tmp_path: Path) -> None:
    with pytest.raises(PrunelensError, match=r"not a HAM10000 directory \(missing HAM10000_metadata.csv\)"):
        build("ham10000", tmp_path)
    root = write_ham(tmp_path / "ham")
    (tmp_path / "concepts.csv").write_text("image_id,BWV\nISIC_0000000,1\n")
    with pytest.raises(PrunelensError, match="concepts.csv: expected the 0/1 columns BWV, RegularDG"):
        build("ham10000", root, concepts_csv=str(tmp_path / "concepts.csv"))
    with pytest.raises(PrunelensError, match="dataset.options.concepts_csv: .*nothere.csv: not found"):
        build("ham10000", root, concepts_csv=str(tmp_path / "nothere.csv"))
    rows = [{"image_id": ham_id(i), **dict.fromkeys(CONCEPT_NAMES, "true")} for i in range(20)]
    rows[4]["IrregularStreaks"] = "yes"
    pd.DataFrame(rows).to_csv(tmp_path / "concepts.csv", index=False)
    with pytest.raises(PrunelensError, match=r"concepts.csv: data row 5, column 'IrregularStreaks': 'yes' is not 0/1"):
        build("ham10000", root, concepts_csv=str(tmp_path / "concepts.csv"))
    frame = pd.read_csv(root / "HAM10000_metadata.csv")
    frame.loc[3, "dx"] = "scc"
    frame.to_csv(root / "HAM10000_metadata.csv", index=False)
    with pytest.raises(PrunelensError, match="HAM10000_metadata.csv: data row 4: dx 'scc' is not one of akiec"):
        build("ham10000", root)


DERM_CASES = [  # diagnosis, concept kind
    ("melanoma", "all"), ("clark nevus", "absent"), ("melanoma (in situ)", "mixed"), ("seborrheic keratosis", "absent"),
    ("melanosis", "mixed"), ("melanoma", "all"), ("basal cell carcinoma", "mixed"), ("clark nevus", "absent"),
]  # fmt: skip
DERM_SPLITS = {"train": [0, 1, 2, 3], "val": [4, 5], "test": [7, 6]}


def write_derm7pt(root: Path) -> Path:
    rows = []
    for case, (diagnosis, kind) in enumerate(DERM_CASES):
        save_image(root / "images" / "NEL" / f"Nel{case:03d}.jpg", 20 * case + 30, (24, 16))
        save_image(root / "images" / "NEL" / f"Nel{case:03d}_clinic.jpg", 0)
        rows.append({"case_num": case + 1, "diagnosis": diagnosis, **dict(zip(_DERM_COLUMNS, DERM_CATEGORIES[kind])),
                     "pigmentation": "absent", "vascular_structures": "absent", "clinic": f"NEL/Nel{case:03d}_clinic.jpg",
                     "derm": f"NEL/Nel{case:03d}.jpg"})  # fmt: skip
    (root / "meta").mkdir()
    pd.DataFrame(rows).to_csv(root / "meta" / "meta.csv", index=False)
    for part, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        pd.DataFrame({"indexes": DERM_SPLITS[part]}).to_csv(root / "meta" / f"{name}_indexes.csv", index=False)
    return root


def test_derm7pt_splits_labels_and_concepts(tmp_path: Path) -> None:
    root = write_derm7pt(tmp_path / "release_v0")
    diagnoses = sorted({d for d, _ in DERM_CASES})
    for task in ("melanoma", "diagnosis"):
        bundle = build("derm7pt", root, task=task)
        assert bundle.class_names == (["not melanoma", "melanoma"] if task == "melanoma" else diagnoses)
        assert bundle.concept_names == CONCEPT_NAMES and bundle.class_concepts is None
        for part, cases in DERM_SPLITS.items():
            split = getattr(bundle, part)
            assert [(v - 30) // 20 for v in image_values(split)] == cases
            for case, label, concepts in zip(cases, split.labels.tolist(), split.extras["concepts"]):
                diagnosis, kind = DERM_CASES[case]
                assert label == (int("melanoma" in diagnosis) if task == "melanoma" else diagnoses.index(diagnosis))
                assert concepts.int().tolist() == DERM_CONCEPTS[kind]


def test_derm7pt_errors(tmp_path: Path) -> None:
    root = write_derm7pt(tmp_path / "derm")
    (root / "meta" / "valid_indexes.csv").unlink()
    with pytest.raises(PrunelensError, match=r"not a Derm7pt directory \(missing meta/valid_indexes.csv\)"):
        build("derm7pt", root)
    root = write_derm7pt(tmp_path / "derm2")
    pd.DataFrame({"indexes": [0, 8]}).to_csv(root / "meta" / "test_indexes.csv", index=False)
    with pytest.raises(PrunelensError, match=r"test_indexes.csv: data row 2: 8 is not a row of meta.csv \(0..7\)"):
        build("derm7pt", root)
    frame = pd.DataFrame({column: ["absent"] for column in _DERM_COLUMNS})
    assert derm7pt_concepts(frame, Path("x.csv")).tolist() == [[False] * 8]
    frame.loc[0, "streaks"] = "wavy"
    with pytest.raises(PrunelensError, match="x.csv: data row 1: streaks 'wavy' is not one of absent, regular, irregular"):
        derm7pt_concepts(frame, Path("x.csv"))
