"""Kill points: a test hook that SIGKILLs the process at a named point, to prove that every kill resumes.

`PRUNELENS_KILL_AT=<point>[:<n>]` kills the process the n-th time (default 1st) `killpoint(<point>)` is
reached. Points: `store.replaced` (a file is in place, the manifest not yet updated), `rounds.done` (the
last round is stored, its tables not yet), `lens.round` (a lens round is computed, not yet stored),
`reference.trained` (a reference run's dense round is stored, the analysis not yet started).
"""

from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def killpoint(name: str) -> None:
    """SIGKILL this process if `PRUNELENS_KILL_AT` names `name` and this is its n-th visit."""
    spec = os.environ.get("PRUNELENS_KILL_AT")
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
