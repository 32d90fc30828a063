"""Index present locks per owner

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 12:00:00.000000

The owner index of `bound_locks` also covers `removed_at`, so counting each owner's present locks
(every run does, twice) reads the index alone instead of every table row, each of which holds a
whole payload, and an owner's present locks are found without filtering its removed ones. On
MariaDB with 100,000 locks the count took 0.9 s as a table scan.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_bound_locks_owner_account_id_removed_at",
        "bound_locks",
        ["owner_account_id", "removed_at"],
    )
    op.drop_index("ix_bound_locks_owner_account_id", table_name="bound_locks")


def downgrade() -> None:
    op.create_index("ix_bound_locks_owner_account_id", "bound_locks", ["owner_account_id"])
    op.drop_index("ix_bound_locks_owner_account_id_removed_at", table_name="bound_locks")
