"""Explanation lenses and ticket analyses: pure functions of (dense model, pruned model, masks, batch) → records.

Importing this package registers every lens in `LENSES`.
"""

from prunelens.lenses import gradcam  # noqa: F401, E402  (registers "gradcam")
from prunelens.lenses.base import LENSES, Lens, LensBatch, LensInput, LensResult

__all__ = ["LENSES", "Lens", "LensBatch", "LensInput", "LensResult"]
