"""The command line: bad inputs give one-line errors, exit 2 and leave existing runs untouched; SIGKILL resume."""

import gzip
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_experiment import assert_same, outcome

from prunelens.cli import main
from prunelens.runs import Run
from prunelens.store import RunStore


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def write_config(path: Path, cfg) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run, and its config as a YAML file."""
    from conftest import tiny_config

    tmp = tmp_path_factory.mktemp("finished")
    cfg = tiny_config(tmp, pruning={"rounds": 1})
    path = write_config(tmp / "cfg.yaml", cfg)
    assert main(["run", str(path), "-q"]) == 0
    return cfg, path


def edit(cfg, tmp_path, **changes) -> Path:
    data = cfg.model_dump(mode="json")
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = data
        for key in parents:
            node = node[key]
        node[leaf] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def bad_files(tmp_path: Path) -> dict[str, Path]:
    truncated = tmp_path / "trunc.npz"
    np.savez(truncated, train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.zeros((4, 1)))
    truncated.write_bytes(truncated.read_bytes()[:100])
    idx = tmp_path / "idx"
    idx.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (idx / name).write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00\x00\x00\x05\x00\x00\x00\x1c\x00\x00\x00\x1c" + b"\x00" * 10))
    for name in ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (idx / name).write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05" + b"\x00" * 5))
    ckpt = tmp_path / "bad.pt"
    ckpt.write_bytes(b"this is not a checkpoint")
    return {"npz": truncated, "idx": idx, "ckpt": ckpt}


CASES = {
    "fraction out of range": ({"pruning__fraction": 1.3}, "pruning.fraction: 1.3 is not in (0, 1)"),
    "unknown dataset": ({"dataset__name": "imagenet22k"}, "unknown dataset 'imagenet22k'"),
    "unknown model": ({"model__name": "resnet9000"}, "unknown model 'resnet9000'"),
    "unknown method": ({"pruning__method": "telepathy"}, "unknown pruning method 'telepathy'"),
    "unknown field": ({"training__epochz": 3}, "training.epochz: unknown field"),
    "missing dataset path": ({"dataset__name": "idx", "dataset__root": "/nonexistent/mnist"}, "/nonexistent/mnist"),
    "truncated npz": ({"dataset__name": "medmnist", "dataset__root": "{npz}", "dataset__options": {}}, "trunc.npz"),
    "truncated idx": ({"dataset__name": "idx", "dataset__root": "{idx}", "dataset__options": {}}, "train-images-idx3-ubyte.gz"),
    "unknown dataset option": ({"dataset__options": {"n_trian": 5}}, "dataset.options.n_trian"),
    "corrupted weights file": ({"model__weights": "{ckpt}"}, "bad.pt"),
    "rewind step too late": ({"pruning__rewind": "step", "pruning__rewind_step": 10**6}, "pruning.rewind_step"),
    "pretrained without weights": ({"pruning__rewind": "pretrained"}, "pruning.rewind"),
    "unavailable device": ({"device": "cuda:7"}, "device"),
    "bad exclude pattern": ({"pruning__exclude": ["nope.*"]}, "pruning.exclude"),
    "method unavailable for granularity": ({"pruning__granularity": "filters", "pruning__method": "lamp"}, "granularity 'filters'"),
    "negative seed": ({"seed": -4}, "seed: -4"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_error_run_untouched(case, finished, tmp_path, capsys):
    cfg, _ = finished
    files = bad_files(tmp_path)
    changes, expected = CASES[case]
    changes = {k: (v.format(**{k2: str(p) for k2, p in files.items()}) if isinstance(v, str) else v) for k, v in changes.items()}
    before = snapshot(cfg.run_dir)
    capsys.readouterr()
    assert main(["run", str(edit(cfg, tmp_path, **changes)), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("prunelens: error:"), err
    assert expected in err
    assert snapshot(cfg.run_dir) == before


def test_bad_yaml_and_missing_config(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("pruning:\n  fraction: [0.2\n")
    assert main(["run", str(path)]) == 2
    assert main(["run", str(tmp_path / "absent.yaml")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "invalid YAML" in lines[0] and "config file not found" in lines[1]


def test_corrupted_checkpoint_in_existing_run(finished, tmp_path, capsys):
    cfg, path = finished
    weights = cfg.run_dir / "rounds/001/weights.pt"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:50])
        before = snapshot(cfg.run_dir)
        assert main(["run", str(path), "-q", "--rounds", "2"]) == 2
        assert "weights.pt: checksum mismatch" in capsys.readouterr().err
        assert snapshot(cfg.run_dir) == before
    finally:
        weights.write_bytes(original)


def test_show_and_list(finished, capsys):
    cfg, _ = finished
    assert main(["show", str(cfg.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "test_top1" in out and "density" in out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "shapes" in out and "conv2" in out and "magnitude" in out


def test_exit_code_in_subprocess(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pruning: {fraction: 1.3}\n")
    proc = subprocess.run([sys.executable, "-m", "prunelens.cli", "run", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"prunelens: error: {path}: pruning.fraction: 1.3 is not in (0, 1)"


def run_until(path: Path, trigger, timeout: float = 120) -> None:
    """Start `prunelens run path` and SIGKILL it as soon as `trigger()` is true."""
    proc = subprocess.Popen([sys.executable, "-m", "prunelens.cli", "run", str(path), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not trigger() and time.monotonic() < deadline:
        time.sleep(0.002)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_resume_matches_uninterrupted(tmp_path):
    from conftest import tiny_config

    reference = tiny_config(tmp_path / "ref", pruning={"rounds": 3})
    assert main(["run", str(write_config(tmp_path / "ref.yaml", reference)), "-q"]) == 0
    cfg = tiny_config(tmp_path / "killed", pruning={"rounds": 3})
    path = write_config(tmp_path / "killed.yaml", cfg)
    rd = cfg.run_dir
    triggers = [
        lambda: (rd / "start.pt").exists(),  # right after θ_start
        lambda: (rd / "rounds/001/masks.pt").exists(),  # in the middle of writing round 1
        lambda: any(rd.glob("rounds/002/.*.tmp")),  # during an atomic write
    ]
    for trigger in triggers:
        run_until(path, trigger)
    assert main(["run", str(path), "-q"]) == 0
    assert_same(outcome(rd, 3), outcome(reference.run_dir, 3))
    ours = torch.load(rd / "rounds/003/weights.pt", weights_only=True)
    theirs = torch.load(reference.run_dir / "rounds/003/weights.pt", weights_only=True)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_compare_command(tmp_path, capsys):
    from conftest import tiny_config

    dirs = []
    for scope in ("global", "layerwise"):
        cfg = tiny_config(tmp_path, pruning={"rounds": 1, "scope": scope})
        assert main(["run", str(write_config(tmp_path / f"{scope}.yaml", cfg)), "-q"]) == 0
        dirs.append(str(cfg.run_dir))
    out = tmp_path / "cmp"
    assert main(["compare", *dirs, "--out", str(out), "--reinit"]) == 0
    assert {"overlap.csv", "jaccard.csv", "stability.csv", "collapse.csv", "layer_density.png", "reinit_survival.csv"} <= {
        p.name for p in out.iterdir()
    }
    printed = capsys.readouterr().out
    assert "frac_kept" in printed and "survival" in printed
    survival = pd.read_csv(out / "reinit_survival.csv").set_index("layer")
    assert 0 <= survival.loc["all", "survival"] <= 1 and survival.loc["all", "overlap"] > 0
    assert main(["compare", dirs[0]]) == 2


def test_shrink_command_exports_equal_smaller_model(tmp_path, capsys):
    from conftest import tiny_config

    cfg = tiny_config(
        tmp_path,
        model={"name": "cifar_resnet", "options": {"depth": 8, "width": 4}},
        pruning={"granularity": "filters", "rounds": 1, "fraction": 0.5, "prune_classifier": False},
    )
    assert main(["run", str(write_config(tmp_path / "s.yaml", cfg)), "-q"]) == 0
    assert main(["shrink", str(cfg.run_dir), "--batch", "8", "--repeats", "2"]) == 0
    assert "speed-up" in capsys.readouterr().out
    report = RunStore(cfg.run_dir).load_json("rounds/001/shrink.json")
    assert report["shrunk"]["params"] < report["masked"]["params"]
    program = torch.export.load(cfg.run_dir / "rounds/001/shrunk.pt2")
    model = Run(cfg.run_dir).round(1).model()
    x = torch.randn(4, 3, 16, 16)
    assert torch.allclose(program.module()(x), model(x), atol=1e-5)


def test_control_command(finished, capsys):
    cfg, _ = finished
    assert main(["control", str(cfg.run_dir), "--kind", "random_prune", "-q"]) == 0
    assert "random_prune_test_top1" in capsys.readouterr().out
