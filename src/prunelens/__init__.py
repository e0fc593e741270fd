"""prunelens: what happens to a network's accuracy and its explanations as it is pruned."""

from prunelens import config
from prunelens.errors import PrunelensError
from prunelens.experiment import RunResult, run

__all__ = ["PrunelensError", "RunResult", "config", "run"]
