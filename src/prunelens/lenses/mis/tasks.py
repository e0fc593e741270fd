"""Machine Interpretability Score tasks, evaluated as tensor algebra (docs/methods.md §16.2–16.4).

For a unit u with activations a_u over a pool of images: the top and bottom pools are the ⌈q·N⌉ images with
the highest and lowest a_u. A task draws K + 1 images without replacement from each pool, takes one of each as
the query (the least extreme of the K + 1 by default, or the most extreme) and the other K as the explanations
E⁺, E⁻. With s(x, E) the mean cosine similarity of x's encoder embedding to those of E,
Δ⁺ = s(q⁺, E⁺) − s(q⁺, E⁻), Δ⁻ = s(q⁻, E⁺) − s(q⁻, E⁻), and the task is decided correctly iff Δ⁺ − Δ⁻ > 0.
Binary MIS is the fraction of correct tasks; MIS-confidence the mean σ(slope · (Δ⁺ − Δ⁻)).

All units' tasks of a layer are drawn at once and their similarities gathered from the pool's cosine matrix:
no Python loop over tasks. The draws of a layer come from the (seed, "mis", layer) stream and depend on neither
the model nor the activations, so the dense and pruned networks face the same draws (their pools differ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from prunelens.seeding import generator, name_key

UNIT_CHUNK = 64
"""Units whose draws are made at once (bounds the (units, tasks, pool) random tensor); part of the draw key."""


@dataclass(frozen=True)
class TaskSpec:
    """N tasks of K explanations per side from the top/bottom `quantile` of the pool; the query rule."""

    tasks: int = 20
    k: int = 9
    quantile: float = 0.1
    query: str = "least_extreme"

    def pool_size(self, images: int) -> int:
        """⌈q·N⌉ images per side; at least K + 1."""
        return max(self.k + 1, math.ceil(self.quantile * images))


def cosine_matrix(embeddings: Tensor) -> Tensor:
    """(N, N) cosine similarities of the rows of `embeddings` (float32; zero rows stay zero)."""
    unit = embeddings.float() / embeddings.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T


def draw(units: int, spec: TaskSpec, pool: int, seed: int, layer: str) -> Tensor:
    """(units, tasks, 2, K + 1) positions into the top (index 0) and bottom (1) pools, each task's K + 1 drawn
    without replacement and sorted (position 0 is the most extreme image of its pool)."""
    out = []
    for chunk, start in enumerate(range(0, units, UNIT_CHUNK)):
        n = min(UNIT_CHUNK, units - start)
        gen = generator(seed, "mis", name_key(layer), chunk)
        noise = torch.rand(UNIT_CHUNK, spec.tasks, 2, pool, generator=gen)[:n]
        out.append(noise.topk(spec.k + 1, dim=-1).indices.sort(dim=-1).values)
    return torch.cat(out) if out else torch.empty(0, spec.tasks, 2, spec.k + 1, dtype=torch.long)


def margins(activations: Tensor, similarity: Tensor, positions: Tensor, spec: TaskSpec) -> Tensor:
    """(units, tasks) Δ⁺ − Δ⁻ of every task, for (images, units) `activations` and the pool's cosine matrix."""
    pool = spec.pool_size(activations.shape[0])
    order = activations.T.argsort(dim=1, descending=True, stable=True)  # (units, images), highest first
    pools = torch.stack([order[:, :pool], order.flip(1)[:, :pool]], dim=1)  # (units, 2, pool), most extreme first
    images = torch.gather(pools[:, None].expand(-1, spec.tasks, -1, -1), 3, positions)  # (units, tasks, 2, K+1)
    pick = -1 if spec.query == "least_extreme" else 0
    queries = images[..., pick]  # (units, tasks, 2): q⁺, q⁻
    keep = torch.ones(spec.k + 1, dtype=torch.bool)
    keep[pick] = False
    explanations = images[..., keep]  # (units, tasks, 2, K): E⁺, E⁻
    # s[..., i, j] = s(q_i, E_j): mean similarity of query i to the explanations of side j
    s = similarity[queries[..., :, None, None], explanations[..., None, :, :]].mean(-1)  # (units, tasks, 2, 2)
    return (s[..., 0, 0] - s[..., 0, 1]) - (s[..., 1, 0] - s[..., 1, 1])


def scores(d: Tensor, slope: float) -> dict[str, Tensor]:
    """Per unit: binary MIS (fraction of margins > 0), MIS-confidence mean σ(slope · d) and the mean margin."""
    return {"mis": (d > 0).double().mean(1), "mis_confidence": torch.sigmoid(slope * d.double()).mean(1),
            "margin": d.double().mean(1)}  # fmt: skip
