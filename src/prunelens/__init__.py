"""prunelens: what happens to a network's accuracy and its explanations as it is pruned.

`prunelens.run(cfg)` runs an experiment; `prunelens.config` builds configs. Attributes are imported on first
use, so `prunelens.cli` starts (and handles Ctrl-C) before torch is loaded.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["PrunelensError", "Run", "RunResult", "analyze_run", "config", "run"]
_WHERE = {"PrunelensError": "prunelens.errors", "Run": "prunelens.runs", "RunResult": "prunelens.experiment",
          "analyze_run": "prunelens.experiment", "run": "prunelens.experiment"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name == "config":
        return importlib.import_module("prunelens.config")
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'prunelens' has no attribute {name!r}")
