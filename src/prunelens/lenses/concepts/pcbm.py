"""One network's post-hoc concept bottleneck model: embed → concept bank → sparse head → PCBM-h → scores.

`Plan` is what every network of a run shares (fixed in the lens' setup): the rows of each split used, the
concept labels and the concept samples. `fit_network` fits a network's PCBM on them and scores it on the test
rows; `correctness` scores a head against each class's ground-truth concepts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from prunelens.lenses.concepts.bank import ConceptBank, Samples, fit_logistic_bank, fit_svm_bank
from prunelens.lenses.concepts.heads import Head, Residual, accuracy, auroc, fit_head, fit_residual
from prunelens.lenses.concepts.metrics import rank_rows, topk
from prunelens.lenses.concepts.options import PCBMOptions
from prunelens.lenses.data import LensData
from prunelens.lenses.features import embed_rows


@dataclass(frozen=True)
class Plan:
    """Rows of train (bank fit and head), val (bank validation) and test (scores) used for every network, the
    names and labels (train, val rows) of the concepts kept, their samples, and the classes' concepts."""

    train: Tensor
    val: Tensor
    test: Tensor
    names: list[str]
    labels_train: Tensor
    labels_val: Tensor
    samples: Samples
    class_concepts: Tensor | None
    classes: int


@dataclass(frozen=True)
class NetworkFit:
    bank: ConceptBank
    head: Head
    residual: Residual | None
    scores: dict[str, float]
    lam_scores: dict[float, float]


def fit_network(
    model: nn.Module, data: LensData, plan: Plan, o: PCBMOptions, seed: int, bank: ConceptBank | None = None
) -> NetworkFit:
    """The PCBM of `model` (a fixed `bank` is reused, not refitted) and its test scores."""
    layer = o.layer
    f_train, _ = embed_rows(model, data, "train", plan.train, layer)
    f_test, logits = embed_rows(model, data, "test", plan.test, layer)
    if bank is None:
        f_val, _ = embed_rows(model, data, "val", plan.val, layer)
        if o.concept_bank == "svm":
            bank = fit_svm_bank(f_train, f_val, plan.samples, list(o.svm_c))
        else:
            bank = fit_logistic_bank(f_train, plan.labels_train, f_val, plan.labels_val, seed)
    y_train = data.labels("train")[plan.train]
    y_test = data.labels("test")[plan.test]
    p_train, p_test = bank.project(f_train), bank.project(f_test)
    head, lam_scores = fit_head(p_train, y_train, plan.classes, o.head, o.lam, list(o.lam_grid), o.l1_ratio, seed)
    residual = fit_residual(head, p_train, f_train, y_train, seed) if o.residual else None
    pcbm_logits = head.logits(p_test)
    scores = {
        "black_box": accuracy(logits, y_test),
        "pcbm": accuracy(pcbm_logits, y_test),
        "head_nonzero": float((head.weight != 0).double().mean()),
        "lam": head.lam,
    }
    scores["gap"] = scores["black_box"] - scores["pcbm"]
    if residual is not None:
        scores["pcbm_h"] = accuracy(residual.logits(head, p_test, f_test), y_test)
        scores["gap_h"] = scores["black_box"] - scores["pcbm_h"]
    if plan.classes == 2:
        scores |= {"black_box_auroc": auroc(logits.double(), y_test), "pcbm_auroc": auroc(pcbm_logits, y_test)}
    return NetworkFit(bank, head, residual, scores, lam_scores)


def bank_quality(bank: ConceptBank) -> dict[str, float]:
    """The distribution of per-concept validation accuracy (and the val margin statistics)."""
    val = bank.val_acc.double()
    if not len(val):
        return {"val_acc_mean": math.nan, "val_acc_median": math.nan, "val_acc_min": math.nan}
    return {
        "val_acc_mean": float(val.mean()), "val_acc_median": float(val.median()), "val_acc_min": float(val.min()),
        "val_acc_q10": float(torch.quantile(val, 0.1)), "train_acc_mean": float(bank.train_acc.double().mean()),
        "margin_mean": float(bank.margin_mean.double().mean()), "inside_margin": float(bank.inside_margin.double().mean()),
    }  # fmt: skip


def correctness(weight: Tensor, truth: Tensor, names: list[str], k: int, by: str) -> dict[str, np.ndarray]:
    """Per class: `topk_precision` |T_k(c) ∩ D(c)| / k of the defining concepts D(c) (`truth` rows),
    `defining_in_topk` |T_k(c) ∩ D(c)| / min(k, |D(c)|) (1: as many defining concepts as fit are in the top k), the mean
    rank (1 = first) of the defining concepts, `defining_auc` — how well the weights W[c] separate defining from
    other concepts (0.5: chance) — and, when the concepts include `tint:<class>`, the rank of each class's own
    tint and whether it is among its top k (reliance on the spurious cue)."""
    w, d = weight.double().numpy(), truth.bool().numpy()
    tops, ranks = topk(w, k, by=by), rank_rows(w, by)
    position = np.empty_like(ranks)
    position[np.arange(len(w))[:, None], ranks] = np.arange(1, w.shape[1] + 1)
    hits = np.array([np.isin(t[t >= 0], np.flatnonzero(row)).sum() for t, row in zip(tops, d)], dtype=float)
    out: dict[str, np.ndarray] = {
        "topk_precision": hits / k,
        "defining_in_topk": np.divide(hits, np.minimum(k, d.sum(1)), out=np.full(len(d), math.nan), where=d.any(1)),
        "defining_rank": np.array([position[c, row].mean() if row.any() else math.nan for c, row in enumerate(d)]),
        "defining_auc": np.array([
            roc_auc_score(row, w[c] if by == "signed" else np.abs(w[c])) if 0 < row.sum() < len(row) else math.nan
            for c, row in enumerate(d)
        ]),
    }  # fmt: skip
    tints = [i for i, name in enumerate(names) if name.startswith("tint:")]  # class c's tint is the c-th
    if len(tints) == len(w):
        own = np.array(tints)
        out["tint_rank"] = position[np.arange(len(w)), own].astype(float)
        out["tint_in_topk"] = np.array([float(o in t) for o, t in zip(own, tops)])
    return out
