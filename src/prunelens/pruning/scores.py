"""Importance scores: one registered function per criterion, (context) → {name: score tensor} (docs/methods.md §3).

Higher score = more important. Scores of already-pruned entries are ignored by selection, so a score need
not special-case them (the normalised scores give them 0). Scores are computed on the weights' device, in
float64 where the device has it (ties and tiny magnitude differences survive normalisation).

Adding a criterion is one function: `@SCORES.register("name") def name(ctx) -> {param name: scores}`.

No score changes the model: data-driven and data-free scores run the network through
`torch.func.functional_call` on copies of the weights, in eval mode (BN uses and keeps its running stats, no
dropout; the modules' train/eval flags are restored afterwards) and take gradients with `torch.autograd.grad`,
so weights, buffers and `.grad` are left as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from prunelens.errors import PrunelensError
from prunelens.masks import MaskSet
from prunelens.modules import eval_mode
from prunelens.registry import Registry
from prunelens.seeding import generator, name_key

GRASP_TEMPERATURE = 200.0
"""GraSP divides the logits by this before the loss (Wang et al. 2020, official code)."""


@dataclass
class ScoreContext:
    """What a score may look at: the (trained) model, the current masks, for data-driven scores a batch (x, y),
    the seed of `random`, and the input shape (without batch dim) for SynFlow when no batch is given."""

    model: nn.Module
    masks: MaskSet
    batch: tuple[torch.Tensor, torch.Tensor] | None = None
    seed: int = 0
    input_shape: tuple[int, ...] | None = None

    def weights(self) -> dict[str, torch.Tensor]:
        params = dict(self.model.named_parameters())
        return {name: params[name].detach() for name in self.masks}

    def alive(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The bool mask of `name` on `like`'s device."""
        return self.masks[name].to(like.device)


Score = Callable[[ScoreContext], dict[str, torch.Tensor]]
SCORES: Registry[Score] = Registry("pruning method")


def _wide(device: torch.device) -> torch.dtype:
    """float64 for scoring; float32 on devices without float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den for den ≥ 0, with 0/0 := 0 (e.g. a layer whose alive weights are all zero, like fresh biases)."""
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def _per_layer(ctx: ScoreContext, normalise: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Score each tensor by `normalise(a)`, a = |w| of its *alive* entries only (1-D); dead entries score 0."""
    out = {}
    for name, w in ctx.weights().items():
        alive = ctx.alive(name, w)
        s = torch.zeros(w.shape, dtype=_wide(w.device), device=w.device)
        if alive.any():
            s[alive] = normalise(w[alive].abs().to(s.dtype))
        out[name] = s
    return out


@SCORES.register("magnitude")
def magnitude(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """|w| (Frankle & Carbin; OpenLTH `sparse_global`)."""
    return {name: w.abs() for name, w in ctx.weights().items()}


@SCORES.register("l1")
def l1(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """a_u / Σ_{v∈A_l} a_v (V&O). Sum-to-one: mean 1/|A_l|, so one global threshold prunes large layers
    preferentially and protects small ones (first conv, classifier, 1×1 shortcuts)."""
    return _per_layer(ctx, lambda a: _ratio(a, a.sum()))


@SCORES.register("l2")
def l2(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """a_u² / Σ_{v∈A_l} a_v² (V&O). Sum-to-one: prunes large layers preferentially. Not LAMP (whole-layer
    sum, not the tail sum)."""
    return _per_layer(ctx, lambda a: _ratio(a**2, (a**2).sum()))


@SCORES.register("softmax")
def softmax(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """exp(a_u) / Σ_{v∈A_l} exp(a_v), computed as exp(a_u − max a) / Σ exp(a_v − max a) (V&O). Sum-to-one:
    prunes large layers preferentially; with |w| ≪ 1 (Kaiming init) s_u ≈ 1/|A_l|, so layer size rather than
    magnitude drives selection."""

    def normalise(a: torch.Tensor) -> torch.Tensor:
        e = torch.exp(a - a.max())
        return e / e.sum()

    return _per_layer(ctx, normalise)


@SCORES.register("minmax")
def minmax(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """(a_u − min_{A_l} a) / (max_{A_l} a − min_{A_l} a) (V&O). Each layer's smallest alive weight scores 0,
    so every layer loses weights in every round (once ⌈p · alive⌉ ≥ number of layers). If max = min (e.g. a
    single alive weight) every entry of that layer scores 1."""

    def normalise(a: torch.Tensor) -> torch.Tensor:
        span = a.max() - a.min()
        return (a - a.min()) / span if span > 0 else torch.ones_like(a)

    return _per_layer(ctx, normalise)


@SCORES.register("lamp")
def lamp(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """LAMP (Lee et al. 2021): sort A_l ascending by a (stable: equal magnitudes keep their flat order),
    s_{u_i} = a_{u_i}² / Σ_{j≥i} a_{u_j}². The largest alive weight of each layer scores 1, so no layer is
    emptied while the global threshold is below 1."""

    def normalise(a: torch.Tensor) -> torch.Tensor:
        sq, order = torch.sort(a**2, stable=True)
        tail = sq.flip(0).cumsum(0).flip(0)
        s = torch.empty_like(a)
        s[order] = _ratio(sq, tail)
        return s

    return _per_layer(ctx, normalise)


@SCORES.register("random")
def random(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """s_u ~ U(0, 1) i.i.d. (random-pruning control). Deterministic: each tensor draws from the CPU stream
    (seed, "prune", tensor name), so the same seed gives the same scores on any device and in every round.
    With `layerwise` scope this shuffles within each layer (OpenLTH's default), with `global` over all."""
    out = {}
    for name, w in ctx.weights().items():
        gen = generator(ctx.seed, "prune", name_key(name))
        out[name] = torch.rand(w.shape, generator=gen, dtype=torch.float64).to(w.device)
    return out


def _batch(ctx: ScoreContext, method: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if ctx.batch is None:
        raise PrunelensError(f"pruning.method: {method!r} needs a data batch")
    x, y = ctx.batch
    return x.to(device), y.to(device)


def _loss(ctx: ScoreContext, method: str, temperature: float = 1.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(θ, L): the masked weights θ = W ⊙ M as fresh leaves, and the cross-entropy of logits / `temperature`
    on `ctx.batch` as a function of θ (model in eval mode)."""
    theta = {n: (w * ctx.alive(n, w)).requires_grad_() for n, w in ctx.weights().items()}
    x, y = _batch(ctx, method, next(iter(theta.values())).device)
    with eval_mode(ctx.model):
        logits = functional_call(ctx.model, theta, (x,))
    return theta, nn.functional.cross_entropy(logits / temperature, y)


def _taylor(ctx: ScoreContext, method: str) -> dict[str, torch.Tensor]:
    theta, loss = _loss(ctx, method)
    grads = torch.autograd.grad(loss, list(theta.values()))
    return {n: (t.detach() * g).abs() for (n, t), g in zip(theta.items(), grads)}


@SCORES.register("taylor")
def taylor(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """|w · ∂L/∂w| on `ctx.batch` (first-order Taylor / ShrinkBench `*MagGrad`); needs a batch."""
    return _taylor(ctx, "taylor")


@SCORES.register("snip")
def snip(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """SNIP (Lee et al. 2019): |g ⊙ θ| / Σ|g ⊙ θ|, sum over all masked tensors, g = ∂L/∂θ on `ctx.batch`."""
    scores = _taylor(ctx, "snip")
    total = sum(s.sum().to(_wide(s.device)) for s in scores.values())
    return {n: _ratio(s.to(total.dtype), total) for n, s in scores.items()}


@SCORES.register("grasp")
def grasp(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """GraSP (Wang et al. 2020): θ ⊙ (H g), g and the Hessian H of the loss of logits / 200 on `ctx.batch`.
    GraSP removes the largest S(−θ) = −θ ⊙ Hg, so the score here (higher = keep) is its negation."""
    theta, loss = _loss(ctx, "grasp", GRASP_TEMPERATURE)
    grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
    hg = torch.autograd.grad(sum((g * g.detach()).sum() for g in grads), list(theta.values()))  # ∂(g·ḡ)/∂θ = H ḡ
    return {n: (t * h).detach() for (n, t), h in zip(theta.items(), hg)}


@SCORES.register("synflow")
def synflow(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    """SynFlow (Tanaka et al. 2020), data-free: R = 1ᵀ f(1; |θ|), s = (∂R/∂θ) ⊙ θ ≥ 0 with θ the masked |W|.

    As in the Synaptic-Flow code, |·| is taken of every parameter and floating buffer (biases, BN affine and
    running stats) and the model runs in eval mode (BN is the fixed affine map of those |·| stats, not batch
    statistics of the constant input). The all-ones input has the shape of `ctx.batch`'s inputs (else
    `ctx.input_shape`) and everything runs in float64 (float32 on MPS), since the product of |W| over depth
    overflows float32. Masked entries count as zero, also in the forward pass. The model's own
    weights are never modified (the |θ| copies go through `functional_call`).
    """
    shape = tuple(ctx.batch[0].shape[1:]) if ctx.batch is not None else ctx.input_shape
    if shape is None:
        raise PrunelensError("pruning.method: 'synflow' needs a data batch or ScoreContext.input_shape")
    device = next(iter(ctx.weights().values())).device
    dtype = _wide(device)
    state = {n: p.detach().abs().to(dtype) for n, p in ctx.model.named_parameters()}
    state |= {n: b.detach().abs().to(dtype) if b.is_floating_point() else b for n, b in ctx.model.named_buffers()}
    theta = {n: (state[n] * ctx.alive(n, state[n])).requires_grad_() for n in ctx.masks}
    with eval_mode(ctx.model):
        r = functional_call(ctx.model, state | theta, (torch.ones((1, *shape), dtype=dtype, device=device),)).sum()
    grads = torch.autograd.grad(r, list(theta.values()))
    return {n: (g * theta[n]).detach() for n, g in zip(theta, grads)}
