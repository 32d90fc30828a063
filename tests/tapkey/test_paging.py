"""The overlapping-`$skip` pager as a state machine over hand-built pages: no server, no HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from exporter.errors import ApiError, PagingError
from exporter.tapkey.paging import (
    ListEnd,
    Page,
    PageSizes,
    PagingFacts,
    TopRejected,
    confirms_end,
    read_list,
    smaller_top,
)

TOP = 4


def _raw(lock_id: str) -> str:
    return json.dumps({"id": lock_id})


@dataclass
class FakeList:
    """A list served the way an OData server pages it, with the misbehaviours to test."""

    ids: list[str]
    cap: int | None = None  # silently return at most this many rows
    ignore_skip: bool = False
    refuse_above: int | None = None  # HTTP 400 to a larger $top
    state_limit: bool = True  # the 400 names refuse_above
    before: dict[int, Callable[[list[str]], None]] = field(default_factory=dict)
    asked: list[tuple[int, int]] = field(default_factory=list)  # (skip, top) of each request

    def __call__(self, skip: int, top: int) -> Page:
        self.asked.append((skip, top))
        action = self.before.get(len(self.asked))
        if action is not None:
            action(self.ids)  # the list changes just before this request is answered
        if self.refuse_above is not None and top > self.refuse_above:
            limit = self.refuse_above if self.state_limit else None
            raise TopRejected(ApiError("HTTP 400", status=400), limit)
        start = 0 if self.ignore_skip else skip
        size = top if self.cap is None else min(top, self.cap)
        page = self.ids[start : start + size]
        return list(page), [(None, _raw(i)) for i in page]


def ids(n: int, prefix: str = "lock") -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def keep_id(value: Any, lock_id: str | None, raw: str) -> str | None:
    return lock_id


def read(
    server: FakeList, facts: PagingFacts | None = None, **options: Any
) -> tuple[list[str | None], int, ListEnd | None, int | None]:
    facts = facts if facts is not None else PagingFacts(TOP)
    result = read_list(server, facts, keep_id, where="GET /list", **options)
    assert len(server.asked) == result.requests
    return [row for _, row in result.rows], result.requests, result.end, result.capped_at


# -- the number of requests: unknown vs known page size -------------------------------------------


@pytest.mark.parametrize(
    ("size", "unknown", "known", "unconfirmed"),
    [
        pytest.param(0, 1, 1, False, id="empty"),
        pytest.param(1, 2, 1, True, id="one"),
        pytest.param(TOP - 1, 2, 1, True, id="short"),
        pytest.param(TOP, 2, 2, False, id="exactly-a-page"),
        pytest.param(TOP + 1, 2, 2, False, id="page+1"),
        pytest.param(3 * TOP, 4, 4, False, id="3-pages"),
    ],
)
def test_a_known_page_size_saves_the_confirming_request(
    size: int, unknown: int, known: int, unconfirmed: bool
) -> None:
    # Unknown: a short page is confirmed by one more request (today's rule). Known: it ends the
    # list. A list that fills a page teaches the size on its way (exactly-a-page, page+1).
    rows, requests, _, _ = read(FakeList(ids(size)))
    assert rows == ids(size) and requests == unknown
    facts = PagingFacts(TOP, PageSizes(honoured=TOP))
    rows, requests, end, _ = read(FakeList(ids(size)), facts)
    assert rows == ids(size) and requests == known
    # Only a list that ended on the known size alone carries an end to confirm later (a page
    # shorter than an earlier page of the same list proves the end by itself).
    assert (end is not None) is unconfirmed


def test_every_page_teaches_how_long_the_servers_pages_can_be() -> None:
    facts = PagingFacts(TOP)
    _, requests, end, _ = read(FakeList(ids(3)), facts)
    assert requests == 2 and end is None  # nothing known yet: the short page is confirmed
    assert facts.sizes == PageSizes(honoured=3) and facts.changed
    rows, requests, end, _ = read(FakeList(ids(2)), facts)  # shorter than a page it returned
    assert rows == ids(2) and requests == 1 and end is not None
    _, requests, _, _ = read(FakeList(ids(3)), facts)  # as long as the longest: could be a cap
    assert requests == 2


def test_a_short_page_that_lacks_a_stored_id_ends_the_list_provisionally() -> None:
    # Rule 4: only a removal is at stake (the id stored last came, so no tail was cut); the
    # end is confirmed, if still needed, once every list is read.
    facts = PagingFacts(TOP)
    rows, requests, end, _ = read(FakeList(ids(3)), facts, stored=["gone", *ids(3)])
    assert rows == ids(3) and requests == 1
    assert end is not None and end.provisional
    facts.ended("owner", end, request="again")
    assert facts.to_confirm() == [("owner", end, "again")]  # no longer page proves it
    facts.page_seen(4)  # a longer page of another list does
    facts.ended("other", ListEnd(1, TOP, 1, False, "x", ""), request=None)
    assert [key for key, _, _ in facts.to_confirm()] == ["owner"]  # only as the longest


@pytest.mark.parametrize(
    ("stored", "requests", "ended"),
    [
        pytest.param(ids(3), 1, True, id="every-stored-id-came"),
        pytest.param(ids(2), 1, True, id="and-one-new"),
        pytest.param([*ids(3), "gone"], 2, False, id="the-id-stored-last-missing"),
        pytest.param([], 2, False, id="nothing-stored"),
        pytest.param(None, 2, False, id="stored-unknown"),
    ],
)
def test_a_short_page_that_completes_the_stored_list_ends_it(
    stored: list[str] | None, requests: int, ended: bool
) -> None:
    # Rule 3: ending the list there removes nothing. With a stored id missing it would remove
    # it; with nothing stored (a first load) it could miss rows behind a cap: both confirmed.
    rows, sent, end, _ = read(FakeList(ids(3)), stored=stored)
    assert rows == ids(3) and sent == requests and (end is not None) is ended


def test_stored_ids_given_as_a_callable_are_asked_for_once_the_first_page_is_in() -> None:
    # A caller reading them from a database does so while the first request is in flight; a
    # re-read of the list (here: a row inserted while it is paged) asks for them no more.
    def serve() -> FakeList:
        server = FakeList(ids(2 * TOP))
        server.before[2] = lambda rows: rows.insert(0, "new")
        return server

    asked_at: list[int] = []
    late = serve()

    def stored() -> list[str]:
        asked_at.append(len(late.asked))
        return ids(2 * TOP)

    assert read(late, stored=stored) == read(serve(), stored=ids(2 * TOP))
    assert asked_at == [1]


def test_a_larger_page_size_than_known_is_confirmed_until_it_is_proved() -> None:
    facts = PagingFacts(2 * TOP, PageSizes(honoured=TOP))  # [tapkey] page_size raised since
    _, requests, end, _ = read(FakeList(ids(TOP + 1)), facts)
    assert requests == 2 and end is None
    read(FakeList(ids(3 * TOP)), facts)
    assert facts.sizes.honoured == 2 * TOP


# -- servers that cap, ignore $skip, or shift the list ---------------------------------------------


@pytest.mark.parametrize("cap", [2, 3, TOP - 1])
@pytest.mark.parametrize("size", [TOP - 2, 5 * TOP + 1])
def test_a_silent_cap_loses_nothing_and_teaches_nothing(cap: int, size: int) -> None:
    facts = PagingFacts(TOP)
    rows, _, end, capped_at = read(FakeList(ids(size), cap=cap), facts)
    assert rows == ids(size) and end is None
    assert capped_at == (cap if size > cap else None)
    assert facts.sizes == PageSizes(honoured=min(cap, size))  # the longest page it returned


def test_a_cap_below_a_size_known_before_cuts_the_list_and_leaves_an_end_to_confirm() -> None:
    # The risk the one confirmation per run is for: the page looks like the end.
    server = FakeList(ids(10), cap=TOP - 1)
    facts = PagingFacts(TOP, PageSizes(honoured=TOP))
    rows, requests, end, _ = read(server, facts)
    assert rows == ids(TOP - 1) and requests == 1
    assert end == ListEnd(TOP - 1, TOP, TOP - 2, True, f"lock-{TOP - 2}", _raw(f"lock-{TOP - 2}"))
    assert not confirms_end(server(end.skip, end.top), end)  # the confirming page has more


def test_a_single_row_page_after_a_single_row_server_is_a_shift() -> None:
    with pytest.raises(PagingError, match="kept changing"):
        read(FakeList(ids(3), cap=1), max_restarts=1)


@pytest.mark.parametrize("size", [TOP + 2, 2 * TOP])
def test_an_ignored_skip_fails_at_once(size: int) -> None:
    server = FakeList(ids(size), ignore_skip=True)
    with pytest.raises(PagingError, match=r"ignored \$skip"):
        read(server)
    assert len(server.asked) == 2


def _remove_first(rows: list[str]) -> None:
    del rows[0]


def _insert_first(rows: list[str]) -> None:
    rows.insert(0, "new-first")


def _append(rows: list[str]) -> None:
    rows.append("new-last")


def _remove_last(rows: list[str]) -> None:
    del rows[-1]


@pytest.mark.parametrize(
    ("change", "expected", "requests"),
    [
        pytest.param(_remove_first, ids(10)[1:], 2 + 3, id="removed-before-position"),
        pytest.param(_insert_first, ["new-first", *ids(10)], 2 + 4, id="inserted-before"),
        pytest.param(_append, [*ids(10), "new-last"], 4, id="appended-after"),
        pytest.param(_remove_last, ids(9), 3, id="removed-after"),
    ],
)
def test_a_list_changing_while_paged(
    change: Callable[[list[str]], None], expected: list[str], requests: int
) -> None:
    server = FakeList(ids(10), before={2: change})
    restarts: list[int] = []
    rows, sent, _, _ = read(server, on_restart=restarts.append)
    assert rows == expected and sent == requests
    assert restarts == ([0] if requests > 4 else [])


def test_a_list_that_keeps_shifting_fails() -> None:
    server = FakeList(ids(40))
    server.before = {n: _remove_first for n in range(2, 20, 2)}
    with pytest.raises(PagingError, match="kept changing"):
        read(server, max_restarts=2)
    assert len(server.asked) == 3 * 2


# -- OData's MaxTop: a 400 to a large $top ---------------------------------------------------------


@pytest.mark.parametrize(
    ("refuse_above", "state_limit", "tops"),
    [
        pytest.param(5, True, [16, 5, 5, 5, 5], id="limit-stated"),
        pytest.param(5, False, [16, 8, 4, 4, 4, 4, 4], id="halved"),
        pytest.param(3, False, [16, 8, 4, *[2] * 15], id="down-to-2"),
    ],
)
def test_a_refused_top_steps_down_and_is_kept(
    refuse_above: int, state_limit: bool, tops: list[int]
) -> None:
    facts = PagingFacts(16, PageSizes(honoured=16))  # honoured before: refused now, so forgotten
    server = FakeList(ids(15), refuse_above=refuse_above, state_limit=state_limit)
    rows, _, _, _ = read(server, facts)
    assert rows == ids(15) and [top for _, top in server.asked] == tops
    stepped = tops[-1]
    assert facts.changed and facts.sizes == PageSizes(honoured=stepped, max_top=stepped)
    again = FakeList(ids(1), refuse_above=refuse_above)  # later lists: no 400, no confirmation
    assert read(again, facts)[0] == ids(1) and again.asked == [(0, stepped)]


def test_a_400_for_another_reason_teaches_nothing() -> None:
    facts = PagingFacts(TOP, PageSizes(honoured=TOP))
    server = FakeList(ids(3), refuse_above=0)  # every $top refused
    with pytest.raises(ApiError, match="HTTP 400"):
        read(server, facts)
    assert [top for _, top in server.asked] == [4, 2]
    assert facts.sizes == PageSizes(honoured=TOP) and not facts.changed


@pytest.mark.parametrize(
    ("top", "limit", "expected"),
    [
        (1000, 500, 500),
        (1000, None, 500),
        (1000, 1000, 500),
        (1000, 5000, 500),
        (3, None, None),
        (4, 1, 2),
        (2, None, None),
    ],
)
def test_smaller_top(top: int, limit: int | None, expected: int | None) -> None:
    assert smaller_top(top, limit) == expected


# -- ends to confirm -------------------------------------------------------------------------------


def test_the_longest_unconfirmed_end_is_the_one_to_confirm() -> None:
    facts = PagingFacts(10, PageSizes(honoured=10))
    for key, size in (("a", 3), (None, 7), ("b", 7), ("c", 1)):
        end = ListEnd(size, 10, size - 1, size > 1, f"lock-{size - 1}", "")
        facts.ended(key, end, request=key)
    candidate = facts.candidate()
    assert candidate is not None and candidate[0] is None and candidate[1].rows == 7
    assert facts.ended_at_least(7) == {None, "b"}
    facts.forget_ends()
    assert facts.candidate() is None and facts.ended_at_least(0) == set()


@pytest.mark.parametrize(
    ("longer_page", "confirmed"),
    [
        pytest.param(None, ["a", "b"], id="a-tie-proves-nothing"),
        pytest.param(3, ["a"], id="a-longer-page-proves-the-ends"),
    ],
)
def test_every_end_that_removes_rows_is_confirmed_unless_a_longer_page_proves_it(
    longer_page: int | None, confirmed: list[str]
) -> None:
    # A new silent cap of 2, below the 4 rows learned before. List a really ends at 2 rows (a
    # row stored before was deleted); b is cut to 2. Both end by the known size and tie as the
    # longest: checking a alone found no cap, and b's 3 rows past the cut were removed.
    facts = PagingFacts(TOP, PageSizes(honoured=TOP))
    for key, server, stored in (
        ("a", FakeList(ids(2, "a"), cap=2), ["gone", *ids(2, "a")]),
        ("b", FakeList(ids(5, "b"), cap=2), ids(5, "b")),
    ):
        rows, requests, end, _ = read(server, facts, stored=stored)
        assert rows == ids(2, key) and requests == 1
        assert end is not None and end.removes and not end.provisional
        facts.ended(key, end, request=key)
    if longer_page is not None:
        facts.page_seen(longer_page)  # another list's page this run: the cap is at least that

    assert [key for key, _, _ in facts.to_confirm()] == confirmed
    facts.learn(PageSizes(honoured=TOP))  # the next run knows no page of its own yet
    facts.ended("c", ListEnd(1, TOP, 1, False, "x", "", removes=True), request="c")
    assert "c" in [key for key, _, _ in facts.to_confirm()]


@pytest.mark.parametrize("elsewhere", [False, True], ids=["nothing-removed", "a-list-lacks-ids"])
def test_an_end_that_removes_nothing_is_confirmed_once_another_list_lacks_ids(
    elsewhere: bool,
) -> None:
    # A new silent cap of 3. List a really ends at 3 rows; b is cut to its 3 stored rows, and
    # the lock past the cut moved in from c, which lacks it now. Neither a nor b removes anything
    # of its own, but confirming a alone found no cap and the moved lock was removed from c.
    facts = PagingFacts(TOP, PageSizes(honoured=3))
    for key, server, stored in (
        ("a", FakeList(ids(3, "a"), cap=3), ids(3, "a")),
        ("b", FakeList([*ids(3, "b"), "moved"], cap=3), ids(3, "b")),
    ):
        rows, _, end, _ = read(server, facts, stored=stored)
        assert rows == ids(3, key) and end is not None and not end.removes
        facts.ended(key, end, request=key)
    stored_c = ids(2, "c") + (["moved"] if elsewhere else [])
    read(FakeList(ids(2, "c")), facts, stored=stored_c)

    assert [key for key, _, _ in facts.to_confirm()] == (["a", "b"] if elsewhere else ["a"])


@pytest.mark.parametrize(
    ("before", "cap", "after"),
    [
        pytest.param(PageSizes(honoured=10), 6, PageSizes(max_top=6), id="steps-down"),
        pytest.param(PageSizes(10, max_top=5), 6, PageSizes(max_top=5), id="max-top-lower"),
        pytest.param(PageSizes(10), 1, PageSizes(max_top=2), id="at-least-2"),
    ],
)
def test_a_cap_found_forgets_the_longest_page_and_asks_for_pages_of_the_cap(
    before: PageSizes, cap: int, after: PageSizes
) -> None:
    facts = PagingFacts(10, before)
    facts.capped(cap)
    assert facts.sizes == after and facts.changed and facts.top() == after.max_top


def _end(rows: int, *, overlap: bool = True) -> ListEnd:
    return ListEnd(rows, TOP, rows - 1 if overlap else 1, overlap, f"lock-{rows - 1}", "")


@pytest.mark.parametrize(
    ("page", "end", "confirmed"),
    [
        pytest.param(["lock-2"], _end(3), True, id="only-the-overlap-row"),
        pytest.param(["lock-2", "lock-3"], _end(3), False, id="more-rows"),
        pytest.param(["lock-3"], _end(3), False, id="shifted"),
        pytest.param([], _end(3), False, id="overlap-row-gone"),
        pytest.param([], _end(1, overlap=False), True, id="one-row-list-nothing-after"),
        pytest.param(["lock-0"], _end(1, overlap=False), False, id="one-row-list-grew"),
    ],
)
def test_confirming_an_end(page: list[str], end: ListEnd, confirmed: bool) -> None:
    assert confirms_end((page, [(None, _raw(i)) for i in page]), end) is confirmed
