"""The database contract: the tables that BI users query by name (their views: exporter.db.views).

Their column types (UTC timestamps, case-sensitive ids) are in exporter.db.types.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

from exporter.db.descriptions import COLUMN_COMMENTS, TABLE_COMMENTS
from exporter.db.types import UTCDateTime, id_type, json_type, long_text
from exporter.kinds import ChangeType, RemovalReason, RunStatus

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
        Column("owner_account_id", id_type(), nullable=False),
        Column("title", long_text()),
        Column("description", long_text()),
        Column("physical_lock_id", id_type(255)),
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
        Column("changed_fields", json_type()),
        Column("removal_reason", String(16)),
        Column("run_id", Integer(), ForeignKey(f"{run_table}.id"), nullable=False),
    ]


# Per change type, then the locks left as they were and those that could not be read.
CHANGE_COUNTS = (*(kind.value for kind in ChangeType), "unchanged", "skipped")


def _count_columns() -> list[Column[int]]:
    return [
        Column(name, Integer(), nullable=False, default=0)
        for name in ("locks_seen", *CHANGE_COUNTS)
    ]


def _current_columns() -> list[Column[Any]]:
    return [
        Column("raw", long_text()),
        Column("first_seen_at", UTCDateTime(), nullable=False),
        Column("removed_at", UTCDateTime()),
        Column("updated_at", UTCDateTime(), nullable=False),
    ]


def _versions_table(
    name: str, attributes: Callable[[], list[Column[Any]]], *indexes: Sequence[str]
) -> Table:
    """A version table: one row per version of an entity, its attributes as they were then."""
    return Table(
        name,
        metadata,
        Column("version_id", Integer(), primary_key=True, autoincrement=True),
        Column("id", id_type(), nullable=False),
        *attributes(),
        *_version_columns("sync_runs"),
        Index(None, "id", "valid_from"),
        Index(None, "valid_from"),
        Index(None, "run_id"),
        *(Index(None, *columns) for columns in indexes),
        **_MYSQL,
    )


def _entity_tables(
    name: str,
    versions_name: str,
    attributes: Callable[[], list[Column[Any]]],
    *,
    indexes: Sequence[Sequence[str]] = (),
    version_indexes: Sequence[Sequence[str]] = (),
) -> tuple[Table, Table]:
    """An access entity's current table (the payload, first seen, removed) and its versions.

    `attributes` makes the tracked columns afresh for each table (a Column belongs to one table).
    """
    current = Table(
        name,
        metadata,
        Column("id", id_type(), primary_key=True),
        *attributes(),
        *_current_columns(),
        Index(None, "owner_account_id", "removed_at"),
        *(Index(None, *columns) for columns in indexes),
        **_MYSQL,
    )
    return current, _versions_table(versions_name, attributes, *version_indexes)


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
    Column("error", long_text()),
    Column("client_id", String(255)),
    Index(None, "status"),
    Index(None, "started_at"),
    **_MYSQL,
)

sync_run_owners = Table(
    "sync_run_owners",
    metadata,
    Column("run_id", Integer(), ForeignKey("sync_runs.id"), primary_key=True),
    Column("owner_account_id", id_type(), primary_key=True),
    Column("status", String(16), nullable=False),
    *_count_columns(),
    Column("fetched_at", UTCDateTime()),
    Column("error", long_text()),
    Index(None, "owner_account_id", "status"),
    **_MYSQL,
)

owner_accounts = Table(
    "owner_accounts",
    metadata,
    Column("id", id_type(), primary_key=True),
    Column("name", long_text()),
    Column("active", Boolean()),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime()),
    Column("removed_at", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False),
    **_MYSQL,
)

owner_account_versions = _versions_table(
    "owner_account_versions", lambda: [Column("name", long_text()), Column("active", Boolean())]
)

bound_locks = Table(
    "bound_locks",
    metadata,
    Column("id", id_type(), primary_key=True),
    *_lock_attributes(),
    Column("lock_id_hex", String(255)),
    Column("rcl_serial_no", Integer()),
    Column("rcl_date", UTCDateTime()),
    Column("raw", long_text()),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("removed_at", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False),
    # With removed_at: present locks per owner are counted from the index alone.
    Index(None, "owner_account_id", "removed_at"),
    Index(None, "lock_id_hex"),
    **_MYSQL,
)

# With valid_from: an owner's locks at an instant (`exporter locks --as-of`) through its index.
bound_lock_versions = _versions_table(
    "bound_lock_versions", _lock_attributes, ("owner_account_id", "valid_from")
)


def _contact_attributes() -> list[Column[Any]]:
    return [
        Column("owner_account_id", id_type(), nullable=False),
        Column("ip_id", String(255)),
        Column("identifier", id_type(255)),
        Column("title", long_text()),
        Column("comment", long_text()),
    ]


def _card_attributes() -> list[Column[Any]]:
    return [
        Column("owner_account_id", id_type(), nullable=False),
        Column("title", long_text()),
        Column("label", String(255)),
        Column("uid", id_type(255)),
        Column("physical_card_id", id_type(255)),
        Column("is_active", Boolean()),
        Column("bind_date", UTCDateTime()),
        Column("unbind_date", UTCDateTime()),
        Column("nof_grants_capacity", Integer()),
    ]


def _grant_attributes() -> list[Column[Any]]:
    return [
        Column("owner_account_id", id_type(), nullable=False),
        Column("bound_lock_id", id_type()),
        Column("contact_id", id_type()),
        Column("bound_card_id", id_type()),
        Column("validity_from", UTCDateTime()),
        Column("validity_before", UTCDateTime()),
        Column("time_restriction_ical", long_text()),
        Column("state", String(32)),
        Column("active", Boolean()),
    ]


contacts, contact_versions = _entity_tables("contacts", "contact_versions", _contact_attributes)
bound_cards, bound_card_versions = _entity_tables(
    "bound_cards", "bound_card_versions", _card_attributes
)
grants, grant_versions = _entity_tables(
    "grants",
    "grant_versions",
    _grant_attributes,
    indexes=[("bound_lock_id",), ("contact_id",), ("bound_card_id",)],
    version_indexes=[("bound_lock_id", "valid_from"), ("contact_id", "valid_from")],
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
    Column("bound_lock_id", id_type(), nullable=False),
    Column("physical_lock_id", id_type(255)),
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
    Column("owner_account_id", id_type(), primary_key=True),
    Column("id", id_type(), primary_key=True),
    Column("entry_no", BigInteger()),
    Column("lock_timestamp", UTCDateTime()),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("bound_lock_id", id_type()),
    Column("bound_card_id", id_type()),
    Column("contact_id", id_type()),
    Column("log_type", String(255)),
    Column("command", String(255)),
    Column("raw", long_text()),
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
    Column("owner_account_id", id_type(), primary_key=True),
    Column("received_at", UTCDateTime()),
    Column("last_id", id_type()),
    Column("list_position", Integer()),
    Column("filter_refused_at", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("run_id", Integer(), ForeignKey("sync_runs.id"), nullable=False),
    **_MYSQL,
)

# Removals the deletion guard holds back, one row per (entity, owner): what they are judged against
# until they are confirmed or no longer due (exporter.sync.holds). The owner list's hold has
# entity `owners` and owner_account_id ''.
guard_holds = Table(
    "guard_holds",
    metadata,
    Column("entity", String(32), primary_key=True),
    Column("owner_account_id", id_type(), primary_key=True),
    Column("base", Integer(), nullable=False),
    Column("since_run_id", Integer(), ForeignKey("sync_runs.id"), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    **_MYSQL,
)


def _attach_comments() -> None:
    """Give every table and column its description (stored where the database supports it)."""
    for table in metadata.sorted_tables:
        table.comment = TABLE_COMMENTS[table.name]
        for column in table.columns:
            column.comment = COLUMN_COMMENTS[table.name][column.name]


_attach_comments()

# At most one open version per entity, enforced where the database has partial indexes (MariaDB and
# MySQL do not; there the single-writer lock and the engine's transactions keep the invariant).
# Every version table, the owners' first (what a run writes in one place, it writes in all).
VERSION_TABLES = (
    owner_account_versions,
    bound_lock_versions,
    contact_versions,
    bound_card_versions,
    grant_versions,
)

OPEN_VERSION_INDEXES = tuple(
    Index(
        f"uq_{table.name}_open",
        table.c.id,
        unique=True,
        postgresql_where=table.c.valid_to.is_(None),
        sqlite_where=table.c.valid_to.is_(None),
    ).ddl_if(dialect=("postgresql", "sqlite"))  # type: ignore[arg-type]  # tuples are documented
    for table in VERSION_TABLES
)

# InnoDB (MariaDB/MySQL) stores a table's rows in primary key order. There the primary key of
# bound_locks is (owner_account_id, id) (migration 0008), so an owner's locks lie together: with
# `id` alone they lay in random id order, each on a page of its own, and every rerun read each
# owner's stored texts from about as many pages as it had locks. This index keeps `id` unique
# there; on PostgreSQL and SQLite `id` is the primary key, as declared above.
MYSQL_LOCK_ID_INDEX = Index("uq_bound_locks_id", bound_locks.c.id, unique=True).ddl_if(
    dialect=("mysql", "mariadb")  # type: ignore[arg-type]  # tuples are documented
)
