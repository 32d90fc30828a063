"""One access entity of one run (contacts, cards or grants): each owner's diff and writes, then
its removals; the rules are the lock contract (exporter.sync.access)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from exporter.db.bulk import insert_many
from exporter.db.engine import connect
from exporter.db.inlists import chunks
from exporter.db.schema import owner_accounts
from exporter.errors import TapkeyError
from exporter.results import Change, Counts
from exporter.sync.access import AccessContext, AccessEntity, AccessOutcome
from exporter.sync.guard import locks_held_message
from exporter.sync.versions import (
    close_versions,
    load_rows,
    open_created_versions,
    present_by_owner,
    remove_rows,
    version_row,
)
from exporter.tapkey.access import OwnerEntities, Privacy

# Its lines keep the access phase's logger name, as before it had a module of its own.
log = logging.getLogger("exporter.sync.access")


class EntitySync:
    """One entity's state in a run: what it has seen, what was present before, its outcome."""

    def __init__(self, context: AccessContext, entity: AccessEntity, privacy: Privacy) -> None:
        self.context = context
        self.entity = entity
        self.privacy = privacy
        self.outcome = AccessOutcome(entity.name)
        # Ids returned by a complete fetch of this run, or skipped with a readable id.
        self.seen: set[str] = set()
        self.before: dict[str, int] = {}  # present rows per owner before this run
        self.confirmed: dict[str, int] = {}  # rows each complete owner confirmed present
        self.removable: set[str] = set()  # owners fetched completely, every element identified
        self.missing_scope: str | None = None

    def count_present(self, conn: Connection) -> None:
        """Remember the present rows per owner before this run (the deletion guard's base)."""
        self.before = present_by_owner(conn, self.entity.current)

    def readable(self) -> bool:
        """False when the token lacks the entity's scope: asking would only be refused (403)."""
        granted = self.context.source.granted_scopes
        scope = self.entity.scope
        if granted is None or scope in granted:
            return True
        self.missing_scope = (
            f"the token lacks scope {scope} (granted: {' '.join(sorted(granted)) or 'none'}); "
            "add it to [tapkey] scopes (or leave scopes unset) and allow it for the OAuth client"
        )
        return False

    def take(self, conn: Connection, owner_id: str, fetched: OwnerEntities | TapkeyError) -> None:
        """Apply one owner's fetched list, or record why it failed."""
        if isinstance(fetched, TapkeyError):
            self.fail(owner_id, str(fetched))
            return
        self._apply(conn, owner_id, fetched)
        if not fetched.unidentified_skips:
            self.removable.add(owner_id)

    def fail(self, owner_id: str, error: str) -> None:
        """That entity of that owner is left as stored; the run will be partial."""
        self.outcome.failed[owner_id] = error
        log.warning("owner %s: %s not synced: %s", owner_id, self.entity.name, error)

    # -- writing ----------------------------------------------------------------------------

    def _apply(self, conn: Connection, owner_id: str, fetched: OwnerEntities) -> None:
        """Diff one owner's list against the stored rows and write the differences."""
        entity, context, counts = self.entity, self.context, Counts(skipped=fetched.skipped)
        self.seen.update(fetched.skipped_ids)
        twice = self.seen.intersection(fetched.unchanged_ids)
        self.seen.update(fetched.unchanged_ids)
        counts.unchanged += len(fetched.unchanged_ids) - len(twice)
        again = self.seen.intersection(r.id for r in fetched.records)
        records = [r for r in fetched.records if r.id not in again]
        self.seen.update(r.id for r in records)
        if twice or again:
            log.warning(
                "owner %s: %d %s(s) also listed by another owner in this run; kept under that "
                "owner until the next run",
                owner_id,
                len(twice | again),
                entity.noun,
            )
        self.confirmed[owner_id] = len(fetched.unchanged_ids) - len(twice) + len(records)
        if not records:
            self.outcome.counts.add(counts)
            return
        with conn.begin():
            t = context.clock()
            self._write(conn, owner_id, records, counts, t)
        self.outcome.counts.add(counts)

    def _write(
        self,
        conn: Connection,
        owner_id: str,
        records: Sequence[Any],
        counts: Counts,
        t: datetime,
    ) -> None:
        entity, context = self.entity, self.context
        tracked = entity.tracked
        stored = load_rows(conn, entity.current, (*tracked, "raw"), [r.id for r in records])
        new_rows: list[tuple[Any, ...]] = []
        versions: list[dict[str, Any]] = []
        changed: dict[str, list[dict[str, Any]]] = {"updated": [], "restored": [], "refresh": []}
        values_of = itemgetter(*tracked)
        for record in records:
            old = stored.get(record.id)
            values = record.values
            if old is None:
                counts.created += 1
                new_rows.append((record.id, *values_of(values), record.raw, t, t))
                self._note(record.id, "created", owner_id, None, None, values)
                continue
            fields = [name for name in tracked if old[name] != values[name]]
            if old["removed_at"] is None and not fields:
                if old["raw"] != record.raw:
                    changed["refresh"].append({"b_id": record.id, "raw": record.raw})
                counts.unchanged += 1
                continue
            kind = "restored" if old["removed_at"] is not None else "updated"
            setattr(counts, kind, getattr(counts, kind) + 1)
            changed[kind].append(
                {
                    "b_id": record.id,
                    **values,
                    "raw": record.raw,
                    "removed_at": None,
                    "updated_at": t,
                }
            )
            versions.append(version_row(record.id, values, t, kind, fields, context.run_id))
            self._note(record.id, kind, owner_id, fields, None, values)
        if context.dry_run:
            return
        context.check_lock()
        table = entity.current
        close_versions(conn, entity.versions, [r["b_id"] for r in changed["updated"]], t)
        close_versions(conn, entity.versions, [r["b_id"] for r in changed["restored"]], t)
        insert_many(conn, table, ("id", *tracked, "raw", "first_seen_at", "updated_at"), new_rows)
        for rows in changed.values():
            if rows:
                conn.execute(update(table).where(table.c.id == bindparam("b_id")), rows)
        if new_rows:
            open_created_versions(
                conn,
                owner_id,
                t,
                context.run_id,
                current=table,
                versions=entity.versions,
                tracked=tracked,
            )
        if versions:
            conn.execute(insert(entity.versions), versions)

    def remove(self) -> None:
        """Remove what complete fetches no longer list, and the rows of removed owners."""
        entity, context, guard = self.entity, self.context, self.context.guard
        removable = self.removable
        table = entity.current
        with connect(context.engine) as conn, conn.begin():
            counts = self.outcome.counts
            # Only this entity's writes change the present rows per owner (creates, restores,
            # updates moving a row to another owner): without any, they are the rows counted
            # before the run (an unchanged rerun saves the GROUP BY).
            wrote = counts.created or counts.restored or counts.updated
            present = present_by_owner(conn, table) if wrote else self.before
            doomed: dict[str, list[str]] = {entity.removal_reason: [], "owner_removed": []}
            # Rows of owner accounts this or an earlier run removed go with them.
            gone_owners = select(owner_accounts.c.id).where(
                owner_accounts.c.removed_at.is_not(None)
            )
            orphans = conn.execute(
                select(table.c.id)
                .where(table.c.removed_at.is_(None))
                .where(table.c.owner_account_id.in_(gone_owners))
            ).scalars()
            doomed["owner_removed"].extend(orphans)
            # Every row a complete owner confirmed is present now: an owner with exactly that
            # many present rows has none to remove (unless this is a dry run, which wrote none).
            candidates = sorted(
                o
                for o in removable
                if context.dry_run or present.get(o, 0) != self.confirmed.get(o, 0)
            )
            for chunk in chunks(candidates):
                rows = conn.execute(
                    select(table.c.id, table.c.owner_account_id)
                    .where(table.c.removed_at.is_(None))
                    .where(table.c.owner_account_id.in_(chunk))
                ).all()
                gone: dict[str, list[str]] = {}
                for row_id, owner_id in rows:
                    if row_id not in self.seen:
                        gone.setdefault(owner_id, []).append(row_id)
                for owner_id, ids in sorted(gone.items()):
                    stored = self.before.get(owner_id, 0)
                    if guard.too_many_locks(len(ids), stored) and not guard.confirmed(owner_id):
                        message = locks_held_message(
                            guard, owner_id, len(ids), stored, what=entity.name
                        )
                        self.outcome.held.append(message)
                        self.outcome.held_back[owner_id] = len(ids)
                        log.warning("%s", message)
                        continue
                    doomed[entity.removal_reason].extend(ids)
            for reason, ids in doomed.items():
                for row_id in ids:
                    self._note(row_id, "removed", None, None, reason, None)
            removed = sum(len(ids) for ids in doomed.values())
            if context.dry_run or not removed:
                self.outcome.counts.removed += removed
                return
            context.check_lock()
            t = context.clock()
            for reason, ids in doomed.items():
                remove_rows(
                    conn,
                    table,
                    entity.versions,
                    entity.tracked,
                    ids,
                    t,
                    reason,
                    context.run_id,
                )
        self.outcome.counts.removed += removed

    def _note(
        self,
        row_id: str,
        change_type: str,
        owner_id: str | None,
        fields: Sequence[str] | None,
        reason: str | None,
        values: Mapping[str, Any] | None,
    ) -> None:
        if not self.context.dry_run:
            return
        title = values.get("title") if values is not None else None
        self.context.changes.append(
            Change(
                self.entity.noun,
                row_id,
                change_type,
                owner_id,
                tuple(fields) if fields else None,
                reason,
                title if isinstance(title, str) else None,
            )
        )
