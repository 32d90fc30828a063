"""BI surface: change feed, binding history, daily counts, lock health, comments

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 10:00:00.000000

Adds the views `bound_lock_change_feed`, `lock_binding_history`, `daily_inventory` and
`current_lock_health`; the tables `calendar_days` (filled with every day from 2020 to 2099) and
`lock_health_readings`; and a description on every table and column (PostgreSQL and MariaDB/MySQL)
and on every view and view column (PostgreSQL only: MariaDB/MySQL views take no comments; SQLite
has no comments at all). Everything below is frozen at this revision on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

import exporter.db.types

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CALENDAR_FIRST_DAY = date(2020, 1, 1)
CALENDAR_LAST_DAY = date(2099, 12, 31)

TABLE_COMMENTS = {
    "sync_runs": "One row per sync run - when it ran, how it ended and what it counted.",
    "sync_run_owners": "One row per owner account per run - how fetching its locks went.",
    "owner_accounts": "Every owner account (locking system) ever seen, in its current state.",
    "owner_account_versions": "Every version of every owner account; a version is valid from "
    "valid_from (inclusive) to valid_to (exclusive).",
    "bound_locks": "Every bound lock ever seen, in its current state; removed locks keep their "
    "row with removed_at set.",
    "bound_lock_versions": "Every version of every bound lock; a lock is present at T when its "
    "version valid at T (valid_from <= T < valid_to, or valid_to NULL) is "
    "not removed.",
}

COLUMN_COMMENTS = {
    "sync_runs": {
        "id": "Run number, increasing.",
        "started_at": "When the run started (UTC).",
        "finished_at": "When the run ended (UTC); NULL while it runs.",
        "status": "running, succeeded, partial (some owner accounts failed) or failed.",
        "trigger": "What started the run - manual, schedule or demo.",
        "owners_seen": "Owner accounts in the owner list.",
        "locks_seen": "Bound locks returned by the complete owner fetches.",
        "created": "Locks created (first seen).",
        "updated": "Locks whose tracked attributes changed.",
        "removed": "Locks removed (unbound, or their owner account vanished).",
        "restored": "Locks seen again after a removal.",
        "unchanged": "Locks fetched without a tracked change.",
        "skipped": "Lock elements that could not be read and were left as stored.",
        "api_requests": "HTTP requests sent to Tapkey.",
        "error": "Why the run failed, or which owner accounts failed; NULL if it succeeded.",
        "client_id": "The OAuth client id the run used.",
    },
    "sync_run_owners": {
        "run_id": "The run (sync_runs.id).",
        "owner_account_id": "The owner account (owner_accounts.id).",
        "status": "complete or failed. An owner account was last seen at its last complete fetch.",
        "locks_seen": "Bound locks its list returned.",
        "created": "Locks created (first seen).",
        "updated": "Locks whose tracked attributes changed.",
        "removed": "Locks removed (unbound, or their owner account vanished).",
        "restored": "Locks seen again after a removal.",
        "unchanged": "Locks fetched without a tracked change.",
        "skipped": "Lock elements that could not be read and were left as stored.",
        "fetched_at": "When its locks were written, or its fetch failed (UTC).",
        "error": "Why its fetch failed; NULL if complete.",
    },
    "owner_accounts": {
        "id": "Tapkey owner account id.",
        "name": "Owner account name.",
        "active": "Active flag from Tapkey.",
        "first_seen_at": "When a run first saw the owner account (UTC).",
        "last_seen_at": "The last complete fetch of its locks (UTC).",
        "removed_at": "When it vanished from the owner list (UTC); NULL while listed.",
        "updated_at": "When name or active last changed (UTC).",
    },
    "owner_account_versions": {
        "version_id": "Row id.",
        "id": "The owner account (owner_accounts.id).",
        "name": "Owner account name in this version.",
        "active": "Active flag in this version.",
        "valid_from": "Start of this version, inclusive (UTC) - when a run observed the change.",
        "valid_to": "End of this version, exclusive (UTC); NULL for the current version.",
        "change_type": "created, updated, removed or restored.",
        "changed_fields": "JSON array of the columns that differ from the "
        "previous version (updated, restored); NULL for "
        "created and removed.",
        "removal_reason": "For removed versions - unbound (its owner no "
        "longer lists it) or owner_removed (its owner "
        "account vanished); else NULL.",
        "run_id": "The run that wrote this version (sync_runs.id).",
    },
    "bound_locks": {
        "id": "Tapkey bound lock id - one binding of a physical lock to one owner account.",
        "owner_account_id": "Owner account the lock is bound to (owner_accounts.id).",
        "title": "Lock title as shown in Tapkey.",
        "description": "Lock description.",
        "physical_lock_id": "TLCP id of the physical lock as the API gives it (Base64).",
        "lock_type_id": "Lock type id, e.g. TK.Td30.",
        "lock_model_name": "Lock model name (lockType.modelName).",
        "manufacturer_id": "Manufacturer id (lockType.manufacturerId).",
        "active": "Active flag from Tapkey.",
        "bind_date": "When the lock was bound to its owner account, per Tapkey (UTC).",
        "unbind_date": "Unbind date reported by Tapkey (UTC), usually NULL.",
        "target_type": "Target type from Tapkey, e.g. Lock.",
        "lock_id_hex": "Customer-facing lock id - hex bytes such as 12-34-BF-FB.",
        "rcl_serial_no": "Revocation list serial number (kept current, not versioned).",
        "rcl_date": "Revocation list date (UTC; kept current, not versioned).",
        "raw": "The API payload of the lock exactly as last received (JSON text).",
        "first_seen_at": "When a run first saw the lock (UTC).",
        "removed_at": "When the lock was removed (UTC); NULL while present.",
        "updated_at": "When a tracked attribute last changed (UTC).",
    },
    "bound_lock_versions": {
        "version_id": "Row id.",
        "id": "The bound lock (bound_locks.id).",
        "owner_account_id": "Owner account the lock is bound to (owner_accounts.id).",
        "title": "Lock title as shown in Tapkey.",
        "description": "Lock description.",
        "physical_lock_id": "TLCP id of the physical lock as the API gives it (Base64).",
        "lock_type_id": "Lock type id, e.g. TK.Td30.",
        "lock_model_name": "Lock model name (lockType.modelName).",
        "manufacturer_id": "Manufacturer id (lockType.manufacturerId).",
        "active": "Active flag from Tapkey.",
        "bind_date": "When the lock was bound to its owner account, per Tapkey (UTC).",
        "unbind_date": "Unbind date reported by Tapkey (UTC), usually NULL.",
        "target_type": "Target type from Tapkey, e.g. Lock.",
        "valid_from": "Start of this version, inclusive (UTC) - when a run observed the change.",
        "valid_to": "End of this version, exclusive (UTC); NULL for the current version.",
        "change_type": "created, updated, removed or restored.",
        "changed_fields": "JSON array of the columns that differ from the "
        "previous version (updated, restored); NULL for "
        "created and removed.",
        "removal_reason": "For removed versions - unbound (its owner no "
        "longer lists it) or owner_removed (its owner "
        "account vanished); else NULL.",
        "run_id": "The run that wrote this version (sync_runs.id).",
    },
}

VIEWS = {
    "bound_lock_change_feed": "SELECT v.version_id, p.version_id AS previous_version_id, v.id AS "
    "bound_lock_id, CASE WHEN l.physical_lock_id = v.physical_lock_id "
    "THEN l.lock_id_hex END AS lock_id_hex, v.valid_from AS changed_at, "
    "v.run_id, v.change_type, v.changed_fields, v.removal_reason, "
    "po.name AS old_owner_name, o.name AS new_owner_name, "
    "p.owner_account_id AS old_owner_account_id, v.owner_account_id AS "
    "new_owner_account_id, p.title AS old_title, v.title AS new_title, "
    "p.description AS old_description, v.description AS "
    "new_description, p.physical_lock_id AS old_physical_lock_id, "
    "v.physical_lock_id AS new_physical_lock_id, p.lock_type_id AS "
    "old_lock_type_id, v.lock_type_id AS new_lock_type_id, "
    "p.lock_model_name AS old_lock_model_name, v.lock_model_name AS "
    "new_lock_model_name, p.manufacturer_id AS old_manufacturer_id, "
    "v.manufacturer_id AS new_manufacturer_id, p.active AS old_active, "
    "v.active AS new_active, p.bind_date AS old_bind_date, v.bind_date "
    "AS new_bind_date, p.unbind_date AS old_unbind_date, v.unbind_date "
    "AS new_unbind_date, p.target_type AS old_target_type, "
    "v.target_type AS new_target_type FROM bound_lock_versions v LEFT "
    "JOIN bound_lock_versions p ON p.id = v.id AND p.valid_to = "
    "v.valid_from LEFT JOIN bound_locks l ON l.id = v.id LEFT JOIN "
    "owner_accounts o ON o.id = v.owner_account_id LEFT JOIN "
    "owner_accounts po ON po.id = p.owner_account_id",
    "lock_binding_history": "SELECT h.physical_lock_id, h.lock_id_hex, h.bound_lock_id, "
    "h.owner_account_id, o.name AS owner_name, h.held_from, h.held_to, "
    "CASE WHEN e.change_type = 'removed' THEN e.removal_reason WHEN "
    "e.owner_account_id <> h.owner_account_id THEN 'moved' WHEN "
    "e.version_id IS NOT NULL THEN 'physical_lock_changed' END AS "
    "end_reason, h.bind_date, h.title FROM (SELECT s.physical_lock_id, "
    "CASE WHEN l.physical_lock_id = s.physical_lock_id THEN l.lock_id_hex "
    "END AS lock_id_hex, s.id AS bound_lock_id, s.owner_account_id, "
    "s.valid_from AS held_from, s.bind_date, s.title, (SELECT "
    "MIN(n.valid_from) FROM bound_lock_versions n WHERE n.id = s.id AND "
    "n.valid_from > s.valid_from AND (n.change_type = 'removed' OR NOT "
    "(n.owner_account_id = s.owner_account_id AND "
    "COALESCE(n.physical_lock_id, '') = COALESCE(s.physical_lock_id, "
    "'')))) AS held_to FROM bound_lock_versions s LEFT JOIN "
    "bound_lock_versions p ON p.id = s.id AND p.valid_to = s.valid_from "
    "LEFT JOIN bound_locks l ON l.id = s.id WHERE s.change_type <> "
    "'removed' AND (p.version_id IS NULL OR p.change_type = 'removed' OR "
    "NOT (p.owner_account_id = s.owner_account_id AND "
    "COALESCE(p.physical_lock_id, '') = COALESCE(s.physical_lock_id, "
    "'')))) h LEFT JOIN bound_lock_versions e ON e.id = h.bound_lock_id "
    "AND e.valid_from = h.held_to LEFT JOIN owner_accounts o ON o.id = "
    "h.owner_account_id",
    "daily_inventory": "SELECT c.day, v.owner_account_id, o.name AS owner_name, "
    "v.lock_model_name, COUNT(*) AS locks FROM calendar_days c JOIN "
    "bound_lock_versions v ON v.valid_from < c.day_end AND (v.valid_to IS NULL "
    "OR v.valid_to >= c.day_end) LEFT JOIN owner_accounts o ON o.id = "
    "v.owner_account_id WHERE v.change_type <> 'removed' AND c.day_end > "
    "(SELECT MIN(r.started_at) FROM sync_runs r) AND c.day_start <= (SELECT "
    "MAX(r.started_at) FROM sync_runs r) GROUP BY c.day, v.owner_account_id, "
    "o.name, v.lock_model_name",
    "current_lock_health": "SELECT h.bound_lock_id, l.lock_id_hex, l.title, l.owner_account_id, "
    "o.name AS owner_name, h.type, h.value, h.value_number, "
    "h.value_status, h.reading_at, h.seen_at FROM lock_health_readings h "
    "JOIN bound_locks l ON l.id = h.bound_lock_id LEFT JOIN owner_accounts "
    "o ON o.id = l.owner_account_id WHERE l.removed_at IS NULL AND "
    "h.reading_at = (SELECT MAX(x.reading_at) FROM lock_health_readings x "
    "WHERE x.bound_lock_id = h.bound_lock_id AND x.type = h.type)",
}

VIEW_COMMENTS = {
    "current_bound_locks": [
        "The locks present now, with their owner account name.",
        {
            "id": "Tapkey bound lock id - one binding of a physical lock to one owner account.",
            "owner_account_id": "Owner account the lock is bound to (owner_accounts.id).",
            "title": "Lock title as shown in Tapkey.",
            "description": "Lock description.",
            "physical_lock_id": "TLCP id of the physical lock as the API gives it (Base64).",
            "lock_id_hex": "Customer-facing lock id - hex bytes such as 12-34-BF-FB.",
            "lock_type_id": "Lock type id, e.g. TK.Td30.",
            "lock_model_name": "Lock model name (lockType.modelName).",
            "manufacturer_id": "Manufacturer id (lockType.manufacturerId).",
            "active": "Active flag from Tapkey.",
            "bind_date": "When the lock was bound to its owner account, per Tapkey (UTC).",
            "unbind_date": "Unbind date reported by Tapkey (UTC), usually NULL.",
            "rcl_serial_no": "Revocation list serial number (kept current, not versioned).",
            "rcl_date": "Revocation list date (UTC; kept current, not versioned).",
            "target_type": "Target type from Tapkey, e.g. Lock.",
            "first_seen_at": "When a run first saw the lock (UTC).",
            "updated_at": "When a tracked attribute last changed (UTC).",
            "owner_name": "Current name of the owner account.",
        },
    ],
    "bound_lock_changes": [
        "Every lock version with its run and the current name of its owner account.",
        {
            "version_id": "bound_lock_versions.version_id",
            "bound_lock_id": "The bound lock (bound_locks.id).",
            "change_type": "created, updated, removed or restored.",
            "changed_fields": "JSON array of the columns that differ from the "
            "previous version (updated, restored); NULL for "
            "created and removed.",
            "removal_reason": "For removed versions - unbound (its owner no "
            "longer lists it) or owner_removed (its owner "
            "account vanished); else NULL.",
            "changed_at": "When the change was observed (UTC) - the version valid_from.",
            "valid_to": "End of this version, exclusive (UTC); NULL for the current version.",
            "run_id": "The run that wrote this version (sync_runs.id).",
            "run_trigger": "What started the run.",
            "run_status": "How the run ended.",
            "owner_account_id": "Owner account the lock is bound to (owner_accounts.id).",
            "owner_name": "Current name of the owner account.",
            "title": "Lock title as shown in Tapkey.",
            "description": "Lock description.",
            "physical_lock_id": "TLCP id of the physical lock as the API gives it (Base64).",
            "lock_type_id": "Lock type id, e.g. TK.Td30.",
            "lock_model_name": "Lock model name (lockType.modelName).",
            "manufacturer_id": "Manufacturer id (lockType.manufacturerId).",
            "active": "Active flag from Tapkey.",
            "bind_date": "When the lock was bound to its owner account, per Tapkey (UTC).",
            "unbind_date": "Unbind date reported by Tapkey (UTC), usually NULL.",
            "target_type": "Target type from Tapkey, e.g. Lock.",
        },
    ],
    "bound_lock_change_feed": [
        "One row per lock change with the previous and the new value of "
        "every tracked attribute. The previous version is the version of "
        "the same lock that ended when this one began.",
        {
            "version_id": "bound_lock_versions.version_id of the new version.",
            "previous_version_id": "version_id of the previous version; NULL for created.",
            "bound_lock_id": "The bound lock (bound_locks.id).",
            "lock_id_hex": (
                "Customer-facing lock id (12-34-BF-FB); NULL if the version has an older "
                "physical lock id."
            ),
            "changed_at": "When the change was observed (UTC).",
            "run_id": "The run that wrote this version (sync_runs.id).",
            "change_type": "created, updated, removed or restored.",
            "changed_fields": "JSON array of the columns that differ from the "
            "previous version (updated, restored); NULL for "
            "created and removed.",
            "removal_reason": "For removed versions - unbound (its owner no "
            "longer lists it) or owner_removed (its owner "
            "account vanished); else NULL.",
            "old_owner_name": "Current name of the previous owner account.",
            "new_owner_name": "Current name of the owner account in this version.",
            "old_owner_account_id": "Owner account id before the change (NULL for created).",
            "new_owner_account_id": "Owner account id after the change.",
            "old_title": "Title before the change (NULL for created).",
            "new_title": "Title after the change.",
            "old_description": "Description before the change (NULL for created).",
            "new_description": "Description after the change.",
            "old_physical_lock_id": "Physical lock id before the change (NULL for created).",
            "new_physical_lock_id": "Physical lock id after the change.",
            "old_lock_type_id": "Lock type id before the change (NULL for created).",
            "new_lock_type_id": "Lock type id after the change.",
            "old_lock_model_name": "Lock model name before the change (NULL for created).",
            "new_lock_model_name": "Lock model name after the change.",
            "old_manufacturer_id": "Manufacturer id before the change (NULL for created).",
            "new_manufacturer_id": "Manufacturer id after the change.",
            "old_active": "Active flag before the change (NULL for created).",
            "new_active": "Active flag after the change.",
            "old_bind_date": "Bind date before the change (NULL for created).",
            "new_bind_date": "Bind date after the change.",
            "old_unbind_date": "Unbind date before the change (NULL for created).",
            "new_unbind_date": "Unbind date after the change.",
            "old_target_type": "Target type before the change (NULL for created).",
            "new_target_type": "Target type after the change.",
        },
    ],
    "lock_binding_history": [
        "Which owner account held each physical lock, under which bound lock "
        "id, from when to when. A period ends when the lock is removed, "
        "moves to another owner account or its physical lock id changes.",
        {
            "physical_lock_id": "TLCP id of the physical lock (Base64, as the API gives it).",
            "lock_id_hex": (
                "Customer-facing lock id such as 12-34-BF-FB; NULL for an older physical lock "
                "id of the lock."
            ),
            "bound_lock_id": "The bound lock id of this binding (bound_locks.id).",
            "owner_account_id": "The owner account that held the lock.",
            "owner_name": "Current name of that owner account.",
            "held_from": "Start of the period, inclusive (UTC), as observed by a run.",
            "held_to": "End of the period, exclusive (UTC); NULL while it lasts.",
            "end_reason": "Why the period ended - unbound, owner_removed, moved "
            "(another owner account lists the same bound lock id) "
            "or physical_lock_changed; NULL while it lasts.",
            "bind_date": "Bind date reported by Tapkey at the start of the period (UTC).",
            "title": "Lock title at the start of the period.",
        },
    ],
    "daily_inventory": [
        "Locks present at the end of each UTC day, per owner account and lock "
        "model, from the day of the first run to the day of the latest run. "
        "Filter on day for speed.",
        {
            "day": "The day (UTC); counts are as of its last instant.",
            "owner_account_id": "The owner account.",
            "owner_name": "Current name of the owner account.",
            "lock_model_name": "Lock model name.",
            "locks": "Locks present at the end of the day.",
        },
    ],
    "current_lock_health": [
        "The latest health reading of each type for every present lock (highest reading_at).",
        {
            "bound_lock_id": "The bound lock (bound_locks.id).",
            "lock_id_hex": "Customer-facing lock id such as 12-34-BF-FB.",
            "title": "Lock title.",
            "owner_account_id": "The owner account the lock is bound to.",
            "owner_name": "Current name of the owner account.",
            "type": "BatteryVoltage, Temperature or BatteryWarningLevel.",
            "value": "The value as Tapkey sends it (text), e.g. 2.95 or Low.",
            "value_number": "The value as a number when it is one (voltage, degrees), else NULL.",
            "value_status": "Ok, Outdated or Invalid, as Tapkey judged the "
            "reading when first seen.",
            "reading_at": "When the lock measured the value (UTC), the timestamp "
            "of the reading itself.",
            "seen_at": "When a run first stored the reading (UTC).",
        },
    ],
}


def _id(length: int = 64) -> sa.types.TypeEngine[str]:
    return (
        sa.String(length=length)
        .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=length), "mariadb")
        .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=length), "mysql")
    )


def _backend() -> str:
    name = op.get_bind().dialect.name
    return "mysql" if name == "mariadb" else name


def _quote(text: str) -> str:
    # Written into DDL literally (no bind parameters there); the texts hold no quotes or colons.
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def upgrade() -> None:
    calendar = op.create_table(
        "calendar_days",
        sa.Column("day", sa.Date(), nullable=False, comment="The day (UTC)."),
        sa.Column(
            "day_start",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=False,
            comment="Midnight at the start of the day (UTC).",
        ),
        sa.Column(
            "day_end",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=False,
            comment="Midnight at the end of the day (UTC), the next day_start.",
        ),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_calendar_days")),
        comment=(
            "One row per UTC day from 2020-01-01 to 2099-12-31, for charts over time (see the "
            "daily_inventory view)."
        ),
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )
    op.create_index(op.f("ix_calendar_days_day_end"), "calendar_days", ["day_end"], unique=False)
    if _backend() == "sqlite":
        # 29,220 rows through executemany cost a third of a second; SQLite makes them itself.
        op.get_bind().exec_driver_sql(
            "INSERT INTO calendar_days (day, day_start, day_end) "
            "WITH RECURSIVE d(day) AS (SELECT ? UNION ALL "
            "SELECT date(day, '+1 day') FROM d WHERE day < ?) "
            "SELECT day, day || 'T00:00:00.000000Z', date(day, '+1 day') || 'T00:00:00.000000Z' "
            "FROM d",
            (CALENDAR_FIRST_DAY.isoformat(), CALENDAR_LAST_DAY.isoformat()),
        )
    else:
        assert calendar is not None
        op.bulk_insert(calendar, _days())

    op.create_table(
        "lock_health_readings",
        sa.Column(
            "reading_id", sa.Integer(), autoincrement=True, nullable=False, comment="Row id."
        ),
        sa.Column(
            "bound_lock_id",
            _id(),
            nullable=False,
            comment="The bound lock that reported it (bound_locks.id).",
        ),
        sa.Column(
            "physical_lock_id",
            _id(255),
            nullable=True,
            comment="TLCP id of the physical lock, from the reading.",
        ),
        sa.Column(
            "type",
            sa.String(length=64),
            nullable=False,
            comment="BatteryVoltage, Temperature or BatteryWarningLevel.",
        ),
        sa.Column(
            "reading_at",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=False,
            comment="When the lock measured the value (UTC), the timestamp of the reading itself.",
        ),
        sa.Column(
            "value",
            sa.String(length=255),
            nullable=True,
            comment="The value as Tapkey sends it (text), e.g. 2.95 or Low.",
        ),
        sa.Column(
            "value_number",
            sa.Double(),
            nullable=True,
            comment="The value as a number when it is one (voltage, degrees), else NULL.",
        ),
        sa.Column(
            "value_status",
            sa.String(length=32),
            nullable=True,
            comment="Ok, Outdated or Invalid, as Tapkey judged the reading when first seen.",
        ),
        sa.Column(
            "api_reading_id",
            sa.String(length=64),
            nullable=True,
            comment="The reading id Tapkey gave it.",
        ),
        sa.Column(
            "seen_at",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=False,
            comment="When a run first stored the reading (UTC).",
        ),
        sa.Column(
            "run_id", sa.Integer(), nullable=False, comment="The run that stored it (sync_runs.id)."
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_lock_health_readings_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("reading_id", name=op.f("pk_lock_health_readings")),
        sa.UniqueConstraint(
            "bound_lock_id",
            "type",
            "reading_at",
            name=op.f("uq_lock_health_readings_bound_lock_id_type_reading_at"),
        ),
        comment=(
            "Lock health readings (battery, temperature), one row per reading, stored when a "
            "reading with a new timestamp appears. Filled only with [tapkey] expand_health = true."
        ),
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )
    op.create_index(
        op.f("ix_lock_health_readings_reading_at"),
        "lock_health_readings",
        ["reading_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_lock_health_readings_run_id"), "lock_health_readings", ["run_id"], unique=False
    )

    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")
    _comment(TABLE_COMMENTS, COLUMN_COMMENTS, VIEW_COMMENTS)


def downgrade() -> None:
    _comment(
        dict.fromkeys(TABLE_COMMENTS, None),
        {table: dict.fromkeys(columns, None) for table, columns in COLUMN_COMMENTS.items()},
        {},
    )
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_index(op.f("ix_lock_health_readings_run_id"), table_name="lock_health_readings")
    op.drop_index(op.f("ix_lock_health_readings_reading_at"), table_name="lock_health_readings")
    op.drop_table("lock_health_readings")
    op.drop_index(op.f("ix_calendar_days_day_end"), table_name="calendar_days")
    op.drop_table("calendar_days")


def _days() -> list[dict[str, object]]:
    days = []
    day = CALENDAR_FIRST_DAY
    while day <= CALENDAR_LAST_DAY:
        start = datetime.combine(day, time(), tzinfo=UTC)
        days.append({"day": day, "day_start": start, "day_end": start + timedelta(days=1)})
        day += timedelta(days=1)
    return days


def _comment(
    tables: dict[str, str | None],
    columns: dict[str, dict[str, str | None]],
    views: dict[str, list[object]],
) -> None:
    """Describe the tables that existed before this revision (new ones got theirs at creation)."""
    backend = _backend()
    if backend == "postgresql":
        for table, text in tables.items():
            op.execute(f"COMMENT ON TABLE {table} IS {_pg(text)}")
            for column, about in columns[table].items():
                op.execute(f"COMMENT ON COLUMN {table}.{column} IS {_pg(about)}")
        for view, (text, view_columns) in views.items():
            op.execute(f"COMMENT ON VIEW {view} IS {_pg(str(text))}")
            assert isinstance(view_columns, dict)
            for column, about in view_columns.items():
                op.execute(f"COMMENT ON COLUMN {view}.{column} IS {_pg(about)}")
    elif backend == "mysql":
        for table, text in tables.items():
            _mysql_comments(table, text, columns[table])


def _pg(text: str | None) -> str:
    return "NULL" if text is None else _quote(text)


def _mysql_comments(table: str, text: str | None, columns: dict[str, str | None]) -> None:
    """One ALTER TABLE per table that re-states each column exactly as the server has it.

    MariaDB/MySQL can only comment a column by re-declaring it (MODIFY); copying the definition
    from SHOW CREATE TABLE keeps type, collation, AUTO_INCREMENT and JSON checks as they are.
    """
    ddl = op.get_bind().exec_driver_sql(f"SHOW CREATE TABLE `{table}`").one()[1]
    clauses = [f"COMMENT = {_quote(text or '')}"]
    for line in ddl.splitlines():
        match = re.fullmatch(r"\s+`(\w+)` (.*?),?", line)
        if match is None or match.group(1) not in columns:
            continue
        name, definition = match.groups()
        definition = re.sub(r" COMMENT '(?:[^']|'')*'", "", definition)
        head, check, rest = definition.partition(" CHECK (")
        about = columns[name]
        comment = f" COMMENT {_quote(about)}" if about else ""
        clauses.append(f"MODIFY COLUMN `{name}` {head}{comment}{check}{rest}")
    op.execute(f"ALTER TABLE `{table}` " + ", ".join(clauses))
