"""Removals the deletion guard holds back, kept between runs

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 02:00:00.000000

A table `guard_holds`, one row per (entity, owner account) whose removals the deletion guard
holds back: the count stored when they were first held back (`base`) and that run. Until they
are confirmed, the guard judges them against that count, not against a stored count that the
rows arriving meanwhile made larger. See exporter.sync.holds.

The texts below are frozen at this revision on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

import exporter.db.types

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id(length: int = 64) -> sa.types.TypeEngine[str]:
    return (
        sa.String(length=length)
        .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=length), "mariadb")
        .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=length), "mysql")
    )


def upgrade() -> None:
    op.create_table(
        "guard_holds",
        sa.Column(
            "entity",
            sa.String(length=32),
            nullable=False,
            comment=(
                "What is held back: owners (the owner list), locks, contacts, cards or grants."
            ),
        ),
        sa.Column(
            "owner_account_id",
            _id(),
            nullable=False,
            comment="The owner account whose rows are held back; empty for the owner list.",
        ),
        sa.Column(
            "base",
            sa.Integer(),
            nullable=False,
            comment=(
                "How many the owner (or the owner list) had stored when the removals were first "
                "held back: the count the deletion guard judges them against until they are "
                "confirmed."
            ),
        ),
        sa.Column(
            "since_run_id",
            sa.Integer(),
            nullable=False,
            comment="The run that first held them back (sync_runs.id).",
        ),
        sa.Column(
            "updated_at",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=False,
            comment="When a run last held them back (UTC).",
        ),
        sa.ForeignKeyConstraint(
            ["since_run_id"], ["sync_runs.id"], name=op.f("fk_guard_holds_since_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("entity", "owner_account_id", name=op.f("pk_guard_holds")),
        comment=(
            "Removals the deletion guard holds back until they are confirmed, one row per entity "
            "and owner account: they are judged against the count stored when they were first "
            "held back. Not inventory data."
        ),
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )


def downgrade() -> None:
    op.drop_table("guard_holds")
