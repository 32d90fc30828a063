"""Locks stored together per owner on MariaDB/MySQL

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 11:00:00.000000

InnoDB stores a table's rows in primary key order. With `id` alone as the primary key of
`bound_locks`, the locks lay in random id order, and reading one owner's stored payload texts
(every run does, for every owner) touched about one page per lock: with 100,000 locks the table
(130 MiB) outgrew MariaDB's default buffer pool (128 MiB) and an unchanged rerun read it from
disk again, page by page, each time. The primary key becomes (`owner_account_id`, `id`), so an
owner's locks lie on a few neighbouring pages, and a unique index keeps `id` unique. PostgreSQL
and SQLite do not store rows in key order; nothing changes there.

MariaDB/MySQL rebuild the table for this (about 10 s per 100,000 locks).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _innodb() -> bool:
    return op.get_bind().dialect.name in ("mysql", "mariadb")


def upgrade() -> None:
    if _innodb():
        op.execute(
            "ALTER TABLE bound_locks DROP PRIMARY KEY, "
            "ADD PRIMARY KEY (owner_account_id, id), "
            "ADD UNIQUE INDEX uq_bound_locks_id (id)"
        )


def downgrade() -> None:
    if _innodb():
        op.execute(
            "ALTER TABLE bound_locks DROP INDEX uq_bound_locks_id, "
            "DROP PRIMARY KEY, ADD PRIMARY KEY (id)"
        )
