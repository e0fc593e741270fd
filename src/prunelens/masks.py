"""MaskSet: {parameter name → bool mask}, the bottom layer shared by pruning and training.

Masks live outside the module (weights stay plain `nn.Parameter`s, so state_dicts, deepcopy and DDP are
unaffected) and are enforced by multiplying the weights after every optimizer step (docs/methods.md §1–2).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

from prunelens.errors import PrunelensError
from prunelens.modules import NORMS, WEIGHT_LAYERS


def classifier_name(model: nn.Module) -> str:
    """Module name of the classifier: the last Conv/Linear layer in registration order."""
    names = [name for name, module in model.named_modules() if isinstance(module, WEIGHT_LAYERS)]
    if not names:
        raise PrunelensError(f"{type(model).__name__} has no Conv or Linear layer to prune")
    return names[-1]


def prunable_names(
    model: nn.Module,
    *,
    prune_classifier: bool = True,
    include_bias: bool = False,
    include_bn: bool = False,
    exclude: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """Names of the prunable parameters: Conv/Linear weights by default (docs/methods.md §1.2).

    `exclude` holds fnmatch patterns over parameter names; a pattern matching nothing is an error (a typo
    would otherwise silently prune a layer the user meant to keep).
    """
    head = classifier_name(model)
    names = []
    for mod_name, module in model.named_modules():
        if mod_name == head and not prune_classifier:
            continue
        kinds = ["weight"] if isinstance(module, WEIGHT_LAYERS) or (include_bn and isinstance(module, NORMS)) else []
        if include_bias and isinstance(module, WEIGHT_LAYERS):
            kinds.append("bias")
        for kind in kinds:
            if getattr(module, kind, None) is not None:
                names.append(f"{mod_name}.{kind}" if mod_name else kind)
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise PrunelensError(f"pruning.exclude: pattern {pattern!r} matches no prunable parameter")
    return [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]


class MaskSet(Mapping[str, torch.Tensor]):
    """An immutable mapping of parameter names to bool masks (True = weight kept)."""

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        self._masks = {name: mask.to(torch.bool) for name, mask in masks.items()}

    @classmethod
    def ones(cls, model: nn.Module, names: list[str]) -> MaskSet:
        params = dict(model.named_parameters())
        return cls({name: torch.ones_like(params[name], dtype=torch.bool) for name in names})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def to(self, device: torch.device | str) -> MaskSet:
        return MaskSet({n: m.to(device) for n, m in self._masks.items()})

    def alive(self) -> int:
        """Number of kept entries over all masked tensors."""
        return sum(int(m.sum()) for m in self._masks.values())

    def total(self) -> int:
        return sum(m.numel() for m in self._masks.values())

    def density(self) -> float:
        """Kept fraction over the masked (prunable) tensors: d_prunable of docs/methods.md §1.3."""
        return self.alive() / max(self.total(), 1)

    def layer_density(self) -> dict[str, float]:
        return {n: float(m.float().mean()) for n, m in self._masks.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: m.cpu() for n, m in self._masks.items()}

    def check(self, model: nn.Module) -> None:
        """Raise if the masks do not fit the model (unknown names or wrong shapes)."""
        params = dict(model.named_parameters())
        for name, mask in self._masks.items():
            if name not in params:
                raise PrunelensError(f"mask for {name!r} but the model has no such parameter")
            if params[name].shape != mask.shape:
                raise PrunelensError(f"mask for {name!r} has shape {tuple(mask.shape)}, parameter {tuple(params[name].shape)}")

    def enforcer(self, model: nn.Module) -> Callable[[], None]:
        """A fast `W ← W ⊙ M` for every masked parameter, to call after each optimizer step.

        Masks are cast to each parameter's dtype/device once, and applied in one `_foreach_mul_`; all-True
        masks (e.g. the dense round) are skipped.
        """
        self.check(model)
        params = dict(model.named_parameters())
        pruned = {n: m for n, m in self._masks.items() if not bool(m.all())}
        targets = [params[n] for n in pruned]
        factors = [m.to(device=p.device, dtype=p.dtype) for m, p in zip(pruned.values(), targets)]

        @torch.no_grad()
        def enforce() -> None:
            if targets:
                torch._foreach_mul_(targets, factors)

        return enforce

    def apply(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero the pruned weights now, and the optimizer state (momentum, Adam moments) at pruned entries."""
        self.enforcer(model)()
        if optimizer is None:
            return
        params = dict(model.named_parameters())
        for name, mask in self._masks.items():
            for value in optimizer.state.get(params[name], {}).values():
                if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                    value.mul_(mask.to(device=value.device, dtype=value.dtype))

    def check_zero(self, model: nn.Module) -> None:
        """Assert the invariant W ⊙ (1 − M) = 0 (docs/methods.md §2.4), e.g. before analysing stored weights."""
        params = dict(model.named_parameters())
        for name, mask in self._masks.items():
            leaked = params[name].detach()[~mask.to(params[name].device)]
            if leaked.numel() and bool(leaked.ne(0).any()):
                raise PrunelensError(f"{name}: pruned weights are non-zero (max |w| = {leaked.abs().max():.3g})")
