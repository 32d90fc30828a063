"""Log entries: each owner's log read incrementally and appended, never re-read in full.

Log entries are events, not state: an entry never changes once Tapkey lists it, so it is stored
once (keyed by owner account and id) and never versioned. Per owner a watermark in
`log_entry_watermarks` says how far the log was read: the newest stored entry by
(`receivedAt`, `id`).

How a run reads one owner's log:

1. **Filtered** (the normal case): `$filter=receivedAt gt W - overlap`, where W is the watermark
   and the overlap is `[sync] log_overlap` (default 10 minutes). The overlap takes entries that
   Tapkey stamped shortly before W but listed only after the last run read (an upload being
   committed, equal timestamps); entries already stored are dropped by id. An entry arriving
   late for an old `lockTimestamp` has a new `receivedAt`, so it is read like any other.
2. **Unfiltered** when the server answers 400 to that filter (a 400 to a too large `$top` is
   told apart: see exporter.sync.log_paging): the refusal is remembered in the
   watermark row and the filter is tried again after `FILTER_RETRY` (a day). The list is paged
   from the stored position of the watermark entry (`list_position`): the first row there must be
   that entry, and what follows is new. Without a position, or when that row is another one (the
   list shifted before it: entries pruned by Tapkey, or slotted in before), the whole list is
   read once and stored entries are dropped by id.

Paging and when a read ends: see exporter.sync.log_paging.

Each page's new entries and the watermark they reach are written in one transaction, so a crash
loses nothing: the next run starts from the last committed watermark. Should a server list
entries out of `receivedAt` order, the watermark moves only once the whole read is done.

A 403 (scope `read:logs` missing, or an account role that may not read logs) or any other failure
fails that owner's log alone: nothing of its log changes, the run is `partial`, the rest goes on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, delete, insert, or_, select, update

from exporter.db.schema import log_entries, log_entry_watermarks
from exporter.errors import AuthError, Interrupted, TapkeyError
from exporter.sync.log_paging import (
    FILTER_RETRY,
    LogEntry,
    LogPager,
    Request,
    Watermark,
    next_watermark,
    read_rows,
)
from exporter.tapkey.paging import TopRejected

log = logging.getLogger(__name__)


class LogSource(Protocol):
    """What reading log entries needs from the API client (exporter.tapkey.client.TapkeyClient)."""

    @property
    def page_size(self) -> int: ...

    def log_entries_page(self, owner_id: str, params: Mapping[str, str]) -> str: ...

    def page_size_refused(self, refused: int, top: int) -> None: ...


# -- reading and writing one run's logs ----------------------------------------------------------


@dataclass
class LogOutcome:
    """How one owner's log went in a run."""

    owner_account_id: str
    stored: int = 0  # new entries written
    skipped: int = 0  # elements that could not be read or stored
    requests: int = 0
    error: str | None = None


@dataclass
class LogResult:
    """The log entries part of a run."""

    owners: list[LogOutcome] = field(default_factory=list)

    @property
    def stored(self) -> int:
        """New entries written in the run."""
        return sum(o.stored for o in self.owners)

    @property
    def failed(self) -> list[LogOutcome]:
        """Owners whose log could not be read."""
        return [o for o in self.owners if o.error is not None]

    def summary(self) -> str | None:
        """One line naming the first failed owner (and how many more), or None."""
        failed = self.failed
        if not failed:
            return None
        first = failed[0]
        more = f" (+{len(failed) - 1} more owners)" if len(failed) > 1 else ""
        return f"log entries of owner {first.owner_account_id}: {first.error}{more}"


@dataclass(frozen=True)
class LogOptions:
    """How logs are read and kept ([sync] log_overlap, log_retention)."""

    overlap: timedelta = timedelta(minutes=10)
    retention: timedelta | None = None


@dataclass
class _First:
    """The first page of one owner's read, fetched on a worker thread."""

    pager: LogPager
    request: Request
    text: str
    requests: int


def load_watermarks(conn: Connection) -> dict[str, Watermark]:
    """Every owner's watermark, by owner id."""
    table = log_entry_watermarks
    rows = conn.execute(
        select(
            table.c.owner_account_id,
            table.c.received_at,
            table.c.last_id,
            table.c.list_position,
            table.c.filter_refused_at,
        )
    )
    return {row[0]: Watermark(*row[1:]) for row in rows}


def read_logs(
    conn: Connection,
    source: LogSource,
    owner_ids: Sequence[str],
    *,
    run_id: int,
    clock: Callable[[], datetime],
    options: LogOptions,
    stop: threading.Event,
    before_write: Callable[[], None],
    pool: Any,
    workers: int,
) -> LogResult:
    """Read and store every owner's new log entries; see the module docstring.

    The first page of each owner is fetched on `pool` (`workers` at a time, the one request of
    most runs); later pages and every write happen on this thread, on `conn`. `before_write`
    runs before each transaction (the writer lock check).
    """
    watermarks = load_watermarks(conn)
    conn.rollback()  # no transaction left open while waiting for the API
    result = LogResult()
    now = clock()
    pending = list(reversed(owner_ids))
    running: dict[Future[_First], str] = {}

    def submit() -> None:
        owner_id = pending.pop()
        pager = LogPager(
            watermarks.get(owner_id, Watermark()),
            top=source.page_size,
            now=now,
            overlap=options.overlap,
        )
        running[pool.submit(_fetch_first, source, owner_id, pager)] = owner_id

    for _ in range(min(2 * workers, len(pending))):
        submit()
    try:
        while running:
            done, _ = wait(running, timeout=0.1, return_when=FIRST_COMPLETED)
            if stop.is_set():
                raise Interrupted
            for future in done:
                owner_id = running.pop(future)
                if pending:
                    submit()
                outcome = LogOutcome(owner_id)
                result.owners.append(outcome)
                try:
                    first = future.result()
                    outcome.requests = first.requests
                    _read_owner(
                        conn,
                        source,
                        owner_id,
                        first,
                        outcome,
                        known=owner_id in watermarks,
                        run_id=run_id,
                        clock=clock,
                        options=options,
                        stop=stop,
                        before_write=before_write,
                    )
                except AuthError:
                    raise
                except TapkeyError as exc:
                    outcome.error = str(exc)
                    log.warning("owner %s: log entries failed: %s", owner_id, exc)
    finally:
        for future in running:
            future.cancel()
    if result.stored:
        log.info("stored %d new log entries", result.stored)
    return result


def _fetch_first(source: LogSource, owner_id: str, pager: LogPager) -> _First:
    request, text, sent = _get_page(source, owner_id, pager, pager.first())
    return _First(pager, request, text, sent)


def _get_page(
    source: LogSource, owner_id: str, pager: LogPager, request: Request
) -> tuple[Request, str, int]:
    """`request`'s page, asked again as the pager decides after a 400 (LogPager.refused): the
    request answered, its body and the requests sent. A smaller `$top` that was answered is
    kept for every later list (the client's paging facts, stored with the run)."""
    asked, sent = int(request.params["$top"]), 0
    while True:
        sent += 1
        try:
            text = source.log_entries_page(owner_id, request.params)
        except TopRejected as exc:
            following = pager.refused(request, exc.limit)
            if following is None:
                raise exc.error from None
            if request.filtered and not following.filtered:
                log.info(
                    "owner %s: the API refused the receivedAt filter (HTTP 400); paging the "
                    "log without it (tried again after %s)",
                    owner_id,
                    FILTER_RETRY,
                )
            else:
                log.info(
                    "owner %s: the API refused $top=%s (HTTP 400); asking for %s",
                    owner_id,
                    request.params["$top"],
                    following.params["$top"],
                )
            request = following
            continue
        pager.answered(request)
        top = int(request.params["$top"])
        if top < asked:
            source.page_size_refused(asked, top)
        return request, text, sent


def _read_owner(
    conn: Connection,
    source: LogSource,
    owner_id: str,
    first: _First,
    outcome: LogOutcome,
    *,
    known: bool,
    run_id: int,
    clock: Callable[[], datetime],
    options: LogOptions,
    stop: threading.Event,
    before_write: Callable[[], None],
) -> None:
    """Page one owner's log from its first page on, writing each page's new entries."""
    pager, request, text = first.pager, first.request, first.text
    where = f"GET /api/v1/Owners/{owner_id}/LogEntries"
    seen: set[str] = set()
    written = pager.watermark
    cutoff = clock() - options.retention if options.retention is not None else None
    while True:
        decision = pager.page(request, read_rows(text, where))
        fresh: list[LogEntry] = []
        for row in decision.rows:
            if row.ident in seen:
                continue
            seen.add(row.ident)
            if row.entry is None:
                outcome.skipped += 1
                log.warning("owner %s: skipped a log entry: %s", owner_id, row.problem)
            elif cutoff is None or _event_time(row.entry) >= cutoff:
                fresh.append(row.entry)
        mark = next_watermark(pager, written, done=decision.next is None)
        if fresh or mark != written:
            before_write()
            with conn.begin():
                outcome.stored += _store(conn, owner_id, fresh, run_id)
                if mark != written:
                    _write_watermark(conn, owner_id, mark, exists=known, at=clock(), run_id=run_id)
                    known, written = True, mark
        if decision.next is None:
            return
        if stop.is_set():
            raise Interrupted
        request, text, sent = _get_page(source, owner_id, pager, decision.next)
        outcome.requests += sent


def _event_time(entry: LogEntry) -> datetime:
    return entry.lock_timestamp or entry.received_at


def _store(conn: Connection, owner_id: str, entries: Sequence[LogEntry], run_id: int) -> int:
    """Insert the entries not stored yet (by id); return how many were inserted."""
    if not entries:
        return 0
    table = log_entries
    stored = set(
        conn.execute(
            select(table.c.id)
            .where(table.c.owner_account_id == owner_id)
            .where(table.c.id.in_([e.id for e in entries]))
        ).scalars()
    )
    rows = [
        {
            "owner_account_id": owner_id,
            "id": e.id,
            "entry_no": e.entry_no,
            "lock_timestamp": e.lock_timestamp,
            "received_at": e.received_at,
            "bound_lock_id": e.bound_lock_id,
            "bound_card_id": e.bound_card_id,
            "contact_id": e.contact_id,
            "log_type": e.log_type,
            "command": e.command,
            "raw": e.raw,
            "run_id": run_id,
        }
        for e in entries
        if e.id not in stored
    ]
    if rows:
        conn.execute(insert(table), rows)
    return len(rows)


def _write_watermark(
    conn: Connection, owner_id: str, mark: Watermark, *, exists: bool, at: datetime, run_id: int
) -> None:
    values = {
        "received_at": mark.received_at,
        "last_id": mark.last_id,
        "list_position": mark.list_position,
        "filter_refused_at": mark.filter_refused_at,
        "updated_at": at,
        "run_id": run_id,
    }
    table = log_entry_watermarks
    if exists:
        conn.execute(update(table).where(table.c.owner_account_id == owner_id).values(values))
    else:
        conn.execute(insert(table).values(owner_account_id=owner_id, **values))


def prune(conn: Connection, cutoff: datetime) -> int:
    """Delete entries that happened (lockTimestamp, else receivedAt) before `cutoff`."""
    table = log_entries
    old = or_(
        table.c.lock_timestamp < cutoff,
        table.c.lock_timestamp.is_(None) & (table.c.received_at < cutoff),
    )
    return conn.execute(delete(table).where(old)).rowcount or 0
