"""Access data: contacts, bound cards and grants, each with a version table; their BI views

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 05:13:13.056157

Adds `contacts`, `bound_cards` and `grants` (current state, like bound_locks) and their version
tables `contact_versions`, `bound_card_versions` and `grant_versions` (the same contract as
bound_lock_versions), with a description on every table and column, and the views
`current_grants`, `grant_changes` and `grant_lock_bindings`. Everything below is frozen at this
revision on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

import exporter.db.types

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_VERSION_TABLES = ("contact_versions", "bound_card_versions", "grant_versions")


def _has_partial_indexes() -> bool:
    return op.get_bind().dialect.name in ("postgresql", "sqlite")


# Frozen copies of exporter.db.views.VIEWS and VIEW_COMMENTS at this revision.
VIEWS = {
    "current_grants": (
        "SELECT g.id AS grant_id, g.owner_account_id, o.name AS owner_name, g.bound_lock_id, "
        "l.title AS lock_title, l.lock_id_hex, g.contact_id, c.title AS contact_title, "
        "c.identifier AS contact_identifier, g.bound_card_id, k.title AS card_title, k.label "
        "AS card_label, g.validity_from, g.validity_before, g.time_restriction_ical, g.state,"
        " g.active, g.first_seen_at, g.updated_at FROM grants g LEFT JOIN owner_accounts o ON"
        " o.id = g.owner_account_id LEFT JOIN bound_locks l ON l.id = g.bound_lock_id LEFT "
        "JOIN contacts c ON c.id = g.contact_id LEFT JOIN bound_cards k ON k.id = "
        "g.bound_card_id WHERE g.removed_at IS NULL"
    ),
    "grant_changes": (
        "SELECT g.version_id, g.id AS grant_id, g.change_type, g.changed_fields, "
        "g.removal_reason, g.valid_from AS changed_at, g.valid_to, g.run_id, "
        "g.owner_account_id, o.name AS owner_name, g.bound_lock_id, l.title AS lock_title, "
        "g.contact_id, c.title AS contact_title, g.bound_card_id, k.title AS card_title, "
        "g.validity_from, g.validity_before, g.time_restriction_ical, g.state, g.active FROM "
        "grant_versions g LEFT JOIN owner_accounts o ON o.id = g.owner_account_id LEFT JOIN "
        "bound_locks l ON l.id = g.bound_lock_id LEFT JOIN contacts c ON c.id = g.contact_id "
        "LEFT JOIN bound_cards k ON k.id = g.bound_card_id"
    ),
    "grant_lock_bindings": (
        "SELECT g.id AS grant_id, g.state, g.removed_at AS grant_removed_at, g.contact_id, "
        "g.bound_card_id, h.bound_lock_id, h.physical_lock_id, h.lock_id_hex, "
        "h.owner_account_id, h.owner_name, h.held_from, h.held_to, h.end_reason, h.title AS "
        "lock_title FROM grants g JOIN lock_binding_history h ON h.bound_lock_id = "
        "g.bound_lock_id"
    ),
}

VIEW_COMMENTS: dict[str, tuple[str, dict[str, str]]] = {
    "current_grants": (
        (
            "The grants listed now, with lock title, owner account name and the contact or "
            "card they go to. A grant gives access when state is Ok and now is within its "
            "validity."
        ),
        {
            "grant_id": "The grant (grants.id).",
            "owner_account_id": "Owner account that issued the grant (owner_accounts.id).",
            "owner_name": "Current name of the owner account.",
            "bound_lock_id": "The bound lock it opens (bound_locks.id).",
            "lock_title": "Current title of the lock.",
            "lock_id_hex": "Customer-facing lock id such as 12-34-BF-FB.",
            "contact_id": ("The contact it is granted to (contacts.id); NULL for a card grant."),
            "contact_title": "Current name of the contact.",
            "contact_identifier": "Current identifier of the contact, as [privacy] stores it.",
            "bound_card_id": (
                "The bound card it is granted to (bound_cards.id); NULL for a contact grant."
            ),
            "card_title": "Current title of the card.",
            "card_label": "Current label of the card.",
            "validity_from": (
                "Start of the grant validity (validFrom, UTC); NULL without a start."
            ),
            "validity_before": (
                "End of the grant validity, exclusive (validBefore, UTC); NULL without an end."
            ),
            "time_restriction_ical": "Weekly time restriction as iCalendar text; NULL without one.",
            "state": ("Grant state from Tapkey - Ok, Revoked, ... (revoked grants stay listed)."),
            "active": "Active flag of the grant from Tapkey.",
            "first_seen_at": "When a run first saw the grant (UTC).",
            "updated_at": "When a tracked attribute last changed (UTC).",
        },
    ),
    "grant_changes": (
        (
            "Every grant version with the current names of its owner account, lock, contact "
            "and card. A revocation is an updated version whose changed_fields holds state."
        ),
        {
            "version_id": "grant_versions.version_id",
            "grant_id": "The grant (grants.id).",
            "change_type": "created, updated, removed or restored.",
            "changed_fields": (
                "JSON array of the columns that differ from the previous version (updated, "
                "restored); NULL for created and removed."
            ),
            "removal_reason": (
                "For removed versions - deleted (a contact or grant its owner no longer "
                "lists), unbound (a card its owner no longer lists) or owner_removed (its "
                "owner account vanished); else NULL."
            ),
            "changed_at": "When the change was observed (UTC) - the version valid_from.",
            "valid_to": ("End of this version, exclusive (UTC); NULL for the current version."),
            "run_id": "The run that wrote this version (sync_runs.id).",
            "owner_account_id": "Owner account that issued the grant (owner_accounts.id).",
            "owner_name": "Current name of the owner account.",
            "bound_lock_id": "The bound lock it opens (bound_locks.id).",
            "lock_title": "Current title of the lock.",
            "contact_id": ("The contact it is granted to (contacts.id); NULL for a card grant."),
            "contact_title": "Current name of the contact.",
            "bound_card_id": (
                "The bound card it is granted to (bound_cards.id); NULL for a contact grant."
            ),
            "card_title": "Current title of the card.",
            "validity_from": (
                "Start of the grant validity (validFrom, UTC); NULL without a start."
            ),
            "validity_before": (
                "End of the grant validity, exclusive (validBefore, UTC); NULL without an end."
            ),
            "time_restriction_ical": "Weekly time restriction as iCalendar text; NULL without one.",
            "state": ("Grant state from Tapkey - Ok, Revoked, ... (revoked grants stay listed)."),
            "active": "Active flag of the grant from Tapkey.",
        },
    ),
    "grant_lock_bindings": (
        (
            "Each grant with the binding periods of its bound lock (lock_binding_history) - "
            "which physical lock the grant stood for, under which owner account, from when to"
            " when."
        ),
        {
            "grant_id": "The grant (grants.id).",
            "state": "Current state of the grant.",
            "grant_removed_at": "When the grant was removed (UTC); NULL while listed.",
            "contact_id": ("The contact it is granted to (contacts.id); NULL for a card grant."),
            "bound_card_id": (
                "The bound card it is granted to (bound_cards.id); NULL for a contact grant."
            ),
            "bound_lock_id": "The bound lock of the grant and of this binding period.",
            "physical_lock_id": "TLCP id of the physical lock (Base64, as the API gives it).",
            "lock_id_hex": "Customer-facing lock id such as 12-34-BF-FB.",
            "owner_account_id": "The owner account that held the lock.",
            "owner_name": "Current name of that owner account.",
            "held_from": "Start of the binding period, inclusive (UTC).",
            "held_to": ("End of the binding period, exclusive (UTC); NULL while it lasts."),
            "end_reason": "Why the binding period ended (see lock_binding_history).",
            "lock_title": "Lock title at the start of the period.",
        },
    ),
}


def _quote(text: str) -> str:
    # Written into DDL literally (no bind parameters there); the texts hold no quotes or colons.
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _create_views() -> None:
    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")
    if op.get_bind().dialect.name != "postgresql":
        return  # MariaDB/MySQL views take no comments; SQLite has none at all
    for view, (text, columns) in VIEW_COMMENTS.items():
        op.execute(f"COMMENT ON VIEW {view} IS {_quote(text)}")
        for column, about in columns.items():
            op.execute(f"COMMENT ON COLUMN {view}.{column} IS {_quote(about)}")


def _drop_views() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")


def upgrade() -> None:
    op.create_table(
        "bound_cards",
        sa.Column(
            "id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
            comment="Tapkey bound card id.",
        ),
        sa.Column(
            "owner_account_id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
            comment="Owner account the card is bound to (owner_accounts.id).",
        ),
        sa.Column(
            "title",
            sa.Text()
            .with_variant(mysql.MEDIUMTEXT(), "mariadb")
            .with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=True,
            comment="Card title as shown in Tapkey.",
        ),
        sa.Column(
            "label",
            sa.String(length=255),
            nullable=True,
            comment="Label of the card, often the number printed on it.",
        ),
        sa.Column(
            "uid",
            sa.String(length=255)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=255), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=255), "mysql"),
            nullable=True,
            comment="UID of the card chip (hex).",
        ),
        sa.Column(
            "physical_card_id",
            sa.String(length=255)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=255), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=255), "mysql"),
            nullable=True,
            comment="Physical card id as the API gives it (Base64).",
        ),
        sa.Column(
            "is_active", sa.Boolean(), nullable=True, comment="Active flag of the card from Tapkey."
        ),
        sa.Column(
            "bind_date",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=True,
            comment="When the card was bound, per Tapkey (UTC).",
        ),
        sa.Column(
            "unbind_date",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=True,
            comment="Unbind date reported by Tapkey (UTC), usually NULL.",
        ),
        sa.Column(
            "nof_grants_capacity",
            sa.Integer(),
            nullable=True,
            comment="How many grants the card can carry.",
        ),
        sa.Column(
            "raw",
            sa.Text()
            .with_variant(mysql.MEDIUMTEXT(), "mariadb")
            .with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=True,
            comment=(
                "The API payload of the card exactly as last received (JSON text); a "
                "keyed digest instead where [privacy] keeps identifiers out of the "
                "database."
            ),
        ),
        sa.Column(
            "first_seen_at",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=False,
            comment="When a run first saw the card (UTC).",
        ),
        sa.Column(
            "removed_at",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=True,
            comment="When the card was removed (UTC); NULL while present.",
        ),
        sa.Column(
            "updated_at",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=False,
            comment="When a tracked attribute last changed (UTC).",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bound_cards")),
        comment=(
            "Every bound card ever seen, in its current state. Filled with cards in "
            "[tapkey] entities."
        ),
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )
    with op.batch_alter_table("bound_cards", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_bound_cards_owner_account_id_removed_at"),
            ["owner_account_id", "removed_at"],
            unique=False,
        )

    op.create_table(
        "contacts",
        sa.Column(
            "id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
            comment="Tapkey contact id.",
        ),
        sa.Column(
            "owner_account_id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
            comment="Owner account whose contact list holds it (owner_accounts.id).",
        ),
        sa.Column(
            "ip_id",
            sa.String(length=255),
            nullable=True,
            comment="Identity provider of the contact - tapkey for Tapkey users.",
        ),
        sa.Column(
            "identifier",
            sa.String(length=255)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=255), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=255), "mysql"),
            nullable=True,
            comment=(
                "The contact identifier (a Tapkey user email), kept, replaced by its "
                "keyed hash (hex) or NULL, per [privacy] contact_identifier."
            ),
        ),
        sa.Column(
            "title",
            sa.Text()
            .with_variant(mysql.MEDIUMTEXT(), "mariadb")
            .with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=True,
            comment="Contact name as shown in Tapkey.",
        ),
        sa.Column(
            "comment",
            sa.Text()
            .with_variant(mysql.MEDIUMTEXT(), "mariadb")
            .with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=True,
            comment="Comment on the contact.",
        ),
        sa.Column(
            "raw",
            sa.Text()
            .with_variant(mysql.MEDIUMTEXT(), "mariadb")
            .with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=True,
            comment=(
                "The API payload of the contact exactly as last received (JSON text);"
                " a keyed digest instead where [privacy] keeps identifiers out of the"
                " database."
            ),
        ),
        sa.Column(
            "first_seen_at",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=False,
            comment="When a run first saw the contact (UTC).",
        ),
        sa.Column(
            "removed_at",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=True,
            comment="When the contact was removed (UTC); NULL while present.",
        ),
        sa.Column(
            "updated_at",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=False,
            comment="When a tracked attribute last changed (UTC).",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contacts")),
        comment=(
            "Every contact (a person who can be granted access) ever seen, in its "
            "current state. Filled with contacts in [tapkey] entities."
        ),
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_contacts_owner_account_id_removed_at"),
            ["owner_account_id", "removed_at"],
            unique=False,
        )

    op.create_table(
        "grants",
        sa.Column(
            "id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
            comment="Tapkey grant id.",
        ),
        sa.Column(
            "owner_account_id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
            comment="Owner account that issued the grant (owner_accounts.id).",
        ),
        sa.Column(
            "bound_lock_id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=True,
            comment="The bound lock it opens (bound_locks.id).",
        ),
        sa.Column(
            "contact_id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=True,
            comment="The contact it is granted to (contacts.id); NULL for a card grant.",
        ),
        sa.Column(
            "bound_card_id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=True,
            comment="The bound card it is granted to (bound_cards.id); NULL for a contact grant.",
        ),
        sa.Column(
            "validity_from",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=True,
            comment="Start of the grant validity (validFrom, UTC); NULL without a start.",
        ),
        sa.Column(
            "validity_before",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=True,
            comment="End of the grant validity, exclusive (validBefore, UTC); NULL without an end.",
        ),
        sa.Column(
            "time_restriction_ical",
            sa.Text()
            .with_variant(mysql.MEDIUMTEXT(), "mariadb")
            .with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=True,
            comment="Weekly time restriction as iCalendar text; NULL without one.",
        ),
        sa.Column(
            "state",
            sa.String(length=32),
            nullable=True,
            comment="Grant state from Tapkey - Ok, Revoked, ... (revoked grants stay listed).",
        ),
        sa.Column(
            "active", sa.Boolean(), nullable=True, comment="Active flag of the grant from Tapkey."
        ),
        sa.Column(
            "raw",
            sa.Text()
            .with_variant(mysql.MEDIUMTEXT(), "mariadb")
            .with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=True,
            comment=(
                "The API payload of the grant exactly as last received (JSON text); a"
                " keyed digest instead where [privacy] keeps identifiers out of the "
                "database."
            ),
        ),
        sa.Column(
            "first_seen_at",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=False,
            comment="When a run first saw the grant (UTC).",
        ),
        sa.Column(
            "removed_at",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=True,
            comment="When the grant was removed (UTC); NULL while present.",
        ),
        sa.Column(
            "updated_at",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=False,
            comment="When a tracked attribute last changed (UTC).",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_grants")),
        comment=(
            "Every grant (access of a contact or card to a lock) ever seen, in its "
            "current state; revoked grants keep state Revoked. Filled with grants in "
            "[tapkey] entities."
        ),
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_grants_bound_card_id"), ["bound_card_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_grants_bound_lock_id"), ["bound_lock_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_grants_contact_id"), ["contact_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_grants_owner_account_id_removed_at"),
            ["owner_account_id", "removed_at"],
            unique=False,
        )

    op.create_table(
        "bound_card_versions",
        sa.Column(
            "version_id", sa.Integer(), autoincrement=True, nullable=False, comment="Row id."
        ),
        sa.Column(
            "id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
            comment="The bound card (bound_cards.id).",
        ),
        sa.Column(
            "owner_account_id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
            comment="Owner account the card is bound to (owner_accounts.id).",
        ),
        sa.Column(
            "title",
            sa.Text()
            .with_variant(mysql.MEDIUMTEXT(), "mariadb")
            .with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=True,
            comment="Card title as shown in Tapkey.",
        ),
        sa.Column(
            "label",
            sa.String(length=255),
            nullable=True,
            comment="Label of the card, often the number printed on it.",
        ),
        sa.Column(
            "uid",
            sa.String(length=255)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=255), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=255), "mysql"),
            nullable=True,
            comment="UID of the card chip (hex).",
        ),
        sa.Column(
            "physical_card_id",
            sa.String(length=255)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=255), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=255), "mysql"),
            nullable=True,
            comment="Physical card id as the API gives it (Base64).",
        ),
        sa.Column(
            "is_active", sa.Boolean(), nullable=True, comment="Active flag of the card from Tapkey."
        ),
        sa.Column(
            "bind_date",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=True,
            comment="When the card was bound, per Tapkey (UTC).",
        ),
        sa.Column(
            "unbind_date",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=True,
            comment="Unbind date reported by Tapkey (UTC), usually NULL.",
        ),
        sa.Column(
            "nof_grants_capacity",
            sa.Integer(),
            nullable=True,
            comment="How many grants the card can carry.",
        ),
        sa.Column(
            "valid_from",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=False,
            comment="Start of this version, inclusive (UTC) - when a run observed the change.",
        ),
        sa.Column(
            "valid_to",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=True,
            comment="End of this version, exclusive (UTC); NULL for the current version.",
        ),
        sa.Column(
            "change_type",
            sa.String(length=16),
            nullable=False,
            comment="created, updated, removed or restored.",
        ),
        sa.Column(
            "changed_fields",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
            comment=(
                "JSON array of the columns that differ from the previous version "
                "(updated, restored); NULL for created and removed."
            ),
        ),
        sa.Column(
            "removal_reason",
            sa.String(length=16),
            nullable=True,
            comment=(
                "For removed versions - deleted (a contact or grant its owner no "
                "longer lists), unbound (a card its owner no longer lists) or "
                "owner_removed (its owner account vanished); else NULL."
            ),
        ),
        sa.Column(
            "run_id",
            sa.Integer(),
            nullable=False,
            comment="The run that wrote this version (sync_runs.id).",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_bound_card_versions_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_bound_card_versions")),
        comment="Every version of every bound card.",
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )
    with op.batch_alter_table("bound_card_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_bound_card_versions_id_valid_from"), ["id", "valid_from"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_bound_card_versions_run_id"), ["run_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_bound_card_versions_valid_from"), ["valid_from"], unique=False
        )

    op.create_table(
        "contact_versions",
        sa.Column(
            "version_id", sa.Integer(), autoincrement=True, nullable=False, comment="Row id."
        ),
        sa.Column(
            "id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
            comment="The contact (contacts.id).",
        ),
        sa.Column(
            "owner_account_id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
            comment="Owner account whose contact list holds it (owner_accounts.id).",
        ),
        sa.Column(
            "ip_id",
            sa.String(length=255),
            nullable=True,
            comment="Identity provider of the contact - tapkey for Tapkey users.",
        ),
        sa.Column(
            "identifier",
            sa.String(length=255)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=255), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=255), "mysql"),
            nullable=True,
            comment=(
                "The contact identifier (a Tapkey user email), kept, replaced by its "
                "keyed hash (hex) or NULL, per [privacy] contact_identifier."
            ),
        ),
        sa.Column(
            "title",
            sa.Text()
            .with_variant(mysql.MEDIUMTEXT(), "mariadb")
            .with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=True,
            comment="Contact name as shown in Tapkey.",
        ),
        sa.Column(
            "comment",
            sa.Text()
            .with_variant(mysql.MEDIUMTEXT(), "mariadb")
            .with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=True,
            comment="Comment on the contact.",
        ),
        sa.Column(
            "valid_from",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=False,
            comment="Start of this version, inclusive (UTC) - when a run observed the change.",
        ),
        sa.Column(
            "valid_to",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=True,
            comment="End of this version, exclusive (UTC); NULL for the current version.",
        ),
        sa.Column(
            "change_type",
            sa.String(length=16),
            nullable=False,
            comment="created, updated, removed or restored.",
        ),
        sa.Column(
            "changed_fields",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
            comment=(
                "JSON array of the columns that differ from the previous version "
                "(updated, restored); NULL for created and removed."
            ),
        ),
        sa.Column(
            "removal_reason",
            sa.String(length=16),
            nullable=True,
            comment=(
                "For removed versions - deleted (a contact or grant its owner no "
                "longer lists), unbound (a card its owner no longer lists) or "
                "owner_removed (its owner account vanished); else NULL."
            ),
        ),
        sa.Column(
            "run_id",
            sa.Integer(),
            nullable=False,
            comment="The run that wrote this version (sync_runs.id).",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_contact_versions_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_contact_versions")),
        comment="Every version of every contact (valid_from inclusive, valid_to exclusive).",
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )
    with op.batch_alter_table("contact_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_contact_versions_id_valid_from"), ["id", "valid_from"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_contact_versions_run_id"), ["run_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_contact_versions_valid_from"), ["valid_from"], unique=False
        )

    op.create_table(
        "grant_versions",
        sa.Column(
            "version_id", sa.Integer(), autoincrement=True, nullable=False, comment="Row id."
        ),
        sa.Column(
            "id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
            comment="The grant (grants.id).",
        ),
        sa.Column(
            "owner_account_id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=False,
            comment="Owner account that issued the grant (owner_accounts.id).",
        ),
        sa.Column(
            "bound_lock_id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=True,
            comment="The bound lock it opens (bound_locks.id).",
        ),
        sa.Column(
            "contact_id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=True,
            comment="The contact it is granted to (contacts.id); NULL for a card grant.",
        ),
        sa.Column(
            "bound_card_id",
            sa.String(length=64)
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mariadb")
            .with_variant(mysql.VARCHAR(collation="utf8mb4_bin", length=64), "mysql"),
            nullable=True,
            comment="The bound card it is granted to (bound_cards.id); NULL for a contact grant.",
        ),
        sa.Column(
            "validity_from",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=True,
            comment="Start of the grant validity (validFrom, UTC); NULL without a start.",
        ),
        sa.Column(
            "validity_before",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=True,
            comment="End of the grant validity, exclusive (validBefore, UTC); NULL without an end.",
        ),
        sa.Column(
            "time_restriction_ical",
            sa.Text()
            .with_variant(mysql.MEDIUMTEXT(), "mariadb")
            .with_variant(mysql.MEDIUMTEXT(), "mysql"),
            nullable=True,
            comment="Weekly time restriction as iCalendar text; NULL without one.",
        ),
        sa.Column(
            "state",
            sa.String(length=32),
            nullable=True,
            comment="Grant state from Tapkey - Ok, Revoked, ... (revoked grants stay listed).",
        ),
        sa.Column(
            "active", sa.Boolean(), nullable=True, comment="Active flag of the grant from Tapkey."
        ),
        sa.Column(
            "valid_from",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=False,
            comment="Start of this version, inclusive (UTC) - when a run observed the change.",
        ),
        sa.Column(
            "valid_to",
            exporter.db.types.UTCDateTime(timezone=True),
            nullable=True,
            comment="End of this version, exclusive (UTC); NULL for the current version.",
        ),
        sa.Column(
            "change_type",
            sa.String(length=16),
            nullable=False,
            comment="created, updated, removed or restored.",
        ),
        sa.Column(
            "changed_fields",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
            comment=(
                "JSON array of the columns that differ from the previous version "
                "(updated, restored); NULL for created and removed."
            ),
        ),
        sa.Column(
            "removal_reason",
            sa.String(length=16),
            nullable=True,
            comment=(
                "For removed versions - deleted (a contact or grant its owner no "
                "longer lists), unbound (a card its owner no longer lists) or "
                "owner_removed (its owner account vanished); else NULL."
            ),
        ),
        sa.Column(
            "run_id",
            sa.Integer(),
            nullable=False,
            comment="The run that wrote this version (sync_runs.id).",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name=op.f("fk_grant_versions_run_id_sync_runs")
        ),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_grant_versions")),
        comment=(
            "Every version of every grant; a grant is listed at T when its version "
            "valid at T is not removed, and gives access when its state is Ok and T "
            "is within its validity."
        ),
        mariadb_charset="utf8mb4",
        mysql_charset="utf8mb4",
    )
    with op.batch_alter_table("grant_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_grant_versions_bound_lock_id_valid_from"),
            ["bound_lock_id", "valid_from"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_grant_versions_contact_id_valid_from"),
            ["contact_id", "valid_from"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_grant_versions_id_valid_from"), ["id", "valid_from"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_grant_versions_run_id"), ["run_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_grant_versions_valid_from"), ["valid_from"], unique=False
        )

    if _has_partial_indexes():
        # At most one open version per entity (MariaDB/MySQL have no partial indexes).
        for table in _VERSION_TABLES:
            op.create_index(
                f"uq_{table}_open",
                table,
                ["id"],
                unique=True,
                postgresql_where=sa.text("valid_to IS NULL"),
                sqlite_where=sa.text("valid_to IS NULL"),
            )
    _create_views()


def downgrade() -> None:
    _drop_views()
    # Their indexes (and the partial ones) go with them; MariaDB refuses to drop an index that
    # backs a foreign key while the table exists.
    for table in (*_VERSION_TABLES, "grants", "bound_cards", "contacts"):
        op.drop_table(table)
