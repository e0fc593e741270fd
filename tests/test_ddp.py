"""Data-parallel training (distributed.py): torchrun with 2 CPU processes gives the masks and metrics of one
process, followers write nothing, and `train_parallel` on 2 gloo processes equals `train` on the same global
batches (a last batch of odd size included). All traffic stays on 127.0.0.1; every process has a timeout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from torch import nn

from prunelens import distributed
from prunelens.cli import main
from prunelens.config import TrainingConfig, from_dict
from prunelens.data.base import TensorSplit
from prunelens.data.loader import Loader
from prunelens.errors import PrunelensError
from prunelens.experiment import run
from prunelens.masks import MaskSet
from prunelens.runs import Run
from prunelens.train import train

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
LOOPBACK = {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "PRUNELENS_DDP_TIMEOUT": "2", "PRUNELENS_DDP_IDLE_TIMEOUT": "2"}
CONFIG = {
    "name": "ddp", "threads": 1, "dataset": {"name": "digits"}, "model": {"name": "lenet_300_100"},
    "pruning": {"rounds": 2, "fraction": 0.3}, "training": {"epochs": 2, "batch_size": 63, "lr": 0.05},
}  # fmt: skip
STEPS = TrainingConfig(epochs=2, batch_size=16, lr=0.1, momentum=0.9, weight_decay=5e-4)


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_torchrun_gives_the_masks_and_metrics_of_one_process(tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "output_dir": "multi"}))
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "prunelens", "run", str(config), "-q"]
    env = {**os.environ, **LOOPBACK}
    with subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True) as job:
        single = run(from_dict({**CONFIG, "output_dir": str(tmp_path / "single")}), quiet=True)  # meanwhile
        try:
            _, err = job.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)  # torchrun and its workers
            pytest.fail("torchrun did not finish in time (a hang)")
    assert job.returncode == 0, err[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.yaml", "multi", "single"]  # the followers wrote nothing
    multi = tmp_path / "multi" / single.run_dir.name
    assert files(tmp_path / "multi") - {f"{multi.name}/report.html"} == files(tmp_path / "single")  # the CLI adds the report
    a, b = Run(single.run_dir), Run(multi)
    assert a.rounds() == b.rounds() == [0, 1, 2]
    for r in a.rounds():
        ma, mb = a.round(r).masks(), b.round(r).masks()
        assert all(torch.equal(ma[n], mb[n]) for n in ma), f"round {r}: masks differ"
        ra, rb = a.round(r).record(), b.round(r).record()
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4)
        for key in ("test_top1", "val_top1", "density"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-9), (r, key)


def test_a_sweep_under_torchrun_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", str(ROOT / "configs" / "pruning_methods.yaml"), "-q"]) == 2
    assert "a sweep cannot run under torchrun" in capsys.readouterr().err


def setup() -> tuple[nn.Module, Loader, MaskSet]:
    """A small MLP, 101 random 8×8 images (batches of 16: the last has 5 rows, odd), a third of fc1 pruned."""
    gen = torch.Generator().manual_seed(0)
    split = TensorSplit(torch.randn(101, 1, 8, 8, generator=gen), torch.randint(0, 10, (101,), generator=gen))
    loader = Loader(split, STEPS.batch_size, mean=(0.0,), std=(1.0,), shuffle=True, seed=3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    masks = MaskSet({"1.weight": torch.rand(32, 64, generator=gen) > 0.3, "3.weight": torch.ones(10, 32, dtype=torch.bool)})
    return model, loader, masks


def worker(rank: int, port: int, out: Path) -> None:
    """One of 2 gloo ranks: the parallel training, a broken sync and an interrupt; results into `out`."""
    os.environ.update({**LOOPBACK, "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    distributed.init_group("gloo")
    model, loader, masks = setup()
    fit = distributed.train_parallel(model, loader, STEPS, masks, start_step=1, end_step=12, lr_offset=2)
    result = {"fit": fit, "state": {k: v.clone() for k, v in model.state_dict().items()}}
    if rank == 0:  # DDP's gradient hooks are gone: a backward on one rank alone (a lens) must not wait for the others
        model(next(iter(loader.epoch()))[0]).sum().backward()
    if rank == 1:
        with torch.no_grad():
            model[3].bias[0] += 1e-3
    try:
        distributed.check_in_sync(model, masks, "round 7 (training)")
    except PrunelensError as err:
        result["out_of_sync"] = str(err)

    def interrupt(n: int) -> None:
        interrupt.calls += 1
        if interrupt.calls == 3:
            raise KeyboardInterrupt

    interrupt.calls = 0
    try:
        distributed.train_parallel(model, loader, STEPS, masks, start_step=0, end_step=12, progress=interrupt if rank == 0 else None)
    except (KeyboardInterrupt, distributed.Stopped) as err:
        result["stopped"] = type(err).__name__
    distributed.close_group()
    torch.save(result, out / f"rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_train_parallel_equals_train_on_the_same_global_batches(tmp_path):
    # spawned, not forked: a child forked from a process whose autograd engine already ran (earlier tests) cannot
    # run backward ("Unable to handle autograd's threading in combination with fork-based multiprocessing")
    context = mp.start_processes(worker, args=(free_port(), tmp_path), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 150
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("train_parallel did not finish in time (a hang)")
    model, loader, masks = setup()
    fit = train(model, loader, STEPS, masks, start_step=1, end_step=12, lr_offset=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]) for k in ranks[0]["state"])
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ranks[0]["state"][name], value, rtol=1e-5, atol=1e-6)
    assert not ranks[0]["state"]["1.weight"][~masks["1.weight"]].any()
    assert ranks[0]["fit"]["train_loss"] == ranks[1]["fit"]["train_loss"] == pytest.approx(fit["train_loss"], rel=1e-5)
    assert ranks[0]["out_of_sync"] == ranks[1]["out_of_sync"]  # raised on every rank alike, naming the rank and round
    assert ranks[0]["out_of_sync"].startswith("round 7 (training): rank 1's weights differ from the leader's (rank 0)")
    assert [r["stopped"] for r in ranks] == ["KeyboardInterrupt", "Stopped"]  # the leader's interrupt stops every rank
