"""Embeddings and the concept bank (docs/methods.md §15.2–15.3): one concept activation vector per concept.

`embed_rows` runs a network over rows of a split and returns its pooled embedding at the concept layer with
its logits (`lenses/features.py`). `draw_samples` picks, per concept, n positive and n negative rows of the train subset (to fit) and of
the val subset (to choose C and report the bank's quality), with replacement only when too few exist; the draws
depend on the seed and the concept labels alone, so every network's bank is fitted on the same images.
`fit_svm_bank` fits a linear SVM per concept (C from a grid by validation accuracy); `fit_logistic_bank` is the
seed's multi-label logistic layer. `ConceptBank.project` gives the PCBM input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from sklearn.svm import SVC
from torch import Tensor, nn

from prunelens.seeding import generator


@dataclass(frozen=True)
class Samples:
    """Per concept (rows) n positions into the train subset (`train_pos`, `train_neg`) and the val subset."""

    train_pos: Tensor
    train_neg: Tensor
    val_pos: Tensor
    val_neg: Tensor

    def tensors(self) -> dict[str, Tensor]:
        return {f"samples.{f.name}": getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> Samples:
        return cls(**{f.name: tensors[f"samples.{f.name}"] for f in fields(cls)})


def _draw(rows: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """`n` of `rows` without replacement, or with replacement when fewer exist."""
    if len(rows) >= n:
        return rows[torch.randperm(len(rows), generator=gen)[:n]].sort().values
    return rows[torch.randint(len(rows), (n,), generator=gen)].sort().values


def draw_samples(train: Tensor, val: Tensor, n: int, seed: int) -> Samples:
    """n positives and n negatives per concept from the (rows, K) bool labels of the train and val subsets."""
    parts: dict[str, list[Tensor]] = {"train_pos": [], "train_neg": [], "val_pos": [], "val_neg": []}
    for i in range(train.shape[1]):
        for name, labels in (("train", train), ("val", val)):
            for side, present in (("pos", True), ("neg", False)):
                rows = torch.nonzero(labels[:, i] == present).flatten()
                parts[f"{name}_{side}"].append(_draw(rows, n, generator(seed, "concepts", i, name == "val", present)))
    return Samples(**{k: torch.stack(v) if v else torch.empty(0, n, dtype=torch.long) for k, v in parts.items()})


@dataclass(frozen=True)
class ConceptBank:
    """K concept vectors `vectors` (K, D) with `intercepts` (K,), the chosen `c` (K,) (NaN for the logistic
    bank), train/val accuracy and val margin statistics per concept; `kind` says how it was fitted."""

    kind: str
    vectors: Tensor
    intercepts: Tensor
    c: Tensor
    train_acc: Tensor
    val_acc: Tensor
    margin_mean: Tensor
    inside_margin: Tensor

    def project(self, features: Tensor) -> Tensor:
        """SVM bank: signed distances (v·f + b)/‖v‖ (N, K); logistic bank: the probabilities σ(v·f + b)."""
        scores = features.double() @ self.vectors.double().T + self.intercepts.double()
        if self.kind == "multilabel_logistic":
            return torch.sigmoid(scores)
        return scores / self.vectors.double().norm(dim=1).clamp_min(1e-300)

    def tensors(self) -> dict[str, Tensor]:
        return {f"bank.{f.name}": getattr(self, f.name) for f in fields(self) if f.name != "kind"}

    @classmethod
    def from_tensors(cls, kind: str, tensors: dict[str, Tensor]) -> ConceptBank:
        return cls(kind, **{f.name: tensors[f"bank.{f.name}"] for f in fields(cls) if f.name != "kind"})


def _margins(scores: np.ndarray, norm: float, y: np.ndarray) -> tuple[float, float]:
    """Mean signed distance y±·(v·x + b)/‖v‖ of val samples, and the share with |v·x + b| < 1 (inside the margin)."""
    sign = np.where(y == 1, 1.0, -1.0)
    return float((sign * scores).mean() / norm), float((np.abs(scores) < 1).mean())


def fit_svm_bank(train: Tensor, val: Tensor, samples: Samples, c_grid: list[float]) -> ConceptBank:
    """A linear SVM per concept on n positive + n negative train embeddings, C chosen from `c_grid` by accuracy
    on the val samples (ties: the smaller C, the stronger regularisation)."""
    x_train, x_val = train.double().numpy(), val.double().numpy()
    rows: list[tuple[np.ndarray, float, float, float, float, float, float]] = []
    for i in range(samples.train_pos.shape[0]):
        xt = x_train[torch.cat([samples.train_pos[i], samples.train_neg[i]]).numpy()]
        xv = x_val[torch.cat([samples.val_pos[i], samples.val_neg[i]]).numpy()]
        y = np.r_[np.ones(samples.train_pos.shape[1]), np.zeros(samples.train_neg.shape[1])]
        best: tuple[float, float, SVC] | None = None
        for c in sorted(c_grid):
            svm = SVC(kernel="linear", C=c).fit(xt, y)
            accuracy = float((svm.predict(xv) == y).mean())
            if best is None or accuracy > best[0]:
                best = (accuracy, c, svm)
        assert best is not None
        val_acc, c, svm = best
        w, b = svm.coef_[0], float(svm.intercept_[0])
        norm = float(np.linalg.norm(w)) or math.inf
        rows.append((w, b, c, float((svm.predict(xt) == y).mean()), val_acc, *_margins(xv @ w + b, norm, y)))
    if not rows:
        return _empty_bank("svm", train.shape[1])
    w, b, c, ta, va, mm, im = zip(*rows)
    as_t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return ConceptBank("svm", torch.from_numpy(np.stack(w)), as_t(b), as_t(c), as_t(ta), as_t(va), as_t(mm), as_t(im))


def fit_logistic_bank(
    train: Tensor, labels: Tensor, val: Tensor, val_labels: Tensor, seed: int, epochs: int = 15, lr: float = 1e-2
) -> ConceptBank:
    """The seed's multi-label bank: one Linear(D → K) + sigmoid trained with BCE on every train embedding
    (SGD, batch 128); accuracy at probability 0.5."""
    gen = generator(seed, "concepts", 1 << 20)
    layer = nn.Linear(train.shape[1], labels.shape[1]).double()
    with torch.no_grad():
        layer.weight.normal_(0, 1 / math.sqrt(train.shape[1]), generator=gen)
        layer.bias.zero_()
    optimiser = torch.optim.SGD(layer.parameters(), lr=lr)
    x, y = train.double(), labels.double()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(128):
            optimiser.zero_grad()
            nn.functional.binary_cross_entropy_with_logits(layer(x[idx]), y[idx]).backward()
            optimiser.step()
    with torch.no_grad():
        w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
        train_acc = ((x @ w.T + b > 0) == labels).double().mean(0)
        val_scores = val.double() @ w.T + b
        val_acc = ((val_scores > 0) == val_labels).double().mean(0)
        sign = val_labels.double() * 2 - 1
        margin = (sign * val_scores).mean(0) / w.norm(dim=1).clamp_min(1e-300)
        inside = (val_scores.abs() < 1).double().mean(0)
    return ConceptBank("multilabel_logistic", w, b, torch.full_like(b, math.nan), train_acc, val_acc, margin, inside)


def _empty_bank(kind: str, dim: int) -> ConceptBank:
    empty = torch.empty(0, dtype=torch.float64)
    return ConceptBank(kind, torch.empty(0, dim, dtype=torch.float64), *(empty,) * 6)
