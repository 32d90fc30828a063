"""Times in `exporter locks --format csv` taken as the driver's text (SQLite, PostgreSQL).

On PostgreSQL the CSV's time columns come as psycopg's text of each timestamptz, turned into
`datetime.isoformat`'s text a column at a time; a column whose text is not in the one expected
form (a fraction of a second with trailing zeros, which PostgreSQL leaves out; a year before
1000) is read as datetimes instead. Either way the CSV is the CSV of the datetimes.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, insert
from sqlalchemy.engine import processors

from exporter.db.schema import bound_lock_versions, bound_locks, sync_runs
from exporter.read import formats, render, streaming
from exporter.read import inventory as report
from exporter.read.asof import AsOf

T0 = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
WHOLE = [T0, None, T0 + timedelta(days=400, seconds=1), T0 + timedelta(microseconds=123456)]


@pytest.mark.parametrize(
    "times",
    [
        pytest.param(WHOLE, id="whole-seconds-and-six-digits"),
        pytest.param([*WHOLE, T0 + timedelta(microseconds=120000)], id="trailing-zeros"),
        pytest.param([*WHOLE, datetime(999, 1, 1, tzinfo=UTC)], id="year-999"),
        pytest.param([None, None], id="null"),
    ],
)
def test_csv_of_times_from_text_is_the_csv_of_their_datetimes(
    engine: Engine, times: list[datetime | None]
) -> None:
    locks = [
        dict(id=f"l-{n}", owner_account_id="o-1", title=f"t{n}", bind_date=t, unbind_date=t)
        for n, t in enumerate(times)
    ]
    with engine.begin() as conn:
        conn.execute(insert(sync_runs), [dict(started_at=T0, status="succeeded", trigger="x")])
        conn.execute(
            insert(bound_locks), [{**lock, "first_seen_at": T0, "updated_at": T0} for lock in locks]
        )
        conn.execute(
            insert(bound_lock_versions),
            [{**lock, "valid_from": T0, "change_type": "created", "run_id": 1} for lock in locks],
        )
    for as_of in (None, AsOf(T0)):
        with report.open_inventory(engine, as_of=as_of, with_owners=False) as found:
            by_columns = io.StringIO()
            render.inventory_csv(found, by_columns)
        with report.open_inventory(engine, as_of=as_of, with_owners=False) as found:
            by_rows = io.StringIO()
            formats.write_csv_tuples(found.locks, render.LOCK_COLUMNS, by_rows)
        assert by_columns.getvalue().count("\n") == len(times) + 1
        assert by_columns.getvalue() == by_rows.getvalue()


STORED = "2026-01-31T12:00:00.000000Z"


def _regex_iso_texts(column: list[str | None]) -> object:
    # The regular expression's check alone (as main had it): the oracle for `_iso_texts`.
    texts = [value or "" for value in column]
    joined = "\x00".join(texts)
    if not streaming._stored_times(joined):
        return [processors.str_to_datetime(value) for value in column]
    return joined.replace(".000000Z", "+00:00").replace("Z", "+00:00").split("\x00")


@pytest.mark.parametrize(
    "column",
    [
        pytest.param([STORED, "2026-12-31T23:59:59.123456Z"], id="stored"),
        pytest.param([STORED, None, "0999-01-01T00:00:00.000100Z"], id="null-and-year-999"),
        pytest.param([STORED, ""], id="empty-text"),
        pytest.param([STORED + STORED, None], id="two-times-in-one-cell"),
        pytest.param([STORED + "\x00" + STORED, STORED], id="separator-in-a-cell"),
        pytest.param([STORED, "\x00"], id="separator-alone"),
        pytest.param([STORED, STORED[:-1]], id="no-zone"),
        pytest.param([STORED, STORED.replace("12", "1x")], id="not-a-digit"),
        pytest.param([STORED, STORED.replace("2026", "٢٠٢٦")], id="arabic-digits"),
        pytest.param([STORED, "2026-01-31 12:00:00.000000Z"], id="space"),
    ],
)
def test_sqlite_time_texts_are_what_the_pattern_gave(column: list[str | None]) -> None:
    # The ASCII shortcut must decide as the regular expression does, every odd cell included.
    try:
        expected = _regex_iso_texts(column)
    except ValueError as error:
        with pytest.raises(type(error)):
            streaming._iso_texts(column)
        return
    assert streaming._iso_texts(column) == expected


def test_sqlite_time_texts_skip_the_pattern_when_all_are_stored_times() -> None:
    # The shortcut (a tenth of the pattern's cost) decides every usual column alone.
    texts = [STORED, "", "0999-01-01T00:00:00.000100Z"]
    assert streaming._ascii_stored_times(texts, "\x00".join(texts))
    for odd in (STORED + STORED, STORED + "\x00", STORED[:-1], STORED.replace("2026", "٢٠٢٦")):
        assert not streaming._ascii_stored_times([odd, ""], odd + "\x00")
