"""Dataset loaders: files written here in each source format, the built-in data, and the `shapes` generator."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunelens.config import DatasetConfig
from prunelens.data import DATASETS, DatasetSplit, TensorSplit, build_dataset
from prunelens.data import shapes as shapes_module
from prunelens.data.idx import FASHION_MNIST_ROOT, read_idx
from prunelens.errors import PrunelensError

RNG = np.random.default_rng(0)


def build(name: str, root: Path | None = None, seed: int = 0, **fields) -> object:
    return build_dataset(DatasetConfig(name=name, root=root, seed=seed, **fields))


def all_classes_in(split: TensorSplit, k: int) -> bool:
    return set(split.labels.tolist()) == set(range(k))


# --- IDX ---------------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> Path:
    """`array` in IDX format: magic (0, 0, type code, ndim), big-endian uint32 dims, big-endian data."""
    big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    data = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(big_endian).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def idx_dir(root: Path, suffix: str = "", dotted: bool = False) -> dict[str, np.ndarray]:
    root.mkdir()
    arrays = {
        "train-images": RNG.integers(0, 256, (40, 6, 5), dtype=np.uint8),
        "train-labels": np.arange(40, dtype=np.uint8) % 4,
        "t10k-images": RNG.integers(0, 256, (12, 6, 5), dtype=np.uint8),
        "t10k-labels": np.arange(12, dtype=np.uint8) % 4,
    }
    for name, array in arrays.items():
        ndim = 3 if "images" in name else 1
        write_idx(root / f"{name}{'.' if dotted else '-'}idx{ndim}-ubyte{suffix}", array)
    return arrays


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_round_trips_exactly(tmp_path: Path, suffix: str) -> None:
    arrays = idx_dir(tmp_path / "mnist", suffix)
    bundle = build("idx", tmp_path / "mnist")
    assert bundle.test.images.dtype == torch.uint8 and bundle.test.images.shape == (12, 1, 6, 5)
    assert np.array_equal(bundle.test.images[:, 0].numpy(), arrays["t10k-images"])
    assert np.array_equal(bundle.test.labels.numpy(), arrays["t10k-labels"])
    assert len(bundle.train) + len(bundle.val) == 40 and len(bundle.val) == 4  # val_fraction 0.1, stratified
    assert all_classes_in(bundle.val, 4)
    source = {arr.tobytes(): int(label) for arr, label in zip(arrays["train-images"], arrays["train-labels"])}
    for split in (bundle.train, bundle.val):
        assert all(source[img[0].numpy().tobytes()] == int(y) for img, y in zip(split.images, split.labels))
    assert bundle.num_classes == 4 and bundle.in_channels == 1 and bundle.image_size == (6, 5)
    assert bundle.mean[0] == pytest.approx(bundle.train.images.double().mean().item() / 255)


def test_idx_dotted_names_and_resize(tmp_path: Path) -> None:
    idx_dir(tmp_path / "mirror", ".gz", dotted=True)
    bundle = build("idx", tmp_path / "mirror", image_size=12)
    assert bundle.train.images.shape[1:] == (1, 12, 12) and bundle.train.images.dtype == torch.uint8
    assert bundle.image_size == (12, 12)


@pytest.mark.parametrize(
    ("code", "dtype"), [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32)]
)
def test_read_idx_type_codes(tmp_path: Path, code: int, dtype: type) -> None:
    array = (RNG.standard_normal((3, 4, 2)) * 100).astype(dtype)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.idx", array, code)), array)


def test_idx_truncated_and_mismatched(tmp_path: Path) -> None:
    arrays = idx_dir(tmp_path / "d")
    images = tmp_path / "d" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(
        PrunelensError, match=r"train-images-idx3-ubyte: truncated IDX file \(expected 1200 bytes of data, found 1100\)"
    ):
        build("idx", tmp_path / "d")
    write_idx(images, arrays["train-images"][:30])
    with pytest.raises(PrunelensError, match="30 images"):
        build("idx", tmp_path / "d")
    images.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(PrunelensError, match="not an IDX file"):
        build("idx", tmp_path / "d")
    gz = write_idx(tmp_path / "x.gz", arrays["train-images"])
    gz.write_bytes(gz.read_bytes()[:50])
    with pytest.raises(PrunelensError, match="x.gz: cannot read"):
        read_idx(gz)


def test_missing_root_and_files(tmp_path: Path) -> None:
    for name in ("idx", "medmnist", "imagefolder", "csv"):
        with pytest.raises(PrunelensError, match=f"{tmp_path / 'nowhere'}: not found"):
            build(name, tmp_path / "nowhere")
        with pytest.raises(PrunelensError, match="dataset.root: required"):
            build(name)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrunelensError, match="no train images file"):
        build("idx", tmp_path / "empty")


@pytest.mark.skipif(not FASHION_MNIST_ROOT.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_files() -> None:
    labels = read_idx(FASHION_MNIST_ROOT / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10


# --- MedMNIST ----------------------------------------------------------------------------------------------


def medmnist_arrays(rgb: bool, label_shape: str = "column") -> dict[str, np.ndarray]:
    arrays = {}
    for part, n in (("train", 30), ("val", 10), ("test", 10)):
        arrays[f"{part}_images"] = RNG.integers(0, 256, (n, 7, 7, 3) if rgb else (n, 7, 7), dtype=np.uint8)
        labels = np.arange(n) % 5
        arrays[f"{part}_labels"] = labels[:, None] if label_shape == "column" else labels
    return arrays


@pytest.mark.parametrize("rgb", [False, True])
def test_medmnist_reads_npz(tmp_path: Path, rgb: bool) -> None:
    arrays = medmnist_arrays(rgb)
    np.savez_compressed(tmp_path / "pathmnist.npz", **arrays)
    bundle = build("medmnist", tmp_path / "pathmnist.npz")
    assert bundle.in_channels == (3 if rgb else 1) and bundle.num_classes == 5
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (30, 10, 10)
    expected = arrays["val_images"] if rgb else arrays["val_images"][..., None]
    assert np.array_equal(bundle.val.images.permute(0, 2, 3, 1).numpy(), expected)
    assert np.array_equal(bundle.val.labels.numpy(), arrays["val_labels"][:, 0])


def test_medmnist_directory_flag_and_size(tmp_path: Path) -> None:
    np.savez(tmp_path / "bloodmnist_64.npz", **medmnist_arrays(False, label_shape="flat"))
    bundle = build("medmnist", tmp_path, options={"flag": "bloodmnist", "size": 64})
    assert len(bundle.train) == 30
    with pytest.raises(PrunelensError, match="dataset.options.flag: required"):
        build("medmnist", tmp_path)
    with pytest.raises(PrunelensError, match="bloodmnist.npz: not found"):
        build("medmnist", tmp_path, options={"flag": "bloodmnist"})


def test_medmnist_bad_files(tmp_path: Path) -> None:
    arrays = medmnist_arrays(False)
    path = tmp_path / "organmnist.npz"
    np.savez_compressed(path, **arrays)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(PrunelensError, match=r"organmnist.npz: .*not a valid .npz file \(truncated or corrupted"):
        build("medmnist", path)
    np.savez(path, **{k: v for k, v in arrays.items() if k != "val_labels"})
    with pytest.raises(PrunelensError, match="organmnist.npz: missing key 'val_labels'"):
        build("medmnist", path)
    np.savez(path, **{**arrays, "test_labels": np.zeros((10, 3), dtype=np.uint8)})
    with pytest.raises(PrunelensError, match="multi-label.*only multi-class"):
        build("medmnist", path)


# --- ImageFolder -------------------------------------------------------------------------------------------


def image_tree(root: Path, counts: dict[str, int], size: tuple[int, int] = (8, 8), classes=("cat", "dog")) -> None:
    for part, n in counts.items():
        for label, name in enumerate(classes):
            (root / part / name).mkdir(parents=True)
            for i in range(n):
                pixels = np.full((*size[::-1], 3), 40 * label, dtype=np.uint8) + RNG.integers(
                    0, 20, (*size[::-1], 3), dtype=np.uint8
                )
                Image.fromarray(pixels).save(root / part / name / f"{i}.png")


def test_imagefolder_in_memory(tmp_path: Path) -> None:
    image_tree(tmp_path, {"train": 10, "test": 3})
    bundle = build("imagefolder", tmp_path)
    assert isinstance(bundle.train, TensorSplit) and bundle.train.images.dtype == torch.uint8
    assert bundle.class_names == ["cat", "dog"] and bundle.in_channels == 3 and bundle.image_size == (8, 8)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (18, 2, 6) and all_classes_in(bundle.val, 2)
    first = np.asarray(Image.open(tmp_path / "test" / "cat" / "0.png"))
    assert np.array_equal(bundle.test.images[0].permute(1, 2, 0).numpy(), first)
    assert bundle.test.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_imagefolder_streamed(tmp_path: Path) -> None:
    image_tree(tmp_path, {"train": 4, "val": 2, "test": 2}, size=(10, 8))
    bundle = build("imagefolder", tmp_path, image_size=6, options={"in_memory_max": 0, "mean": [0.5], "std": [0.25]})
    assert isinstance(bundle.train, DatasetSplit) and len(bundle.val) == 4
    image, label = bundle.test.dataset[3]
    assert image.shape == (3, 6, 6) and image.dtype == torch.float32 and label == 1
    assert bundle.mean == (0.5, 0.5, 0.5) and bundle.image_size == (6, 6)
    small = build("imagefolder", tmp_path, max_train=4, options={"in_memory_max": 0})
    assert len(small.train) == 4 and sorted(small.train.dataset.dataset.targets) == [0] * 4 + [1] * 4


def test_imagefolder_errors(tmp_path: Path) -> None:
    image_tree(tmp_path / "a", {"train": 2, "test": 1})
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(tmp_path / "a" / "train" / "cat" / "odd.png")
    with pytest.raises(PrunelensError, match="set dataset.image_size"):
        build("imagefolder", tmp_path / "a")
    assert build("imagefolder", tmp_path / "a", image_size=4).train.images.shape[1:] == (3, 4, 4)
    image_tree(tmp_path / "b", {"train": 2}, classes=("cat", "dog"))
    image_tree(tmp_path / "b", {"test": 2}, classes=("cat", "cow"))
    with pytest.raises(PrunelensError, match="differ from train"):
        build("imagefolder", tmp_path / "b")
    image_tree(tmp_path / "c", {"train": 2})
    with pytest.raises(PrunelensError, match="missing test split"):
        build("imagefolder", tmp_path / "c")


def test_imagefolder_grey(tmp_path: Path) -> None:
    for part in ("train", "test"):
        for name in ("x", "y"):
            (tmp_path / part / name).mkdir(parents=True)
            for i in range(5):
                Image.fromarray(RNG.integers(0, 256, (4, 4), dtype=np.uint8)).save(tmp_path / part / name / f"{i}.png")
    assert build("imagefolder", tmp_path).in_channels == 1


# --- CSV, mnist5k, digits ----------------------------------------------------------------------------------


def test_csv_without_and_with_header(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (60, 16))
    labels = np.arange(60) % 3
    plain = tmp_path / "plain.csv.gz"
    with gzip.open(plain, "wt") as f:
        f.writelines(",".join(map(str, [*row, y])) + "\n" for row, y in zip(pixels, labels))
    bundle = build("csv", plain)
    assert bundle.train.images.shape[1:] == (1, 4, 4) and bundle.num_classes == 3
    assert (len(bundle.train) + len(bundle.val), len(bundle.test)) == (48, 12) and all_classes_in(bundle.test, 3)
    rows = {row.tobytes(): y for row, y in zip(pixels.astype(np.uint8), labels)}
    assert all(rows[img.reshape(-1).numpy().tobytes()] == y for img, y in zip(bundle.test.images, bundle.test.labels))

    named = tmp_path / "named.csv"
    header = "label," + ",".join(f"p{i}" for i in range(16)) + ",split\n"
    names = np.array(["ant", "bee", "cow"])[labels]
    split = np.where(np.arange(60) < 45, "train", "test")
    named.write_text(header + "".join(f"{n},{','.join(map(str, r))},{s}\n" for n, r, s in zip(names, pixels, split)))
    bundle = build("csv", named, options={"shape": [1, 2, 8]})
    assert bundle.class_names == ["ant", "bee", "cow"] and bundle.image_size == (2, 8) and len(bundle.test) == 15
    assert np.array_equal(bundle.test.images.reshape(15, -1).numpy(), pixels[45:])
    with pytest.raises(PrunelensError, match="dataset.options.label_column"):
        build("csv", named, options={"label_column": "nope"})
    with pytest.raises(PrunelensError, match="dataset.options.shape"):
        build("csv", named, options={"shape": [3, 4, 4]})


def test_csv_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("1,2,3,300,0\n" * 10)
    with pytest.raises(PrunelensError, match="bad.csv: pixel values must be numbers in 0–255"):
        build("csv", path)


def test_mnist5k_is_stratified_and_shuffled() -> None:
    bundle = build("mnist5k")
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (3600, 400, 1000)
    assert bundle.train.images.shape[1:] == (1, 28, 28) and bundle.train.images.dtype == torch.uint8
    for split in (bundle.train, bundle.val, bundle.test):
        counts = torch.bincount(split.labels, minlength=10)
        assert counts.min() == counts.max()  # 500 per class in the file ⇒ exact stratification
        assert (split.labels[1:] != split.labels[:-1]).float().mean() > 0.8  # not sorted by label
    assert build("mnist5k").train.labels.equal(bundle.train.labels)
    assert not build("mnist5k", seed=1).train.labels.equal(bundle.train.labels)


def test_digits_and_max_train() -> None:
    bundle = build("digits", max_train=100)
    assert bundle.train.images.shape == (100, 1, 8, 8) and bundle.train.images.max() == 255
    assert torch.bincount(bundle.train.labels).tolist() == [10] * 10
    assert len(bundle.val) + len(bundle.test) == 1797 - 1293


def test_unknown_and_mistyped_options() -> None:
    with pytest.raises(PrunelensError, match=r"dataset.options.bogus: unknown option for dataset 'digits'"):
        build("digits", options={"bogus": 1})
    with pytest.raises(PrunelensError, match=r"dataset.options.n_train: expected int"):
        build("shapes", options={"n_train": "many"})
    with pytest.raises(PrunelensError, match=r"dataset.options.spurious"):
        build("shapes", options={"spurious": 1.5})
    with pytest.raises(PrunelensError, match="unknown dataset 'nope'"):
        build("nope")


# --- shapes ------------------------------------------------------------------------------------------------


def test_shapes_is_deterministic() -> None:
    a, b, c = (shapes_module.generate(300, 32, seed=s, spurious=0.5) for s in (1, 1, 2))
    assert a.images.equal(b.images) and a.labels.equal(b.labels)
    assert all(a.extras[k].equal(b.extras[k]) for k in a.extras)
    assert not a.images.equal(c.images) and not a.labels.equal(c.labels)


def test_shapes_concepts_define_labels() -> None:
    split = shapes_module.generate(1000, 32, seed=3)
    concepts = split.extras["concepts"]
    assert concepts.shape == (1000, 13) and concepts.dtype == torch.bool
    assert concepts.sum(1).eq(4).all()  # one value per attribute group
    satisfied = (concepts[:, None, :] >= shapes_module.CLASS_CONCEPTS[None]).all(-1)
    assert satisfied.sum(1).eq(1).all() and satisfied.float().argmax(1).equal(split.labels)
    assert torch.bincount(split.labels).tolist() == [100] * 10
    assert len(shapes_module.CONCEPT_NAMES) == 13 and "texture:striped" in shapes_module.CONCEPT_NAMES


@pytest.mark.parametrize("size", [16, 32, 64])
def test_shapes_masks_show_the_target_colour(size: int) -> None:
    split = shapes_module.generate(300, size, seed=4)
    masks = split.extras["masks"]
    assert masks.shape == (300, size, size) and masks.flatten(1).any(1).all()
    inside = (split.images.float() / 255 * masks[:, None]).sum((2, 3)) / masks.sum((1, 2))[:, None]
    palette = torch.nn.functional.normalize(shapes_module.COLOUR_RGB, dim=1)
    nearest = (torch.nn.functional.normalize(inside, dim=1) @ palette.T).argmax(1)
    colour = split.extras["concepts"][:, 4:8].float().argmax(1)
    assert nearest.equal(colour)


def predicted_tint(split: TensorSplit) -> torch.Tensor:
    """The class whose tint best matches each image's median background colour."""
    pixels = split.images.float().flatten(2) / 255
    background = pixels.median(2).values
    return ((background - background.mean(1, keepdim=True)) @ shapes_module.TINTS.T).argmax(1)


def test_shapes_spurious_tint_only_in_train() -> None:
    options = {"n_train": 500, "n_val": 100, "n_test": 500, "spurious": 1.0}
    bundle = build("shapes", image_size=32, options=options)
    assert bundle.class_names[0] == "red circle" and bundle.concept_names == shapes_module.CONCEPT_NAMES
    assert (predicted_tint(bundle.train) == bundle.train.labels).float().mean() > 0.95
    assert (predicted_tint(bundle.val) == bundle.val.labels).float().mean() > 0.95
    assert (predicted_tint(bundle.test) == bundle.test.labels).float().mean() < 0.25
    plain = shapes_module.generate(500, 32, seed=0, spurious=0.0)
    assert (predicted_tint(plain) == plain.labels).float().mean() < 0.25


def test_shapes_ten_thousand_at_64() -> None:
    split = shapes_module.generate(10_000, 64, seed=0)
    assert split.images.shape == (10_000, 3, 64, 64) and split.images.dtype == torch.uint8
    assert split.images.float().std() > 20  # objects and noise, not a blank canvas


def test_registry_lists_every_dataset() -> None:
    assert {"shapes", "idx", "fashion_mnist", "medmnist", "imagefolder", "csv", "mnist5k", "digits"} <= set(DATASETS.names())
