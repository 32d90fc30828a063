"""The database contract: tables and views that BI users query by name.

Every timestamp is UTC with microseconds: `timestamptz` on PostgreSQL, `DATETIME(6)` holding UTC on
MariaDB/MySQL, and ISO-8601 text in one fixed format (`2026-01-31T12:00:00.000000Z`) on SQLite, so
that text comparison orders correctly. Ids compare case-sensitively everywhere (binary collation on
MariaDB/MySQL, which compare case-insensitively by default).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.types import TypeEngine

from exporter.db.descriptions import COLUMN_COMMENTS, CURRENT_LOCK_COLUMNS, TABLE_COMMENTS
from exporter.kinds import ChangeType, RemovalReason, RunStatus

SQLITE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

LOCK_TRACKED = (
    "owner_account_id",
    "title",
    "description",
    "physical_lock_id",
    "lock_type_id",
    "lock_model_name",
    "manufacturer_id",
    "active",
    "bind_date",
    "unbind_date",
    "target_type",
)
OWNER_TRACKED = ("name", "active")
# Access data (issue 15): the owner comes from the URL, as for locks.
CONTACT_TRACKED = ("owner_account_id", "ip_id", "identifier", "title", "comment")
CARD_TRACKED = (
    "owner_account_id",
    "title",
    "label",
    "uid",
    "physical_card_id",
    "is_active",
    "bind_date",
    "unbind_date",
    "nof_grants_capacity",
)
GRANT_TRACKED = (
    "owner_account_id",
    "bound_lock_id",
    "contact_id",
    "bound_card_id",
    "validity_from",
    "validity_before",
    "time_restriction_ical",
    "state",
    "active",
)
CHANGE_TYPES = tuple(ChangeType)
REMOVAL_REASONS = tuple(RemovalReason)
RUN_STATUSES = tuple(RunStatus)
RUN_TRIGGERS = ("manual", "schedule", "demo")


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


def _id(length: int = 64) -> TypeEngine[str]:
    """VARCHAR with case-sensitive comparison on every database (ids, Base64 lock ids)."""
    return String(length).with_variant(
        mysql.VARCHAR(length, collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def _long_text() -> TypeEngine[str]:
    """Text for values from the API: MySQL's TEXT stops at 64 KiB, MEDIUMTEXT at 16 MiB, which
    holds the longest element the exporter stores (records.MAX_ELEMENT_BYTES)."""
    return Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def _json() -> TypeEngine[Any]:
    return JSON().with_variant(postgresql.JSONB(), "postgresql")


NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)
_MYSQL: dict[str, Any] = {"mysql_charset": "utf8mb4", "mariadb_charset": "utf8mb4"}


def _lock_attributes() -> list[Column[Any]]:
    return [
        Column("owner_account_id", _id(), nullable=False),
        Column("title", _long_text()),
        Column("description", _long_text()),
        Column("physical_lock_id", _id(255)),
        Column("lock_type_id", String(255)),
        Column("lock_model_name", String(255)),
        Column("manufacturer_id", Integer()),
        Column("active", Boolean()),
        Column("bind_date", UTCDateTime()),
        Column("unbind_date", UTCDateTime()),
        Column("target_type", String(64)),
    ]


def _version_columns(run_table: str) -> list[Column[Any]]:
    return [
        Column("valid_from", UTCDateTime(), nullable=False),
        Column("valid_to", UTCDateTime()),
        Column("change_type", String(16), nullable=False),
        Column("changed_fields", _json()),
        Column("removal_reason", String(16)),
        Column("run_id", Integer(), ForeignKey(f"{run_table}.id"), nullable=False),
    ]


CHANGE_COUNTS = ("created", "updated", "removed", "restored", "unchanged", "skipped")


def _count_columns() -> list[Column[int]]:
    return [
        Column(name, Integer(), nullable=False, default=0)
        for name in ("locks_seen", *CHANGE_COUNTS)
    ]


sync_runs = Table(
    "sync_runs",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("status", String(16), nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("owners_seen", Integer(), nullable=False, default=0),
    *_count_columns(),
    Column("api_requests", Integer(), nullable=False, default=0),
    Column("error", _long_text()),
    Column("client_id", String(255)),
    Index(None, "status"),
    Index(None, "started_at"),
    **_MYSQL,
)

sync_run_owners = Table(
    "sync_run_owners",
    metadata,
    Column("run_id", Integer(), ForeignKey("sync_runs.id"), primary_key=True),
    Column("owner_account_id", _id(), primary_key=True),
    Column("status", String(16), nullable=False),
    *_count_columns(),
    Column("fetched_at", UTCDateTime()),
    Column("error", _long_text()),
    Index(None, "owner_account_id", "status"),
    **_MYSQL,
)

owner_accounts = Table(
    "owner_accounts",
    metadata,
    Column("id", _id(), primary_key=True),
    Column("name", _long_text()),
    Column("active", Boolean()),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime()),
    Column("removed_at", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False),
    **_MYSQL,
)

owner_account_versions = Table(
    "owner_account_versions",
    metadata,
    Column("version_id", Integer(), primary_key=True, autoincrement=True),
    Column("id", _id(), nullable=False),
    Column("name", _long_text()),
    Column("active", Boolean()),
    *_version_columns("sync_runs"),
    Index(None, "id", "valid_from"),
    Index(None, "valid_from"),
    Index(None, "run_id"),
    **_MYSQL,
)

bound_locks = Table(
    "bound_locks",
    metadata,
    Column("id", _id(), primary_key=True),
    *_lock_attributes(),
    Column("lock_id_hex", String(255)),
    Column("rcl_serial_no", Integer()),
    Column("rcl_date", UTCDateTime()),
    Column("raw", _long_text()),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("removed_at", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False),
    # With removed_at: present locks per owner are counted from the index alone.
    Index(None, "owner_account_id", "removed_at"),
    Index(None, "lock_id_hex"),
    **_MYSQL,
)

bound_lock_versions = Table(
    "bound_lock_versions",
    metadata,
    Column("version_id", Integer(), primary_key=True, autoincrement=True),
    Column("id", _id(), nullable=False),
    *_lock_attributes(),
    *_version_columns("sync_runs"),
    Index(None, "id", "valid_from"),
    Index(None, "valid_from"),
    Index(None, "run_id"),
    **_MYSQL,
)


def _contact_attributes() -> list[Column[Any]]:
    return [
        Column("owner_account_id", _id(), nullable=False),
        Column("ip_id", String(255)),
        Column("identifier", _id(255)),
        Column("title", _long_text()),
        Column("comment", _long_text()),
    ]


def _card_attributes() -> list[Column[Any]]:
    return [
        Column("owner_account_id", _id(), nullable=False),
        Column("title", _long_text()),
        Column("label", String(255)),
        Column("uid", _id(255)),
        Column("physical_card_id", _id(255)),
        Column("is_active", Boolean()),
        Column("bind_date", UTCDateTime()),
        Column("unbind_date", UTCDateTime()),
        Column("nof_grants_capacity", Integer()),
    ]


def _grant_attributes() -> list[Column[Any]]:
    return [
        Column("owner_account_id", _id(), nullable=False),
        Column("bound_lock_id", _id()),
        Column("contact_id", _id()),
        Column("bound_card_id", _id()),
        Column("validity_from", UTCDateTime()),
        Column("validity_before", UTCDateTime()),
        Column("time_restriction_ical", _long_text()),
        Column("state", String(32)),
        Column("active", Boolean()),
    ]


def _current_columns() -> list[Column[Any]]:
    return [
        Column("raw", _long_text()),
        Column("first_seen_at", UTCDateTime(), nullable=False),
        Column("removed_at", UTCDateTime()),
        Column("updated_at", UTCDateTime(), nullable=False),
    ]


contacts = Table(
    "contacts",
    metadata,
    Column("id", _id(), primary_key=True),
    *_contact_attributes(),
    *_current_columns(),
    Index(None, "owner_account_id", "removed_at"),
    **_MYSQL,
)

contact_versions = Table(
    "contact_versions",
    metadata,
    Column("version_id", Integer(), primary_key=True, autoincrement=True),
    Column("id", _id(), nullable=False),
    *_contact_attributes(),
    *_version_columns("sync_runs"),
    Index(None, "id", "valid_from"),
    Index(None, "valid_from"),
    Index(None, "run_id"),
    **_MYSQL,
)

bound_cards = Table(
    "bound_cards",
    metadata,
    Column("id", _id(), primary_key=True),
    *_card_attributes(),
    *_current_columns(),
    Index(None, "owner_account_id", "removed_at"),
    **_MYSQL,
)

bound_card_versions = Table(
    "bound_card_versions",
    metadata,
    Column("version_id", Integer(), primary_key=True, autoincrement=True),
    Column("id", _id(), nullable=False),
    *_card_attributes(),
    *_version_columns("sync_runs"),
    Index(None, "id", "valid_from"),
    Index(None, "valid_from"),
    Index(None, "run_id"),
    **_MYSQL,
)

grants = Table(
    "grants",
    metadata,
    Column("id", _id(), primary_key=True),
    *_grant_attributes(),
    *_current_columns(),
    Index(None, "owner_account_id", "removed_at"),
    Index(None, "bound_lock_id"),
    Index(None, "contact_id"),
    Index(None, "bound_card_id"),
    **_MYSQL,
)

grant_versions = Table(
    "grant_versions",
    metadata,
    Column("version_id", Integer(), primary_key=True, autoincrement=True),
    Column("id", _id(), nullable=False),
    *_grant_attributes(),
    *_version_columns("sync_runs"),
    Index(None, "id", "valid_from"),
    Index(None, "valid_from"),
    Index(None, "run_id"),
    Index(None, "bound_lock_id", "valid_from"),
    Index(None, "contact_id", "valid_from"),
    **_MYSQL,
)

# A date dimension, filled once by migration 0002: it lets the daily_inventory view walk days in
# plain SQL (date arithmetic differs between the three databases; comparisons do not).
CALENDAR_FIRST_DAY = date(2020, 1, 1)
CALENDAR_LAST_DAY = date(2099, 12, 31)
calendar_days = Table(
    "calendar_days",
    metadata,
    Column("day", Date(), primary_key=True),
    Column("day_start", UTCDateTime(), nullable=False),
    Column("day_end", UTCDateTime(), nullable=False),
    Index(None, "day_end"),
    **_MYSQL,
)

HEALTH_TYPES = ("BatteryVoltage", "Temperature", "BatteryWarningLevel")
lock_health_readings = Table(
    "lock_health_readings",
    metadata,
    Column("reading_id", Integer(), primary_key=True, autoincrement=True),
    Column("bound_lock_id", _id(), nullable=False),
    Column("physical_lock_id", _id(255)),
    Column("type", String(64), nullable=False),
    Column("reading_at", UTCDateTime(), nullable=False),
    Column("value", String(255)),
    Column("value_number", Double()),
    Column("value_status", String(32)),
    Column("api_reading_id", String(64)),
    Column("seen_at", UTCDateTime(), nullable=False),
    Column("run_id", Integer(), ForeignKey("sync_runs.id"), nullable=False),
    UniqueConstraint("bound_lock_id", "type", "reading_at"),
    Index(None, "reading_at"),
    Index(None, "run_id"),
    **_MYSQL,
)

# One row per API server: what its paging is known to do (exporter.tapkey.paging.PageSizes).
api_paging = Table(
    "api_paging",
    metadata,
    Column("api_url", String(255), primary_key=True),
    Column("honoured_page_size", Integer()),
    Column("max_top", Integer()),
    Column("updated_at", UTCDateTime(), nullable=False),
    **_MYSQL,
)


# Log entries are events, not state: appended once, never versioned (see exporter.sync.log_entries).
log_entries = Table(
    "log_entries",
    metadata,
    Column("owner_account_id", _id(), primary_key=True),
    Column("id", _id(), primary_key=True),
    Column("entry_no", BigInteger()),
    Column("lock_timestamp", UTCDateTime()),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("bound_lock_id", _id()),
    Column("bound_card_id", _id()),
    Column("contact_id", _id()),
    Column("log_type", String(255)),
    Column("command", String(255)),
    Column("raw", _long_text()),
    Column("run_id", Integer(), ForeignKey("sync_runs.id"), nullable=False),
    # Per lock over time: the openings view, `exporter log --lock`.
    Index(None, "bound_lock_id", "lock_timestamp"),
    # Retention and `exporter log --since` go by lockTimestamp.
    Index(None, "lock_timestamp"),
    Index(None, "run_id"),
    **_MYSQL,
)

# Where each owner's log was read up to: moved in the transaction that stores the entries it covers.
log_entry_watermarks = Table(
    "log_entry_watermarks",
    metadata,
    Column("owner_account_id", _id(), primary_key=True),
    Column("received_at", UTCDateTime()),
    Column("last_id", _id()),
    Column("list_position", Integer()),
    Column("filter_refused_at", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("run_id", Integer(), ForeignKey("sync_runs.id"), nullable=False),
    **_MYSQL,
)


def _attach_comments() -> None:
    """Give every table and column its description (stored where the database supports it)."""
    for table in metadata.sorted_tables:
        table.comment = TABLE_COMMENTS[table.name]
        for column in table.columns:
            column.comment = COLUMN_COMMENTS[table.name][column.name]


_attach_comments()

_LOCK_VIEW_COLUMNS = ", ".join(f"l.{c}" for c in CURRENT_LOCK_COLUMNS)

# Plain SQL that PostgreSQL, MariaDB/MySQL and SQLite all accept unchanged.
VIEWS: dict[str, str] = {
    "current_bound_locks": (
        f"SELECT {_LOCK_VIEW_COLUMNS}, o.name AS owner_name "
        "FROM bound_locks l LEFT JOIN owner_accounts o ON o.id = l.owner_account_id "
        "WHERE l.removed_at IS NULL"
    ),
    "bound_lock_changes": (
        "SELECT v.version_id, v.id AS bound_lock_id, v.change_type, v.changed_fields, "
        "v.removal_reason, v.valid_from AS changed_at, v.valid_to, v.run_id, "
        "r.trigger AS run_trigger, r.status AS run_status, "
        "v.owner_account_id, o.name AS owner_name, v.title, v.description, "
        "v.physical_lock_id, v.lock_type_id, v.lock_model_name, v.manufacturer_id, v.active, "
        "v.bind_date, v.unbind_date, v.target_type "
        "FROM bound_lock_versions v JOIN sync_runs r ON r.id = v.run_id "
        "LEFT JOIN owner_accounts o ON o.id = v.owner_account_id"
    ),
}

# The previous version of a lock version is the one of the same lock that ended when it began
# (versions are contiguous). A self-join says that in plain SQL, and unlike LAG() it lets a filter
# on changed_at reach the index instead of numbering every version first.
_PREVIOUS = "p.id = v.id AND p.valid_to = v.valid_from"
# The customer-facing hex id is kept on bound_locks for the lock's current physical id only.
_HEX = "CASE WHEN l.physical_lock_id = {0}.physical_lock_id THEN l.lock_id_hex END"
_SAME_HOLDING = (
    "{0}.owner_account_id = s.owner_account_id "
    "AND COALESCE({0}.physical_lock_id, '') = COALESCE(s.physical_lock_id, '')"
)

VIEWS.update(
    {
        "bound_lock_change_feed": (
            "SELECT v.version_id, p.version_id AS previous_version_id, v.id AS bound_lock_id, "
            f"{_HEX.format('v')} AS lock_id_hex, v.valid_from AS changed_at, v.run_id, "
            "v.change_type, v.changed_fields, v.removal_reason, "
            "po.name AS old_owner_name, o.name AS new_owner_name, "
            + ", ".join(f"p.{f} AS old_{f}, v.{f} AS new_{f}" for f in LOCK_TRACKED)
            + " FROM bound_lock_versions v "
            f"LEFT JOIN bound_lock_versions p ON {_PREVIOUS} "
            "LEFT JOIN bound_locks l ON l.id = v.id "
            "LEFT JOIN owner_accounts o ON o.id = v.owner_account_id "
            "LEFT JOIN owner_accounts po ON po.id = p.owner_account_id"
        ),
        "lock_binding_history": (
            "SELECT h.physical_lock_id, h.lock_id_hex, h.bound_lock_id, h.owner_account_id, "
            "o.name AS owner_name, h.held_from, h.held_to, "
            "CASE WHEN e.change_type = 'removed' THEN e.removal_reason "
            "WHEN e.owner_account_id <> h.owner_account_id THEN 'moved' "
            "WHEN e.version_id IS NOT NULL THEN 'physical_lock_changed' END AS end_reason, "
            "h.bind_date, h.title "
            "FROM (SELECT s.physical_lock_id, "
            f"{_HEX.format('s')} AS lock_id_hex, "
            "s.id AS bound_lock_id, s.owner_account_id, s.valid_from AS held_from, s.bind_date, "
            "s.title, (SELECT MIN(n.valid_from) FROM bound_lock_versions n "
            "WHERE n.id = s.id AND n.valid_from > s.valid_from "
            f"AND (n.change_type = 'removed' OR NOT ({_SAME_HOLDING.format('n')}))) AS held_to "
            "FROM bound_lock_versions s "
            "LEFT JOIN bound_lock_versions p ON p.id = s.id AND p.valid_to = s.valid_from "
            "LEFT JOIN bound_locks l ON l.id = s.id "
            "WHERE s.change_type <> 'removed' AND (p.version_id IS NULL "
            f"OR p.change_type = 'removed' OR NOT ({_SAME_HOLDING.format('p')}))) h "
            "LEFT JOIN bound_lock_versions e "
            "ON e.id = h.bound_lock_id AND e.valid_from = h.held_to "
            "LEFT JOIN owner_accounts o ON o.id = h.owner_account_id"
        ),
        # Present at the day's last instant T = day_end - 1us: valid_from <= T < valid_to.
        "daily_inventory": (
            "SELECT c.day, v.owner_account_id, o.name AS owner_name, v.lock_model_name, "
            "COUNT(*) AS locks "
            "FROM calendar_days c JOIN bound_lock_versions v ON v.valid_from < c.day_end "
            "AND (v.valid_to IS NULL OR v.valid_to >= c.day_end) "
            "LEFT JOIN owner_accounts o ON o.id = v.owner_account_id "
            "WHERE v.change_type <> 'removed' "
            "AND c.day_end > (SELECT MIN(r.started_at) FROM sync_runs r) "
            "AND c.day_start <= (SELECT MAX(r.started_at) FROM sync_runs r) "
            "GROUP BY c.day, v.owner_account_id, o.name, v.lock_model_name"
        ),
        # An opening is a TriggerLock command (Tapkey's own filter for openings), counted on the
        # UTC day the lock recorded it (lockTimestamp), not the day Tapkey received it.
        "lock_openings_daily": (
            "SELECT c.day, e.owner_account_id, o.name AS owner_name, e.bound_lock_id, "
            "l.lock_id_hex, l.title, COUNT(*) AS openings, "
            "MIN(e.lock_timestamp) AS first_opening_at, MAX(e.lock_timestamp) AS last_opening_at "
            "FROM log_entries e JOIN calendar_days c ON c.day_start <= e.lock_timestamp "
            "AND e.lock_timestamp < c.day_end "
            "LEFT JOIN bound_locks l ON l.id = e.bound_lock_id "
            "LEFT JOIN owner_accounts o ON o.id = e.owner_account_id "
            "WHERE e.log_type = 'Command' AND e.command = 'TriggerLock' "
            "GROUP BY c.day, e.owner_account_id, o.name, e.bound_lock_id, l.lock_id_hex, l.title"
        ),
        "current_lock_health": (
            "SELECT h.bound_lock_id, l.lock_id_hex, l.title, l.owner_account_id, "
            "o.name AS owner_name, h.type, h.value, h.value_number, h.value_status, "
            "h.reading_at, h.seen_at "
            "FROM lock_health_readings h JOIN bound_locks l ON l.id = h.bound_lock_id "
            "LEFT JOIN owner_accounts o ON o.id = l.owner_account_id "
            "WHERE l.removed_at IS NULL AND h.reading_at = (SELECT MAX(x.reading_at) "
            "FROM lock_health_readings x WHERE x.bound_lock_id = h.bound_lock_id "
            "AND x.type = h.type)"
        ),
    }
)

# Access data (issue 15). A grant goes to a contact or to a card: both are joined, one is NULL.
_GRANT_HOLDER_JOINS = (
    "LEFT JOIN owner_accounts o ON o.id = g.owner_account_id "
    "LEFT JOIN bound_locks l ON l.id = g.bound_lock_id "
    "LEFT JOIN contacts c ON c.id = g.contact_id "
    "LEFT JOIN bound_cards k ON k.id = g.bound_card_id"
)
VIEWS.update(
    {
        "current_grants": (
            "SELECT g.id AS grant_id, g.owner_account_id, o.name AS owner_name, "
            "g.bound_lock_id, l.title AS lock_title, l.lock_id_hex, "
            "g.contact_id, c.title AS contact_title, c.identifier AS contact_identifier, "
            "g.bound_card_id, k.title AS card_title, k.label AS card_label, "
            "g.validity_from, g.validity_before, g.time_restriction_ical, g.state, g.active, "
            "g.first_seen_at, g.updated_at "
            f"FROM grants g {_GRANT_HOLDER_JOINS} WHERE g.removed_at IS NULL"
        ),
        "grant_changes": (
            "SELECT g.version_id, g.id AS grant_id, g.change_type, g.changed_fields, "
            "g.removal_reason, g.valid_from AS changed_at, g.valid_to, g.run_id, "
            "g.owner_account_id, o.name AS owner_name, g.bound_lock_id, l.title AS lock_title, "
            "g.contact_id, c.title AS contact_title, g.bound_card_id, k.title AS card_title, "
            "g.validity_from, g.validity_before, g.time_restriction_ical, g.state, g.active "
            f"FROM grant_versions g {_GRANT_HOLDER_JOINS}"
        ),
        # Which physical lock a grant's bound lock id stood for, and when (lock_binding_history).
        "grant_lock_bindings": (
            "SELECT g.id AS grant_id, g.state, g.removed_at AS grant_removed_at, g.contact_id, "
            "g.bound_card_id, h.bound_lock_id, h.physical_lock_id, h.lock_id_hex, "
            "h.owner_account_id, h.owner_name, h.held_from, h.held_to, h.end_reason, "
            "h.title AS lock_title "
            "FROM grants g JOIN lock_binding_history h ON h.bound_lock_id = g.bound_lock_id"
        ),
    }
)

# At most one open version per entity, enforced where the database has partial indexes (MariaDB and
# MySQL do not; there the single-writer lock and the engine's transactions keep the invariant).
OPEN_VERSION_INDEXES = tuple(
    Index(
        f"uq_{table.name}_open",
        table.c.id,
        unique=True,
        postgresql_where=table.c.valid_to.is_(None),
        sqlite_where=table.c.valid_to.is_(None),
    ).ddl_if(dialect=("postgresql", "sqlite"))  # type: ignore[arg-type]  # tuples are documented
    for table in (
        owner_account_versions,
        bound_lock_versions,
        contact_versions,
        bound_card_versions,
        grant_versions,
    )
)
