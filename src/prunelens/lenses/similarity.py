"""Similarity of saliency maps (docs/methods.md §8): batched over pairs of maps a, b of shape (B, h, w).

Every metric returns a (B,) float64 tensor. A pair in which either map is *degenerate* (constant, e.g. all
zero after Grad-CAM's ReLU) has no ranking, threshold set or centre of mass, so it gets NaN for every
metric; `compare` also returns the `degenerate` flags so callers count them, and `aggregate` averages with
nanmean and reports how many pairs were valid. A well-defined pair never yields NaN.

Conventions (all deterministic):
- threshold set B_τ(a) = {i : a_i > τ·max a} (the seed code's mask at τ = 0.75);
- top-k set T_k(a) = the ⌈k·n⌉ largest a_i, ties broken by the lower flat (row-major) index;
- Spearman ρ = Pearson r of the *average* ranks (ties share their mean rank), equal to `scipy.stats.spearmanr`;
- SSIM is computed on maps scaled by their per-image max |a| (magnitude is reported separately, as the ratio
  of peaks), with `skimage.metrics.structural_similarity`, data_range = joint max − joint min (as Quantus) and
  win_size = min(7, largest odd number ≤ the smaller grid side): native CAM grids are often 4×4 or 8×8,
  smaller than skimage's default 7×7 window. Grids smaller than 3×3 have no SSIM (NaN);
- centre of mass CoM(a) = Σ_i a_i x_i / Σ_i a_i in (row, col) grid pixels; maps with negative values (the
  seed variant has no ReLU) are shifted by their minimum first.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import Tensor

from prunelens.pruning.select import ceil_count

TOPK = (0.05, 0.10, 0.20)
"""Top-k fractions reported by `compare`."""
THRESHOLD = 0.75
"""τ of the seed-compatible threshold mask."""


def flat(maps: Tensor) -> Tensor:
    """(B, h, w) → (B, h·w) in float64."""
    return maps.reshape(len(maps), -1).double()


def degenerate(maps: Tensor) -> Tensor:
    """(B,) bool: the map is constant (all-zero maps included)."""
    x = flat(maps)
    return x.amax(1) == x.amin(1)


def threshold_mask(maps: Tensor, tau: float = THRESHOLD) -> Tensor:
    """B_τ: pixels above τ × the per-image max (same shape as `maps`)."""
    return maps > tau * maps.flatten(1).amax(1).view(-1, *[1] * (maps.ndim - 1))


def topk_count(n: int, k: float) -> int:
    """⌈k·n⌉ (float-noise safe, as pruning counts), at least 1."""
    return max(1, ceil_count(k, n))


def topk_mask(maps: Tensor, k: float) -> Tensor:
    """T_k: the ⌈k·n⌉ largest pixels per map; equal values are taken in flat index order."""
    x = maps.reshape(len(maps), -1)
    order = torch.sort(x, dim=1, descending=True, stable=True).indices[:, : topk_count(x.shape[1], k)]
    return torch.zeros_like(x, dtype=torch.bool).scatter_(1, order, True).view_as(maps)


def safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den in float64, NaN where den ≤ 0."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, math.nan))


def iou(a: Tensor, b: Tensor) -> Tensor:
    """|A ∩ B| / |A ∪ B| of boolean masks (NaN if both are empty)."""
    a, b = a.flatten(1), b.flatten(1)
    return safe_ratio((a & b).sum(1), (a | b).sum(1))


def dice(a: Tensor, b: Tensor) -> Tensor:
    """2|A ∩ B| / (|A| + |B|) of boolean masks (NaN if both are empty)."""
    a, b = a.flatten(1), b.flatten(1)
    return safe_ratio(2 * (a & b).sum(1), a.sum(1) + b.sum(1))


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 1…n along dim 1; tied values get the mean of the ranks they span (scipy's `rankdata`)."""
    values, order = torch.sort(x, dim=1, stable=True)
    n = values.shape[1]
    position = torch.arange(n, device=x.device).expand_as(values)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]  # first element of a run of equal values
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, position, 0).cummax(1).values
    last = torch.where(ends, position, n).flip(1).cummin(1).values.flip(1)
    mean_rank = (first + last).double() / 2 + 1
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """r = Σ(a−ā)(b−b̄) / √(Σ(a−ā)² Σ(b−b̄)²) per pair of maps."""
    x, y = flat(a), flat(b)
    x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    return safe_ratio((x * y).sum(1), (x.square().sum(1) * y.square().sum(1)).sqrt())


def spearman(a: Tensor, b: Tensor, absolute: bool = False) -> Tensor:
    """Spearman ρ: Pearson r of the average ranks (of |a|, |b| with `absolute`)."""
    if absolute:
        a, b = a.abs(), b.abs()
    return pearson(average_ranks(flat(a)), average_ranks(flat(b)))


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """a·b / (‖a‖ ‖b‖)."""
    x, y = flat(a), flat(b)
    return safe_ratio((x * y).sum(1), x.norm(dim=1) * y.norm(dim=1))


def ssim_window(h: int, w: int) -> int:
    """min(7, the largest odd number ≤ min(h, w)); below 3 SSIM is undefined (returns 0)."""
    side = min(h, w, 7)
    side -= 1 - side % 2
    return side if side >= 3 else 0


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """SSIM of the max-|·|-scaled maps (skimage, Quantus' joint data range; window per `ssim_window`)."""
    win = ssim_window(*a.shape[-2:])
    x, y = (flat(m) / flat(m).abs().amax(1, keepdim=True).clamp_min(1e-300) for m in (a, b))
    x, y = x.view(a.shape).cpu().numpy(), y.view(b.shape).cpu().numpy()
    out = []
    for p, q in zip(x, y):
        lo, hi = min(p.min(), q.min()), max(p.max(), q.max())
        ok = win and hi > lo
        out.append(structural_similarity(p, q, win_size=win, data_range=hi - lo) if ok else math.nan)
    return torch.tensor(np.asarray(out, dtype=np.float64), device=a.device)


def argmax_index(maps: Tensor) -> Tensor:
    """(B,) flat index of each map's maximum (the first one on ties)."""
    return maps.reshape(len(maps), -1).argmax(1)


def pointing(a: Tensor, region: Tensor) -> Tensor:
    """1[argmax a ∈ region] per map; `region` is a boolean mask shaped like `a` (e.g. T_k(b) or an object)."""
    return region.reshape(len(region), -1).gather(1, argmax_index(a)[:, None])[:, 0].double()


def nonnegative(maps: Tensor) -> Tensor:
    """Maps shifted by their per-image minimum where it is negative (seed-variant maps have no ReLU)."""
    return maps - maps.flatten(1).amin(1).clamp(max=0).view(-1, *[1] * (maps.ndim - 1))


def centre_of_mass(maps: Tensor) -> Tensor:
    """(B, 2) CoM in (row, col) grid pixels of the maps shifted to be non-negative."""
    x = nonnegative(maps.double())
    rows = torch.arange(x.shape[1], dtype=torch.float64, device=x.device)
    cols = torch.arange(x.shape[2], dtype=torch.float64, device=x.device)
    mass = x.sum((1, 2))
    com = torch.stack([(x.sum(2) * rows).sum(1), (x.sum(1) * cols).sum(1)], 1)
    return com / mass[:, None]


def com_shift(a: Tensor, b: Tensor, scale: tuple[float, float] = (1.0, 1.0)) -> Tensor:
    """‖CoM(a) − CoM(b)‖₂, with the (row, col) offsets multiplied by `scale` (1 → grid px; H/h, W/w → input px)."""
    delta = (centre_of_mass(a) - centre_of_mass(b)) * torch.tensor(scale, dtype=torch.float64, device=a.device)
    return delta.norm(dim=1)


def distribution(maps: Tensor) -> Tensor:
    """(B, n) maps as distributions over the grid: shifted by their minimum when it is negative (signed maps
    such as the seed variant's), then divided by their sum."""
    x = nonnegative(flat(maps))
    return x / x.sum(dim=1, keepdim=True)


def jensen_shannon(a: Tensor, b: Tensor) -> Tensor:
    """JS(P, Q) = ½ KL(P‖M) + ½ KL(Q‖M), M = (P + Q)/2, natural log (0 for equal maps, ln 2 for disjoint ones)."""
    p, q = distribution(a), distribution(b)
    m = (p + q) / 2

    def kl(x: Tensor) -> Tensor:
        return torch.where(x > 0, x * (x / m).log(), torch.zeros_like(x)).sum(dim=1)

    return (kl(p) + kl(q)) / 2


def compare(a: Tensor, b: Tensor, input_size: tuple[int, int] | None = None, pointing_k: float = 0.10) -> dict[str, Tensor]:
    """Every pixel-level metric of docs/methods.md §8 for pairs (a_i, b_i) on the native grid, NaN for degenerate
    pairs. Pointing agreement uses T_k with k = `pointing_k`; `com_shift_px` needs `input_size` (H, W)."""
    bad = degenerate(a) | degenerate(b)
    out = {
        "iou_thr": iou(threshold_mask(a), threshold_mask(b)),
        **{f"iou_top{round(100 * k)}": iou(topk_mask(a, k), topk_mask(b, k)) for k in TOPK},
        **{f"dice_top{round(100 * k)}": dice(topk_mask(a, k), topk_mask(b, k)) for k in TOPK},
        "spearman": spearman(a, b),
        "spearman_abs": spearman(a, b, absolute=True),
        "pearson": pearson(a, b),
        "cosine": cosine(a, b),
        "ssim": ssim(a, b),
        "pointing_ab": pointing(a, topk_mask(b, pointing_k)),
        "pointing_ba": pointing(b, topk_mask(a, pointing_k)),
        "com_shift": com_shift(a, b),
        "jensen_shannon": jensen_shannon(a, b),
    }
    out["pointing"] = (out["pointing_ab"] + out["pointing_ba"]) / 2
    if input_size is not None:
        h, w = a.shape[-2:]
        out["com_shift_px"] = com_shift(a, b, (input_size[0] / h, input_size[1] / w))
    out = {name: value.masked_fill(bad, math.nan) for name, value in out.items()}
    out["degenerate"] = bad
    return out


def aggregate(values: Tensor) -> tuple[float, int]:
    """(nanmean, number of finite values) of a (B,) tensor; the mean of no values is NaN."""
    finite = torch.isfinite(values)
    n = int(finite.sum())
    return (float(values[finite].double().mean()) if n else math.nan), n
