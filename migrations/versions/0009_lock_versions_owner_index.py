"""Index lock versions per owner

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 14:00:00.000000

`exporter locks --as-of` reads the locks owner account by owner account (sorting a million locks
by owner name and title in one query was most of its time): this index finds an owner's versions
valid at an instant without reading every version. Building it reads the table once (about 2 s
per million versions on SQLite).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_bound_lock_versions_owner_account_id_valid_from",
        "bound_lock_versions",
        ["owner_account_id", "valid_from"],
    )


def downgrade() -> None:
    op.drop_index(
        "ix_bound_lock_versions_owner_account_id_valid_from", table_name="bound_lock_versions"
    )
