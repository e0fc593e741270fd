"""The README's promises under kills, concurrent commands, signals and hostile input: one-line errors with exit
code 2 that change nothing, and every kill resuming to byte-identical tables."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from prunelens.cli import main
from prunelens.runs import Run
from prunelens.store import RunStore

LENS_RUN = {"lenses": [{"name": "gradcam", "options": {"faithfulness": False}}], "lens_images": 8}


def write(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def tables(run_dir: Path) -> dict[str, bytes]:
    """Every table of a run (csv and parquet), timings excluded (wall times differ between runs)."""
    return {p.name: p.read_bytes() for p in sorted(run_dir.glob("*.csv")) + sorted(run_dir.glob("*.parquet")) if p.stem != "timings"}


def prunelens(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prunelens.cli", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)


def assert_consistent(run_dir: Path) -> None:
    """Every file of the run is listed with a valid checksum, and nothing listed is missing."""
    store = RunStore(run_dir)
    assert store.stale() == []
    on_disk = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert on_disk - {"manifest.json"} == set(store.manifest)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny run with a lens: the tables every interrupted run must reproduce byte for byte."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = tiny_config(tmp, **LENS_RUN)
    assert main(["run", str(write(cfg, tmp / "cfg.yaml")), "-q"]) == 0
    return tables(cfg.run_dir)


# ------------------------------------------------------------------ kills


@pytest.mark.parametrize("point", ["store.replaced:4", "store.replaced:19", "store.replaced:40", "rounds.done", "lens.round:2", "reference.trained"])
def test_kill_point_resumes_to_identical_tables(point, reference, tmp_path):
    cfg = tiny_config(tmp_path, **LENS_RUN)
    path = write(cfg, tmp_path / "cfg.yaml")
    killed = prunelens("run", str(path), "-q", env={"PRUNELENS_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = prunelens("run", str(path), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert tables(cfg.run_dir) == reference
    assert_consistent(cfg.run_dir)


def test_kill_after_a_table_is_replaced_before_the_manifest(reference, tmp_path):
    """The table of a finished run replaced but not re-listed (a kill in between): the next run rebuilds it."""
    cfg = tiny_config(tmp_path, **LENS_RUN)
    path = write(cfg, tmp_path / "cfg.yaml")
    assert main(["run", str(path), "-q"]) == 0
    (cfg.run_dir / "metrics.csv").write_text("round,metric\n0,half-written\n")
    next(cfg.run_dir.glob("lens_gradcam*.csv")).unlink()
    assert main(["run", str(path), "-q"]) == 0
    assert tables(cfg.run_dir) == reference
    assert_consistent(cfg.run_dir)


@pytest.mark.slow
def test_twenty_random_sigkills_resume_to_identical_tables(reference, tmp_path):
    cfg = tiny_config(tmp_path, **LENS_RUN)
    path = write(cfg, tmp_path / "cfg.yaml")
    rng = random.Random(0)
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-m", "prunelens.cli", "run", str(path), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 6.0))
        proc.kill()
        proc.wait()
    resumed = prunelens("run", str(path), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert tables(cfg.run_dir) == reference
    assert_consistent(cfg.run_dir)


# ------------------------------------------------------------------ concurrent commands


@pytest.fixture
def filter_run(tmp_path):
    cfg = tiny_config(
        tmp_path,
        model={"name": "cifar_resnet", "options": {"depth": 8, "width": 4}},
        pruning={"granularity": "filters", "rounds": 1, "fraction": 0.5, "prune_classifier": False},
    )
    path = write(cfg, tmp_path / "cfg.yaml")
    assert main(["run", str(path), "-q"]) == 0
    return cfg, path


def test_shrink_and_more_rounds_at_once_lose_nothing(filter_run):
    cfg, path = filter_run
    extend = subprocess.Popen([sys.executable, "-m", "prunelens.cli", "run", str(path), "-q", "--rounds", "3"], stderr=subprocess.PIPE, text=True)
    shrinks = [prunelens("shrink", str(cfg.run_dir), "--round", "1", "--batch", "4", "--repeats", "1") for _ in range(2)]
    assert extend.wait() == 0, extend.stderr.read()
    assert all(s.returncode == 0 for s in shrinks), [s.stderr for s in shrinks]
    assert Run(cfg.run_dir).rounds() == [0, 1, 2, 3]
    assert {"rounds/001/shrink.json", "rounds/001/shrunk.pt2", "rounds/003/metrics.json"} <= set(RunStore(cfg.run_dir).manifest)
    assert_consistent(cfg.run_dir)


def test_two_shrinks_at_once_keep_both_entries(filter_run):
    cfg, _ = filter_run
    args = [sys.executable, "-m", "prunelens.cli", "shrink", str(cfg.run_dir), "--batch", "4", "--repeats", "1"]
    procs = [subprocess.Popen([*args, "--round", str(r)], stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    assert [p.wait() for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    assert {"rounds/000/shrink.json", "rounds/001/shrink.json"} <= set(RunStore(cfg.run_dir).manifest)
    assert_consistent(cfg.run_dir)


def test_second_process_waits_for_a_locked_run_then_proceeds(tmp_path):
    cfg = tiny_config(tmp_path, pruning={"rounds": 0})
    path = write(cfg, tmp_path / "cfg.yaml")
    holder = RunStore(cfg.run_dir)
    holder.lock()
    proc = subprocess.Popen([sys.executable, "-m", "prunelens.cli", "run", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()  # blocks until the command reaches the lock and says it waits
    assert "in use by another process; waiting" in line and proc.poll() is None
    assert not Run(cfg.run_dir).rounds()
    holder.unlock()
    assert proc.wait(timeout=120) == 0
    assert Run(cfg.run_dir).rounds() == [0]


# ------------------------------------------------------------------ signals


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_gradcam_stops_with_a_message_and_resumes(sig, code, reference, tmp_path):
    cfg = tiny_config(tmp_path, **LENS_RUN)
    path = write(cfg, tmp_path / "cfg.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "prunelens.cli", "run", str(path), "-q"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(cfg.run_dir.glob("lenses/gradcam*/setup.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    err = proc.stderr.read().strip()
    assert err == "prunelens: interrupted; resume with the same command"
    assert prunelens("run", str(path), "-q").returncode == 0
    assert tables(cfg.run_dir) == reference


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "prunelens.cli", "list"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # importing torch takes longer than this
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert proc.stderr.read().strip() == "prunelens: interrupted; resume with the same command"


# ------------------------------------------------------------------ hostile input


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    cfg = tiny_config(tmp, pruning={"rounds": 1})
    path = write(cfg, tmp / "cfg.yaml")
    assert main(["run", str(path), "-q"]) == 0
    return cfg, path


def alias_bomb() -> str:
    text = 'a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]\n'
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        text += f"{cur}: &{cur} [{', '.join([f'*{prev}'] * 9)}]\n"
    return text


HOSTILE_TEXT = {
    "not UTF-8": (b"name: caf\xe9\n", "not UTF-8 text"),
    "nested thousands of levels": (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested"),
    "alias bomb": (alias_bomb().encode(), "expands to more than"),
    "huge seed": (b"seed: 1.0e+23\n", "seed:"),
    "nan width": (b"model: {name: conv2, options: {width: .nan}}\n", "model.options.width: nan is not a finite number"),
    "inf width": (b"model: {name: conv2, options: {width: .inf}}\n", "model.options.width: inf is not a finite number"),
    "10 MB file": (b"name: " + b"x" * 10_000_000 + b"\n", "larger than"),
    "NUL in name": (b'name: "a\\0b"\n', "name: 'a\\x00b' is not a plain name"),
    "path traversal": (b"name: ../../escape\n", "name: '../../escape' is not a plain name"),
    "absolute name": (b"name: /tmp/escape\n", "is not a plain name"),
    "inf lr": (b"training: {lr: .inf}\n", "training.lr: inf is not a finite number"),
    "inf weight decay": (b"training: {weight_decay: .inf}\n", "training.weight_decay: inf is not a finite number"),
    "bad lens option": (b"lenses: [{name: gradcam, options: {targt: label}}]\n", "lenses[0].options.targt: unknown field"),
}


@pytest.mark.parametrize("case", list(HOSTILE_TEXT))
def test_hostile_config_is_one_line_exit_2(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output_dir, runs/, would be here
    data, expected = HOSTILE_TEXT[case]
    path = tmp_path / "hostile.yaml"
    path.write_bytes(data)
    assert main(["run", str(path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("prunelens: error:") and expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.yaml"]


@pytest.mark.parametrize(
    "lens, expected",
    [
        ({"name": "gradcam", "options": {"targt": "label"}}, "lenses[0].options.targt"),
        ({"name": "gradcam", "options": {"target": "logits"}}, "lenses[0].options.target"),
        ({"name": "gradcam", "options": {"layer": "nope"}}, "has no module 'nope'"),
    ],
)
def test_bad_lens_on_a_finished_run_changes_nothing_and_trains_nothing(lens, expected, finished, tmp_path, capsys):
    cfg, _ = finished
    before = {p: snapshot(p) for p in cfg.output_dir.iterdir()}
    data = cfg.model_dump(mode="json") | {"lenses": [lens], "pruning": {**cfg.model_dump(mode="json")["pruning"], "rounds": 3}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert main(["run", str(path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err, err
    assert {p: snapshot(p) for p in cfg.output_dir.iterdir()} == before  # no round trained, no file written


def test_output_dir_that_is_a_file_or_unwritable(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for where in (afile, Path("/proc/prunelens-test")):
        path = write(tiny_config(tmp_path, output_dir=str(where), pruning={"rounds": 0}), tmp_path / "cfg.yaml")
        assert main(["run", str(path), "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(where) in err, err
    assert afile.read_text() == "x"


def test_disk_full_is_one_line_and_the_run_stays_consistent(tmp_path, capsys, monkeypatch):
    cfg = tiny_config(tmp_path, pruning={"rounds": 1})
    path = write(cfg, tmp_path / "cfg.yaml")
    import prunelens.store as store

    real = store.atomic_write
    calls = []

    def full(target, data):
        calls.append(target)
        if len(calls) > 12:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        real(target, data)

    monkeypatch.setattr(store, "atomic_write", full)
    assert main(["run", str(path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "No space left on device" in err, err
    monkeypatch.setattr(store, "atomic_write", real)
    assert main(["run", str(path), "-q"]) == 0
    assert_consistent(cfg.run_dir)


def test_diverging_training_names_round_and_fields(tmp_path, capsys):
    path = write(tiny_config(tmp_path, training={"lr": 1e308}), tmp_path / "cfg.yaml")
    assert main(["run", str(path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "round 0 (training): training diverged (non-finite loss in epoch 0)" in err and "lr 1e+308" in err


# ------------------------------------------------------------------ tampered and moved runs


def test_shrink_and_analyze_refuse_an_edited_config(finished, tmp_path, capsys):
    cfg, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(cfg.run_dir, copy)
    (copy / "config.yaml").write_text((copy / "config.yaml").read_text().replace("lr: 0.05", "lr: 0.5"))
    for command in (["shrink", str(copy), "--repeats", "1"], ["analyze", str(copy), "--explain", "gradcam", "-q"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert "config.yaml: checksum mismatch" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_moved_run_is_read_and_written_where_it_is(finished, tmp_path, capsys):
    cfg, _ = finished
    moved = tmp_path / "elsewhere" / "renamed-run"
    shutil.copytree(cfg.run_dir, moved)
    assert main(["control", str(moved), "--kind", "random_prune", "-q"]) == 0
    assert (moved / "controls_random_prune.csv").is_file()
    assert main(["analyze", str(moved), "--explain", "gradcam", "-q"]) == 0
    assert (moved / "lens_gradcam.csv").is_file()
    # no stray copy of the run next to it: only the references, as dense runs of their own
    assert sorted(p.name.split("-")[0] for p in moved.parent.iterdir()) == ["dense", "dense", "renamed"]
    assert_consistent(moved)
