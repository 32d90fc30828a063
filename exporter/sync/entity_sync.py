"""One access entity of one run (contacts, cards or grants): each owner's diff and writes, then
its removals; the rules are the lock contract (exporter.sync.access)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from operator import attrgetter, itemgetter
from typing import Any

from sqlalchemy import Connection, select

from exporter.db.engine import connect
from exporter.db.inlists import chunks
from exporter.db.schema import owner_accounts
from exporter.errors import TapkeyError
from exporter.kinds import ChangeType, RemovalReason
from exporter.results import Change, Counts
from exporter.sync import holds
from exporter.sync.access import AccessContext, AccessEntity, AccessOutcome
from exporter.sync.plan import claim_listed, diff_owner, owners_to_read, plan_removals
from exporter.sync.versions import (
    load_rows,
    present_by_owner,
    remove_rows,
    write_diff,
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
        # Owners whose list of this run is still awaited, and the elements listed by one owner
        # while stored under another of those (id -> (listing owner, record)): they wait for
        # that owner's list (`settle_moves`).
        self.awaited: set[str] = set()
        self.moves: dict[str, tuple[str, Any]] = {}
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
        self.awaited.discard(owner_id)
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
        claimed = claim_listed(self.seen, fetched)
        counts = Counts(skipped=fetched.skipped, unchanged=claimed.unchanged)
        records = claimed.records
        if claimed.twice:
            log.warning(
                "owner %s: %d %s(s) also listed by another owner in this run; kept under that "
                "owner until the next run",
                owner_id,
                len(claimed.twice),
                self.entity.noun,
            )
        self.confirmed[owner_id] = claimed.unchanged + len(records)
        if not records:
            self.outcome.counts.add(counts)
            return
        with conn.begin():
            t = self.context.clock()
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
        if self.awaited:
            records = [r for r in records if not self._moving(owner_id, r, stored.get(r.id))]
        diff = diff_owner(
            records,
            stored,
            tracked=tracked,
            values=attrgetter("values"),
            current=lambda record: {"raw": record.raw},
        )
        counts.add(diff.counts())
        values_of = itemgetter(*tracked)
        new_rows = [
            (record.id, *values_of(record.values), record.raw, t, t) for record in diff.created
        ]
        for record, kind, fields in diff.in_order(records) if context.dry_run else ():
            self._note(record.id, kind, owner_id, fields, None, record.values)
        if context.dry_run:
            return
        context.check_lock()
        write_diff(
            conn, diff, new_rows, entity.tables, owner_id=owner_id, t=t, run_id=context.run_id
        )

    def _moving(self, owner_id: str, record: Any, stored: Mapping[str, Any] | None) -> bool:
        """Whether `record` is present under another owner whose list is still awaited: then
        it waits for that list (held in `moves`, unclaimed), as it may list it too."""
        if stored is None or stored["removed_at"] is not None:
            return False
        if stored["owner_account_id"] == owner_id or stored["owner_account_id"] not in self.awaited:
            return False
        self.seen.discard(record.id)
        self.moves[record.id] = (owner_id, record)
        self.confirmed[owner_id] -= 1
        return True

    def settle_moves(self, conn: Connection) -> None:
        """Once every list is in: an element its stored owner listed too stays there (listed
        twice: the API is caught half-way through a move, or lists it under both); the others
        move to the owner that listed them."""
        moving: dict[str, list[Any]] = {}
        for row_id, (owner_id, record) in self.moves.items():
            if row_id in self.seen:
                log.warning(
                    "owner %s: %s %s also listed by the owner it is stored under in this run; "
                    "kept under that owner",
                    owner_id,
                    self.entity.noun,
                    row_id,
                )
            else:
                self.seen.add(row_id)
                moving.setdefault(owner_id, []).append(record)
        self.moves.clear()
        for owner_id, records in moving.items():
            self.confirmed[owner_id] = self.confirmed.get(owner_id, 0) + len(records)
            counts = Counts()
            with conn.begin():
                self._write(conn, owner_id, records, counts, self.context.clock())
            self.outcome.counts.add(counts)

    def remove(self) -> None:
        """Remove what complete fetches no longer list, and the rows of removed owners."""
        entity, context = self.entity, self.context
        table = entity.current
        with connect(context.engine) as conn, conn.begin():
            counts = self.outcome.counts
            # Only this entity's writes change the present rows per owner (creates, restores,
            # updates moving a row to another owner): without any, they are the rows counted
            # before the run (an unchanged rerun saves the GROUP BY).
            wrote = counts.created or counts.restored or counts.updated
            present = present_by_owner(conn, table) if wrote else self.before
            # Rows of owner accounts this or an earlier run removed go with them.
            gone_owners = select(owner_accounts.c.id).where(
                owner_accounts.c.removed_at.is_not(None)
            )
            orphans = list(
                conn.execute(
                    select(table.c.id)
                    .where(table.c.removed_at.is_(None))
                    .where(table.c.owner_account_id.in_(gone_owners))
                ).scalars()
            )
            to_read = owners_to_read(
                self.removable, present, self.confirmed, dry_run=context.dry_run
            )
            before, since = holds.judged_counts(context.holds, entity.name, self.before)
            plan = plan_removals(
                self._present_rows(conn, to_read),
                self.seen,
                guard=context.guard,
                before=before,
                reason=entity.removal_reason,
                what=entity.name,
                held_since=since,
            )
            settlement = holds.settle(
                context.holds,
                entity.name,
                judged=self.removable,
                held=plan.held_back.keys(),
                counts=before,
            )
            for message in plan.messages:
                self.outcome.held.append(message)
                log.warning("%s", message)
            self.outcome.held_back.update(plan.held_back)
            doomed = {
                entity.removal_reason: plan.ids(entity.removal_reason),
                RemovalReason.OWNER_REMOVED: orphans,
            }
            for reason, ids in doomed.items():
                for row_id in ids:
                    self._note(row_id, ChangeType.REMOVED, None, None, reason, None)
            removed = sum(len(ids) for ids in doomed.values())
            if context.dry_run or not (removed or settlement):
                self.outcome.counts.removed += removed
                return
            context.check_lock()
            t = context.clock()
            # With the removals: never one without the other.
            if settlement:
                holds.write(conn, settlement, t, context.run_id)
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

    def _present_rows(
        self, conn: Connection, owner_ids: list[str]
    ) -> Iterator[tuple[str, str, str | None]]:
        """The present rows (owner id, id, no title) of `owner_ids`, as read."""
        table = self.entity.current
        for chunk in chunks(owner_ids):
            rows = conn.execute(
                select(table.c.owner_account_id, table.c.id)
                .where(table.c.removed_at.is_(None))
                .where(table.c.owner_account_id.in_(chunk))
            )
            for owner_id, row_id in rows:
                yield owner_id, row_id, None

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
