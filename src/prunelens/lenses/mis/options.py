"""Options of the `mis` lens (checked when the config loads) and the slope calibration (docs/methods.md §16)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from scipy.optimize import minimize_scalar
from scipy.special import log_expit

from prunelens.errors import PrunelensError
from prunelens.lenses.base import LensOptions

MAX_SLOPE = 1e4


class MISOptions(LensOptions):
    """Options of the `mis` lens."""

    layers: list[str] | None = Field(None, description="module names whose channels are units (default: every Conv2d)")
    classifier: bool = Field(False, description="also score the classifier's output units")
    tap: Literal["conv", "post_bn", "post_relu"] = Field("conv", description="where a unit's activation is read")
    tasks: int = Field(20, ge=1, le=1000, description="N tasks per unit")
    k: int = Field(9, ge=1, le=100, description="K explanations per side")
    quantile: float = Field(0.1, gt=0, le=0.5, description="q: top and bottom pools are the q fraction of the pool")
    query: Literal["least_extreme", "most_extreme"] = "least_extreme"
    slope: float | None = Field(None, gt=0, le=MAX_SLOPE, description="slope of σ(slope · margin) for MIS-confidence (none: not computed)")
    calibration_csv: Path | None = Field(None, description="CSV of human trials (margin, correct) to fit the slope by maximum likelihood")
    encoder: str = Field("efficientnet_lite0", description="efficientnet_lite0, descriptor, torchvision, dreamsim")
    encoder_arch: str | None = Field(None, description="torchvision encoder: the architecture name")
    encoder_weights: Path | None = Field(None, description="torchvision: a state_dict file; dreamsim: the checkpoint directory")
    encoder_size: int = Field(224, ge=16, le=1024, description="input size of the learned encoders")
    pool: Literal["train", "val", "test"] = Field("test", description="split the pool is drawn from")
    pool_root: Path | None = Field(None, description="an image folder to draw the pool from instead")
    pool_size: int = Field(2000, ge=20, le=200_000)
    references: list[Literal["floor", "same_init", "other_seed"]] = Field(["floor"])

    @model_validator(mode="after")
    def _one_slope(self) -> MISOptions:
        if self.slope is not None and self.calibration_csv is not None:
            raise ValueError("set either slope or calibration_csv, not both")
        return self


def fit_slope(path: Path) -> float:
    """α* = argmax_α Σ_t [y_t log σ(α d_t) + (1 − y_t) log(1 − σ(α d_t))] over the trials of `path` (columns
    `margin` d_t and `correct` y_t ∈ {0, 1}), searched in (0, MAX_SLOPE]."""
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise PrunelensError(f"{path}: cannot read ({str(err).splitlines()[0]})") from None
    missing = {"margin", "correct"} - set(table.columns)
    if missing:
        raise PrunelensError(f"{path}: needs columns margin and correct (missing: {', '.join(sorted(missing))})")
    d = pd.to_numeric(table["margin"], errors="coerce").to_numpy(float)
    y = pd.to_numeric(table["correct"], errors="coerce").to_numpy(float)
    if len(d) < 2 or not (np.isfinite(d).all() and np.isin(y, (0.0, 1.0)).all()):
        raise PrunelensError(f"{path}: margins must be finite numbers and correct 0 or 1, in at least two rows")

    def loss(log_alpha: float) -> float:
        z = math.exp(log_alpha) * d
        return -float((y * log_expit(z) + (1 - y) * log_expit(-z)).sum())

    best = minimize_scalar(loss, bounds=(math.log(1e-4), math.log(MAX_SLOPE)), method="bounded", options={"xatol": 1e-8})
    return float(math.exp(best.x))
