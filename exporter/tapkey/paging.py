"""Reading a whole OData list with overlapping `$skip` pages: a state machine with no HTTP in it.

`read_list(get_page, facts, ...)` asks `get_page(skip, top)` for pages until the list is proved
read to its end, and returns the rows. The caller's `get_page` only transports (and may raise
`TopRejected` when the server refuses the `$top`); every decision is here, so it is tested with
hand-built pages (tests/test_paging.py).

Rules (`top` = the `$top` asked for; the server is assumed to return min(top, its cap, rows
left), with a cap it may not state):

1. The first page is `$skip=0`. Each next page starts one row *before* the end of what was
   received (`$skip = received - 1`), so its first row must be the previous page's last row (same
   id; same text if it had no readable id). `$skip` advances by the rows received, so a server
   that silently caps `$top` loses nothing.
2. A list ends at an empty first page, at a page holding only the overlap row, at a page shorter
   than an earlier page of the same list, or at a page shorter than `top` and shorter than the
   longest page the server has returned in one answer (`PageSizes.honoured`: its cap is at least
   that long, so the shorter page is the tail). The longest page is learned from every page of
   every list (owners or bound locks) and kept in the database between runs.
3. A short page that completes the list as stored (every stored id received, at least one) ends
   it too: ending it there removes nothing. It could only miss rows not stored yet behind a cap
   exactly as long as the page; the confirmation below finds such a cap.
4. A short page that lacks a stored id ends the list provisionally: only a removal is at stake,
   and removals are decided once every list is read. By then the longest page seen may prove
   the end (rule 2); the ends it does not prove are confirmed then (`PagingFacts.to_confirm`),
   usually none or one. Not so when the id stored last is the one missing (a cap cuts the tail)
   or nothing is stored (a first load): there rows could be missed behind a cap, so the short
   page is confirmed at once by one more request, as every short page was before.
5. A mismatched or missing overlap row means rows were inserted or removed before our position
   while paging: the whole list is re-read (at most `max_restarts` times, then PagingError).
6. A page at `$skip > 0` that repeats the first page means the server ignores `$skip`:
   PagingError at once instead of looping.
7. A one-row first page cannot be overlapped; unless rules 2-3 end it, it is followed by
   `$skip=1`, which must be empty (else the list grew: re-read, as in 5).
8. A server that answers 400 to the `$top` (OData's MaxTop) gets a smaller one: the maximum its
   error states, else half, down to 2. Once a smaller `$top` is answered (which proves the 400
   was about `$top`: a 400 for another reason would come back again), every later list asks for
   it and the database keeps it.

Rules 2 and 3 trust what the server did before; it could start capping pages silently below
that. Each list they end carries a `ListEnd`, and the caller confirms the end of one of them per
run, the one whose last page was longest (a new cap cuts it first), before any removal is
decided. If it was cut, the lists ended on pages as long as the cut are unproven (the run
removes nothing) and the cut becomes the page size asked for (`PagingFacts.capped`), so the next
run reads them whole. Once any list lacks stored ids, every list is confirmed too unless a longer
page of this run proves its end: several lists may end on pages of the same length, and the one
checked may really end there while a new cap cut the others, whose tails may hold the rows
missing elsewhere (locks moved between owners). See the README's "Paging" section.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from exporter.errors import PagingError
from exporter.tapkey.page_facts import MIN_TOP, ListEnd, PageSizes, PagingFacts

__all__ = [
    "MIN_TOP",
    "ListEnd",
    "ListRead",
    "PageSizes",
    "PagingCheck",
    "PagingFacts",
    "TopRejected",
    "confirms_end",
    "read_list",
    "smaller_top",
]

T = TypeVar("T")


#: The ids (None where unreadable) and the (value, exact text) elements of one page.
Page = tuple[Sequence[str | None], Sequence[tuple[Any, str]]]
#: Transport of one page: `get_page(skip, top)`.
GetPage = Callable[[int, int], Page]


class TopRejected(Exception):
    """The server refused a page's `$top` (HTTP 400); `error` is what to raise if no smaller
    `$top` helps, `limit` the maximum the error body stated, if it stated one."""

    def __init__(self, error: Exception, limit: int | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.limit = limit


@dataclass(slots=True)
class ListRead(Generic[T]):
    """A whole list: its rows (id, converted element), the requests it took and how it ended."""

    rows: list[tuple[str | None, T | None]]
    requests: int
    #: Set when rule 2 or 3 ended the list, unconfirmed.
    end: ListEnd | None = None
    #: A page shorter than its `$top` was followed by more rows: the server caps pages (rows).
    capped_at: int | None = None


@dataclass(frozen=True, slots=True)
class PagingCheck:
    """The outcome of confirming one list end per run (`confirm_paging` of the API client).

    `unproven` names the lists whose end can no longer be trusted (owner ids; None for the owner
    list): their removals wait for a run that reads them to a proven end.
    """

    unproven: frozenset[str | None] = frozenset()
    message: str | None = None


@dataclass
class _Pass(Generic[T]):
    """One pass over a list (rules 1-5); `feed` judges each page."""

    facts: PagingFacts
    where: str
    trust: bool  # may rules 2 and 3 end the list without a confirming request
    stored: frozenset[str] | None = None  # the list's ids as stored (rules 3-4)
    last_stored: str | None = None  # the stored id the API listed last (rule 4), if known
    missing: set[str] = field(default_factory=set)  # stored ids not received yet
    rows: list[tuple[str | None, T | None]] = field(default_factory=list)
    first_ids: tuple[str | None, ...] = ()
    last_id: str | None = None
    last_raw: str = ""
    largest: int = 0
    short: int | None = None  # rows of the last page if it was shorter than its $top
    done: bool = False
    end: ListEnd | None = None
    capped_at: int | None = None

    def next_skip(self) -> int:
        n = len(self.rows)
        return 0 if n == 0 else 1 if n == 1 else n - 1

    def feed(
        self,
        page: Page,
        top: int,
        convert: Callable[[Any, str | None, str], T | None],
    ) -> bool:
        """Take one page; False if the list shifted under us (re-read it), PagingError if the
        server ignores `$skip`."""
        ids, elements = page
        n = len(self.rows)
        if n == 0:
            start = 0
            self.first_ids = tuple(ids)
        elif n == 1:  # after a one-row first page: expect nothing at $skip=1
            if not elements:
                self.done = True
                return True
            if tuple(ids) == self.first_ids:
                raise self._skip_ignored()
            return False
        else:
            if not elements:
                return False  # the overlap row vanished: rows were removed before it
            if tuple(ids) == self.first_ids:
                raise self._skip_ignored()
            if self.last_id is not None:
                matches = ids[0] == self.last_id
            else:
                matches = elements[0][1] == self.last_raw
            if not matches:
                return False
            start = 1
        if start >= len(elements):  # empty first page, or only the overlap row
            self.done = True
            return True
        if self.short is not None:
            # The previous page was shorter than its $top, yet more rows followed: a cap.
            self.capped_at = self.short
        for i in range(start, len(elements)):
            value, raw = elements[i]
            self.rows.append((ids[i], convert(value, ids[i], raw)))
        self.missing.difference_update(ids)
        size = len(elements)
        self.last_id, self.last_raw = ids[-1], elements[-1][1]
        self.facts.page_seen(size)
        if size >= top:
            self.short = None
        elif size < self.largest:
            self.done = True  # the server returned more before: this is the tail
        elif self.trust and (self.facts.ends(size, top) or self._may_end_here()):
            self.done = True
            self.end = ListEnd(
                rows=size,
                top=top,
                skip=self.next_skip(),
                overlap=len(self.rows) > 1,
                last_id=self.last_id,
                last_raw=self.last_raw,
                provisional=not self.facts.ends(size, top) and bool(self.missing),
                removes=bool(self.missing),
            )
            if self.end.provisional and (
                self.last_stored is None or self.last_stored in self.missing
            ):
                # The tail of the list as stored is missing: what a cap cutting this page would
                # look like. Confirmed at once instead, so that no row is missed.
                self.done, self.end, self.short = False, None, size
        else:
            self.short = size
        self.largest = max(self.largest, size)
        return True

    def _may_end_here(self) -> bool:
        """Rules 3 and 4: the short page holds every stored id, or lacks some but not the one
        stored last (a cap would cut the tail: that end is confirmed at once instead)."""
        if not self.stored:
            return False
        if not self.missing:
            return True
        return self.last_stored is not None and self.last_stored not in self.missing

    def _skip_ignored(self) -> PagingError:
        return PagingError(
            f"{self.where}: the server ignored $skip and returned the first page again; "
            "paging cannot work against it (check [tapkey] api_base_url)"
        )


def read_list(
    get_page: GetPage,
    facts: PagingFacts,
    convert: Callable[[Any, str | None, str], T | None],
    *,
    where: str,
    max_restarts: int = 3,
    on_restart: Callable[[int], None] = lambda attempt: None,
    trust: bool = True,
    stored: Sequence[str] | Callable[[], Sequence[str] | None] | None = None,
    stored_in_order: bool = True,
) -> ListRead[T]:
    """Read a whole list (see the module docstring); re-read it if it shifted while paged.

    `convert(value, id, raw)` turns each new element into what is kept (called as pages arrive,
    so a page's JSON values can be freed at once). `on_restart(attempt)` runs before each re-read
    (the client waits a little there). `trust=False` ignores rules 2 and 3: every short page is
    confirmed. `stored`: the ids stored for this list, if the caller knows them (rules 3-4), in
    the order the API listed them when they were stored unless `stored_in_order` is False; or a
    callable returning them, called once the first page is in (a database read meanwhile).
    """
    ids: tuple[frozenset[str] | None, str | None] | None = None

    def new_pass() -> _Pass[T]:
        nonlocal ids
        if ids is None:
            listed = stored() if callable(stored) else stored
            last = listed[-1] if listed and stored_in_order else None
            ids = (frozenset(listed) if listed is not None else None, last)
        return _Pass(facts, where, trust, *ids, set(ids[0] or ()))

    requests = 0
    for attempt in range(max_restarts + 1):
        state: _Pass[T] | None = None  # made once the pass's first page is in (see `stored`)
        shifted = False
        while state is None or not state.done:
            skip = 0 if state is None else state.next_skip()
            top = facts.top()
            asked = top
            while True:
                try:
                    requests += 1
                    page = get_page(skip, top)
                    break
                except TopRejected as exc:
                    smaller = smaller_top(top, exc.limit)
                    if smaller is None:
                        raise exc.error from None
                    top = smaller
            if top < asked:
                facts.stepped_down(asked, top)
            state = state or new_pass()
            if not state.feed(page, top, convert):
                shifted = True
                break
        if not shifted and state is not None:  # (state is None only before a first page)
            if state.missing:
                facts.lacked_stored()
            return ListRead(state.rows, requests, state.end, state.capped_at)
        if attempt < max_restarts:
            on_restart(attempt)
    raise PagingError(
        f"{where}: the list kept changing while it was being paged "
        f"({max_restarts + 1} attempts, {requests} requests); try again later"
    )


def smaller_top(top: int, limit: int | None) -> int | None:
    """The `$top` to try after a 400 to `$top=top`: the stated limit, else half; None below 2."""
    smaller = limit if limit is not None and MIN_TOP <= limit < top else top // 2
    return smaller if smaller >= MIN_TOP else None


def confirms_end(page: Page, end: ListEnd) -> bool:
    """Whether `page`, read at `end.skip`, shows the list really ended there: it holds only the
    overlap row (nothing, after a one-row list). Anything else (more rows, a shifted list, `$skip`
    ignored) proves nothing."""
    ids, elements = page
    if not end.overlap:
        return not elements
    if len(elements) != 1:
        return False
    if end.last_id is not None:
        return ids[0] == end.last_id
    return elements[0][1] == end.last_raw
