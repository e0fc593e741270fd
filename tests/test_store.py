"""Run store: atomic writes, checksums, write-once primary files, derived files, locking, manifest merging."""

import multiprocessing
import time

import pytest
import torch

from prunelens.errors import PrunelensError
from prunelens.store import RunStore


def locked(root, derived=()):
    store = RunStore(root, derived)
    store.lock()
    return store


def test_roundtrip_and_manifest(tmp_path):
    store = locked(tmp_path / "run")
    store.save_tensors("rounds/000/masks.pt", {"w": torch.tensor([True, False])})
    store.save_json("rounds/000/metrics.json", {"round": 0})
    again = RunStore(tmp_path / "run")
    assert again.load_tensors("rounds/000/masks.pt")["w"].tolist() == [True, False]
    assert again.load_json("rounds/000/metrics.json") == {"round": 0}
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_writes_need_the_lock(tmp_path):
    with pytest.raises(RuntimeError, match="without holding the run lock"):
        RunStore(tmp_path).write("a.json", b"{}")


def test_corrupted_checkpoint_is_named(tmp_path):
    store = locked(tmp_path)
    store.save_tensors("weights.pt", {"w": torch.ones(3)})
    (tmp_path / "weights.pt").write_bytes(b"garbage")
    with pytest.raises(PrunelensError, match="weights.pt: checksum mismatch"):
        RunStore(tmp_path).load_tensors("weights.pt")


def test_file_outside_manifest_does_not_exist(tmp_path):
    (tmp_path / "rounds/001").mkdir(parents=True)
    (tmp_path / "rounds/001/metrics.json").write_text("{}")
    store = RunStore(tmp_path)
    assert not store.has("rounds/001/metrics.json")
    with pytest.raises(PrunelensError, match="missing"):
        store.load_json("rounds/001/metrics.json")


def test_corrupted_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(PrunelensError, match="manifest.json: corrupted"):
        RunStore(tmp_path)


def test_primary_files_are_written_once(tmp_path):
    store = locked(tmp_path, derived=("table.csv",))
    store.write("weights.pt", b"one")
    store.write("weights.pt", b"one")  # the same bytes: nothing happens
    with pytest.raises(PrunelensError, match="weights.pt: already in the run with other contents"):
        store.write("weights.pt", b"two")
    store.write("table.csv", b"a")
    store.write("table.csv", b"b")  # derived: rewritten
    assert RunStore(tmp_path).read("table.csv") == b"b"


def test_stale_derived_file_is_forgotten_primary_is_fatal(tmp_path):
    store = locked(tmp_path, derived=("*.csv",))
    store.write("table.csv", b"a,b")
    store.write("other.csv", b"x")
    store.write("weights.pt", b"w")
    store.unlock()
    (tmp_path / "table.csv").write_bytes(b"stale")  # e.g. killed between replace and manifest update
    (tmp_path / "other.csv").unlink()
    again = locked(tmp_path, derived=("*.csv",))
    again.verify()
    assert not again.has("table.csv") and not again.has("other.csv") and again.has("weights.pt")
    assert not (tmp_path / "table.csv").exists()
    again.unlock()
    (tmp_path / "weights.pt").write_bytes(b"edited")
    with pytest.raises(PrunelensError, match="weights.pt: checksum mismatch"):
        locked(tmp_path, derived=("*.csv",)).verify()


def _hold(root, seconds, ready):
    store = RunStore(root)
    store.lock()
    store.write("first.json", b"1")
    ready.set()
    time.sleep(seconds)
    store.unlock()


def test_second_writer_waits_and_merges_the_manifest(tmp_path):
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(tmp_path, 1.0, ready))
    holder.start()
    ready.wait(10)
    waits = []
    store = RunStore(tmp_path)
    began = time.monotonic()
    store.lock(wait=30, on_wait=waits.append)
    assert time.monotonic() - began > 0.5 and len(waits) == 1 and "in use by another process" in waits[0]
    store.write("second.json", b"2")
    holder.join()
    assert set(RunStore(tmp_path).manifest) == {"first.json", "second.json"}


def test_bounded_wait_is_a_clear_error(tmp_path):
    first = locked(tmp_path)
    with pytest.raises(PrunelensError, match="in use by another process"):
        RunStore(tmp_path).lock(wait=0.3)
    first.unlock()


def test_content_keyed_cache_computes_once_and_recomputes_damage(tmp_path):
    from prunelens.cache import FileCache

    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(3.0)}

    key = {"encoder": "hist", "pool": [1, 2, 3]}
    first = FileCache(tmp_path).tensors(key, compute)
    again = FileCache(tmp_path).tensors({"pool": [1, 2, 3], "encoder": "hist"}, compute)  # another instance, same content
    assert len(calls) == 1 and torch.equal(first["x"], again["x"])
    FileCache(tmp_path).tensors({**key, "pool": [1, 2]}, compute)
    assert len(calls) == 2
    (data,) = [p for p in tmp_path.rglob("*.pt") if p.stat().st_size and FileCache(tmp_path)._paths(key)[0] == p]
    data.write_bytes(data.read_bytes()[:-4] + b"edit")
    assert torch.equal(FileCache(tmp_path).tensors(key, compute)["x"], torch.arange(3.0)) and len(calls) == 3
