"""A run's progress bar at a terminal: owners done of total, locks, requests, rate and ETA.

The sync engine only calls a callback with a `SyncProgress`; this module draws it with rich's
Progress on the CLI's stderr console. While the bar is up, log lines go through that console
(above the bar) instead of straight to stderr, where they would be written into the bar's line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import IO

from rich.console import Console
from rich.file_proxy import FileProxy
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from exporter.results import SyncProgress


def wanted(*, is_terminal: bool, quiet: bool, log_format: str) -> bool:
    """Show a bar only to a person: stderr is a terminal, no --quiet, and no JSON log lines
    (a log collector reading them wants no bar drawn between them)."""
    return is_terminal and not quiet and log_format != "json"


class _LockRate(ProgressColumn):
    """Locks per second since the bar started."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        locks = int(task.fields.get("locks", 0))
        return Text(f"{locks / elapsed:,.0f} locks/s" if elapsed > 0 else "")


class ProgressBar:
    """Draws a run's progress on `console` between `__enter__` and `__exit__`.

    Entering gives the callback to hand to the sync (`job.run_once(progress=...)`).
    """

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress = Progress(
            TextColumn("owners"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[locks]:,} locks"),
            TextColumn("{task.fields[requests]:,} requests"),
            _LockRate(),
            TimeRemainingColumn(),
            console=console,
            transient=True,  # the run's summary follows; the bar has done its job
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task: TaskID | None = None
        self._swapped: list[tuple[logging.StreamHandler[IO[str]], IO[str]]] = []

    def update(self, progress: SyncProgress) -> None:
        """Show `progress` (the sync's callback; called on the run's thread)."""
        assert self._task is not None
        self._progress.update(
            self._task,
            total=progress.owners_total,
            completed=progress.owners_done,
            locks=progress.locks_seen,
            requests=progress.api_requests,
        )

    def __enter__(self) -> Callable[[SyncProgress], None]:
        self._task = self._progress.add_task("sync", total=None, locks=0, requests=0)
        self._progress.start()
        # Log handlers writing to this console's file print through the console instead.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self._console.file:
                self._swapped.append((handler, handler.stream))
                handler.setStream(FileProxy(self._progress.console, handler.stream))
        return self.update

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        for handler, stream in self._swapped:
            handler.setStream(stream)
        self._swapped.clear()
        self._progress.stop()
