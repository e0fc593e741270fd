"""Progress bars (rich) that vanish in quiet mode; every step is a safe point for a requested stop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from prunelens.interrupts import check_interrupt

Advance = Callable[[int], None]


class Reporter:
    """`with reporter.task("round 3", total=500) as advance: advance(1)`; messages via `reporter.log`."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self._bars = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, transient=True, disable=quiet,
        )

    def __enter__(self) -> Reporter:
        self._bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.__exit__(*exc)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        """A progress bar; every `advance(n)` is also a safe point for a requested stop."""
        task = self._bars.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            check_interrupt()
            self._bars.advance(task, n)

        try:
            yield advance
        finally:
            self._bars.remove_task(task)

    def log(self, message: str) -> None:
        """A progress message (not in quiet mode), never wrapped."""
        if not self.quiet:
            self.console.print(message, soft_wrap=True, markup=False, highlight=False)

    def notice(self, message: str) -> None:
        """Something the user must know even in quiet mode (waiting for a run, skipped files)."""
        self.console.print(message, soft_wrap=True, markup=False, highlight=False)
