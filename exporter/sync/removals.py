"""Removals after the crawl: unseen locks of fully fetched and vanished owners, vanished owners.

The rules are the engine's (exporter.sync.engine, step 4) and are decided by
exporter.sync.plan.plan_removals over what is read here; this module reads and writes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import datetime

from sqlalchemy import Connection, bindparam, func, select, update

from exporter.db.engine import connect
from exporter.db.inlists import chunks
from exporter.db.schema import (
    LOCK_TRACKED,
    OWNER_TRACKED,
    bound_lock_versions,
    bound_locks,
    owner_account_versions,
    owner_accounts,
    sync_run_owners,
)
from exporter.kinds import ChangeType, OwnerStatus, RemovalReason
from exporter.results import OwnerOutcome
from exporter.sync import holds
from exporter.sync.locks import LockSync
from exporter.sync.plan import RemovalPlan, owners_to_read, plan_removals
from exporter.sync.versions import present_by_owner, remove_rows

# The run's lines keep the engine's logger name (log filters and docs/operations.md use it).
log = logging.getLogger("exporter.sync.engine")


def remove_locks(
    lock_sync: LockSync, owner_ids: set[str], vanished: set[str], *, list_judged: bool = True
) -> list[str]:
    """Remove unseen locks of fully fetched and vanished owners, then vanished owners.

    Reads the present locks of the owners that may have unseen ones, asks the plan
    (exporter.sync.plan.plan_removals) and writes it. The deletion guard may hold some of them
    back; returns one message per held-back group, saying how to confirm it. `owner_ids` less
    `vanished` are the owners whose locks are judged; `list_judged` is False when the owner list
    may have been cut short (nobody vanished): its hold, if any, is kept (exporter.sync.holds).
    """
    result = lock_sync.result
    with connect(lock_sync.engine) as conn, conn.begin():
        t = lock_sync.clock()
        present = {} if lock_sync.dry_run else _present_now(conn, lock_sync)
        confirmed = confirmed_per_owner(result.owners)
        to_read = owners_to_read(owner_ids, present, confirmed, dry_run=lock_sync.dry_run)
        held = lock_sync.holds
        before, since = holds.judged_counts(held, holds.LOCKS, lock_sync.locks_before)
        owners_before, list_since = holds.judged_counts(
            held, holds.OWNER_LIST, {holds.LIST_ID: lock_sync.owners_before}
        )
        plan = plan_removals(
            _present_locks(conn, to_read),
            lock_sync.seen,
            guard=lock_sync.guard,
            before=before,
            vanished=vanished,
            owners_before=owners_before[holds.LIST_ID],
            notes=lock_sync.also_listed,
            held_since=since,
            owners_held_since=list_since.get(holds.LIST_ID),
            owners_removed_since=_owners_removed_since(conn, list_since.get(holds.LIST_ID)),
        )
        result.held_back.update(plan.held_back)
        for outcome in result.owners:
            outcome.counts.removed = plan.removed_per_owner.get(outcome.owner_account_id, 0)
            outcome.error = plan.owner_notes.get(outcome.owner_account_id, outcome.error)
        for removal in plan.removals:
            lock_sync.note(
                "lock",
                removal.id,
                ChangeType.REMOVED,
                removal.owner_account_id,
                None,
                removal.reason,
                removal.title,
            )
        for owner_id in plan.owners:
            lock_sync.note(
                "owner", owner_id, ChangeType.REMOVED, owner_id, None, RemovalReason.OWNER_REMOVED
            )
        if lock_sync.dry_run:
            result.counts.removed += len(plan.removals)
            return list(plan.messages)
        _write(conn, plan, t, lock_sync.run_id)
        kept_owners = vanished & plan.held_back.keys()
        settled = (
            holds.settle(
                held,
                holds.LOCKS,
                judged=owner_ids - vanished,
                held=plan.held_back.keys() - vanished,
                counts=before,
                removed_owners=plan.owners,
            ),
            holds.settle(
                held,
                holds.OWNER_LIST,
                judged=[holds.LIST_ID] if list_judged else [],
                held=[holds.LIST_ID] if kept_owners else [],
                counts=owners_before,
            ),
        )
        for settlement in settled:
            if settlement:
                holds.write(conn, settlement, t, lock_sync.run_id)
    # Counted once committed: a run that fails in this transaction records what it wrote.
    result.counts.removed += len(plan.removals)
    if plan.removals or plan.owners:
        log.info("removed %d lock(s) and %d owner(s)", len(plan.removals), len(plan.owners))
    for message in plan.messages:
        log.warning("%s", message)
    return list(plan.messages)


def _present_now(conn: Connection, lock_sync: LockSync) -> dict[str, int]:
    """Present locks per owner now. Only this run's lock writes change them (creates, restores,
    updates moving a lock to another owner; every one committed and counted by now): without
    any, they are the locks counted before the run, and an unchanged rerun saves the GROUP BY
    (on PostgreSQL 50-120 ms per 100,000 locks until the table is vacuumed)."""
    counts = lock_sync.result.counts
    if counts.created or counts.restored or counts.updated:
        return present_by_owner(conn, bound_locks)
    return lock_sync.locks_before


def _owners_removed_since(conn: Connection, run_id: int | None) -> int:
    """How many owners are removed by runs since `run_id` (none without a hold): while the
    owner list's removals are held back, only those confirmed one by one."""
    if run_id is None:
        return 0
    v = owner_account_versions.c
    return conn.execute(
        select(func.count()).where(
            v.change_type == ChangeType.REMOVED, v.valid_to.is_(None), v.run_id >= run_id
        )
    ).scalar_one()


def confirmed_per_owner(outcomes: Sequence[OwnerOutcome]) -> dict[str, int]:
    """Per owner fetched completely, the locks it confirmed present (unchanged, created,
    updated, restored)."""
    return {
        o.owner_account_id: o.counts.unchanged
        + o.counts.created
        + o.counts.updated
        + o.counts.restored
        for o in outcomes
        if o.status == OwnerStatus.COMPLETE
    }


def _present_locks(conn: Connection, owner_ids: list[str]) -> Iterator[tuple[str, str, str | None]]:
    """The present locks (owner id, id, title) of `owner_ids`, as read."""
    for chunk in chunks(owner_ids):
        rows = conn.execute(
            select(bound_locks.c.owner_account_id, bound_locks.c.id, bound_locks.c.title)
            .where(bound_locks.c.removed_at.is_(None))
            .where(bound_locks.c.owner_account_id.in_(chunk))
        )
        yield from rows


def _write(conn: Connection, plan: RemovalPlan, t: datetime, run_id: int) -> None:
    """Write a removal plan: locks by reason, then the owners, then their run rows."""
    for reason in (RemovalReason.UNBOUND, RemovalReason.OWNER_REMOVED):
        ids = plan.ids(reason)
        remove_rows(conn, bound_locks, bound_lock_versions, LOCK_TRACKED, ids, t, reason, run_id)
    remove_rows(
        conn,
        owner_accounts,
        owner_account_versions,
        OWNER_TRACKED,
        list(plan.owners),
        t,
        RemovalReason.OWNER_REMOVED,
        run_id,
    )
    run_owner = (sync_run_owners.c.run_id == run_id) & (
        sync_run_owners.c.owner_account_id == bindparam("b_owner")
    )
    if plan.removed_per_owner:
        conn.execute(
            update(sync_run_owners).where(run_owner).values(removed=bindparam("b_removed")),
            [{"b_owner": o, "b_removed": n} for o, n in plan.removed_per_owner.items()],
        )
    if plan.owner_notes:
        conn.execute(
            update(sync_run_owners).where(run_owner).values(error=bindparam("b_error")),
            [{"b_owner": o, "b_error": m} for o, m in plan.owner_notes.items()],
        )
