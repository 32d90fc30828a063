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
2. **Unfiltered** when the server answers 400 to that filter: the refusal is remembered in the
   watermark row and the filter is tried again after `FILTER_RETRY` (a day). The list is paged
   from the stored position of the watermark entry (`list_position`): the first row there must be
   that entry, and what follows is new. Without a position, or when that row is another one (the
   list shifted before it: entries pruned by Tapkey, or slotted in before), the whole list is
   read once and stored entries are dropped by id.

Pages overlap by one row (`$skip` = rows received - 1, the previous page's last row first), as
in `TapkeyClient._read_list`: a list that shifted before our position while it was paged is read
again from the start (entries already read are dropped by id), at most `MAX_RESTARTS` times.
The lists are append-only and ordered by (`receivedAt`, `id`), so new entries arriving while
paging only add pages at the end. A read ends at an empty page, at a page holding only the
previous page's last row, or at a page shorter than `$top` whose last entry is the watermark
entry (nothing new). A server that caps `$top` silently can make that last rule end a read early,
but never past an entry it did not return: the next run starts before it. A rerun with nothing
new costs one request per owner; one with new entries a request more than their pages.

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
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from sqlalchemy import Connection, delete, insert, or_, select, update

from exporter.db.schema import log_entries, log_entry_watermarks
from exporter.errors import ApiError, AuthError, Interrupted, PagingError, TapkeyError
from exporter.tapkey.records import (
    MAX_ID_LENGTH,
    BadValue,
    _date,
    _element_too_long,
    _int,
    _str,
    element_id,
    split_array,
)

log = logging.getLogger(__name__)

#: How long a refused receivedAt filter is not asked for again.
FILTER_RETRY: Final = timedelta(days=1)
#: Re-reads of a list that shifted while it was paged, before the owner's log fails.
MAX_RESTARTS: Final = 3
_MAX_TEXT: Final = 255  # log_type and command columns
_BIGINT: Final = 2**63
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class LogSource(Protocol):
    """What reading log entries needs from the API client (exporter.tapkey.client.TapkeyClient)."""

    @property
    def page_size(self) -> int: ...

    def log_entries_page(self, owner_id: str, params: Mapping[str, str]) -> str: ...


# -- records -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One log entry; `raw` is its JSON text exactly as received."""

    id: str
    entry_no: int | None
    lock_timestamp: datetime | None
    received_at: datetime
    bound_lock_id: str | None
    bound_card_id: str | None
    contact_id: str | None
    log_type: str | None
    command: str | None
    raw: str

    @property
    def key(self) -> tuple[datetime, str]:
        """The list's order: by receivedAt, then id."""
        return self.received_at, self.id


def parse_entry(value: Any, raw: str) -> LogEntry:
    """A LogEntry from one element; BadValue naming the field that cannot be stored."""
    entry_id = element_id(value)
    if entry_id is None:
        raise BadValue(f"no id of 1 to {MAX_ID_LENGTH} characters")
    too_long = _element_too_long("the element", raw)
    if too_long is not None:
        raise BadValue(too_long)
    received = _date(value, "receivedAt")
    if received is None:
        raise BadValue("receivedAt is missing")
    ids = {}
    for key in ("boundLockId", "boundCardId", "contactId"):
        ids[key] = _str(value, key)
        if ids[key] is not None and len(ids[key] or "") > MAX_ID_LENGTH:
            raise BadValue(f"{key} is longer than {MAX_ID_LENGTH} characters")
    texts = {}
    for key in ("logType", "command"):
        texts[key] = _str(value, key)
        if texts[key] is not None and len(texts[key] or "") > _MAX_TEXT:
            raise BadValue(f"{key} is longer than {_MAX_TEXT} characters")
    entry_no = _int(value, "entryNo")
    if entry_no is not None and not -_BIGINT <= entry_no < _BIGINT:
        raise BadValue("entryNo is out of range")
    return LogEntry(
        id=entry_id,
        entry_no=entry_no,
        lock_timestamp=_date(value, "lockTimestamp"),
        received_at=received,
        bound_lock_id=ids["boundLockId"],
        bound_card_id=ids["boundCardId"],
        contact_id=ids["contactId"],
        log_type=texts["logType"],
        command=texts["command"],
        raw=raw,
    )


def odata_instant(moment: datetime) -> str:
    """An OData v4 DateTimeOffset literal in UTC with microseconds: 2026-01-31T12:00:00.000000Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- deciding the requests -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Watermark:
    """How far one owner's log was read (a row of log_entry_watermarks)."""

    received_at: datetime | None = None
    last_id: str | None = None
    list_position: int | None = None
    filter_refused_at: datetime | None = None

    @property
    def key(self) -> tuple[datetime, str] | None:
        """(receivedAt, id) of the newest stored entry, None before the first one."""
        if self.received_at is None or self.last_id is None:
            return None
        return self.received_at, self.last_id


@dataclass(frozen=True, slots=True)
class Request:
    """One page to ask for: its query, where it starts, and the row it must start with."""

    params: dict[str, str]
    skip: int
    filtered: bool
    anchor: str | None = None  # identity of the row expected first (overlapping pages)


@dataclass(slots=True)
class Row:
    """One element of a page: its identity (id, else its text) and the entry if readable."""

    ident: str
    entry: LogEntry | None
    problem: str | None = None


@dataclass(slots=True)
class PageDecision:
    """What a page brought: rows not read before in this read, and the next request."""

    rows: list[Row]
    next: Request | None


def read_rows(text: str, where: str) -> list[Row]:
    """A page body's elements as rows (PayloadError if the body is not a JSON array)."""
    rows = []
    for value, raw in split_array(text, where):
        ident = element_id(value)
        try:
            entry: LogEntry | None = parse_entry(value, raw)
            problem = None
        except BadValue as exc:
            entry, problem = None, str(exc)
        rows.append(Row(ident if ident is not None else "\0" + raw, entry, problem))
    return rows


class LogPager:
    """Decides the requests for one owner's log and which rows of each page are new to the read.

    Data in, decisions out: no I/O (see the module docstring for the rules).
    """

    def __init__(
        self,
        watermark: Watermark,
        *,
        top: int,
        now: datetime,
        overlap: timedelta,
    ) -> None:
        self.watermark = watermark
        self.top = max(2, top)  # pages overlap by a row
        self.overlap = overlap
        refused = watermark.filter_refused_at
        self.now = now
        self.use_filter = refused is None or now - refused >= FILTER_RETRY
        # When the server last refused the filter, as the watermark should keep it.
        self.refused_at = None if self.use_filter else refused
        self.restarts = 0
        self.ordered = True  # rows so far came in (receivedAt) order
        self.newest: tuple[datetime, str] | None = None  # newest entry key seen in this read
        self.position: int | None = None  # rows of the unfiltered list up to `newest`
        self._last_received: datetime | None = None
        self._first_ids: list[str] | None = None

    def first(self) -> Request:
        """The first request of the read."""
        if not self.use_filter:
            return self._unfiltered_start()
        # With nothing stored, the filter takes every entry; sent anyway, it finds out at once
        # whether the server takes it.
        start = self.watermark.received_at
        since = _EPOCH if start is None else start - self.overlap
        return self._request(0, {"$filter": f"receivedAt gt {odata_instant(since)}"}, filtered=True)

    def filter_refused(self) -> Request:
        """The first request after a 400 to the receivedAt filter."""
        self.use_filter = False
        self.refused_at = self.now
        return self._unfiltered_start()

    def _unfiltered_start(self) -> Request:
        position, last_id = self.watermark.list_position, self.watermark.last_id
        if position is not None and position > 0 and last_id is not None:
            return self._request(position - 1, {}, filtered=False, anchor=last_id)
        return self._request(0, {}, filtered=False)

    def _request(
        self, skip: int, params: dict[str, str], *, filtered: bool, anchor: str | None = None
    ) -> Request:
        query = {**params, "$top": str(self.top), "$skip": str(skip)}
        return Request(query, skip, filtered, anchor)

    def page(self, request: Request, rows: Sequence[Row]) -> PageDecision:
        """The rows of `request`'s page that are new to this read, and what to ask next."""
        ids = [row.ident for row in rows]
        if request.skip > 0 and rows and ids == self._first_ids:
            raise PagingError(
                "the server ignored $skip and returned the first page again; paging cannot "
                "work against it (check [tapkey] api_base_url)"
            )
        if request.skip == 0:
            self._first_ids = ids
        if request.anchor is not None and (not rows or ids[0] != request.anchor):
            return PageDecision([], self._restart(request))
        start = 1 if request.anchor is not None else 0
        for index in range(start, len(rows)):
            entry = rows[index].entry
            if entry is None:
                continue
            if self._last_received is not None and entry.received_at < self._last_received:
                self.ordered = False
            self._last_received = entry.received_at
            if self.newest is None or entry.key >= self.newest:
                self.newest = entry.key
                if not request.filtered:
                    self.position = request.skip + index + 1
        new = list(rows[start:])
        if not rows or (request.anchor is not None and not new):
            return PageDecision(new, None)
        if len(rows) < self.top and self.ordered and self._ends_at_watermark(rows):
            return PageDecision(new, None)
        skip = request.skip + len(rows) - 1
        params = {k: v for k, v in request.params.items() if k not in ("$top", "$skip")}
        return PageDecision(
            new, self._request(skip, params, filtered=request.filtered, anchor=rows[-1].ident)
        )

    def _ends_at_watermark(self, rows: Sequence[Row]) -> bool:
        # A short page proves the end of a list only if the server did not cap $top silently.
        # One ending exactly at the entry the last run read up to is taken as the end (a rerun
        # with nothing new costs one request); if a cap cut it there, what follows is read next
        # run. A page with newer entries is always followed by one more request, and one ending
        # before the watermark too: a window of stored entries longer than the cap must not
        # stall the log.
        last = next((row.entry for row in reversed(rows) if row.entry is not None), None)
        return last is not None and last.key == self.watermark.key

    def _restart(self, request: Request) -> Request:
        """The list shifted before our position: read it again from the start."""
        position = self.watermark.list_position
        if not request.filtered and request.skip == (position or 0) - 1 and self.newest is None:
            # The stored position was stale (Tapkey pruned older entries, say): a full read.
            log.info("log entries: the stored list position moved; reading the whole log")
            return self._request(0, {}, filtered=False)
        self.restarts += 1
        if self.restarts > MAX_RESTARTS:
            raise PagingError(
                f"the log kept changing while it was being paged ({MAX_RESTARTS + 1} attempts); "
                "try again later"
            )
        self.ordered, self._last_received, self._first_ids = True, None, None
        params = {k: v for k, v in request.params.items() if k not in ("$top", "$skip")}
        return self._request(0, params, filtered=request.filtered)


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
    request = pager.first()
    try:
        return _First(pager, request, source.log_entries_page(owner_id, request.params), 1)
    except ApiError as exc:
        if exc.status != 400 or not request.filtered or "$filter" not in request.params:
            raise
    log.info(
        "owner %s: the API refused the receivedAt filter (HTTP 400); paging the log without "
        "it (tried again after %s)",
        owner_id,
        FILTER_RETRY,
    )
    request = pager.filter_refused()
    return _First(pager, request, source.log_entries_page(owner_id, request.params), 2)


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
        mark = _next_watermark(pager, written, done=decision.next is None)
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
        request = decision.next
        text = source.log_entries_page(owner_id, request.params)
        outcome.requests += 1


def _event_time(entry: LogEntry) -> datetime:
    return entry.lock_timestamp or entry.received_at


def _next_watermark(pager: LogPager, written: Watermark, *, done: bool) -> Watermark:
    """The watermark after what the read has seen so far.

    It moves to the newest entry read while rows came in order (or once the read is complete),
    never back; the list position is known only from unfiltered reads.
    """
    key, position = written.key, written.list_position
    newest = pager.newest
    if newest is not None and (pager.ordered or done) and (key is None or newest >= key):
        if pager.position is not None:
            position = pager.position
        elif newest != key:
            position = None  # a newer entry whose place in the unfiltered list is unknown
        key = newest
    received_at, last_id = key if key is not None else (None, None)
    return Watermark(received_at, last_id, position, pager.refused_at)


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
