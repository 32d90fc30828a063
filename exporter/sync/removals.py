"""Removals after the crawl: unseen locks of fully fetched and vanished owners, vanished owners.

The rules are the engine's (exporter.sync.engine, step 4); the deletion guard
(exporter.sync.guard) may hold some of them back.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, bindparam, select, update

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
from exporter.sync.guard import locks_held_message, owners_held_message
from exporter.sync.locks import LockSync
from exporter.sync.versions import present_by_owner, remove_rows

# The run's lines keep the engine's logger name (log filters and docs/operations.md use it).
log = logging.getLogger("exporter.sync.engine")


def remove_locks(lock_sync: LockSync, owner_ids: set[str], vanished: set[str]) -> list[str]:
    """Remove unseen locks of fully fetched and vanished owners, then vanished owners.

    The deletion guard (RemovalGuard) may hold some of them back; returns one message per
    held-back group, saying how to confirm it.
    """
    guard = lock_sync.guard
    held: list[str] = []
    kept_owners: set[str] = set()
    if vanished and guard.too_many_owners(len(vanished), lock_sync.owners_before):
        kept_owners = {owner_id for owner_id in vanished if not guard.confirmed(owner_id)}
    with connect(lock_sync.engine) as conn, conn.begin():
        t = lock_sync.clock()
        gone: dict[str, list[tuple[str, str | None]]] = {}
        for chunk in chunks(_unconfirmed(lock_sync, conn, owner_ids)):
            rows = conn.execute(
                select(bound_locks.c.id, bound_locks.c.owner_account_id, bound_locks.c.title)
                .where(bound_locks.c.removed_at.is_(None))
                .where(bound_locks.c.owner_account_id.in_(chunk))
            )
            for lock_id, owner_id, title in rows:
                if lock_id not in lock_sync.seen:
                    gone.setdefault(owner_id, []).append((lock_id, title))
        if kept_owners:
            lock_sync.result.held_back.update({o: len(gone.get(o, ())) for o in kept_owners})
            held.append(owners_held_message(guard, kept_owners, lock_sync.owners_before, gone))
        doomed: dict[RemovalReason, list[str]] = {
            RemovalReason.UNBOUND: [],
            RemovalReason.OWNER_REMOVED: [],
        }
        per_owner: dict[str, int] = {}
        owner_notes: dict[str, str] = {}
        for owner_id, locks in sorted(gone.items()):
            if owner_id in kept_owners:
                continue
            # A vanished owner is judged by the owner-list rule alone (all its locks go).
            stored = lock_sync.locks_before.get(owner_id, 0)
            if (
                owner_id not in vanished
                and guard.too_many_locks(len(locks), stored)
                and not guard.confirmed(owner_id)
            ):
                lock_sync.result.held_back[owner_id] = len(locks)
                message = locks_held_message(guard, owner_id, len(locks), stored)
                held.append(message)
                notes = (lock_sync.also_listed.get(owner_id), message)
                owner_notes[owner_id] = "; ".join(n for n in notes if n)
                continue
            reason = RemovalReason.OWNER_REMOVED if owner_id in vanished else RemovalReason.UNBOUND
            doomed[reason].extend(lock_id for lock_id, _ in locks)
            per_owner[owner_id] = len(locks)
            for lock_id, title in locks:
                lock_sync.note("lock", lock_id, ChangeType.REMOVED, owner_id, None, reason, title)
        removed_owners = sorted(vanished - kept_owners)
        removed = sum(len(ids) for ids in doomed.values())
        for outcome in lock_sync.result.owners:
            outcome.counts.removed = per_owner.get(outcome.owner_account_id, 0)
            outcome.error = owner_notes.get(outcome.owner_account_id, outcome.error)
        for owner_id in removed_owners:
            lock_sync.note(
                "owner",
                owner_id,
                ChangeType.REMOVED,
                owner_id,
                None,
                RemovalReason.OWNER_REMOVED,
            )
        if lock_sync.dry_run:
            lock_sync.result.counts.removed += removed
            return held
        for reason, ids in doomed.items():
            remove_rows(
                conn,
                bound_locks,
                bound_lock_versions,
                LOCK_TRACKED,
                ids,
                t,
                reason,
                lock_sync.run_id,
            )
        remove_rows(
            conn,
            owner_accounts,
            owner_account_versions,
            OWNER_TRACKED,
            removed_owners,
            t,
            "owner_removed",
            lock_sync.run_id,
        )
        if per_owner:
            conn.execute(
                update(sync_run_owners)
                .where(sync_run_owners.c.run_id == lock_sync.run_id)
                .where(sync_run_owners.c.owner_account_id == bindparam("b_owner"))
                .values(removed=bindparam("b_removed")),
                [{"b_owner": o, "b_removed": n} for o, n in per_owner.items()],
            )
        if owner_notes:
            conn.execute(
                update(sync_run_owners)
                .where(sync_run_owners.c.run_id == lock_sync.run_id)
                .where(sync_run_owners.c.owner_account_id == bindparam("b_owner"))
                .values(error=bindparam("b_error")),
                [{"b_owner": o, "b_error": m} for o, m in owner_notes.items()],
            )
    # Counted once committed: a run that fails in this transaction records what it wrote.
    lock_sync.result.counts.removed += removed
    if removed or removed_owners:
        log.info("removed %d lock(s) and %d owner(s)", removed, len(removed_owners))
    for message in held:
        log.warning("%s", message)
    return held


def _unconfirmed(lock_sync: LockSync, conn: Connection, owner_ids: set[str]) -> list[str]:
    """The owners among `owner_ids` that may still have a present lock this run did not see.

    Every lock this run confirmed under an owner (unchanged, created, updated, restored) is
    present under it now, so an owner with exactly that many present locks has none left to
    remove; only the others are read lock by lock.
    """
    if lock_sync.dry_run:
        return sorted(owner_ids)  # nothing was written, so the stored counts prove nothing
    present = present_by_owner(conn, bound_locks)
    confirmed = {
        o.owner_account_id: o.counts.unchanged
        + o.counts.created
        + o.counts.updated
        + o.counts.restored
        for o in lock_sync.result.owners
        if o.status == OwnerStatus.COMPLETE
    }
    return sorted(o for o in owner_ids if present.get(o, 0) != confirmed.get(o, 0))
