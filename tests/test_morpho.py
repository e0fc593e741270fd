"""Morpho-MNIST-style morphometrics and concepts on hand-made digits, and the Fashion-MNIST attribute table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.measure import moments_central

from prunelens.data import morpho
from prunelens.data.fashion_attributes import FASHION_ATTRIBUTES, FASHION_TABLE, fashion_class_concepts
from prunelens.data.idx import FASHION_MNIST_CLASSES
from prunelens.data.morpho import MEASURES, MORPHO_CONCEPTS, binarise, measure, morpho_concepts, quantile_thresholds
from prunelens.errors import PrunelensError


def blank() -> np.ndarray:
    return np.zeros((28, 28), dtype=np.uint8)


def rectangle(top: int, left: int, height: int, width: int, value: int = 255) -> np.ndarray:
    image = blank()
    image[top : top + height, left : left + width] = value
    return image


def sheared_bar(angle: float, thickness: int = 3, rows: range = range(4, 24)) -> np.ndarray:
    """A bar whose top leans right by `angle` radians from vertical (left for negative angles)."""
    image, centre = blank(), (rows.start + rows.stop - 1) / 2
    for row in rows:
        left = round(13 + math.tan(angle) * (centre - row))
        image[row, left : left + thickness] = 255
    return image


def one(image: np.ndarray) -> dict[str, float]:
    return {key: value[0] for key, value in measure(image[None]).items()}


def test_concept_names_fixed():
    assert MORPHO_CONCEPTS == [
        "area:small", "area:large", "length:short", "length:long", "thickness:thin", "thickness:thick",
        "slant:left", "slant:right", "width:narrow", "width:wide", "height:short", "height:tall",
    ]  # fmt: skip


def test_rectangle_area_and_extents():
    m = one(rectangle(5, 7, height=12, width=9))
    assert (m["area"], m["width"], m["height"]) == (108, 9, 12)
    assert m["slant"] == pytest.approx(0, abs=1e-12)
    assert not m["empty"]


def test_threshold_is_half_the_maximum():
    image = rectangle(5, 5, 10, 10, value=200)
    image[5:10, 5:15] = 99  # below 200 / 2: background
    assert one(image)["area"] == 50 and one(image)["height"] == 5


@pytest.mark.parametrize("angle", [0.3, -0.25, 0.0])
def test_slant_sign_and_angle(angle):
    image = sheared_bar(angle)
    mu = moments_central(image.astype(np.float64), order=2)  # mu[p, q]: p along rows (y), q along columns (x)
    m = one(image)
    assert m["slant"] == pytest.approx(math.atan(-mu[1, 1] / mu[2, 0]), abs=1e-9)
    assert m["slant"] == pytest.approx(angle, abs=0.04)
    assert np.sign(m["slant"]) == np.sign(angle) or angle == 0


def test_width_is_measured_after_deslanting():
    upright, slanted = one(sheared_bar(0.0)), one(sheared_bar(0.35))
    assert upright["width"] == 3
    assert slanted["width"] == pytest.approx(3, abs=1)  # its bounding box is ~10 px wide
    assert slanted["height"] == 20


@pytest.mark.parametrize("width", [2, 6])
def test_thickness_of_bars(width):
    assert one(rectangle(4, 10, 20, width))["thickness"] == pytest.approx(width, abs=1)


def test_thickness_orders_strokes():
    values = measure(np.stack([rectangle(4, 10, 20, w) for w in (2, 4, 6, 8)]))["thickness"]
    assert np.all(np.diff(values) > 0)


@pytest.mark.parametrize("width", [1, 2, 4])
def test_length_of_straight_bars(width):
    vertical, horizontal = one(rectangle(4, 10, 20, width)), one(rectangle(10, 4, width, 20))
    assert vertical["length"] == pytest.approx(20, abs=width + 1)
    assert horizontal["length"] == pytest.approx(20, abs=width + 1)


def test_diagonal_steps_count_sqrt2():
    image = blank()
    image[np.arange(5, 15), np.arange(5, 15)] = 255
    assert one(image)["length"] == pytest.approx(9 * math.sqrt(2))


def test_empty_images_give_zeros():
    batch = np.stack([blank(), rectangle(3, 3, 5, 5), np.full((28, 28), 7, dtype=np.uint8)])
    m = measure(batch)
    assert m["empty"].tolist() == [True, False, True]
    for name in MEASURES:
        assert np.isfinite(m[name]).all()
        assert m[name][[0, 2]].tolist() == [0, 0]
    assert m["area"][1] == 25


def test_batch_tensor_and_chunks_agree_with_single_images(monkeypatch):
    batch = np.stack([rectangle(0, 0, 28, 3), rectangle(0, 0, 5, 28), sheared_bar(0.3), rectangle(20, 20, 8, 8)])
    alone = [measure(image[None]) for image in batch]
    together = measure(torch.from_numpy(batch)[:, None])  # (N, 1, H, W) tensor
    monkeypatch.setattr(morpho, "_CHUNK_PIXELS", 2 * 28 * 28)
    chunked = measure(batch)
    for key in (*MEASURES, "empty"):
        np.testing.assert_allclose(together[key], np.concatenate([a[key] for a in alone]))
        np.testing.assert_allclose(chunked[key], together[key])


def test_bad_shape_raises():
    with pytest.raises(PrunelensError, match="greyscale"):
        measure(np.zeros((2, 3, 28, 28), dtype=np.uint8))


def values_of(vector) -> dict[str, np.ndarray]:
    return {name: np.asarray(vector, dtype=np.float64) for name in MEASURES}


def test_quantile_thresholds_and_binarise():
    values = values_of(np.arange(9))
    thresholds = quantile_thresholds(values)
    assert thresholds["area"] == pytest.approx((8 / 3, 16 / 3))
    concepts = binarise(values, thresholds)
    assert concepts.shape == (9, 12) and concepts.dtype == bool
    low, high = [True] * 3 + [False] * 6, [False] * 6 + [True] * 3
    for i in range(0, 12, 2):
        assert concepts[:, i].tolist() == low and concepts[:, i + 1].tolist() == high


def test_tie_spanning_both_quantiles_is_neither():
    values = values_of([1, 2, 2, 2, 2, 2, 2, 3, 4])
    thresholds = quantile_thresholds(values)
    assert thresholds["height"] == (1, 3)
    concepts = binarise(values, thresholds)
    assert concepts[:, 10].tolist() == [True] + [False] * 8
    assert concepts[:, 11].tolist() == [False] * 7 + [True, True]
    assert quantile_thresholds(values_of([5, 5, 5]))["area"] == (-np.inf, np.inf)


def test_empty_images_are_left_out_of_thresholds_and_concepts():
    values = values_of([0, 0, 0, 3, 6, 9]) | {"empty": np.array([True, True, True, False, False, False])}
    thresholds = quantile_thresholds(values)
    assert thresholds["area"] == pytest.approx((5, 7))
    concepts = binarise(values, thresholds)
    assert not concepts[:3].any() and concepts[3, 0] and concepts[5, 1]


def test_bad_thresholds_raise():
    with pytest.raises(PrunelensError, match="lower < upper"):
        binarise(values_of([1.0]), {name: (2.0, 2.0) for name in MEASURES})
    with pytest.raises(PrunelensError, match="quantiles"):
        quantile_thresholds(values_of([1.0, 2.0]), q=(0.7, 0.3))
    with pytest.raises(PrunelensError, match="no concept thresholds for measure 'slant'"):
        binarise(values_of([1.0]), {name: (0.0, 1.0) for name in MEASURES if name != "slant"})
    with pytest.raises(PrunelensError, match="lack measure 'length'"):
        binarise({"area": np.ones(2)}, {name: (0.0, 1.0) for name in MEASURES})


def test_thresholds_come_from_train_only():
    train = np.stack([rectangle(4, 10, 4 + i, 1 + i % 7) for i in range(15)])
    thick = np.stack([rectangle(2, 6, 22, 10)] * 3)
    names, (train_a, thick_concepts) = morpho_concepts(train, thick)
    _, (train_b, thin_concepts) = morpho_concepts(train, train[:2])
    assert names == MORPHO_CONCEPTS
    np.testing.assert_array_equal(train_a, train_b)
    expected = binarise(measure(thick), quantile_thresholds(measure(train)))
    np.testing.assert_array_equal(thick_concepts, expected)
    np.testing.assert_array_equal(thin_concepts, train_a[:2])
    assert thick_concepts[:, MORPHO_CONCEPTS.index("thickness:thick")].all()
    assert thick_concepts[:, MORPHO_CONCEPTS.index("area:large")].all()


def test_fashion_table_covers_the_classes():
    assert list(FASHION_TABLE) == FASHION_MNIST_CLASSES
    assert len(set(FASHION_ATTRIBUTES)) == len(FASHION_ATTRIBUTES)
    assert all(set(attrs) <= set(FASHION_ATTRIBUTES) for attrs in FASHION_TABLE.values())


def test_fashion_concepts_tell_classes_apart():
    concepts = fashion_class_concepts(FASHION_MNIST_CLASSES)
    assert concepts.dtype == torch.bool and concepts.shape == (10, len(FASHION_ATTRIBUTES))
    assert concepts.any(1).all()
    assert len({tuple(row) for row in concepts.tolist()}) == 10
    present = concepts.sum(0)
    balanced = (present >= 2) & (present <= 8)
    assert [a for a, ok in zip(FASHION_ATTRIBUTES, balanced) if not ok] == ["carried"]  # Bag alone, documented
    assert fashion_class_concepts(["Bag", "Sneaker"]).tolist() == concepts[[8, 7]].tolist()


def test_unknown_fashion_class_raises():
    with pytest.raises(PrunelensError, match="unknown Fashion-MNIST class 'Hat'") as err:
        fashion_class_concepts(["Bag", "Hat"])
    assert "\n" not in str(err.value)
    with pytest.raises(PrunelensError, match="list of class names"):
        fashion_class_concepts("Bag")
