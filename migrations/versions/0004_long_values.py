"""Free texts as long as the exporter stores; comments for abandoned runs and skipped values

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 12:00:00.000000

MariaDB/MySQL only: the free texts from the API (lock title and description, in the current and
the version table; owner account name, likewise) and the two error columns become MEDIUMTEXT.
TEXT holds 64 KiB there, so a 100,000-character title failed the whole run on MariaDB while
PostgreSQL and SQLite stored it; MEDIUMTEXT (16 MiB) holds the longest element the exporter
stores (records.MAX_ELEMENT_BYTES, 4 MiB), as the other databases do. PostgreSQL and SQLite keep
their unbounded text columns.

PostgreSQL and MariaDB/MySQL: the comments of sync_runs.finished_at (NULL for a run found
abandoned) and of the skipped counts (a value longer than the exporter stores skips the lock).

The texts below are frozen at this revision on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# MODIFY on MariaDB/MySQL restates a column whole: its comment must be given again.
_WIDENED = {
    ("bound_locks", "title"): "Lock title as shown in Tapkey.",
    ("bound_locks", "description"): "Lock description.",
    ("bound_lock_versions", "title"): "Lock title as shown in Tapkey.",
    ("bound_lock_versions", "description"): "Lock description.",
    ("owner_accounts", "name"): "Owner account name.",
    ("owner_account_versions", "name"): "Owner account name in this version.",
    ("sync_runs", "error"): (
        "Why the run failed, or which owner accounts failed; NULL if it succeeded."
    ),
    ("sync_run_owners", "error"): "Why its fetch failed; NULL if complete.",
}

_SKIPPED_BEFORE = "Lock elements that could not be read and were left as stored."
_SKIPPED_AFTER = (
    "Lock elements that could not be read, or held a value longer than the exporter stores, and "
    "were left as stored."
)
_FINISHED_BEFORE = "When the run ended (UTC); NULL while it runs."
_FINISHED_AFTER = (
    "When the run ended (UTC); NULL while it runs, and for a run found abandoned (its end is "
    "unknown)."
)


def _dialect() -> str:
    return op.get_bind().dialect.name


def _finished_at_type() -> sa.types.TypeEngine[object]:
    # UTCDateTime's column type on each database (MODIFY restates it on MariaDB/MySQL).
    if _dialect() in ("mysql", "mariadb"):
        return mysql.DATETIME(fsp=6)  # type: ignore[return-value]
    return sa.DateTime(timezone=True)  # type: ignore[return-value]


def _comments(finished_at: str, skipped: str) -> None:
    op.alter_column(
        "sync_runs",
        "finished_at",
        existing_type=_finished_at_type(),
        existing_nullable=True,
        comment=finished_at,
    )
    for table in ("sync_runs", "sync_run_owners"):
        op.alter_column(
            table, "skipped", existing_type=sa.Integer(), existing_nullable=False, comment=skipped
        )


def _text_type(type_: sa.types.TypeEngine[str], *, was: sa.types.TypeEngine[str]) -> None:
    for (table, column), comment in _WIDENED.items():
        op.alter_column(
            table,
            column,
            type_=type_,
            existing_type=was,
            existing_nullable=True,
            existing_comment=comment,
        )


def upgrade() -> None:
    if _dialect() == "sqlite":
        return  # no length limits on text and no comments: nothing changes
    if _dialect() in ("mysql", "mariadb"):
        _text_type(mysql.MEDIUMTEXT(), was=sa.Text())
    _comments(_FINISHED_AFTER, _SKIPPED_AFTER)


def downgrade() -> None:
    if _dialect() == "sqlite":
        return
    _comments(_FINISHED_BEFORE, _SKIPPED_BEFORE)
    if _dialect() in ("mysql", "mariadb"):
        # Fails if a value is longer than TEXT holds (64 KiB): shorten it first.
        _text_type(sa.Text(), was=mysql.MEDIUMTEXT())
