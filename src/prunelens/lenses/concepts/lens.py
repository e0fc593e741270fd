"""The `pcbm` lens (docs/methods.md §15): a post-hoc concept bottleneck model on every round's network.

Setup (once, on the dense network): the rows of each split used, the concept labels (`sources.py`) and the
concept samples, shared by every network; the dense PCBM; and the PCBM of each reference network compared with
the dense one (`floor`: random init; `same_init`; `other_seed`). Per round: the round's PCBM (its own concept
bank, or the dense bank with `fixed_bank`), its accuracy next to the network's, the bank's quality, the top-k
concepts per class, their consistency with the dense PCBM (and its position between the floor and each trained
reference) and, where the data knows each class's concepts, their correctness.

Record columns: `kind`, `metric`, `value` (for per-class metrics the mean over the classes where it is
defined), `n` (classes where defined), `nan` (classes where undefined), plus `reference` (position rows),
`class`/`rank`/`concept` (top-k rows) and `head`, `bank` on every row. Kinds: `accuracy`, `bank`, `head`,
`correctness`, `topk`, `pruned_vs_dense`, `position`; the references' values as `<reference>` (consistency),
`accuracy_<reference>`, `bank_<reference>` and `correctness_<reference>` in the setup rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from prunelens.errors import PrunelensError
from prunelens.lenses.base import LENSES, Lens, LensContext, LensResult, LensRound, reference_positions
from prunelens.lenses.concepts.bank import ConceptBank, Samples, draw_samples
from prunelens.lenses.concepts.heads import Head
from prunelens.lenses.concepts.metrics import compare_heads, topk
from prunelens.lenses.concepts.options import PCBMOptions
from prunelens.lenses.concepts.pcbm import NetworkFit, Plan, bank_quality, correctness, fit_network
from prunelens.lenses.concepts.sources import concept_set, resolve
from prunelens.lenses.data import LensBatch, LensData
from prunelens.lenses.features import embed

CONSISTENCY = ("topk_jaccard", "overlap_at_k", "spearman", "kendall_tau_b", "rbo", "rbo_ext", "support_jaccard",
               "sign_agreement", "cosine", "frobenius_normalised", "importance_spearman")  # fmt: skip


def _row(kind: str, metric: str, value: Any, **extra: Any) -> dict[str, Any]:
    """One record; a (classes,) array becomes the mean of its finite values with their count."""
    values = np.atleast_1d(np.asarray(value, dtype=float))
    finite = np.isfinite(values)
    mean = float(values[finite].mean()) if finite.any() else math.nan
    return {"kind": kind, "metric": metric, "value": mean, "n": int(finite.sum()), "nan": int((~finite).sum()), **extra}


@LENSES.register("pcbm")
class PCBMLens(Lens):
    """Concept-level explanations of every round (module docstring)."""

    name = "pcbm"
    version = 1
    Options = PCBMOptions
    headline_metric = "topk_jaccard"
    options: PCBMOptions

    def references(self) -> tuple[str, ...]:
        return tuple(self.options.references)

    def check_pruning(self, granularity: str) -> None:
        if self.options.fixed_bank and granularity == "filters":
            raise PrunelensError("pcbm option fixed_bank: filter pruning removes channels, so the dense concept vectors do not apply")

    def check(self, model: nn.Module, batch: LensBatch) -> None:
        source = resolve(self.options.concepts, batch)
        if source == "class_table" and not self.options.concepts_path.is_file():  # type: ignore[union-attr]
            raise PrunelensError(f"{self.options.concepts_path}: not found (pcbm option concepts_path)")
        embed(model, [batch.images[:2]], self.options.layer)

    def _tag(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "head": self.options.head, "bank": self.options.concept_bank} for r in records]

    # -- the dense network and the references

    def _plan(self, ctx: LensContext) -> tuple[Plan, list[str]]:
        """The rows, concept labels and samples every network uses, and notes on skipped concepts."""
        o, data = self.options, ctx.data
        rows = {s: data.pool_index(o.max_images, s, ctx.seed) for s in ("train", "val", "test")}
        found = concept_set(o.concepts, data, rows["train"], rows["val"], path=o.concepts_path,
                            class_threshold=o.class_threshold, min_classes=o.min_classes, tint=o.tint)  # fmt: skip
        counts = [found.train.sum(0), (~found.train).sum(0), found.val.sum(0), (~found.val).sum(0)]
        enough = (torch.stack(counts[:2]).min(0).values >= o.min_positives) & (torch.stack(counts[2:]).min(0).values >= 1)
        notes = [
            f"concept {name!r} skipped: {int(counts[0][i])} positives and {int(counts[1][i])} negatives in {len(rows['train'])} "
            f"train images, {int(counts[2][i])}/{int(counts[3][i])} in val (need ≥ {o.min_positives} in train, ≥ 1 in val)"
            for i, name in enumerate(found.names) if not enough[i]
        ]  # fmt: skip
        if not enough.any():
            raise PrunelensError(f"pcbm: no concept has ≥ {o.min_positives} positives and negatives among the train images")
        keep = torch.nonzero(enough).flatten()
        train, val = found.train[:, keep], found.val[:, keep]
        samples = draw_samples(train, val, o.n_samples, ctx.seed)
        truth = found.class_concepts[:, keep] if found.class_concepts is not None else None
        names = [found.names[i] for i in keep.tolist()]
        return Plan(rows["train"], rows["val"], rows["test"], names, train, val, samples, truth, data.bundle.num_classes), notes

    def setup(self, ctx: LensContext) -> LensResult:
        plan, notes = self._plan(ctx)
        dense = fit_network(ctx.dense, ctx.data, plan, self.options, ctx.seed)
        records = self._network_rows(dense, plan, ctx.data, suffix="")
        records.append(_row("bank", "skipped", float(len(notes))))
        tensors = {
            "rows.train": plan.train, "rows.val": plan.val, "rows.test": plan.test,
            "labels.train": plan.labels_train, "labels.val": plan.labels_val, **plan.samples.tensors(),
            **self._fit_tensors(dense),
        }  # fmt: skip
        if plan.class_concepts is not None:
            tensors["class_concepts"] = plan.class_concepts
        for kind in self.options.references:
            fit = fit_network(ctx.references[kind], ctx.data, plan, self.options, ctx.seed, self._fixed(dense.bank))
            records += self._network_rows(fit, plan, ctx.data, suffix=f"_{kind}", topk_rows=False)
            records += self._consistency(dense.head, fit.head, kind)
            tensors[f"{kind}.head.weight"] = fit.head.weight
        artefacts = {"concepts": plan.names, "notes": notes, "lam_scores": {str(k): v for k, v in dense.lam_scores.items()},
                     "classes": ctx.data.bundle.class_names, "bank_kind": dense.bank.kind, "rbo_q": self.options.rbo_q}  # fmt: skip
        return LensResult(self._tag(records), tensors, artefacts)

    def _fixed(self, bank: ConceptBank) -> ConceptBank | None:
        return bank if self.options.fixed_bank else None

    @staticmethod
    def _fit_tensors(fit: NetworkFit) -> dict[str, torch.Tensor]:
        tensors = {**fit.bank.tensors(), "head.weight": fit.head.weight, "head.bias": fit.head.bias}
        if fit.residual is not None:
            tensors |= {"residual.weight": fit.residual.weight, "residual.bias": fit.residual.bias}
        return tensors

    def _network_rows(self, fit: NetworkFit, plan: Plan, data: LensData, suffix: str, topk_rows: bool = True) -> list[dict[str, Any]]:
        """Accuracy, bank quality, head sparsity, correctness and (for pruned rounds and the dense) top-k rows."""
        o = self.options
        rows = [_row(f"accuracy{suffix}", k, v) for k, v in fit.scores.items() if k not in ("head_nonzero", "lam")]
        rows += [_row(f"head{suffix}", "nonzero", fit.scores["head_nonzero"]), _row(f"head{suffix}", "lam", fit.scores["lam"])]
        rows += [_row(f"bank{suffix}", k, v) for k, v in bank_quality(fit.bank).items()]
        if plan.class_concepts is not None:
            per_class = correctness(fit.head.weight, plan.class_concepts, plan.names, o.k, o.rank_by)
            rows += [_row(f"correctness{suffix}", k, v) for k, v in per_class.items()]
        if topk_rows:
            classes = data.bundle.class_names or [str(c) for c in range(plan.classes)]
            weight = fit.head.weight.numpy()
            for c, top in enumerate(topk(weight, o.k, by=o.rank_by)):
                rows += [_row("topk", "weight", weight[c, i], **{"class": classes[c], "rank": j + 1, "concept": plan.names[i]})
                         for j, i in enumerate(top) if i >= 0]  # fmt: skip
        return rows

    def _consistency(self, dense: Head, other: Head, kind: str) -> list[dict[str, Any]]:
        o = self.options
        metrics = compare_heads(dense.weight.numpy(), other.weight.numpy(), k=o.k, by=o.rank_by, q=o.rbo_q)
        return [_row(kind, m, metrics[m]) for m in CONSISTENCY]

    # -- one round

    def __call__(self, ctx: LensContext, rnd: LensRound) -> LensResult:
        if ctx.dense_result is None:
            raise ValueError("the pcbm lens needs its setup result (ctx.dense_result)")
        stored = ctx.dense_result
        t = stored.tensors
        dense = Head(self.options.head, t["head.weight"], t["head.bias"], math.nan)
        if rnd.round == 0:
            records = self._consistency(dense, dense, "pruned_vs_dense")
            return LensResult(self._tag(records + reference_positions(records, stored.records, self.options.references)))
        plan = Plan(t["rows.train"], t["rows.val"], t["rows.test"], stored.artefacts["concepts"], t["labels.train"],
                    t["labels.val"], Samples.from_tensors(t), t.get("class_concepts"), ctx.data.bundle.num_classes)  # fmt: skip
        bank = ConceptBank.from_tensors(stored.artefacts["bank_kind"], t) if self.options.fixed_bank else None
        fit = fit_network(rnd.model, ctx.data, plan, self.options, ctx.seed, bank)
        records = self._network_rows(fit, plan, ctx.data, suffix="")
        consistency = self._consistency(dense, fit.head, "pruned_vs_dense")
        records += consistency + reference_positions(consistency, stored.records, self.options.references)
        return LensResult(self._tag(records), self._fit_tensors(fit))

    # -- the terminal table and the per-round top-k table

    @classmethod
    def headline(cls, table: pd.DataFrame) -> pd.DataFrame:
        """Per round (and per reference): the network's and the PCBM's test accuracy, the mean top-k Jaccard with
        the dense PCBM and its position between the floor and the same-init reference, and the share of each
        class's top-k concepts that define it."""
        wanted = {("accuracy", "black_box"): "black_box", ("accuracy", "pcbm"): "pcbm", ("accuracy", "pcbm_h"): "pcbm_h",
                  ("pruned_vs_dense", "topk_jaccard"): "topk_jaccard", ("correctness", "defining_in_topk"): "defining_in_topk"}  # fmt: skip
        refs = [r for r in ("floor", "same_init", "other_seed") if r in set(table["kind"])]
        rows: dict[str, dict[str, float]] = {}
        for rec in table.itertuples(index=False):
            kind, metric = rec.kind, rec.metric
            label = str(rec.round)
            for ref in refs:
                if kind in (ref, f"accuracy_{ref}", f"correctness_{ref}"):
                    kind, label = {ref: "pruned_vs_dense"}.get(kind, kind.removesuffix(f"_{ref}")), ref
            if (kind, metric) in wanted:
                rows.setdefault(label, {})[wanted[kind, metric]] = rec.value
            if kind == "position" and metric == "topk_jaccard" and getattr(rec, "reference", None) == "same_init":
                rows.setdefault(label, {})["jaccard_pos_same_init"] = rec.value
        order = sorted(rows, key=lambda r: (not r.isdigit(), int(r) if r.isdigit() else refs.index(r)))
        columns = ["black_box", "pcbm", "pcbm_h", "topk_jaccard", "jaccard_pos_same_init", "defining_in_topk"]
        wide = pd.DataFrame([rows[r] for r in order], index=pd.Index(order, name="round"))
        return wide[[c for c in columns if c in wide]].reset_index()

    @classmethod
    def tables(cls, table: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """`topk`: one row per (round, class) with its top-k concepts and their weights in rank order (empty
        where a class has fewer concepts with positive weight)."""
        top = table[table["kind"] == "topk"]
        if top.empty:
            return {}
        wide = top.pivot_table(index=["round", "density", "class"], columns="rank", values=["concept", "value"],
                               aggfunc="first", sort=False)  # fmt: skip
        wide.columns = [f"{'concept' if part == 'concept' else 'weight'}_{int(rank)}" for part, rank in wide.columns]
        ordered = sorted(wide.columns, key=lambda c: (int(c.split("_")[1]), c.startswith("weight")))
        rounds = table.drop_duplicates("round")[["round", "density"]].itertuples(index=False)
        every = pd.MultiIndex.from_tuples([(r, d, c) for r, d in rounds for c in dict.fromkeys(top["class"])], names=wide.index.names)
        return {"topk": wide[ordered].reindex(every).reset_index()}
