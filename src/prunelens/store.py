"""The run store: one directory per config hash; atomic writes; a checksum manifest; resume per round.

Layout of `runs/<name>-<hash>/`:
    config.yaml            full config (defaults included)   canonical.json   the hashed part
    start.pt               θ_start: the state every round rewinds to (init, step k or pretrained)
    rounds/NNN/masks.pt    bool masks           rounds/NNN/weights.pt   trained (masked) state_dict
    rounds/NNN/metrics.json                     the round's record; written last: it marks the round done
    metrics.csv, metrics.parquet                long-format table over all finished rounds
    manifest.json          sha256 of every file above; a file not in the manifest does not exist
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from prunelens.errors import PrunelensError

MANIFEST = "manifest.json"


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def round_dir(r: int) -> str:
    return f"rounds/{r:03d}"


class RunStore:
    """Files of one run. Every write is atomic and recorded with its sha256 in the manifest; reads verify it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        try:
            self.manifest: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PrunelensError(f"{path}: corrupted manifest (not valid JSON)") from None
        self._lock: Any = None

    def lock(self) -> None:
        """Take an exclusive lock on the run directory (a second process on the same run gets a clear error)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / ".lock", "w")  # noqa: SIM115 — held for the life of the store
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PrunelensError(f"{self.root}: run is in use by another process") from None

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    def has(self, rel: str) -> bool:
        return rel in self.manifest and (self.root / rel).is_file()

    def write(self, rel: str, data: bytes) -> None:
        atomic_write(self.root / rel, data)
        self.manifest[rel] = hashlib.sha256(data).hexdigest()
        atomic_write(self.root / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True).encode())

    def read(self, rel: str) -> bytes:
        path = self.root / rel
        if not self.has(rel):
            raise PrunelensError(f"{path}: missing from the run")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.manifest[rel]:
            raise PrunelensError(f"{path}: checksum mismatch (file corrupted or modified); delete it to recompute")
        return data

    def verify(self) -> None:
        """Check every file in the manifest against its checksum (before a run resumes and writes anything)."""
        for rel in self.manifest:
            self.read(rel)

    def save_tensors(self, rel: str, tensors: dict[str, torch.Tensor]) -> None:
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in tensors.items()}, buffer)
        self.write(rel, buffer.getvalue())

    def load_tensors(self, rel: str) -> dict[str, torch.Tensor]:
        try:
            return torch.load(io.BytesIO(self.read(rel)), map_location="cpu", weights_only=True)
        except PrunelensError:
            raise
        except Exception as err:
            raise PrunelensError(f"{self.root / rel}: unreadable checkpoint ({type(err).__name__})") from None

    def save_json(self, rel: str, obj: Any) -> None:
        self.write(rel, json.dumps(obj, indent=1, sort_keys=True).encode())

    def load_json(self, rel: str) -> Any:
        return json.loads(self.read(rel))

    def save_table(self, stem: str, frame: pd.DataFrame) -> None:
        """Write a long-format table as `<stem>.csv` and `<stem>.parquet`."""
        self.write(f"{stem}.csv", frame.to_csv(index=False).encode())
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        self.write(f"{stem}.parquet", buffer.getvalue())

    def rounds_done(self) -> list[int]:
        """Rounds whose record (`metrics.json`, written last) is in the manifest."""
        done = [int(rel.split("/")[1]) for rel in self.manifest if rel.startswith("rounds/") and rel.endswith("/metrics.json")]
        return sorted(done)
