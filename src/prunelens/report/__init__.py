"""What a researcher looks at: figures drawn from stored tables and tensors (the HTML report grows here)."""

from collections.abc import Callable

from matplotlib.figure import Figure

from prunelens.report.figures import LensView, gradcam_figures
from prunelens.report.mis_figures import mis_lens_figures
from prunelens.report.pcbm_figures import pcbm_figures

LENS_FIGURES: dict[str, Callable[[LensView], dict[str, Figure]]] = {"gradcam": gradcam_figures, "pcbm": pcbm_figures, "mis": mis_lens_figures}
"""Lens name → its figures; a lens without an entry has none."""
