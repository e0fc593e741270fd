"""Atomic files with a sha256 manifest and a run lock; the store knows no experiment (runs.py knows the layout).

Every write goes to a temp file in the same directory, is fsynced and renamed into place, and only then listed
in `manifest.json` with its checksum: a file the manifest does not list does not exist. Writers hold the
directory's lock (waiting, bounded, while another process holds it) and re-read the manifest before each
update, so concurrent commands never lose each other's entries.

Files come in two kinds. *Primary* files (weights, masks, round records) are written once and checked
strictly: a missing or edited one is an error naming it. *Derived* files (tables, figures, cached analyses;
the `derived` fnmatch patterns) can be recomputed from primary ones: a stale or missing derived file is
dropped from the manifest when the store is verified, and rebuilt by whoever needs it.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from prunelens.errors import PrunelensError
from prunelens.faults import killpoint

MANIFEST = "manifest.json"
LOCK_WAIT_SECONDS = float(os.environ.get("PRUNELENS_LOCK_WAIT", 3600))
"""How long a writer waits for a run another process holds (environment variable `PRUNELENS_LOCK_WAIT`)."""


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


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RunStore:
    """The files of one directory. Writes are atomic and recorded in the manifest; reads verify checksums."""

    def __init__(self, root: Path, derived: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self.derived = tuple(derived)
        self.manifest = self._read_manifest()
        self._lock: Any = None

    def _read_manifest(self) -> dict[str, str]:
        path = self.root / MANIFEST
        try:
            return json.loads(path.read_text()) if path.exists() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PrunelensError(f"{path}: corrupted manifest (not valid JSON)") from None

    def is_derived(self, rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, pattern) for pattern in self.derived)

    # -- locking

    def lock(self, wait: float = LOCK_WAIT_SECONDS, on_wait: Callable[[str], None] | None = None) -> None:
        """Take the directory's exclusive lock, waiting up to `wait` seconds for another process to release it
        (`on_wait` is told once that we wait); then re-read the manifest."""
        if self._lock is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / ".lock", "w")  # noqa: SIM115 — held until unlock()
        deadline = time.monotonic() + wait
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.close()
                    raise PrunelensError(f"{self.root}: in use by another process (waited {wait:.0f} s); try again later") from None
                if on_wait and not told:
                    on_wait(f"{self.root}: in use by another process; waiting (up to {wait:.0f} s)")
                    told = True
                time.sleep(0.2)
        self._lock = handle
        self.manifest = self._read_manifest()

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def locked(self) -> bool:
        return self._lock is not None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    # -- files

    def has(self, rel: str) -> bool:
        return rel in self.manifest and (self.root / rel).is_file()

    def write(self, rel: str, data: bytes) -> None:
        """Write `rel` atomically and list it; nothing happens when it is listed with the same bytes. A primary
        file is written once: rewriting it with other bytes is refused."""
        if not self.locked:
            raise RuntimeError(f"{self.root}: write of {rel} without holding the run lock")
        digest = sha256(data)
        if self.has(rel):
            if self.manifest[rel] == digest:
                return
            if not self.is_derived(rel):
                raise PrunelensError(f"{self.root / rel}: already in the run with other contents; it is written only once")
        atomic_write(self.root / rel, data)
        killpoint("store.replaced")
        self.manifest = {**self._read_manifest(), rel: digest}
        atomic_write(self.root / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True).encode())

    def forget(self, rels: Sequence[str]) -> None:
        """Drop derived files from the manifest (and the disk), e.g. stale ones."""
        gone = [rel for rel in rels if rel in self.manifest]
        if not gone:
            return
        manifest = self._read_manifest()
        for rel in gone:
            manifest.pop(rel, None)
        self.manifest = manifest
        atomic_write(self.root / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        for rel in gone:
            (self.root / rel).unlink(missing_ok=True)

    def read(self, rel: str) -> bytes:
        path = self.root / rel
        if not self.has(rel):
            raise PrunelensError(f"{path}: missing from the run")
        data = path.read_bytes()
        if sha256(data) != self.manifest[rel]:
            raise PrunelensError(f"{path}: checksum mismatch (file corrupted or modified)")
        return data

    def stale(self) -> list[str]:
        """Derived files that are missing or fail their checksum; raises for such a primary file."""
        out = []
        for rel, digest in self.manifest.items():
            path = self.root / rel
            ok = path.is_file() and sha256(path.read_bytes()) == digest
            if ok:
                continue
            if not self.is_derived(rel):
                problem = "checksum mismatch (file corrupted or modified)" if path.is_file() else "missing from the run"
                raise PrunelensError(f"{path}: {problem}")
            out.append(rel)
        return out

    def verify(self) -> None:
        """Check every listed file (before a writer changes anything): primary files strictly; stale derived
        files are forgotten, to be rebuilt (needs the lock)."""
        stale = self.stale()
        if stale:
            self.forget(stale)

    # -- formats

    def save_tensors(self, rel: str, tensors: dict[str, torch.Tensor]) -> None:
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in tensors.items()}, buffer)
        self.write(rel, buffer.getvalue())

    def load_tensors(self, rel: str) -> dict[str, torch.Tensor]:
        data = self.read(rel)
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a bad file
            raise PrunelensError(f"{self.root / rel}: unreadable checkpoint ({type(err).__name__})") from None

    def save_json(self, rel: str, obj: Any) -> None:
        self.write(rel, json.dumps(obj, indent=1).encode())

    def load_json(self, rel: str) -> Any:
        try:
            return json.loads(self.read(rel))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PrunelensError(f"{self.root / rel}: not valid JSON") from None

    def save_table(self, stem: str, frame: pd.DataFrame) -> None:
        """Write a long-format table as `<stem>.csv` and `<stem>.parquet`."""
        self.write(f"{stem}.csv", frame.to_csv(index=False).encode())
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        self.write(f"{stem}.parquet", buffer.getvalue())
