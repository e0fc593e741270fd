"""Per-class binary attributes of the Fashion-MNIST classes, the concepts of a post-hoc CBM on Fashion-MNIST.

Each class gets the attributes of its *typical* item (some T-shirt/top images are sleeveless tops, some shirts
have short sleeves, some sandals are flat; the table does not follow them). The rules:

- `upper_body`: worn on the torso (tops, dresses, coats).
- `lower_body`: covers the legs, at least the thighs (trousers, the skirt of a dress).
- `footwear`: worn on the foot.
- `carried`: held or carried, not worn on the body; only Bag, the one accessory (an exception to the rule that
  every attribute holds for at least two classes).
- `has_sleeves`: has sleeves of any length.
- `long_sleeves`: sleeves reach the wrist.
- `has_collar`: a folded collar or lapels at the neck.
- `buttons_or_zip`: closes with buttons or a zip (a shirt's or coat's front, a trouser fly).
- `outerwear`: usually worn over another garment (coats, pullovers over a shirt).
- `below_hips`: a garment that reaches below the hips (trousers, dresses, coats).
- `closed_shoe`: footwear that encloses the whole foot.
- `covers_ankle`: covers the ankle when worn (trouser legs, ankle-boot shafts).
- `raised_heel`: footwear with a heel raised above the sole (heeled sandals, ankle boots; sneakers are flat).
- `has_straps`: thin bands that hold or carry the item (sandal straps, bag handles and shoulder straps).

Every class has at least one attribute and no two classes have the same row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prunelens.data.idx import FASHION_MNIST_CLASSES
from prunelens.errors import PrunelensError

FASHION_ATTRIBUTES: list[str] = [
    "upper_body", "lower_body", "footwear", "carried", "has_sleeves", "long_sleeves", "has_collar",
    "buttons_or_zip", "outerwear", "below_hips", "closed_shoe", "covers_ankle", "raised_heel", "has_straps",
]  # fmt: skip
"""The attribute (concept) names, in the column order of `fashion_class_concepts`."""

FASHION_TABLE: dict[str, tuple[str, ...]] = {
    "T-shirt/top": ("upper_body", "has_sleeves"),
    "Trouser": ("lower_body", "buttons_or_zip", "below_hips", "covers_ankle"),
    "Pullover": ("upper_body", "has_sleeves", "long_sleeves", "outerwear"),
    "Dress": ("upper_body", "lower_body", "below_hips"),
    "Coat": ("upper_body", "has_sleeves", "long_sleeves", "has_collar", "buttons_or_zip", "outerwear", "below_hips"),
    "Sandal": ("footwear", "raised_heel", "has_straps"),
    "Shirt": ("upper_body", "has_sleeves", "long_sleeves", "has_collar", "buttons_or_zip"),
    "Sneaker": ("footwear", "closed_shoe"),
    "Bag": ("carried", "has_straps"),
    "Ankle boot": ("footwear", "closed_shoe", "covers_ankle", "raised_heel"),
}
"""Fashion-MNIST class name (as in `idx.FASHION_MNIST_CLASSES`) → the attributes its items have."""


def fashion_class_concepts(class_names: Sequence[str]) -> torch.Tensor:
    """(C, A) bool: row c marks the `FASHION_ATTRIBUTES` of `class_names[c]`; an unknown name is an error."""
    if isinstance(class_names, str):
        raise PrunelensError(f"fashion_class_concepts takes a list of class names, not the string {class_names!r}")
    unknown = [name for name in class_names if name not in FASHION_TABLE]
    if unknown:
        raise PrunelensError(f"unknown Fashion-MNIST class {unknown[0]!r}; known: {', '.join(FASHION_MNIST_CLASSES)}")
    concepts = torch.zeros(len(class_names), len(FASHION_ATTRIBUTES), dtype=torch.bool)
    for row, name in enumerate(class_names):
        concepts[row, [FASHION_ATTRIBUTES.index(a) for a in FASHION_TABLE[name]]] = True
    return concepts
