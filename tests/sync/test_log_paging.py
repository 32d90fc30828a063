"""The log pager's decisions (sync/log_paging.py) over hand-built rows, without a server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from exporter.errors import PagingError
from exporter.sync.log_paging import (
    MAX_RESTARTS,
    LogEntry,
    LogPager,
    Row,
    Watermark,
    next_watermark,
    parse_entry,
)
from exporter.tapkey.fields import BadValue

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _row(n: int, *, at: int | None = None) -> Row:
    """Entry e<n>, received `at` (default n) minutes after T0."""
    received = T0 + timedelta(minutes=n if at is None else at)
    entry = LogEntry(f"e{n:03d}", n, received, received, "L", None, None, "Command", None, "{}")
    return Row(entry.id, entry)


def _pager(watermark: Watermark | None = None, *, now: datetime = T0) -> LogPager:
    return LogPager(watermark or Watermark(), top=4, now=now, overlap=timedelta(minutes=10))


def test_the_first_request_filters_on_the_watermark_minus_the_overlap() -> None:
    assert _pager().first().params == {
        "$filter": "receivedAt gt 1970-01-01T00:00:00.000000Z",
        "$top": "4",
        "$skip": "0",
    }
    mark = Watermark(T0 + timedelta(minutes=30), "e030")
    assert _pager(mark).first().params["$filter"] == "receivedAt gt 2025-01-01T00:20:00.000000Z"


def test_a_refused_filter_is_not_asked_for_again_within_a_day() -> None:
    mark = Watermark(T0, "e000", list_position=17, filter_refused_at=T0)
    soon = _pager(mark, now=T0 + timedelta(hours=23)).first()
    assert (soon.params, soon.anchor) == ({"$top": "4", "$skip": "16"}, "e000")
    later = _pager(mark, now=T0 + timedelta(days=1)).first()
    assert "$filter" in later.params


@pytest.mark.parametrize(
    ("rows", "ends", "why"),
    [
        pytest.param([], True, "an empty page", id="empty"),
        pytest.param([_row(28), _row(30)], True, "short, ends at the watermark", id="at-mark"),
        pytest.param([_row(30), _row(31)], False, "short, with a new entry", id="new"),
        pytest.param([_row(25), _row(26)], False, "short of the watermark (a cap)", id="capped"),
        pytest.param([_row(n) for n in (27, 28, 29, 30)], False, "a full page", id="full"),
    ],
)
def test_when_a_filtered_read_ends(rows: list[Row], ends: bool, why: str) -> None:
    pager = _pager(Watermark(T0 + timedelta(minutes=30), "e030"))
    decision = pager.page(pager.first(), rows)
    assert (decision.next is None) == ends, why
    if decision.next is not None:  # the next page starts at the last row, which must be first
        assert decision.next.anchor == rows[-1].ident
        assert decision.next.params["$skip"] == str(len(rows) - 1)


def test_pages_overlap_and_a_page_of_only_the_overlap_row_ends_the_read() -> None:
    pager = _pager()
    first = pager.page(pager.first(), [_row(n) for n in range(4)])
    assert first.next is not None
    last = pager.page(first.next, [_row(3)])
    assert (last.rows, last.next) == ([], None)
    assert pager.newest == (T0 + timedelta(minutes=3), "e003")


def test_a_list_that_shifted_is_read_again_then_fails() -> None:
    pager = _pager()
    request = pager.first()
    for _ in range(MAX_RESTARTS):
        decision = pager.page(request, [_row(n) for n in range(4)])
        assert decision.next is not None
        decision = pager.page(decision.next, [_row(9), _row(10)])  # not the overlap row
        assert decision.next is not None and decision.next.skip == 0 and decision.rows == []
        request = decision.next
    decision = pager.page(request, [_row(n) for n in range(4)])
    assert decision.next is not None
    with pytest.raises(PagingError, match="kept changing"):
        pager.page(decision.next, [_row(9)])


def test_a_server_ignoring_skip_fails_at_once() -> None:
    pager = _pager()
    rows = [_row(n) for n in range(4)]
    decision = pager.page(pager.first(), rows)
    assert decision.next is not None
    with pytest.raises(PagingError, match="ignored \\$skip"):
        pager.page(decision.next, rows)


def test_a_stale_position_reads_the_whole_log() -> None:
    mark = Watermark(T0, "e005", list_position=6, filter_refused_at=T0)
    pager = _pager(mark, now=T0 + timedelta(hours=1))
    decision = pager.page(pager.first(), [_row(7), _row(8)])  # e005 is no longer at 6
    assert decision.next is not None
    assert (decision.next.skip, decision.next.anchor, pager.restarts) == (0, None, 0)


def test_the_watermark_waits_for_the_end_of_an_unordered_read() -> None:
    written = Watermark()
    pager = _pager()
    decision = pager.page(pager.first(), [_row(5), _row(2, at=2), _row(6), _row(7)])
    assert not pager.ordered and decision.next is not None
    assert next_watermark(pager, written, done=False) == Watermark(filter_refused_at=None)
    done = next_watermark(pager, written, done=True)
    assert (done.received_at, done.last_id) == (T0 + timedelta(minutes=7), "e007")


def test_a_400_stating_a_limit_asks_for_the_same_page_at_that_size() -> None:
    pager = _pager(Watermark(T0 + timedelta(minutes=30), "e030"))
    decision = pager.page(pager.first(), [_row(n) for n in (27, 28, 29, 30)])
    assert decision.next is not None
    again = pager.refused(decision.next, 3)
    assert again is not None and pager.use_filter
    assert (again.skip, again.anchor, again.filtered) == (3, "e030", True)
    assert again.params == {**decision.next.params, "$top": "3"}
    assert pager.refused(again, None) is None  # half of 3 is below 2: the owner's log fails


def test_a_400_without_a_limit_past_the_first_request_halves_the_top() -> None:
    pager = _pager()
    decision = pager.page(pager.first(), [_row(n) for n in range(4)])
    assert decision.next is not None
    smaller = pager.refused(decision.next, None)
    assert smaller is not None and smaller.filtered and pager.refused_at is None
    assert smaller.params == {**decision.next.params, "$top": "2"}
    follow = pager.page(smaller, [_row(3), _row(4)])  # a page of the new $top is full
    assert follow.next is not None and follow.next.params["$top"] == "2"


def test_a_400_without_a_limit_to_the_first_request_is_a_refused_filter() -> None:
    pager = _pager()
    unfiltered = pager.refused(pager.first(), None)
    assert unfiltered is not None and not unfiltered.filtered
    assert unfiltered.params == {"$top": "4", "$skip": "0"} and pager.refused_at == T0
    pager.answered(unfiltered)
    assert pager.refused_at == T0  # answered at the same $top: the filter it was


def test_a_filter_refusal_that_a_smaller_top_cures_is_not_kept() -> None:
    pager = _pager()
    unfiltered = pager.refused(pager.first(), None)
    assert unfiltered is not None
    smaller = pager.refused(unfiltered, None)  # refused again without the filter: the $top
    assert smaller is not None and smaller.params == {"$top": "2", "$skip": "0"}
    pager.answered(smaller)
    assert pager.refused_at is None
    assert next_watermark(pager, Watermark(), done=True).filter_refused_at is None


def test_a_log_entry_with_a_lone_surrogate_is_a_bad_value() -> None:
    raw = '{"id": "e1", "receivedAt": "2026-01-01T00:00:00Z", "command": "Open\\udc00"}'
    with pytest.raises(BadValue, match=r"^command holds a lone UTF-16 surrogate"):
        parse_entry(json.loads(raw), raw)
