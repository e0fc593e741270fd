"""Batched tickets: K members trained at once equal K trainings one by one with `train` (same seeds) within float
tolerance and a batch of one bit for bit, masks stay exactly zero in every member, and a sweep trained in
lockstep stores the bytes (masks, weights, metrics) that the same sweep trained run by run stores."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from prunelens.batched import Stack, train_batched, train_one, unbatchable
from prunelens.cli import main
from prunelens.config import TrainingConfig
from prunelens.data.base import TensorSplit
from prunelens.data.loader import Loader
from prunelens.errors import PrunelensError
from prunelens.masks import MaskSet
from prunelens.models.small import CifarResNet, ConvNet, LeNet
from prunelens.runs import Run
from prunelens.sweep import load
from prunelens.train import train


def split(n: int, shape: tuple[int, ...]) -> TensorSplit:
    gen = torch.Generator().manual_seed(0)
    return TensorSplit(torch.rand((n, *shape), generator=gen), torch.randint(0, 10, (n,), generator=gen))


def random_masks(model: torch.nn.Module, keep: float, seed: int) -> MaskSet:
    gen = torch.Generator().manual_seed(seed)
    return MaskSet({n: torch.rand(p.shape, generator=gen) < keep for n, p in model.named_parameters() if n.endswith("weight")})


CASES = {
    "lenet-sgd": (lambda: LeNet(10, 1, (12, 12)), (1, 12, 12), TrainingConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, epochs=2, batch_size=40)),
    "lenet-adam": (lambda: LeNet(10, 1, (12, 12)), (1, 12, 12), TrainingConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=2, batch_size=40)),
    "conv2-sgd": (lambda: ConvNet(10, 3, (8, 8), blocks=1, width=0.125), (3, 8, 8), TrainingConfig(optimizer="sgd", lr=0.05, epochs=2, batch_size=40, schedule="cosine")),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=str)
def test_batched_members_equal_sequential_training(case):
    build, shape, cfg = CASES[case]
    data = split(320, shape)
    loader_a = Loader(data, cfg.batch_size, mean=(0.5,), std=(0.5,), shuffle=True, seed=0)
    loader_b = Loader(data, cfg.batch_size, mean=(0.5,), std=(0.5,), shuffle=True, seed=1)
    loaders = [loader_a, loader_b, loader_b]  # members 1 and 2 share a data order (and a loader)
    torch.manual_seed(0)
    models = [build() for _ in loaders]
    masks = [None, random_masks(models[1], 0.5, 1), random_masks(models[2], 0.2, 2)]
    for model, mask in zip(models, masks):
        if mask is not None:
            mask.apply(model)
    one_by_one = [copy.deepcopy(m) for m in models]
    steps = 2 * len(loader_a) - 3  # ends mid-epoch
    expected = [train(m, lo, cfg, mk, start_step=2, end_step=steps, lr_offset=1) for m, lo, mk in zip(one_by_one, loaders, masks)]
    fits = train_batched(models, loaders, cfg, masks, start_step=2, end_step=steps, lr_offset=1)
    for model, alone, mask, fit, want in zip(models, one_by_one, masks, fits, expected):
        for (name, p), q in zip(model.named_parameters(), alone.parameters()):
            # Adam turns float noise in near-zero gradients into lr-sized steps at a few entries
            worst = 2 * cfg.lr if cfg.optimizer == "adam" else 1e-5
            assert float((p - q).detach().abs().max()) < worst, name
            assert float((p - q).detach().abs().mean()) < 1e-6, name
        assert fit["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        if mask is not None:
            mask.check_zero(model)  # pruned weights exactly zero


@pytest.mark.parametrize("case", ["lenet-sgd", "lenet-adam"])
def test_a_member_trains_bit_for_bit_alike_alone_or_with_others(case):
    """`train_one` (a batch of one: how every batchable round trains) gives the bytes the same member gets in a
    batch of three, so a run's numbers do not depend on how a sweep grouped it."""
    build, shape, cfg = CASES[case]
    data = split(200, shape)
    loaders = [Loader(data, cfg.batch_size, mean=(0.5,), std=(0.5,), shuffle=True, seed=s) for s in range(3)]
    torch.manual_seed(0)
    models = [build() for _ in loaders]
    masks = [random_masks(m, 0.3, k) for k, m in enumerate(models)]
    for model, mask in zip(models, masks):
        mask.apply(model)
    alone = copy.deepcopy(models[0])
    fit = train_one(alone, loaders[0], cfg, masks[0], start_step=0, end_step=9)
    fits = train_batched(models, loaders, cfg, masks, start_step=0, end_step=9)
    assert all(torch.equal(p, q) for p, q in zip(alone.parameters(), models[0].parameters()))
    assert fit["train_loss"] == fits[0]["train_loss"]


def test_members_stay_independent():
    """Changing one member's data leaves another member's result bit for bit as it was."""
    cfg = CASES["lenet-sgd"][2]
    torch.manual_seed(0)
    models = [LeNet(10, 1, (12, 12)) for _ in range(2)]
    first = Loader(split(160, (1, 12, 12)), 40, mean=(0.5,), std=(0.5,), shuffle=True, seed=0)
    runs = []
    for other_seed in (1, 2):
        copies = [copy.deepcopy(m) for m in models]
        other = Loader(split(160, (1, 12, 12)), 40, mean=(0.5,), std=(0.5,), shuffle=True, seed=other_seed)
        train_batched(copies, [first, other], cfg, [None, None], start_step=0, end_step=8)
        runs.append(copies)
    assert all(torch.equal(p, q) for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()))
    assert any(not torch.allclose(p, q) for p, q in zip(runs[0][1].parameters(), runs[1][1].parameters()))


def test_stack_enforces_every_members_masks_in_one_call():
    torch.manual_seed(0)
    models = [LeNet(10, 1, (4, 4)) for _ in range(3)]
    masks = [random_masks(models[0], 0.5, 0), None, random_masks(models[2], 0.1, 2)]
    stack = Stack(models, masks)
    stack.enforce()
    stack.unstack()
    masks[0].check_zero(models[0])
    masks[2].check_zero(models[2])
    assert all(bool(p.ne(0).all()) for p in models[1].parameters())  # no masks: untouched


def test_what_cannot_be_batched():
    assert unbatchable(LeNet(10, 1, (8, 8))) is None
    assert "BatchNorm2d" in unbatchable(CifarResNet(10, 3, (16, 16), depth=8, width=4), "cuda")
    assert "convolution" in unbatchable(ConvNet(10, 3, (8, 8), blocks=1), "cpu")
    assert unbatchable(ConvNet(10, 3, (8, 8), blocks=1), "cuda") is None
    assert "Dropout" in unbatchable(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)))


def write_sweep(root, batch: bool | None = None):
    data = {
        "name": "bt",
        "output_dir": str(root / "runs"),
        "threads": 1,
        "dataset": {"name": "digits"},
        "model": {"name": "lenet_300_100"},
        "pruning": {"rounds": 2, "fraction": 0.5, "rewind": "init"},
        "training": {"epochs": 2, "batch_size": 64, "lr": 0.05, "momentum": 0.9},
        "sweep": {"grid": {"pruning.method": ["magnitude", "random", "l1"], "seed": [0, 1]}, **({} if batch is None else {"batch": batch})},
    }
    path = root / "sweep.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_sweep_in_lockstep_stores_what_run_by_run_stores(tmp_path, capsys):
    batched, single = write_sweep(tmp_path / "batched"), write_sweep(tmp_path / "single")
    assert main(["run", str(batched)]) == 0
    log = capsys.readouterr()
    assert "2 runs train together" in log.out + log.err  # the dense runs of seeds 0 and 1
    assert "6 runs train together" in log.out + log.err  # the grid points
    assert main(["run", str(single), "-q", "--no-batch"]) == 0
    points = [p.cfg.run_dir.name for p in load(batched).points]
    runs = sorted(d.name for d in (tmp_path / "batched" / "runs").iterdir() if d.name != "sweeps")
    assert runs == sorted(d.name for d in (tmp_path / "single" / "runs").iterdir() if d.name != "sweeps")
    for name in runs:
        a, b = Run(tmp_path / "batched" / "runs" / name), Run(tmp_path / "single" / "runs" / name)
        assert a.rounds() == b.rounds() == ([0] if name.startswith("dense") else [0, 1, 2])
        for r in a.rounds():
            ra, rb = a.round(r).record(), b.round(r).record()
            assert ra.get("batched") == (None if r == 0 and name in points else 2 if name.startswith("dense") else 6)
            assert "batched" not in rb
            assert a.store.read(f"rounds/{r:03d}/masks.pt") == b.store.read(f"rounds/{r:03d}/masks.pt"), (name, r)
            assert a.store.read(f"rounds/{r:03d}/weights.pt") == b.store.read(f"rounds/{r:03d}/weights.pt"), (name, r)
            timing = {"batched", "train_seconds", "eval_seconds", "prune_seconds"}
            assert {k: v for k, v in ra.items() if k not in timing} == {k: v for k, v in rb.items() if k not in timing}
            a.round(r).masks().check_zero(a.round(r).model())


def test_a_relaunched_batched_sweep_trains_only_what_is_missing(tmp_path):
    path = write_sweep(tmp_path)
    assert main(["run", str(path), "-q", "--rounds", "1"]) == 0
    before = {d.name: Run(d).round(1).record() for d in (tmp_path / "runs").glob("bt-*")}
    assert main(["run", str(path), "-q"]) == 0
    for d in (tmp_path / "runs").glob("bt-*"):
        assert Run(d).rounds() == [0, 1, 2]
        assert Run(d).round(1).record() == before[d.name]
        assert Run(d).round(2).record()["batched"] == 6


def test_batch_switch_errors(tmp_path, capsys):
    with pytest.raises(PrunelensError, match="sweep.batch: expected true or false"):
        load(write_sweep(tmp_path, batch="yes"))  # type: ignore[arg-type]
    config = tmp_path / "one.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"name": "digits"}, "model": {"name": "lenet_300_100"}}))
    assert main(["run", str(config), "--no-batch"]) == 2
    assert "--no-batch are for sweeps" in capsys.readouterr().err
