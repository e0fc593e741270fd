"""Morpho-MNIST-style morphometrics of MNIST-format digits, and binary concepts derived from them.

After Castro et al. 2019 ("Morpho-MNIST"), measured at the native resolution (Morpho-MNIST upsamples ×4 first):

- foreground: pixels ≥ min + ½·(max − min) of the image (= ½·max for a black background, as in Morpho-MNIST);
  an image with max = min has none and is *empty*: all its measures are 0 and `measure` flags it;
- `area` (px²): foreground pixel count;
- `length` (px): length of the `skimage.morphology.skeletonize` skeleton of the foreground, each 8-neighbour
  step counted 1 (orthogonal) or √2 (diagonal); a diagonal step that cuts the corner of two orthogonal steps is
  not counted again (Morpho-MNIST counts it), so a straight bar of L skeleton pixels is L − 1 long;
- `thickness` (px): mean over the skeleton of 2 × the Euclidean distance to the nearest background pixel
  (outside the image counts as background); a bar w px wide measures w (w even) or w + 1 (w odd);
- `slant` (rad): arctan(−μ11/μ02) of the intensity-weighted central moments, x = column, y = row (down), so a
  digit whose top leans right is positive; 0 when μ02 = 0;
- `height` (px): rows spanned by the foreground; `width` (px): columns spanned after removing the slant
  (x ↦ x − (μ11/μ02)·(y − ȳ), extent max − min + 1), like Morpho-MNIST's parallelogram but with no 2% trim.

Concepts (`MORPHO_CONCEPTS`, two per measure): low = value ≤ lower threshold, high = value ≥ upper threshold,
thresholds by default the train set's 1/3 and 2/3 quantiles (slant included: "left" is the leftmost third).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from skimage.morphology import skeletonize

from prunelens.errors import PrunelensError

MEASURES = ("area", "length", "thickness", "slant", "width", "height")
"""The six morphometrics, in the order of `MORPHO_CONCEPTS`."""
_LEVELS = {
    "area": ("small", "large"),
    "length": ("short", "long"),
    "thickness": ("thin", "thick"),
    "slant": ("left", "right"),
    "width": ("narrow", "wide"),
    "height": ("short", "tall"),
}
MORPHO_CONCEPTS: list[str] = [f"{m}:{level}" for m in MEASURES for level in _LEVELS[m]]
"""Concept names, low then high per measure: `area:small`, `area:large`, ..., `height:tall`."""
DEFAULT_QUANTILES = (1 / 3, 2 / 3)
_CHUNK_PIXELS = 1 << 22


def measure(images: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Per image of `images` ((N, 1, H, W) or (N, H, W), any real dtype): each of `MEASURES` as (N,) float64,
    and `empty` (N,) bool, the images with no foreground (their measures are 0)."""
    batch = _as_batch(images)
    n, h, w = batch.shape
    out = {m: np.zeros(n) for m in MEASURES} | {"empty": np.zeros(n, dtype=bool)}
    step = max(1, _CHUNK_PIXELS // max(1, h * w))
    for start in range(0, n, step):
        for key, value in _measure_chunk(batch[start : start + step]).items():
            out[key][start : start + len(value)] = value
    return out


def _as_batch(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, H, W) numpy view of a greyscale image batch."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise PrunelensError(f"morphometrics need greyscale images (N, 1, H, W) or (N, H, W), got {array.dtype} {array.shape}")
    return array


def _measure_chunk(raw: np.ndarray) -> dict[str, np.ndarray]:
    """`measure` of one chunk: moments and extents vectorised, skeleton and distances on all images at once."""
    img = raw.astype(np.float64)
    n, h, w = img.shape
    low, high = img.min((1, 2), keepdims=True), img.max((1, 2), keepdims=True)
    empty = (high <= low)[:, 0, 0]
    fg = (img >= low + 0.5 * (high - low)) & ~empty[:, None, None]
    weight = img - low

    y, x = np.arange(h, dtype=np.float64)[:, None], np.arange(w, dtype=np.float64)[None, :]
    mass = np.where(empty, 1.0, weight.sum((1, 2)))
    dy = y - ((weight * y).sum((1, 2)) / mass)[:, None, None]
    dx = x - ((weight * x).sum((1, 2)) / mass)[:, None, None]
    mu02, mu11 = (weight * dy**2).sum((1, 2)), (weight * dx * dy).sum((1, 2))
    shear = np.divide(mu11, mu02, out=np.zeros(n), where=mu02 > 0)

    deslanted = x - shear[:, None, None] * dy
    span = np.where(fg, deslanted, -np.inf).max((1, 2)) - np.where(fg, deslanted, np.inf).min((1, 2))
    rows = fg.any(2)
    top, bottom = rows.argmax(1), h - 1 - rows[:, ::-1].argmax(1)

    framed = np.zeros((n, h + 2, w + 2), dtype=bool)  # a background frame keeps the images apart when tiled
    framed[:, 1:-1, 1:-1] = fg
    tiled = framed.reshape(n * (h + 2), w + 2)
    skel = skeletonize(tiled).reshape(framed.shape)
    dist = distance_transform_edt(tiled).reshape(framed.shape)
    count = skel.sum((1, 2))
    return {
        "area": fg.sum((1, 2)).astype(np.float64),
        "length": _skeleton_length(skel),
        "thickness": 2 * (dist * skel).sum((1, 2)) / np.maximum(count, 1),
        "slant": np.arctan(-shear),
        "width": np.where(empty, 0.0, span + 1),
        "height": np.where(empty, 0, bottom - top + 1).astype(np.float64),
        "empty": empty,
    }


def _skeleton_length(skel: np.ndarray) -> np.ndarray:
    """(N,) path length of (N, H, W) skeletons: orthogonal neighbour pairs count 1, diagonal pairs √2 unless
    one of the two pixels completing their 2×2 square is in the skeleton too."""
    a, b, c, d = skel[:, :-1, :-1], skel[:, :-1, 1:], skel[:, 1:, :-1], skel[:, 1:, 1:]  # 2×2: a b / c d
    straight = (skel[:, :, :-1] & skel[:, :, 1:]).sum((1, 2)) + (skel[:, :-1] & skel[:, 1:]).sum((1, 2))
    diagonal = (a & d & ~b & ~c).sum((1, 2)) + (b & c & ~a & ~d).sum((1, 2))
    return straight + np.sqrt(2) * diagonal


def quantile_thresholds(
    values: Mapping[str, np.ndarray], q: Sequence[float] = DEFAULT_QUANTILES
) -> dict[str, tuple[float, float]]:
    """Per measure, the (lower, upper) `q` quantiles of `values` (pass the *train* measures), empty images left
    out. Where a tied value spans both quantiles, it becomes neither low nor high: the thresholds move to the
    nearest values below and above it (±inf if there is none)."""
    if len(q) != 2 or not 0 <= q[0] < q[1] <= 1:
        raise PrunelensError(f"concept quantiles must satisfy 0 ≤ lower < upper ≤ 1, got {tuple(q)}")
    thresholds = {}
    for m in MEASURES:
        v = _values(values, m)
        if "empty" in values:
            v = v[~np.asarray(values["empty"], dtype=bool)]
        if v.size == 0:
            raise PrunelensError("cannot compute concept thresholds: no non-empty training images")
        lower, upper = np.quantile(v, (float(q[0]), float(q[1])))
        if lower == upper:
            below, above = v[v < lower], v[v > upper]
            lower = below.max() if below.size else -np.inf
            upper = above.min() if above.size else np.inf
        thresholds[m] = (float(lower), float(upper))
    return thresholds


def binarise(values: Mapping[str, np.ndarray], thresholds: Mapping[str, tuple[float, float]]) -> np.ndarray:
    """(N, 12) bool concepts in `MORPHO_CONCEPTS` order: low = value ≤ lower, high = value ≥ upper threshold;
    images flagged `empty` in `values` have none."""
    columns = []
    for m in MEASURES:
        if m not in thresholds:
            raise PrunelensError(f"no concept thresholds for measure {m!r}")
        lower, upper = thresholds[m]
        if not lower < upper:
            raise PrunelensError(f"concept thresholds of {m!r} must have lower < upper, got ({lower}, {upper})")
        v = _values(values, m)
        columns += [v <= lower, v >= upper]
    concepts = np.stack(columns, axis=1)
    if "empty" in values:
        concepts[np.asarray(values["empty"], dtype=bool)] = False
    return concepts


def _values(values: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """`values[name]` as a 1-D float array, or a one-line error."""
    if name not in values:
        raise PrunelensError(f"morphometrics lack measure {name!r}")
    v = np.asarray(values[name], dtype=np.float64)
    if v.ndim != 1:
        raise PrunelensError(f"measure {name!r} must be one value per image, got shape {v.shape}")
    return v


def morpho_concepts(
    train_images: torch.Tensor | np.ndarray, *others: torch.Tensor | np.ndarray, q: Sequence[float] = DEFAULT_QUANTILES
) -> tuple[list[str], list[np.ndarray]]:
    """Concept names and (N_i, 12) bool concepts of `train_images` and each of `others`, all binarised with the
    quantile thresholds of the train measures."""
    measured = [measure(images) for images in (train_images, *others)]
    thresholds = quantile_thresholds(measured[0], q)
    return list(MORPHO_CONCEPTS), [binarise(m, thresholds) for m in measured]
