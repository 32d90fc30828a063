"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27 23:28:35.653729
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

import exporter.db.types

# The views as they are at this revision (frozen here: a later revision that changes a view
# drops and recreates it).
VIEWS = {
    "current_bound_locks": (
        "SELECT l.id, l.owner_account_id, l.title, l.description, l.physical_lock_id, "
        "l.lock_id_hex, l.lock_type_id, l.lock_model_name, l.manufacturer_id, l.active, "
        "l.bind_date, l.unbind_date, l.rcl_serial_no, l.rcl_date, l.target_type, "
        "l.first_seen_at, l.updated_at, o.name AS owner_name "
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

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _has_partial_indexes() -> bool:
    return op.get_bind().dialect.name in ("postgresql", "sqlite")


def upgrade() -> None:
    op.create_table(
        "bound_locks",
        sa.Column(
            "id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
        ),
        sa.Column(
            "owner_account_id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
        ),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "physical_lock_id",
            sa.String(length=255).with_variant(
                mysql.VARCHAR(collation="utf8mb4_bin", length=255), "mariadb", "mysql"
            ),
            nullable=True,
        ),
        sa.Column("lock_type_id", sa.String(length=255), nullable=True),
        sa.Column("lock_model_name", sa.String(length=255), nullable=True),
        sa.Column("manufacturer_id", sa.Integer(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=True),
        sa.Column("bind_date", exporter.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("unbind_date", exporter.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("target_type", sa.String(length=64), nullable=True),
        sa.Column("lock_id_hex", sa.String(length=255), nullable=True),
        sa.Column("rcl_serial_no", sa.Integer(), nullable=True),
        sa.Column("rcl_date", exporter.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "raw",
            sa.Text()
            .with_variant(mysql.MEDIUMTEXT(), "mariadb")
            .with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=True,
        ),
        sa.Column("first_seen_at", exporter.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("removed_at", exporter.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", exporter.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bound_locks")),
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )
    with op.batch_alter_table("bound_locks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_bound_locks_lock_id_hex"), ["lock_id_hex"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_bound_locks_owner_account_id"), ["owner_account_id"], unique=False
        )

    op.create_table(
        "owner_accounts",
        sa.Column(
            "id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
        ),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=True),
        sa.Column("first_seen_at", exporter.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", exporter.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("removed_at", exporter.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", exporter.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_owner_accounts")),
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )
    op.create_table(
        "sync_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("started_at", exporter.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", exporter.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("owners_seen", sa.Integer(), nullable=False),
        sa.Column("locks_seen", sa.Integer(), nullable=False),
        sa.Column("created", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("removed", sa.Integer(), nullable=False),
        sa.Column("restored", sa.Integer(), nullable=False),
        sa.Column("unchanged", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("api_requests", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("client_id", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_runs")),
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sync_runs_started_at"), ["started_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_sync_runs_status"), ["status"], unique=False)

    op.create_table(
        "bound_lock_versions",
        sa.Column("version_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column(
            "id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
        ),
        sa.Column(
            "owner_account_id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
        ),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "physical_lock_id",
            sa.String(length=255).with_variant(
                mysql.VARCHAR(collation="utf8mb4_bin", length=255), "mariadb", "mysql"
            ),
            nullable=True,
        ),
        sa.Column("lock_type_id", sa.String(length=255), nullable=True),
        sa.Column("lock_model_name", sa.String(length=255), nullable=True),
        sa.Column("manufacturer_id", sa.Integer(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=True),
        sa.Column("bind_date", exporter.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("unbind_date", exporter.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("target_type", sa.String(length=64), nullable=True),
        sa.Column("valid_from", exporter.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("valid_to", exporter.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("change_type", sa.String(length=16), nullable=False),
        sa.Column(
            "changed_fields",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("removal_reason", sa.String(length=16), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_bound_lock_versions_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_bound_lock_versions")),
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )
    with op.batch_alter_table("bound_lock_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_bound_lock_versions_id_valid_from"), ["id", "valid_from"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_bound_lock_versions_run_id"), ["run_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_bound_lock_versions_valid_from"), ["valid_from"], unique=False
        )

    op.create_table(
        "owner_account_versions",
        sa.Column("version_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column(
            "id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
        ),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=True),
        sa.Column("valid_from", exporter.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("valid_to", exporter.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("change_type", sa.String(length=16), nullable=False),
        sa.Column(
            "changed_fields",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("removal_reason", sa.String(length=16), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_owner_account_versions_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_owner_account_versions")),
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )
    with op.batch_alter_table("owner_account_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_owner_account_versions_id_valid_from"),
            ["id", "valid_from"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_owner_account_versions_run_id"), ["run_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_owner_account_versions_valid_from"), ["valid_from"], unique=False
        )

    op.create_table(
        "sync_run_owners",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column(
            "owner_account_id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("locks_seen", sa.Integer(), nullable=False),
        sa.Column("created", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("removed", sa.Integer(), nullable=False),
        sa.Column("restored", sa.Integer(), nullable=False),
        sa.Column("unchanged", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("fetched_at", exporter.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_sync_run_owners_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("run_id", "owner_account_id", name=op.f("pk_sync_run_owners")),
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )
    with op.batch_alter_table("sync_run_owners", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sync_run_owners_owner_account_id_status"),
            ["owner_account_id", "status"],
            unique=False,
        )

    if _has_partial_indexes():
        # At most one open version per entity (MariaDB/MySQL have no partial indexes).
        for table in ("owner_account_versions", "bound_lock_versions"):
            op.create_index(
                f"uq_{table}_open",
                table,
                ["id"],
                unique=True,
                postgresql_where=sa.text("valid_to IS NULL"),
                sqlite_where=sa.text("valid_to IS NULL"),
            )
    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    if _has_partial_indexes():
        for table in ("owner_account_versions", "bound_lock_versions"):
            op.drop_index(f"uq_{table}_open", table_name=table)
    with op.batch_alter_table("sync_run_owners", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sync_run_owners_owner_account_id_status"))

    op.drop_table("sync_run_owners")
    with op.batch_alter_table("owner_account_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_owner_account_versions_valid_from"))
        batch_op.drop_index(batch_op.f("ix_owner_account_versions_run_id"))
        batch_op.drop_index(batch_op.f("ix_owner_account_versions_id_valid_from"))

    op.drop_table("owner_account_versions")
    with op.batch_alter_table("bound_lock_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bound_lock_versions_valid_from"))
        batch_op.drop_index(batch_op.f("ix_bound_lock_versions_run_id"))
        batch_op.drop_index(batch_op.f("ix_bound_lock_versions_id_valid_from"))

    op.drop_table("bound_lock_versions")
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sync_runs_status"))
        batch_op.drop_index(batch_op.f("ix_sync_runs_started_at"))

    op.drop_table("sync_runs")
    op.drop_table("owner_accounts")
    with op.batch_alter_table("bound_locks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bound_locks_owner_account_id"))
        batch_op.drop_index(batch_op.f("ix_bound_locks_lock_id_hex"))

    op.drop_table("bound_locks")
