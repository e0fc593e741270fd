"""Run store: atomic writes, checksums, corrupted files, locking."""

import pytest
import torch

from prunelens.errors import PrunelensError
from prunelens.store import RunStore


def test_roundtrip_and_manifest(tmp_path):
    store = RunStore(tmp_path / "run")
    store.save_tensors("rounds/000/masks.pt", {"w": torch.tensor([True, False])})
    store.save_json("rounds/000/metrics.json", {"round": 0})
    again = RunStore(tmp_path / "run")
    assert again.load_tensors("rounds/000/masks.pt")["w"].tolist() == [True, False]
    assert again.rounds_done() == [0]
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_corrupted_checkpoint_is_named(tmp_path):
    store = RunStore(tmp_path)
    store.save_tensors("weights.pt", {"w": torch.ones(3)})
    (tmp_path / "weights.pt").write_bytes(b"garbage")
    with pytest.raises(PrunelensError, match="weights.pt: checksum mismatch"):
        RunStore(tmp_path).load_tensors("weights.pt")


def test_file_outside_manifest_does_not_exist(tmp_path):
    (tmp_path / "rounds/001").mkdir(parents=True)
    (tmp_path / "rounds/001/metrics.json").write_text("{}")
    store = RunStore(tmp_path)
    assert store.rounds_done() == []
    with pytest.raises(PrunelensError, match="missing"):
        store.load_json("rounds/001/metrics.json")


def test_corrupted_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(PrunelensError, match="manifest.json: corrupted"):
        RunStore(tmp_path)


def test_lock_refuses_second_process(tmp_path):
    first = RunStore(tmp_path)
    first.lock()
    with pytest.raises(PrunelensError, match="in use"):
        RunStore(tmp_path).lock()
