"""Shared fixtures: a tiny, fast experiment config."""

import pytest

from prunelens import config


def tiny_config(tmp_path, **sections) -> config.ExperimentConfig:
    """A seconds-long IMP run on 16×16 `shapes` with a narrow conv2."""
    base = {
        "name": "tiny",
        "output_dir": str(tmp_path / "runs"),
        "dataset": {"name": "shapes", "image_size": 16, "options": {"n_train": 400, "n_val": 100, "n_test": 200}},
        "model": {"name": "conv2", "options": {"width": 0.125}},
        "pruning": {"rounds": 2, "fraction": 0.3},
        "training": {"epochs": 1, "batch_size": 50, "lr": 0.05},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return config.from_dict(base)


@pytest.fixture
def tiny(tmp_path):
    return lambda **sections: tiny_config(tmp_path, **sections)


def exact_ceil(fraction: float, n: int) -> int:
    """⌈fraction · n⌉ in exact rational arithmetic (the count a pruning step must remove)."""
    import math
    from fractions import Fraction

    return math.ceil(Fraction(str(fraction)) * n)
