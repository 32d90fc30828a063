"""The run's bound locks: each owner's diff and writes as it arrives, the removals after the crawl.

Part of one sync run (exporter.sync.engine owns the run and calls these in order):
`count_present` before anything changes, `write` for every owner fetched completely, `remove`
once every owner was fetched. The rules are the engine's (its module docstring).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from operator import attrgetter, itemgetter
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from exporter.db.engine import backend, connect
from exporter.db.schema import (
    LOCK_TRACKED,
    bound_lock_versions,
    bound_locks,
    owner_accounts,
)
from exporter.errors import TapkeyError
from exporter.kinds import OwnerStatus
from exporter.results import Counts, OwnerOutcome, RunResult
from exporter.sync import health as lock_health
from exporter.sync import holds
from exporter.sync.batches import Batching, WriteGroup
from exporter.sync.crawl import InventorySource, crawl
from exporter.sync.guard import RemovalGuard
from exporter.sync.owners import OwnerLedger
from exporter.sync.plan import claim_listed, diff_owner
from exporter.sync.versions import (
    LOCK_CURRENT_ONLY,
    VersionedTable,
    load_locks,
    present_by_owner,
    write_diff,
)
from exporter.tapkey.records import LockRecord, OwnerLocks

# The run's lines keep the engine's logger name (log filters and docs/operations.md use it).
log = logging.getLogger("exporter.sync.engine")

# Bulk-insert column orders for new locks (see db.bulk.insert_many); the owner comes from the URL.
assert LOCK_TRACKED[0] == "owner_account_id"
_TRACKED_REST = attrgetter(*LOCK_TRACKED[1:])
_CURRENT = attrgetter(*LOCK_CURRENT_ONLY)
_first = itemgetter(0)
_NEW_LOCK_COLUMNS = ("id", *LOCK_TRACKED, *LOCK_CURRENT_ONLY, "first_seen_at", "updated_at")
_LOCK_TABLES = VersionedTable(bound_locks, bound_lock_versions, LOCK_TRACKED, _NEW_LOCK_COLUMNS)

# The run's dry-run note of one change: entity, id, change type, owner, fields, reason, title.
Note = Callable[..., None]


class LockSync:
    """One run's lock state: what it has seen, what was present before it, what it writes."""

    def __init__(
        self,
        *,
        engine: Engine,
        result: RunResult,
        clock: Callable[[], datetime],
        dry_run: bool,
        health: bool,
        guard: RemovalGuard,
        note: Note,
        ledger: OwnerLedger,
    ) -> None:
        self.engine = engine
        self.result = result
        self.clock = clock
        self.dry_run = dry_run
        # Ask for health readings and store new ones (lock_health), never as versions.
        self.health = health
        self.guard = guard
        self.note = note
        self.ledger = ledger
        # Lock ids returned by a complete fetch of this run, or skipped with a readable id.
        self.seen: set[str] = set()
        # Whether bound_locks had any row before this run (it is the only writer).
        self.had_locks = True
        # Per owner, the note on locks another owner of this run listed first (_listed_twice).
        self.also_listed: dict[str, str] = {}
        # Present locks per owner and present owners before this run (for the deletion guard).
        self.locks_before: dict[str, int] = {}
        self.owners_before = 0
        # Removals held back by earlier runs: what the guard judges them against (sync.holds).
        self.holds: dict[tuple[str, str], holds.Hold] = {}
        # InnoDB keeps bound_locks in (owner, id) order (schema.MYSQL_LOCK_ID_INDEX): an owner's
        # new locks inserted in id order fill its pages (in API order, which is random by id,
        # each page split half-way and the first load's table grew by a third). Elsewhere the
        # insert order is the order texts are read back in, which must stay the API's.
        self.insert_in_id_order = backend(engine) == "mysql"

    @property
    def run_id(self) -> int:
        # Dry runs write nothing, so their version rows never reach the database.
        return self.result.run_id or 0

    def count_present(self) -> None:
        """Remember what is present before this run changes anything (for the deletion guard).

        The engine reads it while the owner list is requested: under the writer lock nothing
        else changes these tables, and the run changes them only once the list is in."""
        with connect(self.engine) as conn, conn.begin():
            self.locks_before = present_by_owner(conn, bound_locks)
            self.owners_before = conn.execute(
                select(func.count()).where(owner_accounts.c.removed_at.is_(None))
            ).scalar_one()
            self.had_locks = conn.execute(select(bound_locks.c.id).limit(1)).first() is not None
            self.holds = holds.load(conn)

    def crawl(
        self,
        owner_ids: list[str],
        *,
        source: InventorySource,
        workers: int,
        stop: threading.Event,
        batching: Batching,
        report: Callable[[], None],
    ) -> tuple[set[str], set[str]]:
        """Fetch every owner's locks and write them as they arrive, whole owners per group.

        Returns the owners fetched completely, and those of them whose every lock had an id
        (only their unseen locks may be removed). `report` is called after every owner.
        """
        complete: set[str] = set()
        removable: set[str] = set()
        ledger = self.ledger
        # One connection for every owner's transaction: no pool checkout and ping per owner.
        # Closing the crawl on the way out stops its threads and returns its reader connection
        # now, not whenever the generator is collected (after the caller disposed the engine).
        # An exception leaves the open group uncommitted: closing the connection rolls it back.
        with connect(self.engine) as conn:
            group: WriteGroup[tuple[OwnerOutcome, Counts]] = WriteGroup(
                conn,
                batching,
                on_commit=ledger.committed,
                before_commit=lambda owners: ledger.record_group(conn, owners),
            )
            fetches = crawl(
                source,
                owner_ids,
                engine=self.engine,
                workers=workers,
                stop=stop,
                stored_locks=self.locks_before,
                expand=lock_health.EXPAND if self.health else (),
                idle=group.commit,
            )
            with contextlib.closing(fetches):
                for owner_id, fetched in fetches:
                    if stop.is_set():
                        break
                    outcome = self._apply_owner(conn, group, owner_id, fetched)
                    self.result.owners.append(outcome)
                    if outcome.status == OwnerStatus.COMPLETE:
                        complete.add(owner_id)
                        assert isinstance(fetched, OwnerLocks)
                        if not fetched.unidentified_skips:
                            removable.add(owner_id)
                    report()
            # Stopped or done: every owner in the group is whole, so what it holds is kept.
            group.commit()
        return complete, removable

    def _apply_owner(
        self,
        conn: Connection,
        group: WriteGroup[tuple[OwnerOutcome, Counts]],
        owner_id: str,
        fetched: OwnerLocks | TapkeyError,
    ) -> OwnerOutcome:
        if isinstance(fetched, TapkeyError):
            outcome = OwnerOutcome(
                owner_id, OwnerStatus.FAILED, fetched_at=self.clock(), error=str(fetched)
            )
            log.warning("owner %s failed: %s", owner_id, fetched)
            self.ledger.quiet.append(outcome)
            return outcome
        # Only locks that differ from the stored text are loaded or written; without any, no
        # transaction is needed (an empty one still costs a COMMIT round trip on some servers).
        if fetched.records:
            group.begin()
        t = self.clock()
        counts, wrote = self.write(conn, owner_id, fetched, t)
        outcome = OwnerOutcome(
            owner_id,
            OwnerStatus.COMPLETE,
            locks_seen=len(fetched.records) + len(fetched.unchanged_ids),
            counts=counts,
            fetched_at=t,
            error=self.also_listed.get(owner_id),
        )
        self.ledger.locks_applied += outcome.locks_seen
        if wrote:
            # Recorded in its group's transaction and counted once that commits: a run that dies
            # first records only what it wrote.
            group.wrote(len(fetched.records), (outcome, counts))
        else:
            # Nothing changed: no transaction of its own (most owners on most runs).
            self.ledger.quiet.append(outcome)
            self.ledger.committed([(outcome, counts)])
        return outcome

    def write(
        self, conn: Connection, owner_id: str, fetched: OwnerLocks, t: datetime
    ) -> tuple[Counts, bool]:
        """Diff one owner's locks against the stored rows and write the differences.

        Returns the counts and whether anything was written.
        """
        claimed = claim_listed(self.seen, fetched)
        counts = Counts(skipped=fetched.skipped, unchanged=claimed.unchanged)
        records = claimed.records
        if claimed.twice:
            self._listed_twice(owner_id, claimed.twice)
        # Only locks whose text differs from the stored one are loaded and diffed in full (new,
        # changed, moved in, restored). Into a table that was empty when the run began nothing
        # needs loading: a lock this run already wrote is in `seen`, and was skipped above.
        stored = load_locks(conn, [r.id for r in records]) if self.had_locks and records else {}
        diff = diff_owner(
            records,
            stored,
            tracked=LOCK_TRACKED,
            values=lambda record: _lock_values(record, owner_id),
            current=_current_values,
        )
        counts.add(diff.counts())
        new_rows = [
            (record.id, owner_id, *_TRACKED_REST(record), *_CURRENT(record), t, t)
            for record in diff.created
        ]
        if self.insert_in_id_order:
            new_rows.sort(key=_first)
        if self.dry_run:
            for record, kind, fields in diff.in_order(records):
                self.note("lock", record.id, kind, owner_id, fields, title=record.title)
        wrote = bool(diff.created or diff.changes or diff.refresh or (self.health and records))
        if not wrote or self.dry_run:
            return counts, False
        write_diff(conn, diff, new_rows, _LOCK_TABLES, owner_id=owner_id, t=t, run_id=self.run_id)
        if self.health:
            lock_health.store_readings(conn, records, seen_at=t, run_id=self.run_id)
        return counts, True

    def _listed_twice(self, owner_id: str, lock_ids: set[str]) -> None:
        """Note locks that an owner applied earlier in this run listed too (a move caught
        half-way): they stay with that owner this run and are not counted again (they are not
        unreadable, so not `skipped` either); the next run sees the settled state."""
        shown = ", ".join(sorted(lock_ids)[:5]) + (", ..." if len(lock_ids) > 5 else "")
        what = "lock" if len(lock_ids) == 1 else f"{len(lock_ids)} locks"
        note = (
            f"{what} also listed by another owner in this run (a move caught half-way?): "
            f"{shown}; kept under that owner until the next run"
        )
        self.also_listed[owner_id] = note
        log.warning("owner %s: %s", owner_id, note)


def _current_values(record: LockRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in LOCK_CURRENT_ONLY}


def _lock_values(record: LockRecord, owner_id: str) -> dict[str, Any]:
    values = {name: getattr(record, name) for name in LOCK_TRACKED}
    # The URL names the owner whose list this is; that is where the lock is bound now.
    values["owner_account_id"] = owner_id
    return values
