"""The interpretable PCBM head on concept projections, and the PCBM-h residual (docs/methods.md §15.4–15.5).

`fit_head` fits a sparse linear model W p + b: scikit-learn's `SGDClassifier` with the elastic net
(`head: sklearn`, one-vs-rest binary log-losses for more than two classes) or a softmax head trained with Adam
(`head: torch`, the seed's CUB form, best held-out checkpoint). Unless λ is given it is chosen from a grid on a
stratified, seeded held-out fifth of the head's training rows by the one-standard-error rule: the largest λ
(the sparsest head) whose held-out accuracy is within one binomial standard error √(a(1−a)/n) of the best
accuracy a. Near-ties then resolve the same way for every network, instead of by noise. The head is then
refitted on all rows (the torch head keeps its best held-out epoch). `fit_residual`
trains r(f) = W_r f + b_r on the embedding with the PCBM frozen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from prunelens.seeding import generator, seed_int

HELD_OUT = 0.2


@dataclass(frozen=True)
class Head:
    """W (classes, K) and b (classes,) in float64, fitted by `kind` with penalty `lam`; a binary sklearn head's
    single row w is stored as W = [−w, w] (so rows rank concepts per class and argmax predicts)."""

    kind: str
    weight: Tensor
    bias: Tensor
    lam: float

    def logits(self, projections: Tensor) -> Tensor:
        return projections.double() @ self.weight.T + self.bias


def _held_out(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    index = np.arange(len(y))
    try:
        return tuple(train_test_split(index, test_size=HELD_OUT, stratify=y, random_state=seed % 2**32))  # type: ignore[return-value]
    except ValueError:  # a class too small to stratify
        return tuple(train_test_split(index, test_size=HELD_OUT, random_state=seed % 2**32))  # type: ignore[return-value]


def _sgd(p: np.ndarray, y: np.ndarray, lam: float, l1_ratio: float, classes: int, seed: int) -> Head:
    model = SGDClassifier(
        loss="log_loss", penalty="elasticnet", alpha=lam, l1_ratio=l1_ratio, max_iter=10_000, random_state=seed % 2**32
    ).fit(p, y)
    w, b = torch.from_numpy(model.coef_).double(), torch.from_numpy(model.intercept_).double()
    if classes == 2:
        w, b = torch.cat([-w, w]), torch.cat([-b, b])
    weight = torch.zeros(classes, p.shape[1], dtype=torch.float64)
    bias = torch.full((classes,), -math.inf if classes > 2 else 0.0, dtype=torch.float64)
    rows = torch.from_numpy(model.classes_).long() if classes > 2 else torch.arange(2)
    weight[rows], bias[rows] = w, b  # classes absent from training never win
    return Head("sklearn", weight, bias, lam)


def _torch_head(
    p: Tensor, y: Tensor, lam: float, l1_ratio: float, classes: int, seed: int, held: tuple[Tensor, Tensor] | None,
    epochs: int = 100, lr: float = 0.01,
) -> Head:  # fmt: skip
    """Softmax CE + λ(α‖W‖₁ + (1−α)‖W‖²) with Adam (batch 256); with `held` rows, the best held-out epoch."""
    gen = generator(seed, "pcbm_head")
    layer = nn.Linear(p.shape[1], classes).double()
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
    optimiser = torch.optim.Adam(layer.parameters(), lr=lr)
    best = (-1.0, layer.weight.detach().clone(), layer.bias.detach().clone())
    for _ in range(epochs):
        for idx in torch.randperm(len(p), generator=gen).split(256):
            optimiser.zero_grad()
            w = layer.weight
            loss = nn.functional.cross_entropy(layer(p[idx]), y[idx]) + lam * (l1_ratio * w.abs().sum() + (1 - l1_ratio) * (w * w).sum())
            loss.backward()
            optimiser.step()
        if held is not None:
            with torch.no_grad():
                accuracy = float((layer(held[0]).argmax(1) == held[1]).double().mean())
            if accuracy > best[0]:
                best = (accuracy, layer.weight.detach().clone(), layer.bias.detach().clone())
    if held is None:
        best = (0.0, layer.weight.detach().clone(), layer.bias.detach().clone())
    return Head("torch", best[1], best[2], lam)


def fit_head(
    projections: Tensor, labels: Tensor, classes: int, kind: str, lam: float | None, lam_grid: list[float],
    l1_ratio: float, seed: int,
) -> tuple[Head, dict[float, float]]:  # fmt: skip
    """The head, and the held-out accuracy of every λ tried (empty when λ was given)."""
    p, y = projections.double(), labels.long()
    fit_seed = seed_int(seed, "pcbm_head")
    kept, held = (torch.from_numpy(i) for i in _held_out(y.numpy(), fit_seed))

    def fit(lam_: float, rows: Tensor | None, check: tuple[Tensor, Tensor] | None) -> Head:
        pr, yr = (p, y) if rows is None else (p[rows], y[rows])
        if kind == "torch":
            return _torch_head(pr, yr, lam_, l1_ratio, classes, fit_seed, check)
        return _sgd(pr.numpy(), yr.numpy(), lam_, l1_ratio, classes, fit_seed)

    scores: dict[float, float] = {}
    if lam is None:
        for candidate in sorted(lam_grid):
            head = fit(candidate, kept, (p[held], y[held]))
            scores[candidate] = accuracy(head.logits(p[held]), y[held])
        best = max(scores.values())
        tolerance = math.sqrt(best * (1 - best) / len(held))
        lam = max(c for c, a in scores.items() if a >= best - tolerance)
    if kind == "torch":
        return fit(lam, kept, (p[held], y[held])), scores
    return fit(lam, None, None), scores


@dataclass(frozen=True)
class Residual:
    """PCBM-h's residual r(f) = W_r f + b_r added to the frozen head's logits."""

    weight: Tensor
    bias: Tensor

    def logits(self, head: Head, projections: Tensor, features: Tensor) -> Tensor:
        return head.logits(projections) + features.double() @ self.weight.T + self.bias


def fit_residual(
    head: Head, projections: Tensor, features: Tensor, labels: Tensor, seed: int,
    epochs: int = 20, lr: float = 0.01, l2: float = 0.001,
) -> Residual:  # fmt: skip
    """Train r with the head frozen: CE(head(p) + r(f)) + l2 · mean(W_r²), Adam, batch 256 (PCBM repository defaults)."""
    gen = generator(seed, "pcbm_residual")
    base = head.logits(projections).clamp_min(-1e30)
    f, y = features.double(), labels.long()
    layer = nn.Linear(f.shape[1], head.weight.shape[0]).double()
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
    optimiser = torch.optim.Adam(layer.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(f), generator=gen).split(256):
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(base[idx] + layer(f[idx]), y[idx]) + l2 * layer.weight.pow(2).mean()
            loss.backward()
            optimiser.step()
    return Residual(layer.weight.detach().clone(), layer.bias.detach().clone())


def accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(1) == labels).double().mean()) if len(labels) else math.nan


def auroc(logits: Tensor, labels: Tensor) -> float:
    """AUROC of a binary task on the positive-class score (NaN when test holds one class)."""
    y = labels.numpy()
    if len(np.unique(y)) < 2:
        return math.nan
    return float(roc_auc_score(y, (logits[:, 1] - logits[:, 0]).numpy()))
