"""Reading large results in column batches: the values Core would give, the CSV the rows give.

`exporter locks --format csv` writes a million locks from batches of columns taken straight from
the driver (no Row, no LockRow per lock). Those batches must hold exactly the values, and types,
that Core's own rows hold, and the CSV written from them must be byte for byte the CSV written
row by row, formula guard and quoting included.
"""

from __future__ import annotations

import io
import sqlite3
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, String, bindparam, literal_column, select, text
from sqlalchemy.engine import processors
from sqlalchemy.exc import DBAPIError
from support.inventory_data import InventoryDb

from exporter.db.engine import connect, make_engine
from exporter.db.errors import store_error
from exporter.read import asof, formats, render, streaming
from exporter.read import inventory as report
from exporter.read.streaming import stream, stream_columns


@pytest.mark.parametrize("when", ["now", "as-of"])
def test_column_batches_hold_what_cores_rows_hold(inventory_db: InventoryDb, when: str) -> None:
    engine = make_engine(inventory_db.url)
    try:
        at = asof.resolve_as_of(engine, "2", now=datetime.now(UTC)).at if when == "as-of" else None
        with connect(engine) as conn:
            query, holders = report._lock_reads(conn, at, None, True)
            # On SQLite the owner's id and name are given, not selected, and rows sorted here.
            reading = report._reading(conn.dialect.name)
            given = reading.get("given", ())
            expected = [
                (*(owner[name] for name in given), *row)
                for owner in holders
                for row in conn.execute(query, owner)
            ]
            batches = list(stream_columns(conn, query, size=4, params=holders, **reading))
            rows = list(stream(conn, query, holders, **reading))
    finally:
        engine.dispose()

    assert len(expected) > 8
    assert all(len(batch) == len(report.LockRow._fields) for batch in batches)
    # Up to 4 rows a batch (a query's last batch may hold fewer).
    assert all(0 < len(batch[0]) <= 4 for batch in batches)
    assert max(len(batch[0]) for batch in batches) == 4
    streamed = [row for batch in batches for row in zip(*batch, strict=True)]
    assert streamed == expected
    assert [tuple(row) for row in rows] == expected
    # Equal is not enough (1 == True, naive and aware times compare unequal but both exist):
    # each value is of the type Core gives it.
    for got, want in zip(streamed, expected, strict=True):
        assert list(map(type, got)) == list(map(type, want))
        for value, core in zip(got, want, strict=True):
            if isinstance(core, datetime):
                assert value.tzinfo is not None and value.utcoffset() == core.utcoffset()


def test_given_parameters_lead_every_row_of_their_run(engine: Engine) -> None:
    query = select(literal_column("1").label("n"), bindparam("x", type_=String).label("x"))
    params = [{"x": "a", "name": "first"}, {"x": "b", "name": "second"}]
    with connect(engine) as conn:
        batches = list(stream_columns(conn, query, params=params, given=("name", "x")))
        rows = list(stream(conn, query, params, given=("name",)))
    assert [[list(column) for column in batch] for batch in batches] == [
        [["first"], ["a"], [1], ["a"]],
        [["second"], ["b"], [1], ["b"]],
    ]
    assert [tuple(row) for row in rows] == [("first", 1, "a"), ("second", 1, "b")]


# ASCII texts alike but for case, prefixes of each other, and characters below and above the
# letters (space, digits, punctuation, "_", "~"): the order must be SQLite's ORDER BY.
ASCII_TITLES = [
    "b",
    "B",
    "a",
    "A",
    "ab",
    "a b",
    "a",
    "Ab",
    "a-b",
    "a_b",
    "a~",
    "Z",
    "z",
    "",
    "10",
    "9",
]


NON_ASCII = [
    "\u00c4",
    "\u00e4",
    "a\u00e4",
    "A\u00c4",
    "\u00e4b",
    "\u20acuro",
    "zz",
    "\U0001f511 key",
]


@pytest.mark.parametrize(
    "titles",
    [
        ASCII_TITLES,
        [*ASCII_TITLES, None, None],
        [*ASCII_TITLES, *NON_ASCII],
        [*ASCII_TITLES, *NON_ASCII, None],
        [None],
        [*ASCII_TITLES, "a\x00b"],
    ],
    ids=["ascii", "null", "non-ascii", "non-ascii-and-null", "only-null", "nul"],
)
def test_sqlite_text_order_is_sqlites_order_by_or_none(titles: list[str | None]) -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, title TEXT)")
    # Ids in another order than the titles, and titles alike: the id decides between them.
    db.executemany(
        "INSERT INTO t VALUES (?, ?)", [(f"l-{(n * 7) % 101:03}", t) for n, t in enumerate(titles)]
    )
    ordered = db.execute(
        "SELECT id, title FROM t ORDER BY title IS NULL, lower(title), id"
    ).fetchall()
    unordered = db.execute("SELECT id, title FROM t ORDER BY id DESC").fetchall()
    sort = streaming.sqlite_text_order(1, 0)
    if "a\x00b" in titles:
        assert sort(unordered) is None  # read again, ordered by SQLite
    else:
        assert sort(unordered) == ordered
    assert sort([]) == []
    assert sort([(1, "a")]) is None  # an id not text


def test_inventory_csv_from_columns_is_the_csv_from_rows(inventory_db: InventoryDb) -> None:
    engine = make_engine(inventory_db.url)
    try:
        with report.open_inventory(engine, include_removed=True, with_owners=False) as found:
            assert found.columns is not None
            by_columns = io.StringIO()
            render.inventory_csv(found, by_columns)
        with report.open_inventory(engine, include_removed=True, with_owners=False) as found:
            by_rows = io.StringIO()
            formats.write_csv_tuples(found.locks, render.LOCK_COLUMNS, by_rows)
    finally:
        engine.dispose()
    assert by_columns.getvalue().count("\n") > 8
    assert by_columns.getvalue() == by_rows.getvalue()


# Cells that start like a formula, or only seem to once a column's cells are joined.
TRICKY = [
    "=1+1",
    "plain",
    "a\x00=b",  # the join separator, then a formula character: not a formula start
    "\x00",
    "x\x00",
    "\x00+",
    "",
    None,
    "-",
    "tab\tinside",
    "\ttab first",
    'say "hi", then\r\nleave',
    "\rcr first",
    "commas, only, these",  # each character that needs quotes alone in a column
    'a "quote"',
    "line\nfeed",
    "carriage\rreturn",
]


@pytest.mark.parametrize("raw", [False, True], ids=["guarded", "raw"])
@pytest.mark.parametrize("column", range(len(TRICKY)), ids=lambda n: f"with-{n}")
def test_column_csv_is_the_cell_by_cell_csv(column: int, raw: bool) -> None:
    # Each tricky cell alone among harmless ones, first, inside and last (the column-wide
    # shortcuts must not hide it), on every row, then all of them together; every cell must
    # come out as csv_value writes it, quoted by the csv rules.
    tricky, harmless = TRICKY[column], ["ok"] * 4
    alone = [[tricky, *harmless], [*harmless[:2], tricky, *harmless[2:]], [*harmless, tricky]]
    for values in (*alone, [tricky] * 3, TRICKY):
        out = io.StringIO()
        formats.write_csv_columns([[values, list(range(len(values)))]], ("v", "n"), out, raw=raw)
        assert out.getvalue() == "v,n\n" + "".join(
            f"{_field(formats.csv_value(v, raw=raw))},{n}\n" for n, v in enumerate(values)
        )


@pytest.mark.parametrize("raw", [False, True], ids=["guarded", "raw"])
@pytest.mark.parametrize(
    "starts",
    [
        pytest.param(
            {0: "=", 1: "+", 2: "", 40: "\t", 63: "@"}, id="few-formulas-each-changed-alone"
        ),
        pytest.param({n: "-" for n in range(0, 64, 7)}, id="many-formulas-each-cell-tested"),
    ],
)
def test_formula_guard_finds_each_formula_cell(starts: dict[int, str], raw: bool) -> None:
    # A long column (no separator in any cell): the guard must find its cells from the
    # joined text, first and last, next to each other and next to an empty cell.
    values = [
        starts[n] + f"v{n}" if starts.get(n) else ("" if n in starts else f"v{n}")
        for n in range(64)
    ]
    out = io.StringIO()
    formats.write_csv_columns([[values]], ("v",), out, raw=raw)
    assert out.getvalue() == "v\n" + "".join(
        f"{_field(formats.csv_value(v, raw=raw))}\n" for v in values
    )


def _field(text: str) -> str:
    if any(char in text for char in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def test_column_csv_refuses_a_batch_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match="2 columns in a batch, not 3"):
        formats.write_csv_columns([[["a"], [1]]], ("v", "n", "x"), io.StringIO())


def test_column_csv_is_written_batch_by_batch() -> None:
    out = io.StringIO()

    def batches() -> Any:
        for n in range(3):
            # Everything before this batch is already written when it is read.
            assert out.getvalue().count("\n") == 1 + 2 * n
            yield [[f"row {2 * n}", f"row {2 * n + 1}"]]

    formats.write_csv_columns(batches(), ("title",), out)
    assert out.getvalue().splitlines() == ["title"] + [f"row {n}" for n in range(6)]


STORED = ["2026-01-31T12:00:00.000000Z", None, "2026-01-31T12:00:00.120000Z"]


@pytest.mark.parametrize(
    "stored",
    [
        [*STORED, "0999-01-01T00:00:00.000001Z"],
        [None, None],
        ["2026-01-31T12:00:00.000000Z", "2026-01-31 12:00:00"],  # not all in the stored format
    ],
    ids=["stored", "null", "other-format"],
)
def test_sqlite_times_as_text_give_the_csv_of_their_datetimes(stored: list[str | None]) -> None:
    # `locks --format csv` on SQLite turns the stored times into ISO text a column at a time;
    # the CSV must be what the datetimes Core reads give, else (other text) Core's values.
    by_core, by_text = io.StringIO(), io.StringIO()
    parsed = [None if v is None else processors.str_to_datetime(v) for v in stored]
    formats.write_csv_columns([[parsed]], ("t",), by_core)
    formats.write_csv_columns([[streaming._iso_texts(stored)]], ("t",), by_text)
    assert by_text.getvalue() == by_core.getvalue()


def test_sqlite_text_that_is_no_time_fails_as_core_fails() -> None:
    with pytest.raises(ValueError, match="Invalid isoformat string"):
        streaming._iso_texts([*STORED, "2026-01-31T12:00:00.00000Z1"])  # a Z out of place


# A query whose 3,000th row the database cannot make, after the first batch was read.
_FAILING_AT_3000 = {
    "postgresql": "SELECT 1 / (i - 3000) AS n FROM generate_series(1, 5000) AS i",
    "sqlite": "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 5000) "
    "SELECT CASE WHEN n < 3000 THEN n ELSE json_extract('not json', '$') END AS n FROM s",
}


@pytest.mark.parametrize("db_url", list(_FAILING_AT_3000), indirect=True)
def test_a_streamed_read_the_database_ends_fails_as_cores_reads_fail(engine: Engine) -> None:
    # The driver's rows are read past Core: its error mid-stream (a statement_timeout, a
    # cancelled query, a corrupt page) must still be Core's, which every command shows as one
    # line and exit 5, not as a traceback.
    sql = _FAILING_AT_3000[engine.dialect.name]
    query = select(literal_column("n")).select_from(text(f"({sql}) AS failing"))
    read: list[Any] = []
    with connect(engine) as conn, pytest.raises(DBAPIError) as caught:
        read.extend(stream(conn, query))

    assert 0 < len(read) < 3000  # the first batch was read before the error
    assert str(store_error(caught.value, engine)).startswith("a database statement failed")
