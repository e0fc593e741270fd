"""A persistent cache keyed by content, shared by every run under one output directory (`<output_dir>/cache`).

An entry is the tensors computed from a key (a JSON-able description of everything they depend on, e.g. the
encoder and the image pool), stored with `torch.save` beside a sidecar with the key and the file's sha256; a
missing, unreadable or mismatching entry is recomputed. Entries are written atomically, so concurrent
writers of one key at worst compute it twice.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from prunelens.store import atomic_write, sha256


class FileCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _paths(self, key: Mapping[str, Any]) -> tuple[Path, Path, str]:
        text = json.dumps(key, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()
        folder = self.root / digest[:2]
        return folder / f"{digest}.pt", folder / f"{digest}.json", text

    def tensors(self, key: Mapping[str, Any], compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The cached tensors of `key`, computed (and stored) when absent or damaged."""
        data_path, meta_path, text = self._paths(key)
        try:
            meta = json.loads(meta_path.read_text())
            data = data_path.read_bytes()
            if meta["key"] == text and meta["sha256"] == sha256(data):
                return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except (OSError, ValueError, KeyError, RuntimeError, EOFError):
            pass
        value = compute()
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in value.items()}, buffer)
        atomic_write(data_path, buffer.getvalue())
        atomic_write(meta_path, json.dumps({"key": text, "sha256": sha256(buffer.getvalue())}).encode())
        return value
