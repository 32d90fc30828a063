"""What a run knows about one API server's paging (`PagingFacts`, shared by the fetch threads):
the page size to ask for, the longest page the server returned (`PageSizes`, kept in the
database between runs), and the list ends that rules 2-4 of exporter.tapkey.paging took without
a confirming request (`ListEnd`), of which the run confirms some before any removal.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["MIN_TOP", "ListEnd", "PageSizes", "PagingFacts"]

#: Overlapping pages advance by `$top - 1` rows, so `$top` is at least 2.
MIN_TOP = 2


@dataclass(frozen=True, slots=True)
class PageSizes:
    """What is known about one API server's paging; kept in the database between runs."""

    #: The most rows the server returned in one page: a shorter page (short of its `$top` too)
    #: ends a list. None until a page came, and after the server cut a page below it.
    honoured: int | None = None
    #: The largest `$top` the server accepts (learned from a 400); None while none was refused.
    max_top: int | None = None


@dataclass(frozen=True, slots=True)
class ListEnd:
    """A list ended by rule 2 or 3, unconfirmed: enough to confirm it later."""

    rows: int  # rows on its last page (shorter than `top`)
    top: int
    skip: int  # the `$skip` of the confirming request
    overlap: bool  # the confirming page must hold the last row only (else: must be empty)
    last_id: str | None
    last_raw: str
    #: Rule 4's end taken provisionally: a stored id is missing, so only a removal is at stake,
    #: and removals are decided once every list is read (`PagingFacts.to_confirm`).
    provisional: bool = False
    #: Stored ids are missing from the list (by rule 2 or 4): ending it here removes them.
    removes: bool = False


class PagingFacts:
    """The page size to ask for and what the server is known to honour; shared by threads.

    `changed` tells whether anything worth keeping was learned since `learn()`/creation.
    """

    def __init__(self, page_size: int, known: PageSizes | None = None) -> None:
        self._lock = threading.Lock()
        self._page_size = max(MIN_TOP, page_size)
        self._sizes = known or PageSizes()
        self._changed = False
        # Lists ended by rules 2-3, unconfirmed: key -> rows on the last page; and the longest one.
        self._ends: dict[str | None, tuple[ListEnd, object]] = {}
        self._candidate: tuple[str | None, ListEnd, object] | None = None
        # The most rows of one page in this run: the server's cap now is at least that.
        self._longest = 0
        # Whether a list of this run lacked stored ids (a removal is at stake somewhere).
        self._lacking = False

    # -- the facts ---------------------------------------------------------------------------

    def learn(self, known: PageSizes) -> None:
        """Start from what an earlier run learned (from the database)."""
        with self._lock:
            self._sizes, self._changed, self._longest = known, False, 0

    @property
    def sizes(self) -> PageSizes:
        with self._lock:
            return self._sizes

    @property
    def changed(self) -> bool:
        with self._lock:
            return self._changed

    def top(self) -> int:
        """The `$top` to ask for now."""
        with self._lock:
            limit = self._sizes.max_top
            return max(MIN_TOP, min(self._page_size, limit or self._page_size))

    def ends(self, rows: int, top: int) -> bool:
        """Whether a page of `rows` at `$top=top` ends a list by the known page size (rule 2):
        the server has returned more rows than that in one page, and fewer than `top` came."""
        with self._lock:
            honoured = self._sizes.honoured
            return rows < top and honoured is not None and rows < honoured

    def page_seen(self, rows: int) -> None:
        """A page of `rows` rows came back in one answer: the server returns pages that long."""
        with self._lock:
            self._longest = max(self._longest, rows)
            honoured = self._sizes.honoured
            if rows > 0 and (honoured is None or honoured < rows):
                self._set(PageSizes(rows, self._sizes.max_top))

    def stepped_down(self, refused: int, top: int) -> None:
        """`$top=refused` got a 400 and `$top=top` an answer: the server's maximum is below
        `refused` (a 400 for another reason would have come back at `top` too)."""
        with self._lock:
            sizes = self._sizes
            if sizes.max_top is not None and sizes.max_top <= top:
                return  # another thread stepped down as far already
            honoured = sizes.honoured
            if honoured is not None and honoured >= refused:
                honoured = None  # what it honoured before, it refuses now
            self._set(PageSizes(honoured, top))

    def capped(self, rows: int) -> None:
        """The server cut a page to `rows` rows although more followed: forget the size it
        returned before, and ask for pages of `rows` from now on, so that a full page shows
        that more follow."""
        with self._lock:
            max_top = self._sizes.max_top
            self._set(PageSizes(None, max(MIN_TOP, min(rows, max_top or rows))))

    def _set(self, sizes: PageSizes) -> None:
        self._sizes, self._changed = sizes, True

    # -- lists ended by the known page size --------------------------------------------------

    def ended(self, key: str | None, end: ListEnd, request: object = None) -> None:
        """Note a list ended by rule 2 or 3 (`key`: the owner id, None for the owner list;
        `request`: whatever the caller needs to ask for the list again)."""
        with self._lock:
            self._ends[key] = (end, request)
            if self._candidate is None or end.rows > self._candidate[1].rows:
                self._candidate = (key, end, request)

    def candidate(self) -> tuple[str | None, ListEnd, object] | None:
        """The unconfirmed end to confirm: the longest last page (a new cap cuts it first)."""
        with self._lock:
            return self._candidate

    def ended_at_least(self, rows: int) -> set[str | None]:
        """Keys of the lists ended by rules 2-3 on a last page of at least `rows` rows."""
        with self._lock:
            return {key for key, (end, _) in self._ends.items() if end.rows >= rows}

    def lacked_stored(self) -> None:
        """A list of this run ended without some of its stored ids: they are to be removed."""
        with self._lock:
            self._lacking = True

    def to_confirm(self) -> list[tuple[str | None, ListEnd, object]]:
        """The ends to confirm once every list is read: the longest (the one check per run)
        and each end that removes stored rows unless a longer page of this run proves it; and
        while any list lacks stored ids, every end as long as the longest page of this run.

        The size the server honoured in earlier runs ends such a list (rule 2), but only a page
        of this run shows the cap now: a server that starts to cut pages at the length of a list
        that really ends there would pass the one check, and every other list cut to that length
        would lose its tail to removals. A list that removes nothing of its own is at stake too
        once anything is to be removed: a row missing from one list (a lock moved to another
        owner) may sit in the cut tail of another. Without removals (most runs) none is.
        """
        with self._lock:
            honoured = self._sizes.honoured or 0
            chosen = [
                (key, end, request)
                for key, (end, request) in self._ends.items()
                if (end.removes or self._lacking)
                and (end.rows >= self._longest or (end.provisional and end.rows >= honoured))
            ]
            if self._candidate is not None and self._candidate[0] not in {c[0] for c in chosen}:
                chosen.insert(0, self._candidate)
            return chosen

    def forget_ends(self) -> None:
        """Start a new run's record of unconfirmed ends."""
        with self._lock:
            self._ends.clear()
            self._candidate = None
            self._lacking = False
