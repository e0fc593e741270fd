"""`shapes`: synthetic images whose class is a conjunction of visual concepts, with concept labels and masks.

Each image shows one *target* object, the only object satisfying a class definition, plus 0–`distractors`
objects that satisfy none, on a noisy grey background. An object's attributes (shape, colour, texture, size)
are its 13 binary concepts. A faint background tint can be made to agree with the class (`spurious`) in
train/val only, a shortcut that fails on test.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from prunelens.config import DatasetConfig
from prunelens.data.base import DATASETS, DataBundle, TensorSplit
from prunelens.data.common import check_options, make_bundle, option_error
from prunelens.errors import PrunelensError

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "cross"),
    "colour": ("red", "green", "blue", "yellow"),
    "texture": ("solid", "striped", "dotted"),
    "size": ("small", "large"),
}
CONCEPT_NAMES: list[str] = [f"{group}:{value}" for group, values in ATTRIBUTES.items() for value in values]

CLASS_DEFINITIONS: tuple[tuple[str, ...], ...] = (
    ("colour:red", "shape:circle"),
    ("colour:blue", "shape:square"),
    ("colour:green", "shape:triangle"),
    ("colour:yellow", "shape:cross"),
    ("texture:striped", "colour:blue", "shape:circle"),
    ("texture:dotted", "colour:red", "shape:square"),
    ("size:large", "texture:striped", "shape:triangle"),
    ("size:small", "texture:dotted", "shape:cross"),
    ("size:large", "colour:green", "shape:square"),
    ("size:small", "colour:yellow", "shape:circle"),
)
"""Each class: the concepts an object must have (all of them)."""

_NAME_ORDER = ("size", "texture", "colour", "shape")
CLASS_NAMES: list[str] = [
    " ".join(c.split(":")[1] for group in _NAME_ORDER for c in definition if c.startswith(group + ":"))
    for definition in CLASS_DEFINITIONS
]
CLASS_CONCEPTS = torch.tensor([[c in d for c in CONCEPT_NAMES] for d in CLASS_DEFINITIONS])
"""(10, 13) bool: the concepts required by each class."""

_COMBOS = np.array(list(itertools.product(*(range(len(v)) for v in ATTRIBUTES.values()))))
"""(96, 4): every (shape, colour, texture, size) attribute index combination."""
_OFFSETS = np.cumsum([0] + [len(v) for v in ATTRIBUTES.values()][:-1])
_COMBO_CONCEPTS = np.zeros((len(_COMBOS), len(CONCEPT_NAMES)), dtype=bool)
_COMBO_CONCEPTS[np.arange(len(_COMBOS))[:, None], _COMBOS + _OFFSETS] = True
_SATISFIES = (_COMBO_CONCEPTS[:, None, :] >= CLASS_CONCEPTS.numpy()[None]).all(-1)  # (96, 10)
_TARGET_POOLS = [np.flatnonzero(_SATISFIES[:, k] & (_SATISFIES.sum(1) == 1)) for k in range(len(CLASS_NAMES))]
_DISTRACTOR_POOL = np.flatnonzero(_SATISFIES.sum(1) == 0)

COLOUR_RGB = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.15, 0.25, 0.95], [0.95, 0.85, 0.1]])
"""(4, 3): the 0–1 RGB value of each colour concept (the light parts of textured objects)."""
_RADIUS = np.array([0.12, 0.2])  # small, large, as a fraction of the image size
_BOUND = 1.0  # objects whose centres are closer than this many summed radii overlap
_DARK = 0.4  # brightness of the dark parts of stripes and dots
_TINT_AMPLITUDE = 0.06
TINTS = _TINT_AMPLITUDE * torch.cos(
    2 * torch.pi * (torch.arange(len(CLASS_NAMES))[:, None] / len(CLASS_NAMES) - torch.arange(3)[None] / 3)
)
"""(10, 3): one faint, zero-mean colour offset of the background per class."""
_PLACEMENT_TRIES = 64
MIN_SIZE = 16
"""Smallest image size at which every object covers pixels."""
MAX_IMAGES, MAX_DISTRACTORS, MAX_BYTES = 10_000_000, 16, 8 << 30
_CHUNK_PIXELS = 1 << 22


def generate(
    n: int, size: int = 64, seed: int = 0, spurious: float = 0.0, distractors: int = 2, noise: float = 0.05
) -> TensorSplit:
    """`n` class-balanced images (n, 3, size, size) uint8 with `extras` `concepts` (n, 13) bool and `masks`
    (n, size, size) bool of the target, and `tint` (n,) the class whose background tint each image carries
    (the label with probability `spurious`, else uniformly random)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASS_NAMES))
    objects = np.empty((n, 1 + distractors), dtype=np.int64)  # combo index per slot; slot 0 is the target
    objects[:, 0] = _sample_targets(labels, rng)
    objects[:, 1:] = _DISTRACTOR_POOL[rng.integers(len(_DISTRACTOR_POOL), size=(n, distractors))]
    active = np.arange(1 + distractors) <= rng.integers(0, distractors + 1, size=(n, 1))
    radii = _RADIUS[_COMBOS[objects, 3]] * size
    centres = _place(radii, active, size, rng)
    tint = np.where(rng.random(n) < spurious, labels, rng.integers(len(CLASS_NAMES), size=n))
    grey = rng.uniform(0.35, 0.65, size=n)
    torch_gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    step = max(1, _CHUNK_PIXELS // (size * size))
    images, masks = zip(*(
        _render(objects[i : i + step], active[i : i + step], centres[i : i + step], radii[i : i + step],
                grey[i : i + step], tint[i : i + step], size, noise, torch_gen)
        for i in range(0, n, step)
    ))  # fmt: skip
    extras = {
        "concepts": torch.from_numpy(_COMBO_CONCEPTS[objects[:, 0]]),
        "masks": torch.cat(masks),
        "tint": torch.from_numpy(tint),
    }
    return TensorSplit(torch.cat(images), torch.from_numpy(labels), extras)


def _sample_targets(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per label, a combo uniformly among those satisfying its class and no other."""
    counts = np.array([len(p) for p in _TARGET_POOLS])
    pools = np.zeros((len(_TARGET_POOLS), counts.max()), dtype=np.int64)
    for k, pool in enumerate(_TARGET_POOLS):
        pools[k, : len(pool)] = pool
    return pools[labels, (rng.random(len(labels)) * counts[labels]).astype(np.int64)]


def _place(radii: np.ndarray, active: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """(n, slots, 2) object centres (x, y) inside the image; each slot takes the first of a few random tries
    that overlaps no earlier object (or the first try if none does)."""
    n, slots = radii.shape
    centres = np.zeros((n, slots, 2))
    for j in range(slots):
        r = radii[:, j, None, None]
        tries = r + rng.random((n, _PLACEMENT_TRIES, 2)) * (size - 1 - 2 * r)
        gap = np.linalg.norm(tries[:, :, None] - centres[:, None, :j], axis=-1)  # (n, tries, j)
        clear = (gap >= _BOUND * (radii[:, None, :j] + radii[:, j, None, None])) | ~active[:, None, :j]
        centres[:, j] = tries[np.arange(n), clear.all(-1).argmax(1)]
    return centres


def _render(
    objects: np.ndarray, active: np.ndarray, centres: np.ndarray, radii: np.ndarray, grey: np.ndarray,
    tint: np.ndarray, size: int, noise: float, gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """uint8 images and target masks of one chunk; distractors are drawn first, the target (slot 0) last.

    Each object is drawn inside a square window around it, not over the whole image.
    """
    b = len(objects)
    background = torch.from_numpy(grey).float()[:, None, None, None] + TINTS[torch.from_numpy(tint)][:, None, None]
    image = torch.randn(b, size, size, 3, generator=gen).mul_(noise).add_(background)  # channels last while drawing
    textures = _textures(size)
    attributes = torch.from_numpy(_COMBOS[objects])  # (b, slots, 4)
    window = min(size, int(np.ceil(2 * radii.max())) + 3)
    rows = torch.arange(b)[:, None, None]
    for j in reversed(range(objects.shape[1])):
        shape, colour, texture = attributes[:, j, 0], attributes[:, j, 1], attributes[:, j, 2]
        centre, radius = torch.from_numpy(centres[:, j]).float(), torch.from_numpy(radii[:, j]).float()
        start = (centre - window / 2).round().long().clamp(0, size - window)  # (b, 2) window corner (x, y)
        xs, ys = (start[:, i, None] + torch.arange(window) for i in range(2))  # (b, window) pixel coordinates
        mask = _shape_masks(xs.float(), ys.float(), centre, radius)[shape, torch.arange(b)]
        mask &= torch.from_numpy(active[:, j])[:, None, None]
        where = (rows, ys[:, :, None], xs[:, None, :])
        shade = torch.where(textures[texture[:, None, None], ys[:, :, None], xs[:, None, :]], _DARK, 1.0)
        image[where] = torch.where(mask[..., None], COLOUR_RGB[colour][:, None, None] * shade[..., None], image[where])
    target = torch.zeros(b, size, size, dtype=torch.bool)
    target[where] = mask
    pixels = image.clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(0, 3, 1, 2).contiguous()
    return pixels, target


def _textures(size: int) -> torch.Tensor:
    """(3, size, size) bool: the dark pixels of solid, striped (diagonal) and dotted objects; the period
    scales with the image size so the patterns stay visible on small images."""
    coords = torch.arange(size, dtype=torch.float32)
    period = max(4.0, size / 10)
    phase = torch.remainder(coords, period) - period / 2
    return torch.stack([
        torch.zeros(size, size, dtype=torch.bool),
        torch.remainder(coords[:, None] + coords[None], period) < period / 2,
        phase[:, None] ** 2 + phase[None] ** 2 <= (0.28 * period) ** 2,
    ])  # fmt: skip


def _shape_masks(xs: torch.Tensor, ys: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """(4, b, len(ys), len(xs)) bool: a circle, square, triangle and cross of each centre and radius, over the
    pixel grid of each object's `xs`/`ys` (b, window)."""
    dx = ((xs - centre[:, 0, None]) / radius[:, None])[:, None, :]
    dy = ((ys - centre[:, 1, None]) / radius[:, None])[:, :, None]
    ax, ay = dx.abs(), dy.abs()
    return torch.stack([
        dx * dx + dy * dy <= 1.0,
        torch.maximum(ax, ay) <= 0.85,
        (dy <= 0.8) & (ax <= (dy + 1.0) / 1.8),
        ((ax <= 0.32) & (ay <= 1.0)) | ((ay <= 0.32) & (ax <= 1.0)),
    ])  # fmt: skip


_OPTIONS = {"n_train": 8000, "n_val": 1000, "n_test": 2000, "spurious": 0.0, "distractors": 2, "noise": 0.05}


@DATASETS.register("shapes")
def shapes(cfg: DatasetConfig, seed: int) -> DataBundle:
    """Synthetic concept-labelled shapes rendered at `cfg.image_size` (default 64); train/val/test use
    distinct sub-seeds of `seed`, and the tint shortcut (`spurious`) is never present on test."""
    opts = check_options(cfg, _OPTIONS)
    for key in ("n_train", "n_val", "n_test"):
        if not 1 <= opts[key] <= MAX_IMAGES:
            raise option_error(key, f"{opts[key]!r} is not in 1..{MAX_IMAGES}")
    if not 0.0 <= opts["spurious"] <= 1.0:
        raise option_error("spurious", f"{opts['spurious']!r} is not in [0, 1]")
    if not 0 <= opts["distractors"] <= MAX_DISTRACTORS:
        raise option_error("distractors", f"{opts['distractors']!r} is not in 0..{MAX_DISTRACTORS}")
    if opts["noise"] < 0:
        raise option_error("noise", f"{opts['noise']!r} must not be negative")
    size = cfg.image_size or 64
    if size < MIN_SIZE:
        raise PrunelensError(f"dataset.image_size: {size} is too small for shapes (at least {MIN_SIZE})")
    total = sum(opts[f"n_{part}"] for part in ("train", "val", "test")) * 3 * size * size
    if total > MAX_BYTES:
        raise PrunelensError(f"dataset: shapes at {size}×{size} px would take {total / 2**30:.1f} GiB (at most {MAX_BYTES >> 30}); fewer images or a smaller image_size")
    seeds = np.random.SeedSequence(seed % 2**32).generate_state(3)
    common = {"size": size, "distractors": opts["distractors"], "noise": opts["noise"]}
    train, val, test = (
        generate(opts[f"n_{part}"], seed=int(s), spurious=opts["spurious"] if part != "test" else 0.0, **common)
        for part, s in zip(("train", "val", "test"), seeds)
    )
    return make_bundle(cfg, seed, train, test, val, class_names=CLASS_NAMES, concept_names=CONCEPT_NAMES, class_concepts=CLASS_CONCEPTS)
