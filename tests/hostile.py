"""Helpers of the hostile-data tests: build a registered loader, expect a one-line error, measure peak memory."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from prunelens.config import DatasetConfig
from prunelens.data import DATASETS
from prunelens.data.base import DataBundle
from prunelens.errors import PrunelensError

RNG = np.random.default_rng(1)


def build(name: str, root: Path, **fields) -> DataBundle:
    """The registered loader itself (seed 0), independent of `build_dataset`'s signature."""
    return DATASETS.get(name)(DatasetConfig(name=name, root=root, **fields), 0)


def one_line_error(action: Callable[[], object], path: Path | str, *fragments: str) -> str:
    """The message of the `PrunelensError` `action` raises: one line, naming `path` and every fragment."""
    with pytest.raises(PrunelensError) as err:
        action()
    message = str(err.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def peak_bytes(action: Callable[[], object]) -> tuple[int, float]:
    """(peak traced Python/numpy allocation, seconds) while `action` runs; its PrunelensError is swallowed."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        action()
    except PrunelensError:
        pass
    finally:
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, seconds


