"""Log entries: the table, the per-owner watermark and the lock_openings_daily view

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 06:00:00.000000

Adds `log_entries` (append-only, keyed by owner account and entry id), `log_entry_watermarks`
(how far each owner's log was read) and the view `lock_openings_daily`, with their comments
(PostgreSQL and MariaDB/MySQL; the view's on PostgreSQL only), and corrects the comment of
sync_run_owners.error (it also holds notes on complete fetches). Everything below is frozen at this
revision on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

import exporter.db.types

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = {
    "lock_openings_daily": "SELECT c.day, e.owner_account_id, o.name AS owner_name, "
    "e.bound_lock_id, l.lock_id_hex, l.title, COUNT(*) AS openings, "
    "MIN(e.lock_timestamp) AS first_opening_at, MAX(e.lock_timestamp) AS last_opening_at "
    "FROM log_entries e JOIN calendar_days c ON c.day_start <= e.lock_timestamp "
    "AND e.lock_timestamp < c.day_end "
    "LEFT JOIN bound_locks l ON l.id = e.bound_lock_id "
    "LEFT JOIN owner_accounts o ON o.id = e.owner_account_id "
    "WHERE e.log_type = 'Command' AND e.command = 'TriggerLock' "
    "GROUP BY c.day, e.owner_account_id, o.name, e.bound_lock_id, l.lock_id_hex, l.title"
}

VIEW_COMMENT = (
    "Openings per lock per UTC day - log entries with log_type Command and command "
    "TriggerLock, counted on the day the lock recorded them (lock_timestamp)."
)
VIEW_COLUMNS = {
    "day": "The day (UTC) the lock recorded the openings.",
    "owner_account_id": "The owner account whose log lists them.",
    "owner_name": "Current name of the owner account.",
    "bound_lock_id": "The bound lock (bound_locks.id).",
    "lock_id_hex": "Customer-facing lock id such as 12-34-BF-FB (current).",
    "title": "Current lock title.",
    "openings": "Openings recorded that day.",
    "first_opening_at": "The first opening of the day (UTC).",
    "last_opening_at": "The last opening of the day (UTC).",
}


def _id(length: int = 64) -> sa.types.TypeEngine[str]:
    return (
        sa.String(length=length)
        .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=length), "mariadb")
        .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=length), "mysql")
    )


def _time() -> exporter.db.types.UTCDateTime:
    return exporter.db.types.UTCDateTime(timezone=True)


def _quote(text: str) -> str:
    # Written into DDL literally; the texts hold no quotes or colons.
    return "'" + text.replace("'", "''") + "'"


# sync_run_owners.error also holds notes on complete fetches (removals held back by the deletion
# guard, locks another owner listed too): its comment said otherwise.
_OWNER_ERROR_BEFORE = "Why its fetch failed; NULL if complete."
_OWNER_ERROR_AFTER = (
    "Why its fetch failed; for a complete fetch, a note on what was held back (removals held "
    "by the deletion guard, locks another owner listed too in the run); NULL otherwise."
)


def _owner_error_comment(comment: str, was: str) -> None:
    if op.get_bind().dialect.name == "sqlite":
        return  # no comments
    op.alter_column(
        "sync_run_owners",
        "error",
        existing_type=sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"),
        existing_nullable=True,
        existing_comment=was,
        comment=comment,
    )


def upgrade() -> None:
    _owner_error_comment(_OWNER_ERROR_AFTER, _OWNER_ERROR_BEFORE)
    op.create_table(
        "log_entries",
        sa.Column(
            "owner_account_id",
            _id(),
            nullable=False,
            comment="The owner account whose log lists the entry (owner_accounts.id).",
        ),
        sa.Column("id", _id(), nullable=False, comment="Tapkey log entry id."),
        sa.Column(
            "entry_no",
            sa.BigInteger(),
            nullable=True,
            comment="The lock's own running number of the entry (entryNo).",
        ),
        sa.Column(
            "lock_timestamp",
            _time(),
            nullable=True,
            comment="When the lock recorded the event (UTC, the lock clock).",
        ),
        sa.Column(
            "received_at",
            _time(),
            nullable=False,
            comment=(
                "When Tapkey received the entry (UTC) - minutes or days after lock_timestamp "
                "for a lock that was offline."
            ),
        ),
        sa.Column(
            "bound_lock_id",
            _id(),
            nullable=True,
            comment="The bound lock that recorded it (bound_locks.id).",
        ),
        sa.Column("bound_card_id", _id(), nullable=True, comment="The bound card used, if any."),
        sa.Column(
            "contact_id",
            _id(),
            nullable=True,
            comment="The contact (person) who used the lock, if known.",
        ),
        sa.Column(
            "log_type", sa.String(length=255), nullable=True, comment="Kind of entry, e.g. Command."
        ),
        sa.Column(
            "command",
            sa.String(length=255),
            nullable=True,
            comment="For Command entries the command, e.g. TriggerLock (an opening).",
        ),
        sa.Column(
            "raw",
            sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"),
            nullable=True,
            comment="The API payload of the entry exactly as received (JSON text).",
        ),
        sa.Column(
            "run_id",
            sa.Integer(),
            nullable=False,
            comment="The run that first stored it (sync_runs.id).",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_log_entries_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("owner_account_id", "id", name=op.f("pk_log_entries")),
        comment=(
            "Every log entry of every lock (openings and other events), one row per entry as "
            "Tapkey lists it, stored once and never changed. Filled only with [tapkey] entities "
            "including log_entries."
        ),
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )
    op.create_index(
        op.f("ix_log_entries_bound_lock_id_lock_timestamp"),
        "log_entries",
        ["bound_lock_id", "lock_timestamp"],
    )
    op.create_index(op.f("ix_log_entries_lock_timestamp"), "log_entries", ["lock_timestamp"])
    op.create_index(op.f("ix_log_entries_run_id"), "log_entries", ["run_id"])

    op.create_table(
        "log_entry_watermarks",
        sa.Column(
            "owner_account_id",
            _id(),
            nullable=False,
            comment="The owner account (owner_accounts.id).",
        ),
        sa.Column(
            "received_at",
            _time(),
            nullable=True,
            comment="receivedAt of the newest log entry stored for it (UTC); NULL if none.",
        ),
        sa.Column("last_id", _id(), nullable=True, comment="Id of that entry."),
        sa.Column(
            "list_position",
            sa.Integer(),
            nullable=True,
            comment=(
                "Where that entry is in the unfiltered list (rows up to and including it), for "
                "servers that refuse the receivedAt filter; NULL if unknown."
            ),
        ),
        sa.Column(
            "filter_refused_at",
            _time(),
            nullable=True,
            comment=(
                "When the API last refused the receivedAt filter (HTTP 400) for it; the filter "
                "is tried again a day later. NULL if it was accepted."
            ),
        ),
        sa.Column(
            "updated_at", _time(), nullable=False, comment="When the watermark last moved (UTC)."
        ),
        sa.Column(
            "run_id",
            sa.Integer(),
            nullable=False,
            comment="The run that moved it last (sync_runs.id).",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_log_entry_watermarks_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("owner_account_id", name=op.f("pk_log_entry_watermarks")),
        comment=(
            "Per owner account, how far its log entries were read - the newest entry stored. The "
            "next run asks for what Tapkey received after it, minus [sync] log_overlap."
        ),
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )

    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"COMMENT ON VIEW lock_openings_daily IS {_quote(VIEW_COMMENT)}")
        for column, about in VIEW_COLUMNS.items():
            op.execute(f"COMMENT ON COLUMN lock_openings_daily.{column} IS {_quote(about)}")


def downgrade() -> None:
    _owner_error_comment(_OWNER_ERROR_BEFORE, _OWNER_ERROR_AFTER)
    op.execute("DROP VIEW IF EXISTS lock_openings_daily")
    op.drop_table("log_entry_watermarks")
    # Its indexes go with it (MariaDB refuses to drop the run_id one alone: the foreign key).
    op.drop_table("log_entries")
