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

from exporter.db.schema import bound_lock_versions, bound_locks, sync_runs
from exporter.read import formats, render
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
