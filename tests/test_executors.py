"""Sweeps on executors: `ray` (a real local cluster) and `process` give the bytes `local` gives; the shared dense
run trains once, before fan-out; a Ray worker killed mid-run fails the sweep with a message, and re-launching
trains only the missing run."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from prunelens.cli import main
from prunelens.errors import PrunelensError
from prunelens.executors import RayExecutor, get, start_local_ray
from prunelens.runs import Run
from prunelens.store import RunStore
from prunelens.sweep import load, run_sweep

ray = pytest.importorskip("ray")

METHODS = ["magnitude", "random", "l1"]


def write_sweep(root: Path) -> Path:
    """The tiny 3-point sweep (tests/conftest.py `tiny_config` sizes) with its runs under `root`/runs."""
    root.mkdir(parents=True, exist_ok=True)
    data = {
        "name": "ex",
        "output_dir": str(root / "runs"),
        "threads": 1,  # every executor trains with the same thread count: bit-identical runs
        "dataset": {"name": "shapes", "image_size": 16, "options": {"n_train": 200, "n_val": 50, "n_test": 100}},
        "model": {"name": "conv2", "options": {"width": 0.125}},
        "pruning": {"rounds": 2, "fraction": 0.3},
        "training": {"epochs": 1, "batch_size": 50, "lr": 0.05},
        "sweep": {"grid": {"pruning.method": METHODS}, "batch": False},  # bit-identical: no batched tickets
    }
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_files(runs: Path) -> dict[str, bytes]:
    """Masks, weights and the metrics tables of every run (dense run included); no wall times."""
    patterns = ("*/rounds/*/masks.pt", "*/rounds/*/weights.pt", "*/start.pt", "*/metrics.csv", "*/metrics.parquet", "*/canonical.json")
    return {str(p.relative_to(runs)): p.read_bytes() for pattern in patterns for p in sorted(runs.glob(pattern))}


TRAINED = ("canonical.json", "config.yaml", "run.json", "start.pt", "rounds/*/*", "metrics.csv", "metrics.parquet", "timings.csv")


def mtimes(run_dir: Path) -> dict[str, int]:
    """When each file training writes was last written (derived reports may be refreshed by every sweep)."""
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for pattern in TRAINED for p in sorted(run_dir.glob(pattern))}


def sweep_dir(path: Path) -> Path:
    return path.parent / "runs" / "sweeps" / "ex"


@pytest.fixture(scope="module")
def cluster():
    start_local_ray(num_cpus=2)  # ray.init(num_cpus=2, include_dashboard=False) listening on 127.0.0.1 only
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The sweep run by the default (local) executor: its summary bytes and its run files."""
    path = write_sweep(tmp_path_factory.mktemp("local"))
    assert main(["run", str(path), "-q"]) == 0
    runs = path.parent / "runs"
    assert len([d for d in runs.glob("dense-*")]) == 1 and len(list(runs.glob("ex-*"))) == 3
    return (sweep_dir(path) / "summary.csv").read_bytes(), run_files(runs), runs


def test_ray_equals_local(cluster, local, tmp_path, capsys):
    path = write_sweep(tmp_path)
    began = time.monotonic()
    assert main(["run", str(path), "-q", "--executor", "ray"]) == 0
    print(f"ray sweep: {time.monotonic() - began:.1f} s")
    assert (sweep_dir(path) / "summary.csv").read_bytes() == local[0]
    assert run_files(tmp_path / "runs") == local[1]
    assert ray.is_initialized()  # a cluster the caller started is left running


def test_process_jobs_2_equals_local(local, tmp_path):
    path = write_sweep(tmp_path)
    assert main(["run", str(path), "-q", "--executor", "process", "--jobs", "2"]) == 0
    assert (sweep_dir(path) / "summary.csv").read_bytes() == local[0]
    assert run_files(tmp_path / "runs") == local[1]


class KillOne(RayExecutor):
    """Kills the task of one run mid-training: its worker gets `PRUNELENS_KILL_AT` (faults.py)."""

    def __init__(self, victim: str, point: str) -> None:
        super().__init__()
        self.victim, self.point = victim, point

    def options(self, cfg):
        options = super().options(cfg)
        if cfg.run_dir.name == self.victim:
            options["runtime_env"] = {"env_vars": {"PRUNELENS_KILL_AT": self.point}}
        return options


def test_killed_ray_worker_fails_the_sweep_and_relaunch_trains_only_the_missing_run(cluster, local, tmp_path):
    path = write_sweep(tmp_path)
    sweep = load(path)
    victim = sweep.points[2].cfg.run_dir
    # writes of a point: canonical, config, run.json, start, round 0 (3), round 1 masks → the 9th is round 1's
    # weights: killed after round 0, inside round 1
    with pytest.raises(PrunelensError, match=rf"1 of 3 run\(s\) failed — {victim.name}: its worker process died"):
        run_sweep(sweep, quiet=True, executor=KillOne(victim.name, "store.replaced:9"))
    assert Run(victim).rounds() == [0]
    assert not (sweep_dir(path) / "summary.csv").exists()
    finished = [p.cfg.run_dir for p in sweep.points[:2]] + list((tmp_path / "runs").glob("dense-*"))
    assert all(Run(d).rounds() for d in finished)
    before = {d: mtimes(d) for d in finished}
    round0 = {f: t for f, t in mtimes(victim).items() if f.startswith("rounds/000/")}

    assert main(["run", str(path), "-q", "--executor", "ray"]) == 0
    assert {d: mtimes(d) for d in finished} == before  # the finished runs: not retrained, no table rewritten
    assert {f: t for f, t in mtimes(victim).items() if f.startswith("rounds/000/")} == round0  # resumed, not restarted
    assert Run(victim).rounds() == [0, 1, 2]
    assert (sweep_dir(path) / "summary.csv").read_bytes() == local[0]
    assert run_files(tmp_path / "runs") == local[1]


def test_a_failing_run_is_reported_and_the_others_finish(cluster, local, tmp_path):
    """A run's own error (here: its directory holds another config) is one line naming it; the rest complete."""
    path = write_sweep(tmp_path)
    shutil.copytree(local[2], tmp_path / "runs")  # finished runs: the sweep only re-reads them
    sweep = load(path)
    bad = sweep.points[1].cfg.run_dir
    shutil.rmtree(bad)
    with RunStore(bad) as store:
        store.lock()
        store.save_json("canonical.json", {"other": 1})
    with pytest.raises(PrunelensError, match=rf"1 of 3 run\(s\) failed — {bad.name}: .*holds a run of a different config"):
        run_sweep(sweep, quiet=True, executor="ray")
    assert [Run(p.cfg.run_dir).rounds() for p in (sweep.points[0], sweep.points[2])] == [[0, 1, 2], [0, 1, 2]]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"executor": "dask"}, "not one of local, process, ray"),
        ({"executor": "local", "jobs": 2}, "one run at a time"),
        ({"executor": "process", "address": "auto"}, "only with --executor ray"),
        ({"jobs": 0}, "not a positive number"),
    ],
)
def test_bad_executor_options(kw, message):
    with pytest.raises(PrunelensError, match=message):
        get(**kw)


def test_executor_flags_on_a_single_run_are_refused(tmp_path, capsys):
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump({"name": "one", "output_dir": str(tmp_path / "runs")}))
    assert main(["run", str(path), "--jobs", "2"]) == 2
    assert "for sweeps" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_summary_has_every_point(local):
    table = pd.read_csv(pd.io.common.BytesIO(local[0]))
    assert len(table) == 9 and set(table["pruning.method"]) == set(METHODS)
