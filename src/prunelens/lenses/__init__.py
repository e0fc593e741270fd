"""Explanation lenses: per-round explainers of a pruned network against the dense one (`base.py`).

Importing this package registers every lens in `LENSES`.
"""

from prunelens.lenses import gradcam  # noqa: F401  (registers "gradcam")
from prunelens.lenses.base import LENSES, Lens, LensContext, LensOptions, LensResult, LensRound
from prunelens.lenses.concepts import lens as _pcbm  # noqa: F401  (registers "pcbm")
from prunelens.lenses.data import LensBatch, LensData
from prunelens.lenses.mis import lens as _mis  # noqa: F401  (registers "mis")

__all__ = ["LENSES", "Lens", "LensBatch", "LensContext", "LensData", "LensOptions", "LensResult", "LensRound"]
