"""Several owners' writes in one transaction, bounded, never splitting an owner.

A commit costs more than the rows of a small owner (SQLite writes every page the transaction
touched to the WAL again; a server waits for its log), so while the writer has owners queued up
(a first load, a run with many changes) it keeps adding whole owners to one transaction until it
holds `Batching.locks` written locks or has been open `Batching.seconds`. It commits as soon as
the writer would otherwise wait for a fetch, so it never stays open across a slow request.

A crash loses at most the open group, which the next run writes again; every group moves the
current and version tables together, and its owners' `sync_run_owners` rows are written into it
just before it commits (`before_commit`, which also checks the writer lock: nothing commits
without it), so the run records say exactly what was committed. What an owner adds to the run's
counts is handed over (`on_commit`) only once its group has committed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import Connection, RootTransaction

T = TypeVar("T")


@dataclass(frozen=True)
class Batching:
    """Bounds of one transaction: `locks` written locks or `seconds` open, whichever first.

    `Batching(locks=1)` commits every owner that wrote on its own.
    """

    locks: int = 50_000
    seconds: float = 2.0


class WriteGroup(Generic[T]):
    """The open transaction of a group of owners on `conn`, and what they wrote (`T` each)."""

    def __init__(
        self,
        conn: Connection,
        batching: Batching,
        *,
        on_commit: Callable[[list[T]], None],
        before_commit: Callable[[list[T]], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conn = conn
        self._batching = batching
        self._on_commit = on_commit
        self._before_commit = before_commit
        self._monotonic = monotonic
        self._transaction: RootTransaction | None = None
        self._opened_at = 0.0
        self._locks = 0
        self._pending: list[T] = []

    def begin(self) -> None:
        """Make sure a transaction is open (an owner is about to read or write)."""
        if self._transaction is None:
            self._transaction = self._conn.begin()
            self._opened_at = self._monotonic()

    def wrote(self, locks: int, item: T) -> None:
        """An owner wrote `locks` locks in the open transaction; commit if a bound is reached."""
        self._locks += locks
        self._pending.append(item)
        if self._locks >= self._batching.locks or (
            self._monotonic() - self._opened_at >= self._batching.seconds
        ):
            self.commit()

    def commit(self) -> None:
        """Commit the open transaction, if any, and hand its owners to `on_commit`.

        `before_commit` gets them first, in the transaction; if it raises, nothing commits.
        """
        if self._transaction is None:
            return
        if self._pending and self._before_commit is not None:
            self._before_commit(self._pending)
        transaction, self._transaction = self._transaction, None
        transaction.commit()
        pending, self._pending, self._locks = self._pending, [], 0
        if pending:
            self._on_commit(pending)
