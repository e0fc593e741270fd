"""Stopping at the next safe point on SIGINT / SIGTERM (imports nothing heavy: installed first thing).

`install_signal_handlers()` turns the first Ctrl-C or SIGTERM into a request: the next `check_interrupt()`
— every progress step and every round calls it — raises `Interrupted`, so work stops between two steps,
never inside a write, and no library can swallow the signal. A second signal interrupts at once.
"""

from __future__ import annotations

import signal
from typing import Any

_requested: list[int] = []


class Interrupted(KeyboardInterrupt):
    """A stop requested by a signal (`signum`), raised at a safe point."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _request(signum: int, frame: Any) -> None:
    if _requested:
        raise Interrupted(signum)
    _requested.append(signum)


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM request a stop at the next safe point (a second one stops at once)."""
    _requested.clear()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _request)


def check_interrupt() -> None:
    """Raise `Interrupted` if a stop was requested."""
    if _requested:
        raise Interrupted(_requested[0])
