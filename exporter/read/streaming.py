"""Reading large results in constant memory: rows in batches as the database sends them, and
time columns converted by the driver or in C."""

from __future__ import annotations

import contextlib
import functools
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, Connection, DateTime, Select, null, type_coerce
from sqlalchemy.engine import Dialect, processors
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import Compiled
from sqlalchemy.types import TypeEngine

from exporter.db.types import UTCDateTime

__all__ = ["sqlite_text_order", "stream", "stream_columns", "streamed", "streamed_null"]

T = TypeVar("T")

# Rows fetched at a time by a streamed read: memory stays flat, round trips stay few.
_STREAM_BATCH = 2000

# One batch of rows, as its columns (each a sequence of the batch's values, in row order).
Columns = list[Sequence[Any]]
# The values of a query's parameters, by name.
Params = Mapping[str, Any]


def stream(
    conn: Connection,
    query: Select[Any],
    params: Iterable[Params] = ({},),
    *,
    given: Sequence[str] = (),
    sort: Callable[[list[Sequence[Any]]], list[Sequence[Any]] | None] | None = None,
) -> Iterator[Sequence[Any]]:
    """The rows of `query` (sequences of values), read from the database in batches; the query
    runs once for each of `params` (its parameter values), in turn. Each row starts with the
    values of the parameters named `given`; `sort`: see `stream_columns`.

    Inside, no other statement may run on `conn` until the rows are all read.
    """
    dialect = conn.dialect
    batches = _DRIVER_BATCHES.get((dialect.name, dialect.driver))
    if batches is not None and not given and sort is None and not _converters(dialect, query):
        # The driver's rows are already typed (PostgreSQL): no detour through columns.
        for batch in batches(conn, query, params, _STREAM_BATCH):
            yield from batch
        return
    for columns in stream_columns(conn, query, params=params, given=given, sort=sort):
        yield from zip(*columns, strict=True)


def stream_columns(
    conn: Connection,
    query: Select[Any],
    size: int = _STREAM_BATCH,
    params: Iterable[Params] = ({},),
    *,
    times_as_text: bool = False,
    given: Sequence[str] = (),
    sort: Callable[[list[Sequence[Any]]], list[Sequence[Any]] | None] | None = None,
) -> Iterator[Columns]:
    """The rows of `query` in batches of up to `size`, each batch as its columns, the values
    typed as Core types them; the query runs once for each of `params`, in turn (a batch holds
    the rows of one run). With `times_as_text` the times of a SQLite database may come as the
    text `datetime.isoformat` gives them (and NULL as ""), for a writer of text (CSV).

    Each batch starts with a column for each parameter named in `given`, its value on every row
    of the run: a value the same on every row (an owner's id and name) need not pass through
    the database a row at a time (on SQLite that was 0.3 s of CPU a million rows).

    With `sort`, each run reads the rows without the query's ORDER BY and `sort` puts them in
    its order (SQLite's sort of a million locks' rows took more CPU than this); where `sort`
    cannot (it returns None), the run is read again, ordered by the database.

    The driver's rows are taken as they are (no Row per row) and converted a column at a time:
    a million locks pass through without a Python call per row. Inside, no other statement may
    run on `conn` until the batches are all read.
    """
    dialect = conn.dialect
    batches = _DRIVER_BATCHES.get((dialect.name, dialect.driver), _core_batches)
    convert: list[tuple[int, Callable[[Sequence[Any]], Sequence[Any]]]] = []
    if batches is not _core_batches:
        convert = [
            (i, functools.partial(_each, process)) for i, process in _converters(dialect, query)
        ]
    times = {i for i, column in enumerate(query.selected_columns) if _is_time(column)}
    if times_as_text and dialect.name == "sqlite":
        convert = [(i, _iso_texts if i in times else each) for i, each in convert]
    elif times_as_text and dialect.name == "postgresql" and _only_streamed_times(query):
        # psycopg's text of each time, not a datetime: isoformat took 1 us a value.
        batches = functools.partial(_psycopg_batches, text_times=True)
        convert += [(i, _pg_iso_texts) for i in sorted(times)]
    unordered = query if sort is None else query.order_by(None)
    for values in params:
        leading = [values[name] for name in given]
        runs: Iterable[Sequence[Any]] = batches(conn, unordered, (values,), size)
        if sort is not None:
            rows = sort(list(itertools.chain.from_iterable(runs)))
            runs = batches(conn, query, (values,), size) if rows is None else _parts(rows, size)
        for batch in runs:
            columns: Columns = list(zip(*batch, strict=True))
            for i, process_column in convert:
                columns[i] = process_column(columns[i])
            yield [*([value] * len(batch) for value in leading), *columns]


def _parts(rows: list[Sequence[Any]], size: int) -> Iterator[list[Sequence[Any]]]:
    return (rows[start : start + size] for start in range(0, len(rows), size))


def sqlite_text_order(text_at: int, id_at: int) -> Callable[[list[Any]], list[Any] | None]:
    """A `stream_columns` sort: rows in the order of SQLite's `ORDER BY text IS NULL,
    lower(text), id` (columns `text_at`, `id_at`), or None where that is not certain here (a
    NUL in a text, a value neither text nor NULL, an id not text).

    SQLite's lower() folds ASCII letters only, as str.lower does on ASCII text and bytes.lower
    on UTF-8, and SQLite compares text as UTF-8 bytes, that is by code point, as Python
    compares str. Each row's key is its lowered text, a NUL (before any other character) and
    its id, one str, so that the sort compares keys only. NULL texts come last, by id.
    """
    text_of, id_of = itemgetter(text_at), itemgetter(id_at)

    def ordered(rows: list[Any]) -> list[Any] | None:
        texts = list(map(text_of, rows))
        if None in texts:
            named = ordered(
                [row for row, text in zip(rows, texts, strict=True) if text is not None]
            )
            unnamed = [row for row, text in zip(rows, texts, strict=True) if text is None]
            if named is None or not all(isinstance(id_of(row), str) for row in unnamed):
                return None
            return named + sorted(unnamed, key=id_of)
        try:
            joined = _TEXT_SEPARATOR.join(texts)
            if joined.count(_TEXT_SEPARATOR) != len(rows) - 1:
                return None if rows else rows
            # bytes.lower() folds only ASCII letters, which no other character's UTF-8 holds.
            folded = joined.lower() if joined.isascii() else joined.encode().lower().decode()
            lowered = folded.split(_TEXT_SEPARATOR)
            keys = list(map(_TEXT_SEPARATOR.join, zip(lowered, map(id_of, rows), strict=True)))
        except TypeError:  # a value not text
            return None
        return list(map(rows.__getitem__, sorted(range(len(rows)), key=keys.__getitem__)))

    return ordered


def _each(process: Callable[[Any], Any], column: Sequence[Any]) -> list[Any]:
    return list(map(process, column))  # as Core does: None too


def _is_time(column: ColumnElement[Any]) -> bool:
    return isinstance(column.type, _StreamedTime)


# A column of SQLite's stored times (types.SQLITE_TIME_FORMAT) or NULLs (""), joined.
_TEXT_SEPARATOR = "\x00"
_STORED_TIME = r"(?:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)?"
_stored_times = re.compile(f"{_STORED_TIME}(?:{_TEXT_SEPARATOR}{_STORED_TIME})*").fullmatch


def _iso_texts(column: Sequence[str | None]) -> Sequence[Any]:
    """SQLite's stored times as `datetime.isoformat` writes them ("" for NULL), a column at a
    time: parsing each into a datetime and formatting it again took 1.2 us a value, this 0.3.
    A column not all in the stored format is read as Core reads it (datetimes)."""
    if column.count(None) == len(column):
        return [""] * len(column)  # no time (unbind_date, removed_at): nothing to look at
    texts: Sequence[str] = (
        [value or "" for value in column] if None in column else cast(Sequence[str], column)
    )
    joined = _TEXT_SEPARATOR.join(texts)
    if not (_ascii_stored_times(texts, joined) or _stored_times(joined)):
        return _each(processors.str_to_datetime, column)
    # isoformat leaves out a zero fraction of a second.
    joined = joined.replace(".000000Z", "+00:00")
    if "Z" in joined:
        joined = joined.replace("Z", "+00:00")
    return joined.split(_TEXT_SEPARATOR)


# Each stored time with its digits as 0 (bytes.translate: one table lookup a byte).
_STORED_SHAPE = b"0000-00-00T00:00:00.000000Z"
_AS_ZERO = bytes.maketrans(b"123456789", b"0" * 9)


def _ascii_stored_times(texts: Sequence[str], joined: str) -> bool:
    """Whether `joined` (`texts`, each a stored time or "", joined) is all ASCII stored times
    and empty cells: what `_stored_times` matches in ASCII text, checked at a tenth of its cost.

    With the digits as 0, taking out every stored time must leave only the separators, one
    fewer than the cells (so no cell holds one), and the length must be that of one time a
    non-empty cell (so no cell holds two).
    """
    cells = len(texts)
    if not joined.isascii() or joined.count(_TEXT_SEPARATOR) != cells - 1:
        return False
    times = cells - texts.count("")
    if len(joined) != len(_STORED_SHAPE) * times + cells - 1:
        return False
    shape = joined.encode("ascii").translate(_AS_ZERO)
    return shape.replace(_STORED_SHAPE, b"") == _TEXT_SEPARATOR.encode() * (cells - 1)


# PostgreSQL's text of a timestamptz in UTC (DateStyle ISO) when it has no fraction of a second or
# all six digits (it leaves out trailing zeros), or a NULL (""), joined.
_PG_TIME = r"(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{6})?\+00)?"
_pg_times = re.compile(f"{_PG_TIME}(?:{_TEXT_SEPARATOR}{_PG_TIME})*").fullmatch


def _pg_iso_texts(column: Sequence[str | None]) -> Sequence[Any]:
    """psycopg's texts of UTC times as `datetime.isoformat` writes them ("" for NULL), a column
    at a time; a column of other texts (a fraction of a second with trailing zeros left out,
    a year past 9999) is read as datetimes."""
    texts: Sequence[str] = (
        [value or "" for value in column] if None in column else cast(Sequence[str], column)
    )
    joined = _TEXT_SEPARATOR.join(texts)
    if not _pg_times(joined):
        return [None if value is None else datetime.fromisoformat(value) for value in column]
    return joined.replace(" ", "T").replace("+00", "+00:00").split(_TEXT_SEPARATOR)


def _only_streamed_times(query: Select[Any]) -> bool:
    """Whether every time column of `query` is a `_StreamedTime` (text times are for those)."""
    return all(
        _is_time(column) or not isinstance(getattr(column.type, "impl", column.type), DateTime)
        for column in query.selected_columns
    )


def _converters(dialect: Dialect, query: Select[Any]) -> list[tuple[int, Callable[[Any], Any]]]:
    """The columns of `query` Core converts from what the driver returns, with the conversion."""
    return [
        (i, process)
        for i, column in enumerate(query.selected_columns)
        if (process := column.type.dialect_impl(dialect).result_processor(dialect, None))
    ]


def _core_batches(
    conn: Connection, query: Select[Any], params: Iterable[Params], size: int
) -> Iterator[Sequence[Any]]:
    """Core's rows of `query`, `size` at a time, typed by Core: MySQL/MariaDB, read unbuffered
    (PyMySQL's SSCursor)."""
    for values in params:
        result = conn.execution_options(stream_results=True, yield_per=size).execute(query, values)
        with result:
            yield from result.partitions()


def _sqlite_batches(
    conn: Connection, query: Select[Any], params: Iterable[Params], size: int
) -> Iterator[Sequence[Any]]:
    """sqlite3's rows of `query`, `size` at a time, as SQLite steps through them.

    Core compiles (once: it caches the statement), binds and executes; the rows are taken from
    its DBAPI cursor (no stream_results: that would have Core buffer a row ahead of us).
    """
    for values in params:
        result = conn.execute(query, values)
        with result:
            cursor = result.cursor
            batches = iter(functools.partial(cursor.fetchmany, size), [])
            yield from _as_core_errors(conn, result.context.statement, batches)


def _psycopg_batches(
    conn: Connection,
    query: Select[Any],
    params: Iterable[Params],
    size: int,
    *,
    text_times: bool = False,
) -> Iterator[Sequence[Any]]:
    """PostgreSQL rows as the server sends them (psycopg's chunked stream), `size` at a time.

    SQLAlchemy streams through a server-side cursor (DECLARE CURSOR), which PostgreSQL plans
    without parallel workers and for the first rows: sorting a million locks took 2-3x as long
    as the same plain query, whose rows psycopg can read chunk by chunk as they arrive.
    """
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    # Core's bind processors are not applied: the parameters of these queries (text, numbers,
    # aware datetimes) need none on psycopg.
    dbapi: Any = conn.connection.dbapi_connection
    chunks = {"size": size} if _psycopg_pq_version() >= 170000 else {}
    rows = _psycopg_stream(dbapi, compiled, params, size, chunks, text_times=text_times)
    yield from _as_core_errors(conn, compiled.string, rows)


def _as_core_errors(conn: Connection, statement: str, batches: Iterator[T]) -> Iterator[T]:
    """`batches`, read past Core from the driver, with the driver's errors raised as Core raises
    them (a DBAPIError): a statement_timeout, a cancelled query or a lost server mid-stream is
    then a database error of one line and exit 5, as in every other read, not a traceback."""
    dbapi_error: type[Exception] = conn.dialect.loaded_dbapi.Error
    try:
        yield from batches
    except dbapi_error as exc:
        lost = conn.dialect.is_disconnect(cast(Any, exc), conn.connection.dbapi_connection, None)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            statement, None, exc, dbapi_error, connection_invalidated=lost
        ) from exc


def _psycopg_stream(
    dbapi: Any,
    compiled: Compiled,
    params: Iterable[Params],
    size: int,
    chunks: dict[str, int],
    *,
    text_times: bool,
) -> Iterator[Sequence[Any]]:
    with dbapi.cursor() as cursor:
        if text_times:
            from psycopg.types.string import TextLoader

            cursor.adapters.register_loader("timestamptz", TextLoader)
        # Times in UTC from the server: converting each from the server's zone (a ZoneInfo)
        # took more CPU than reading it. Only for this transaction.
        cursor.execute("SET LOCAL TIME ZONE 'UTC'")
        # No JIT: the planner's cost of a million rows makes it compile (with inlining and
        # optimization) expressions that are only comparisons, 0.6-1.5 s before the first row.
        cursor.execute("SET LOCAL jit = off")
        for values in params:
            rows = cursor.stream(compiled.string, compiled.construct_params(values), **chunks)
            with contextlib.closing(rows):
                while batch := list(itertools.islice(rows, size)):
                    yield batch


_DRIVER_BATCHES: dict[
    tuple[str, str],
    Callable[[Connection, Select[Any], Iterable[Params], int], Iterator[Sequence[Any]]],
] = {
    ("sqlite", "pysqlite"): _sqlite_batches,
    ("postgresql", "psycopg"): _psycopg_batches,
}


def _psycopg_pq_version() -> int:
    """The libpq version psycopg uses (chunked streaming needs 17)."""
    import psycopg

    return int(psycopg.pq.version())


class _StreamedTime(TypeEngine[datetime]):
    """A UTC time column of a streamed read, converted by the driver or in C where possible.

    UTCDateTime's processing is a Python call or two per value, None included: for a million
    locks that cost about as much as SQLite's sort. SQLite holds ISO-8601 text ending in Z,
    which SQLAlchemy's C parser turns into an aware datetime; psycopg returns aware times, in
    UTC in `_psycopg_stream`; MySQL/MariaDB naive ones, which are UTC.
    """

    cache_ok = True

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        """The conversion from what the driver returns to an aware UTC datetime."""
        if dialect.name == "sqlite":
            return processors.str_to_datetime  # type: ignore[no-any-return]
        if dialect.name == "postgresql":
            return None
        return _naive_as_utc


def _naive_as_utc(value: datetime | None) -> datetime | None:
    return value if value is None else value.replace(tzinfo=UTC)


def streamed(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """`column`, read as `_StreamedTime` if it holds times."""
    if isinstance(column.type, UTCDateTime):
        return type_coerce(column, _StreamedTime()).label(column.key)
    return column


def streamed_null(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A NULL in place of `column`, typed as `streamed` types it: for a column the query's
    filter leaves NULL on every row (SQLite then neither reads nor computes it)."""
    return streamed(type_coerce(null(), column.type).label(column.key))
