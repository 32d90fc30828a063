"""What the API server's paging is known to do

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 06:00:00.000000

A table `api_paging`, one row per API base URL: the page size ($top) the server was seen to
return in full (a shorter page at that size ends a list without a confirming request) and the
largest $top it accepted after refusing a larger one with HTTP 400. See exporter.tapkey.paging.

The texts below are frozen at this revision on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import exporter.db.types

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_paging",
        sa.Column(
            "api_url",
            sa.String(length=255),
            nullable=False,
            comment="The API base URL (no user info or query).",
        ),
        sa.Column(
            "honoured_page_size",
            sa.Integer(),
            nullable=True,
            comment=(
                "A page size ($top) the server returned in full; NULL until one was seen, or "
                "after the server cut a page short below it."
            ),
        ),
        sa.Column(
            "max_top",
            sa.Integer(),
            nullable=True,
            comment=(
                "The largest $top the server accepted after refusing a larger one (HTTP 400)."
            ),
        ),
        sa.Column(
            "updated_at",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=False,
            comment="When this was last learned (UTC).",
        ),
        sa.PrimaryKeyConstraint("api_url", name=op.f("pk_api_paging")),
        comment=(
            "What the exporter learned about the paging of each Tapkey API server it read, so "
            "that a short page ends a list without a confirming request. Not inventory data."
        ),
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )


def downgrade() -> None:
    op.drop_table("api_paging")
