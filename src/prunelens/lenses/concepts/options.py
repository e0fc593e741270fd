"""Options of the `pcbm` lens (checked when the config loads; defaults in docs/methods.md §15)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from prunelens.lenses.base import LensOptions

Reference = Literal["floor", "same_init", "other_seed"]


class PCBMOptions(LensOptions):
    """Options of the `pcbm` lens."""

    concepts: Literal["auto", "dataset", "morphometrics", "fashion", "class_table"] = Field(
        "auto", description="where concept labels come from (lenses/concepts/sources.py)"
    )
    concepts_path: Path | None = Field(None, description="the per-class attribute CSV of concepts: class_table")
    class_threshold: float = Field(0.5, ge=0, le=1, description="class_table: a class has an attribute above this value")
    min_classes: int = Field(1, ge=1, description="class_table: drop attributes present in fewer classes")
    tint: bool = Field(True, description="shapes: add the background-tint concepts (the spurious cue)")
    layer: str | None = Field(None, description="module whose output is the embedding (default: the classifier's input)")
    concept_bank: Literal["svm", "multilabel_logistic"] = Field("svm", description="linear SVM per concept, or the seed's logistic layer")
    fixed_bank: bool = Field(False, description="project every round onto the dense network's bank (not under filter pruning)")
    n_samples: int = Field(50, ge=2, le=10_000, description="n: positives and negatives per concept, each from train and from val")
    svm_c: list[float] = Field([0.001, 0.01, 0.1, 1.0, 10.0], min_length=1, description="C grid of the SVMs (chosen by val accuracy)")
    min_positives: int = Field(10, ge=1, description="concepts with fewer positives or negatives in the train rows are skipped")
    head: Literal["sklearn", "torch"] = Field("sklearn", description="SGDClassifier elastic net, or softmax + Adam")
    lam: float | None = Field(None, gt=0, description="penalty λ (default: chosen from lam_grid on held-out train rows)")
    lam_grid: list[float] = Field([1e-5, 1e-4, 1e-3, 1e-2], min_length=1)
    l1_ratio: float = Field(0.99, ge=0, le=1)
    residual: bool = Field(True, description="also fit PCBM-h (a residual linear layer on the embedding)")
    k: int = Field(3, ge=1, le=100, description="top-k concepts per class")
    rank_by: Literal["signed", "magnitude"] = "signed"
    rbo_q: float = Field(0.9, gt=0, lt=1, description="persistence of rank-biased overlap")
    max_images: int = Field(4000, ge=20, le=1_000_000, description="rows of each split used (a seeded subset)")
    references: list[Reference] = Field(["floor", "same_init", "other_seed"], description="reference networks (docs/methods.md §9)")

    @field_validator("svm_c", "lam_grid")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if any(v <= 0 for v in values):
            raise ValueError("every value must be positive")
        return values

    @model_validator(mode="after")
    def _path(self) -> PCBMOptions:
        if self.concepts == "class_table" and self.concepts_path is None:
            raise ValueError("concepts: class_table needs concepts_path")
        return self
