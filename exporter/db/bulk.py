"""Bulk inserts: one driver call for many rows (executemany, or COPY on PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

from sqlalchemy import Connection, Dialect, Table, bindparam, insert, text
from sqlalchemy.exc import DBAPIError


@dataclass(frozen=True)
class _InsertPlan:
    sql: str  # INSERT in the driver's paramstyle, or COPY on PostgreSQL (psycopg)
    copy: bool
    order: tuple[int, ...] | None  # positional drivers: row indexes in placeholder order
    names: tuple[str, ...]
    convert: tuple[tuple[int, Callable[[Any], Any]], ...]  # column index, bind processor
    copy_types: tuple[int, ...] | None = None  # binary COPY: the columns' type oids
    # SQLite: rows per multi-row INSERT (a power of two), and the placeholders of one row.
    chunk: int = 0
    row_sql: str = ""

    def multi_row_sql(self, rows: int) -> str:
        """The INSERT of `rows` rows (SQLite): the one-row statement with more VALUES groups."""
        return self.sql + f", {self.row_sql}" * (rows - 1)


# SQLite: the most rows one INSERT statement takes (its parameters are bounded too, see below).
_SQLITE_CHUNK = 1024


# Column types whose psycopg binary dumpers take the values the bind processors give (str, bool,
# aware datetime, int, date). Binary COPY costs the client a quarter of text COPY's CPU: text
# format renders every timestamp through isoformat. Any other type (JSONB, whose binary dumper
# would encode an already serialised string again) takes text COPY.
_BINARY_COPY_TYPES = frozenset(
    {"varchar", "text", "bool", "timestamptz", "int2", "int4", "int8", "date"}
)
_COLUMN_TYPES = text(
    "SELECT a.attname, t.typname, t.oid FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
    "WHERE a.attrelid = CAST(:table AS regclass) AND a.attnum > 0 AND NOT a.attisdropped"
)


def _plans(dialect: Dialect) -> dict[tuple[str, tuple[str, ...]], _InsertPlan]:
    """The insert plans built for `dialect`, kept on the dialect itself.

    A plan's bind processors refer to their dialect, so a module-level cache keyed by dialect
    (even a WeakKeyDictionary) kept every disposed engine's dialect alive: `serve` grew by
    ~70 KB with every run that inserted rows. Held by the dialect, they go with its engine.
    """
    plans: dict[tuple[str, tuple[str, ...]], _InsertPlan]
    plans = vars(dialect).setdefault("_exporter_insert_plans", {})
    return plans


def _insert_plan(conn: Connection, table: Table, columns: tuple[str, ...]) -> _InsertPlan:
    dialect = conn.dialect
    plans = _plans(dialect)
    plan = plans.get((table.name, columns))
    if plan is not None:
        return plan
    # The column types' own bind processors: exactly the conversions Core would apply.
    convert = tuple(
        (i, process)
        for i, name in enumerate(columns)
        if (process := table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
    )
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        quote = dialect.identifier_preparer.quote
        target = dialect.identifier_preparer.format_table(table)
        sql = f"COPY {target} ({', '.join(quote(name) for name in columns)}) FROM STDIN"
        types = {row.attname: row for row in conn.execute(_COLUMN_TYPES, {"table": target})}
        if all(types[column].typname in _BINARY_COPY_TYPES for column in columns):
            oids = tuple(types[column].oid for column in columns)
            plan = _InsertPlan(f"{sql} (FORMAT BINARY)", True, None, columns, convert, oids)
        else:
            plan = _InsertPlan(sql, True, None, columns, convert)
    else:
        statement = insert(table).values({name: bindparam(name) for name in columns})
        compiled = statement.compile(dialect=dialect, for_executemany=True)
        order = None
        if compiled.positional:
            assert compiled.positiontup is not None
            order = tuple(columns.index(name) for name in compiled.positiontup)
        plan = _InsertPlan(compiled.string, False, order, columns, convert)
        if dialect.name == "sqlite" and order is not None:
            plan = _sqlite_plan(conn, plan)
    plans[(table.name, columns)] = plan
    return plan


def _sqlite_plan(conn: Connection, plan: _InsertPlan) -> _InsertPlan:
    """The plan with multi-row INSERTs, if the statement ends in its one row of placeholders."""
    row_sql = "(" + ", ".join("?" * len(plan.names)) + ")"
    if not plan.sql.endswith(f"VALUES {row_sql}"):
        return plan
    dbapi_connection: Any = conn.connection.dbapi_connection
    limit = dbapi_connection.getlimit(conn.dialect.loaded_dbapi.SQLITE_LIMIT_VARIABLE_NUMBER)
    chunk = 1
    while chunk * 2 <= min(_SQLITE_CHUNK, limit // len(plan.names)):
        chunk *= 2
    return _InsertPlan(plan.sql, False, plan.order, plan.names, plan.convert, None, chunk, row_sql)


def _insert_sqlite_chunks(conn: Connection, plan: _InsertPlan, rows: Sequence[Any]) -> None:
    """Insert `rows` (in `plan.names` order) with as few multi-row INSERTs as possible.

    sqlite3's executemany lets go of the GIL for every row's step and must win it back: while
    fetch threads parse pages, each row of a first load waited for them (up to the interpreter's
    switch interval). One statement per chunk lets go once per chunk, with the same binding of
    every value. Chunk sizes are powers of two (the remainder too), so the statements are few
    and stay in the driver's statement cache.
    """
    width = len(plan.names)
    values = sqlite_values(plan, rows)
    start, left = 0, len(rows)
    size = plan.chunk
    while left:
        while size > left:
            size //= 2
        sql = plan.multi_row_sql(size)
        conn.exec_driver_sql(sql, tuple(values[start * width : (start + size) * width]))
        start, left = start + size, left - size


def sqlite_values(plan: _InsertPlan, rows: Sequence[Sequence[Any]]) -> list[Any]:
    """Every row's converted values in one list, row after row, in placeholder order: what the
    multi-row INSERTs bind, laid out once (the writer of a first load holds the GIL for this).

    Built column by column with extended slices (C loops), not by rebuilding every row as a
    tuple and chaining the tuples of each chunk.
    """
    width = len(plan.names)
    values = list(chain.from_iterable(rows))
    if len(values) != width * len(rows):
        raise ValueError(f"every row must have {width} values")
    for i, process in plan.convert:
        values[i::width] = converted(values[i::width], process)
    order = plan.order
    if order is not None and order != tuple(range(width)):
        placed: list[Any] = [None] * len(values)
        for position, i in enumerate(order):
            placed[position::width] = values[i::width]
        values = placed
    return values


def converted(column: list[Any], process: Callable[[Any], Any]) -> list[Any]:
    """`process` of every value of a column; once per distinct value where values repeat (an
    owner's timestamps and flags; values that compare equal must convert equally).

    Where most values differ (a first load's bind and RCL dates: 46,620 and 32,676 distinct of
    46,620), hashing them into a dict first cost more than converting each one.
    """
    try:
        distinct = set(column)
    except TypeError:  # unhashable values (a JSON list): convert every one
        return [process(value) for value in column]
    if 2 * len(distinct) > len(column):
        return list(map(process, column))
    done = {value: process(value) for value in distinct}
    return [done[value] for value in column]


def insert_many(
    conn: Connection, table: Table, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
) -> None:
    """INSERT `rows` (tuples in `columns` order) with one bulk call to the driver.

    Core's executemany builds and processes a parameter dict per row, which costs more than the
    database spends storing the row (~20 us a row). This applies the same bind processors
    column by column (once per distinct value where values repeat, `converted`), and hands all
    rows to the driver at once: multi-row INSERTs on SQLite,
    executemany on MariaDB (PyMySQL makes it multi-row), COPY on PostgreSQL (psycopg; binary
    where the column types allow). COPY bypasses Core's execute events.
    """
    if not rows:
        return
    dialect = conn.dialect
    plan = _insert_plan(conn, table, columns)
    if plan.chunk:
        _insert_sqlite_chunks(conn, plan, rows)
        return
    values: Sequence[Sequence[Any]] = rows
    if plan.convert:
        # Column by column, then the rows rebuilt.
        data: list[Sequence[Any]] = list(zip(*rows, strict=True))
        for i, process in plan.convert:
            data[i] = converted(list(data[i]), process)
        values = list(zip(*data, strict=True))
    if plan.copy:
        dbapi = dialect.loaded_dbapi
        cursor: Any = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor, cursor.copy(plan.sql) as copy:
                if plan.copy_types:
                    copy.set_types(plan.copy_types)
                for row in values:
                    copy.write_row(row)
        except dbapi.Error as exc:
            # The same wrapper Core raises, so callers see one kind of database error.
            raise DBAPIError.instance(plan.sql, None, exc, dbapi.Error, dialect=dialect) from exc
        return
    if plan.order is None:
        params: list[Any] = [dict(zip(plan.names, row, strict=True)) for row in values]
    elif plan.order == tuple(range(len(columns))):
        params = list(values)
    else:
        order = plan.order
        params = [tuple(row[i] for i in order) for row in values]
    conn.exec_driver_sql(plan.sql, params)
