"""Log entries, decided without I/O: parsing an entry, and which page to ask for next.

`LogPager` turns one owner's watermark into the requests of a read and each page into the rows
that are new to the read (exporter.sync.log_entries does the requests and the writes).

Pages overlap by one row (`$skip` = rows received - 1, the previous page's last row first), as
in `TapkeyClient._read_list`: a list that shifted before our position while it was paged is read
again from the start (entries already read are dropped by id), at most `MAX_RESTARTS` times.
The lists are append-only and ordered by (`receivedAt`, `id`), so new entries arriving while
paging only add pages at the end. A read ends at an empty page, at a page holding only the
previous page's last row, or at a page shorter than `$top` whose last entry is the watermark
entry (nothing new). A server that caps `$top` silently can make that last rule end a read early,
but never past an entry it did not return: the next run starts before it. A rerun with nothing
new costs one request per owner; one with new entries a request more than their pages.

A 400 means one of two things (`LogPager.refused`): a `$top` above the server's maximum (OData's
MaxTop; its message states the limit), or a `receivedAt` filter the server cannot apply. A 400
that states a maximum `$top` is about the `$top`: the same page is asked again at that size
(without a stated limit, at half the size, down to 2), as the lock lists do
(exporter.tapkey.paging, rule 8); pages already read stay read, so nothing is lost. A 400 to the
first, filtered request that states no limit is taken for a refused filter: the log is paged
without it. Should that page be refused too, the `$top` was at fault: it is halved, and once a
smaller page is answered the filter's refusal is not kept (the next run asks with it again).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from exporter.errors import PagingError
from exporter.tapkey.fields import (
    MAX_ID_LENGTH,
    BadValue,
    date_field,
    element_id,
    element_too_long,
    int_field,
    padded_id,
    str_field,
    unstorable_text,
)
from exporter.tapkey.page_text import split_array
from exporter.tapkey.paging import smaller_top

log = logging.getLogger(__name__)

#: How long a refused receivedAt filter is not asked for again.
FILTER_RETRY: Final = timedelta(days=1)
#: Re-reads of a list that shifted while it was paged, before the owner's log fails.
MAX_RESTARTS: Final = 3
_MAX_TEXT: Final = 255  # log_type and command columns
_BIGINT: Final = 2**63
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


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
    too_long = (
        padded_id(entry_id) or element_too_long("the element", raw) or unstorable_text(value, raw)
    )
    if too_long is not None:
        raise BadValue(too_long)
    received = date_field(value, "receivedAt")
    if received is None:
        raise BadValue("receivedAt is missing")
    ids = {}
    for key in ("boundLockId", "boundCardId", "contactId"):
        ids[key] = str_field(value, key)
        if ids[key] is not None and len(ids[key] or "") > MAX_ID_LENGTH:
            raise BadValue(f"{key} is longer than {MAX_ID_LENGTH} characters")
    texts = {}
    for key in ("logType", "command"):
        texts[key] = str_field(value, key)
        if texts[key] is not None and len(texts[key] or "") > _MAX_TEXT:
            raise BadValue(f"{key} is longer than {_MAX_TEXT} characters")
    entry_no = int_field(value, "entryNo")
    if entry_no is not None and not -_BIGINT <= entry_no < _BIGINT:
        raise BadValue("entryNo is out of range")
    return LogEntry(
        id=entry_id,
        entry_no=entry_no,
        lock_timestamp=date_field(value, "lockTimestamp"),
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
        # The $top at which this read took a 400 that stated no limit for a refused filter.
        self._doubted_at: int | None = None
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

    def refused(self, request: Request, limit: int | None) -> Request | None:
        """What to ask after a 400 to `request` (`limit`: the maximum `$top` its message stated,
        if any), or None when nothing helps (the 400 fails the owner's log).

        See the module docstring: a stated limit means the `$top`; an unstated one on the first
        filtered request means the filter; otherwise the `$top` is halved.
        """
        first_filtered = request.filtered and request.skip == 0 and request.anchor is None
        if limit is None and first_filtered and self.use_filter:
            self._doubted_at = self.top
            return self.filter_refused()
        smaller = smaller_top(self.top, limit)
        if smaller is None:
            return None
        self.top = smaller
        params = {k: v for k, v in request.params.items() if k not in ("$top", "$skip")}
        return self._request(request.skip, params, filtered=request.filtered, anchor=request.anchor)

    def answered(self, request: Request) -> None:
        """`request` was answered: if it came after the filter was taken for refused and the
        `$top` was then lowered, that 400 may have been the `$top`'s, so the refusal is not kept
        (the next run asks with the filter again, at the smaller `$top`)."""
        doubted = self._doubted_at
        if doubted is not None and int(request.params["$top"]) < doubted:
            self.refused_at, self._doubted_at = None, None

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


def next_watermark(pager: LogPager, written: Watermark, *, done: bool) -> Watermark:
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
