"""Column types that mean the same on every database: UTC timestamps, case-sensitive ids, texts.

Every timestamp is UTC with microseconds: `timestamptz` on PostgreSQL, `DATETIME(6)` holding UTC on
MariaDB/MySQL, and ISO-8601 text in one fixed format (`2026-01-31T12:00:00.000000Z`) on SQLite, so
that text comparison orders correctly. Ids compare case-sensitively everywhere (binary collation on
MariaDB/MySQL, which compare case-insensitively by default).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, String, Text, TypeDecorator
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.types import TypeEngine

SQLITE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime, stored natively where the database can and as fixed text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(27))
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        return _TO_DATABASE.get(dialect.name, _utc_or_none)(value)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """The conversion itself, without TypeDecorator's wrapper around process_bind_param: a
        first load converts three or four instants per lock (a tenth of its writer's CPU)."""
        convert = _TO_DATABASE.get(dialect.name, _utc_or_none)
        impl = self.impl_instance.bind_processor(dialect)
        if impl is None:
            return convert
        return lambda value: impl(convert(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


def _utc(value: datetime) -> datetime:
    tz = value.tzinfo
    if tz is UTC:
        return value
    if tz is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


def _sqlite_text(value: datetime | None) -> str | None:
    """SQLITE_TIME_FORMAT, by %-formatting (isoformat took twice as long, strftime three times;
    and %Y does not pad years before 1000 to four digits)."""
    if value is None:
        return None
    v = _utc(value)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031 (faster than an f-string)
        v.year,
        v.month,
        v.day,
        v.hour,
        v.minute,
        v.second,
        v.microsecond,
    )


def _naive_utc(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value).replace(tzinfo=None)


# What a UTCDateTime value becomes for each database (others: an aware UTC datetime).
_TO_DATABASE: dict[str, Callable[[datetime | None], Any]] = {
    "sqlite": _sqlite_text,
    "mysql": _naive_utc,
    "mariadb": _naive_utc,
}


def id_type(length: int = 64) -> TypeEngine[str]:
    """VARCHAR with case-sensitive comparison on every database (ids, Base64 lock ids)."""
    return String(length).with_variant(
        mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def long_text() -> TypeEngine[str]:
    """Text for values from the API: MySQL's TEXT stops at 64 KiB, MEDIUMTEXT at 16 MiB, which
    holds the longest element the exporter stores (records.MAX_ELEMENT_BYTES)."""
    return Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def json_type() -> TypeEngine[Any]:
    """JSON: JSONB on PostgreSQL."""
    return JSON().with_variant(postgresql.JSONB(), "postgresql")
