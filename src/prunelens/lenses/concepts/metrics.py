"""Row-wise comparison of two PCBM heads: dense W_d vs pruned W_p, both (K classes × N concepts).

Rows are classes, columns are the same named concepts in both heads. Every per-class metric returns a (K,)
float64 array; a class on which a metric is undefined gets NaN (never a warning or an error):
- Spearman / Kendall τ_b: either row constant (an all-zero row included);
- top-k Jaccard: both top-k lists empty; support Jaccard: both supports empty;
- sign agreement: the supports do not intersect; cosine: either row all zero.

Top-k lists hold only concepts with nonzero evidence: under `by="signed"` only W[c,i] > 0 (a "top concept" with
non-positive weight is no evidence for the class), under `by="magnitude"` only W[c,i] ≠ 0. A sparse row may thus
have fewer than k; lists are padded with -1. Ties go to the lower concept index (stable sort).

RBO compares the *full* rankings (`rank_rows`) at depth `rbo_depth` (default N, the whole list) with persistence
q (default 0.9). Concepts of equal weight (notably the many exact zeros of an elastic-net head) are ordered by
concept index in both rankings, which is deterministic but credits their shared tail as agreement; at q = 0.9
depth d carries weight ∝ q^(d−1), so that tail matters little.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

BY = ("signed", "magnitude")


def _mat(W) -> np.ndarray:
    """A finite 2-D float64 array from a numpy array or a (CPU or GPU, grad or not) torch tensor."""
    if hasattr(W, "detach"):
        W = W.detach().cpu()
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or not np.isfinite(W).all():
        raise ValueError(f"expected a finite 2-D weight matrix, got shape {W.shape}")
    return W


def _pair(Wd, Wp) -> tuple[np.ndarray, np.ndarray]:
    Wd, Wp = _mat(Wd), _mat(Wp)
    if Wd.shape != Wp.shape:
        raise ValueError(f"heads differ in shape: {Wd.shape} vs {Wp.shape}")
    return Wd, Wp


def _score(W: np.ndarray, by: str) -> np.ndarray:
    if by not in BY:
        raise ValueError(f"by must be one of {BY}, got {by!r}")
    return W if by == "signed" else np.abs(W)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den == 0 (no warning)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den != 0)


def rank_rows(W, by: str = "signed") -> np.ndarray:
    """(K, N) int: per row the concept indices by descending s = W (signed) or |W| (magnitude), stable."""
    return np.argsort(-_score(_mat(W), by), axis=1, kind="stable")


def topk(W, k: int, by: str = "signed") -> np.ndarray:
    """(K, k) int: per row T_k = the k largest s_i = W[c,i] or |W[c,i]| among s_i > 0, padded with -1.

    Ties: lower concept index first. Signed keeps only positive weights, magnitude only nonzero ones."""
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    W = _mat(W)
    s = _score(W, by)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    out = np.where(np.take_along_axis(s, order, 1) > 0, order, -1)
    return np.pad(out, ((0, 0), (0, k - out.shape[1])), constant_values=-1)


def _topk_counts(T_d, T_p) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|A ∩ B|, |A|, |B| per row of two -1-padded top-k index arrays."""
    T_d, T_p = np.asarray(T_d), np.asarray(T_p)
    inter = ((T_d[:, :, None] == T_p[:, None, :]) & (T_d[:, :, None] >= 0)).sum((1, 2))
    return inter, (T_d >= 0).sum(1), (T_p >= 0).sum(1)


def topk_jaccard(T_d, T_p) -> np.ndarray:
    """(K,) J = |A ∩ B| / |A ∪ B| of the top-k sets (−1 padding ignored); NaN if both are empty."""
    inter, a, b = _topk_counts(T_d, T_p)
    return _ratio(inter, a + b - inter)


def overlap_at_k(T_d, T_p, k: int) -> np.ndarray:
    """(K,) overlap@k = |A ∩ B| / k (0 when either list is empty)."""
    return _topk_counts(T_d, T_p)[0] / k


def _rbo_from_x(X: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Truncated and extrapolated RBO from overlaps X[..., d−1] = X_d, d = 1..k."""
    if not 0 < q < 1:
        raise ValueError(f"RBO persistence q must lie in (0, 1), got {q}")
    d = np.arange(1, X.shape[-1] + 1)
    A = X / d
    trunc = (1 - q) * (A * q ** (d - 1)).sum(-1)
    ext = A[..., -1] * q ** d[-1] + (1 - q) / q * (A * q**d).sum(-1)
    return trunc, ext


def rbo(S: Sequence, T: Sequence, q: float = 0.9, depth: int | None = None) -> tuple[float, float]:
    """Rank-biased overlap of two ranked lists of distinct items, at depth k (default min(|S|, |T|)).

    X_d = |S[:d] ∩ T[:d]|; RBO@k = (1−q) Σ_{d=1}^{k} q^{d−1} X_d/d;
    RBO_ext@k = (X_k/k) q^k + ((1−q)/q) Σ_{d=1}^{k} (X_d/d) q^d  (= RBO@k + (X_k/k) q^k; 1 for equal lists)."""
    depth = min(len(S), len(T)) if depth is None else depth
    if not 1 <= depth <= min(len(S), len(T)):
        raise ValueError(f"depth must lie in [1, {min(len(S), len(T))}], got {depth}")
    S, T = list(S)[:depth], list(T)[:depth]
    if len(set(S)) < depth or len(set(T)) < depth:
        raise ValueError("ranked lists must not repeat items")
    pos_t = {x: j for j, x in enumerate(T)}
    enters = np.zeros(depth)  # enters[m] = number of items first in both prefixes at depth m + 1
    for i, x in enumerate(S):
        if x in pos_t:
            enters[max(i, pos_t[x])] += 1
    trunc, ext = _rbo_from_x(enters.cumsum(), q)
    return float(trunc), float(ext)


def rbo_rows(R_d, R_p, q: float = 0.9, depth: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(K,) truncated and extrapolated RBO (see `rbo`) of paired full rankings (permutations of 0..N−1) per row."""
    R_d, R_p = np.asarray(R_d), np.asarray(R_p)
    K, n = R_d.shape
    depth = n if depth is None else depth
    if not 1 <= depth <= n:
        raise ValueError(f"depth must lie in [1, {n}], got {depth}")
    rows, ranks = np.arange(K)[:, None], np.broadcast_to(np.arange(n), (K, n))
    pos_d, pos_p = np.empty_like(R_d), np.empty_like(R_p)
    pos_d[rows, R_d], pos_p[rows, R_p] = ranks, ranks
    enters = np.zeros((K, n))
    np.add.at(enters, (np.broadcast_to(rows, (K, n)), np.maximum(pos_d, pos_p)), 1)
    return _rbo_from_x(enters.cumsum(1)[:, :depth], q)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    return np.clip(_ratio((x * y).sum(1), np.sqrt((x * x).sum(1) * (y * y).sum(1))), -1, 1)


def spearman_rows(Wd, Wp) -> np.ndarray:
    """(K,) ρ_c = Pearson r of the average ranks (ties share their mean rank) of W_d[c] and W_p[c]."""
    Wd, Wp = _pair(Wd, Wp)
    return _pearson_rows(rankdata(Wd, axis=1), rankdata(Wp, axis=1))


def kendall_tau_b_rows(Wd, Wp, block: int = 2**22) -> np.ndarray:
    """(K,) τ_b = (n_c − n_d) / √((n₀ − n₁)(n₀ − n₂)), over all concept pairs i < j.

    n_c − n_d = Σ_{i<j} sgn(x_i − x_j) sgn(y_i − y_j); n₀ − n₁ (n₀ − n₂) = pairs not tied in x (y). Computed with
    all-pairs sign matrices, `block` entries at a time (rows are batched)."""
    Wd, Wp = _pair(Wd, Wp)
    K, n = Wd.shape
    s, ux, uy = np.zeros(K), np.zeros(K), np.zeros(K)
    step = max(1, block // max(n * n, 1))
    for a in range(0, K, step):
        sx = np.sign(Wd[a : a + step, :, None] - Wd[a : a + step, None, :]).astype(np.int8)
        sy = np.sign(Wp[a : a + step, :, None] - Wp[a : a + step, None, :]).astype(np.int8)
        s[a : a + step] = (sx * sy).sum((1, 2), dtype=np.int64) / 2
        ux[a : a + step] = np.abs(sx).sum((1, 2), dtype=np.int64) / 2
        uy[a : a + step] = np.abs(sy).sum((1, 2), dtype=np.int64) / 2
    return np.clip(_ratio(s, np.sqrt(ux * uy)), -1, 1)


def support_jaccard_rows(Wd, Wp, atol: float = 0.0) -> np.ndarray:
    """(K,) |S_d ∩ S_p| / |S_d ∪ S_p| with supports S(w) = {i : |w_i| > atol}; NaN if both are empty."""
    Wd, Wp = _pair(Wd, Wp)
    sd, sp = np.abs(Wd) > atol, np.abs(Wp) > atol
    return _ratio((sd & sp).sum(1), (sd | sp).sum(1))


def sign_agreement_rows(Wd, Wp, atol: float = 0.0) -> np.ndarray:
    """(K,) |{i ∈ S_d ∩ S_p : sgn W_d[c,i] = sgn W_p[c,i]}| / |S_d ∩ S_p|; NaN if the supports do not meet."""
    Wd, Wp = _pair(Wd, Wp)
    both = (np.abs(Wd) > atol) & (np.abs(Wp) > atol)
    return _ratio((both & (np.sign(Wd) == np.sign(Wp))).sum(1), both.sum(1))


def cosine_rows(Wd, Wp) -> np.ndarray:
    """(K,) cos_c = ⟨W_d[c], W_p[c]⟩ / (‖W_d[c]‖ ‖W_p[c]‖); NaN if either row is all zero."""
    Wd, Wp = _pair(Wd, Wp)
    den = np.linalg.norm(Wd, axis=1) * np.linalg.norm(Wp, axis=1)
    return np.clip(_ratio((Wd * Wp).sum(1), den), -1, 1)


def _row_normalise(W: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(W, axis=1, keepdims=True)
    return np.divide(W, norm, out=np.zeros_like(W), where=norm > 0)


def global_metrics(Wd, Wp) -> dict[str, float]:
    """frobenius_normalised = ‖N(W_d) − N(W_p)‖_F, N = rows scaled to unit L2 norm (zero rows stay zero);
    importance_spearman = Spearman ρ of I_i = Σ_c |W[c,i]| between the heads (NaN if either I is constant)."""
    Wd, Wp = _pair(Wd, Wp)
    frob = float(np.linalg.norm(_row_normalise(Wd) - _row_normalise(Wp)))
    imp = spearman_rows(np.abs(Wd).sum(0, keepdims=True), np.abs(Wp).sum(0, keepdims=True))[0]
    return {"frobenius_normalised": frob, "importance_spearman": float(imp)}


def compare_heads(
    Wd, Wp, k: int = 3, by: str = "signed", q: float = 0.9, rbo_depth: int | None = None, atol: float = 0.0
) -> dict[str, np.ndarray | float]:
    """All per-class metrics as (K,) arrays plus the `global_metrics` scalars.

    Top-k sets use `k` and `by`; RBO compares the full `rank_rows(·, by)` at depth `rbo_depth` (default N) with
    persistence q; supports (support Jaccard, sign agreement) use |w| > atol."""
    Wd, Wp = _pair(Wd, Wp)
    T_d, T_p = topk(Wd, k, by), topk(Wp, k, by)
    rbo_t, rbo_e = rbo_rows(rank_rows(Wd, by), rank_rows(Wp, by), q, rbo_depth)
    return {
        "topk_jaccard": topk_jaccard(T_d, T_p),
        "overlap_at_k": overlap_at_k(T_d, T_p, k),
        "spearman": spearman_rows(Wd, Wp),
        "kendall_tau_b": kendall_tau_b_rows(Wd, Wp),
        "rbo": rbo_t,
        "rbo_ext": rbo_e,
        "support_jaccard": support_jaccard_rows(Wd, Wp, atol),
        "sign_agreement": sign_agreement_rows(Wd, Wp, atol),
        "cosine": cosine_rows(Wd, Wp),
        **global_metrics(Wd, Wp),
    }
