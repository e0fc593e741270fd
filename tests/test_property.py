"""Property: any config either validates (with every input it names) or fails with one line and exit code 2 —
never a traceback. `prunelens check` validates without training or writing."""

from __future__ import annotations

import copy
import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunelens.cli import main

BASE = {
    "name": "prop",
    "dataset": {"name": "shapes", "image_size": 16, "options": {"n_train": 60, "n_val": 20, "n_test": 20}},
    "model": {"name": "conv2", "options": {"width": 0.125}},
    "pruning": {"rounds": 1, "fraction": 0.3},
    "training": {"epochs": 1, "batch_size": 20},
    "lens_images": 4,
}
FIELDS = [
    ("seed",), ("order_seed",), ("name",), ("device",), ("threads",), ("lens_images",), ("lenses",), ("extra",),
    ("dataset",), ("dataset", "name"), ("dataset", "seed"), ("dataset", "image_size"), ("dataset", "val_fraction"),
    ("dataset", "max_train"), ("dataset", "augment"), ("dataset", "root"), ("dataset", "options", "n_train"),
    ("dataset", "options", "spurious"), ("dataset", "options", "distractors"), ("dataset", "options", "noise"),
    ("dataset", "options", "bogus"), ("model", "name"), ("model", "weights"), ("model", "options", "width"),
    ("model", "options", "depth"), ("pruning", "method"), ("pruning", "scope"), ("pruning", "granularity"),
    ("pruning", "fraction"), ("pruning", "rate"), ("pruning", "rounds"), ("pruning", "rewind"), ("pruning", "rewind_step"),
    ("pruning", "exclude"), ("pruning", "layer_fractions"), ("pruning", "score_iterations"), ("pruning", "norm"),
    ("training", "lr"), ("training", "optimizer"), ("training", "epochs"), ("training", "batch_size"),
    ("training", "schedule"), ("training", "milestones"), ("training", "momentum"), ("retraining",), ("retraining", "epochs"),
]  # fmt: skip
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.sampled_from([10**12, -(10**12), 2**64, 0]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -0.0, 0.5, 0.999999]),
    st.text(max_size=12), st.sampled_from(["gradcam", "cuda:7", "meta", "l1", "erk", "filters", "step", "../x", "fc.*", "a\x00b"]),
)  # fmt: skip
VALUES = st.one_of(
    SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.sampled_from(["name", "options", "target", "k"]), SCALARS, max_size=2)
)


def apply(data: dict, path: tuple[str, ...], value: object) -> None:
    node = data
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(changes=st.lists(st.tuples(st.sampled_from(FIELDS), VALUES), min_size=1, max_size=4))
def test_any_config_validates_or_fails_in_one_line(changes, tmp_path_factory, capsys):
    tmp = tmp_path_factory.mktemp("prop")
    data = copy.deepcopy(BASE) | {"output_dir": str(tmp / "runs")}
    for path, value in changes:
        apply(data, path, value)
    config = tmp / "c.yaml"
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    code = main(["check", str(config)])
    err = capsys.readouterr().err.strip()
    assert code in (0, 2)
    if code == 2:
        assert err.startswith("prunelens: error:") and "\n" not in err and "Traceback" not in err, err
    assert not (tmp / "runs").exists()  # check writes nothing
    assert all(not (isinstance(v, float) and not math.isfinite(v)) for _, v in changes) or code == 2
