"""Read-side queries over the stored inventory: current state, changes and runs."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, RowMapping, literal, select, union_all

from exporter.schema import (
    bound_lock_versions,
    bound_locks,
    owner_account_versions,
    owner_accounts,
)
from exporter.store import connect


def current_locks(engine: Engine) -> Sequence[RowMapping]:
    """Present bound locks with their owner's name, ordered by owner name, then title."""
    query = (
        select(bound_locks, owner_accounts.c.name.label("owner_name"))
        .join(owner_accounts, owner_accounts.c.id == bound_locks.c.owner_account_id, isouter=True)
        .where(bound_locks.c.removed_at.is_(None))
        .order_by(owner_accounts.c.name, bound_locks.c.owner_account_id, bound_locks.c.title)
    )
    with connect(engine) as conn:
        return conn.execute(query).mappings().all()


def run_changes(engine: Engine, run_id: int) -> Sequence[RowMapping]:
    """Every version a run wrote, owners first, as entity/id/change/fields/reason/title rows."""
    owners = select(
        literal("owner").label("entity"),
        owner_account_versions.c.id,
        owner_account_versions.c.change_type,
        owner_account_versions.c.changed_fields,
        owner_account_versions.c.removal_reason,
        owner_account_versions.c.name.label("title"),
        owner_account_versions.c.id.label("owner_account_id"),
        owner_account_versions.c.valid_from,
    ).where(owner_account_versions.c.run_id == run_id)
    locks = select(
        literal("lock").label("entity"),
        bound_lock_versions.c.id,
        bound_lock_versions.c.change_type,
        bound_lock_versions.c.changed_fields,
        bound_lock_versions.c.removal_reason,
        bound_lock_versions.c.title,
        bound_lock_versions.c.owner_account_id,
        bound_lock_versions.c.valid_from,
    ).where(bound_lock_versions.c.run_id == run_id)
    query = union_all(owners, locks)
    with connect(engine) as conn:
        rows = conn.execute(query).mappings().all()
    return sorted(rows, key=lambda r: (r["entity"] != "owner", r["valid_from"], r["id"]))
