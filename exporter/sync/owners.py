"""Owner accounts in one run: the owner list's writes and each owner's `sync_run_owners` row.

An owner's outcome is counted once its writes commit and recorded in the transaction that holds
them (exporter.sync.batches); owners that had nothing to write are recorded together after the
crawl (OwnerLedger).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, case, insert, literal, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from exporter.db.engine import connect
from exporter.db.inlists import IN_LIST_SIZE, chunks
from exporter.db.schema import (
    OWNER_TRACKED,
    owner_account_versions,
    owner_accounts,
    sync_run_owners,
)
from exporter.errors import StoreError, first_line
from exporter.kinds import ChangeType, OwnerStatus
from exporter.results import Counts, OwnerOutcome, RunResult
from exporter.sync.versions import changed_fields, close_versions, version_row
from exporter.tapkey.records import OwnerRecord

# The run's lines keep the engine's logger name (log filters and docs/operations.md use it).
log = logging.getLogger("exporter.sync.engine")

#: Owners whose last_seen_at one statement sets: each binds three parameters (its id twice and
#: its instant), which keeps a statement within old SQLite builds' 999.
LAST_SEEN_CHUNK = IN_LIST_SIZE // 2


def write_owners(
    conn: Connection,
    owners: Sequence[OwnerRecord],
    listed: set[str],
    *,
    t: datetime,
    run_id: int,
    dry_run: bool,
    note: Callable[..., None],
) -> set[str]:
    """Create, update and restore `owners`; return the ids of stored owners not `listed`.

    `note` is the run's dry-run note of each change (entity, id, change type, owner, fields).
    """
    stored = {row.id: row for row in conn.execute(select(owner_accounts))}
    new_rows: list[dict[str, Any]] = []
    changed_rows: list[dict[str, Any]] = []
    versions: list[dict[str, Any]] = []
    for owner in owners:
        values = {"name": owner.name, "active": owner.active}
        old = stored.get(owner.id)
        if old is None:
            new_rows.append({"id": owner.id, **values, "first_seen_at": t, "updated_at": t})
            versions.append(version_row(owner.id, values, t, ChangeType.CREATED, None, run_id))
            note("owner", owner.id, ChangeType.CREATED, owner.id, title=owner.name)
            continue
        fields = changed_fields(old._mapping, values, OWNER_TRACKED)
        if old.removed_at is None and not fields:
            continue
        kind = ChangeType.RESTORED if old.removed_at is not None else ChangeType.UPDATED
        changed_rows.append({"b_id": owner.id, **values, "removed_at": None, "updated_at": t})
        versions.append(version_row(owner.id, values, t, kind, fields, run_id))
        note("owner", owner.id, kind, owner.id, fields, title=owner.name)
    vanished = {
        row.id for row in stored.values() if row.removed_at is None and row.id not in listed
    }
    if not dry_run:
        close_versions(conn, owner_account_versions, [r["b_id"] for r in changed_rows], t)
        if new_rows:
            conn.execute(insert(owner_accounts), new_rows)
        if changed_rows:
            conn.execute(
                update(owner_accounts).where(owner_accounts.c.id == bindparam("b_id")),
                changed_rows,
            )
        if versions:
            conn.execute(insert(owner_account_versions), versions)
    return vanished


def record_owners(conn: Connection, run_id: int, outcomes: Sequence[OwnerOutcome]) -> None:
    """Owners' `sync_run_owners` rows, and `last_seen_at` of those fetched completely."""
    conn.execute(insert(sync_run_owners), [_outcome_row(run_id, o) for o in outcomes])
    seen = [
        (o.owner_account_id, o.fetched_at) for o in outcomes if o.status == OwnerStatus.COMPLETE
    ]
    # One statement per LAST_SEEN_CHUNK owners, not one per owner: PyMySQL sends an executemany
    # of UPDATEs as that many statements, each a round trip to a database on another host.
    instant = owner_accounts.c.last_seen_at.type
    for chunk in chunks(seen, LAST_SEEN_CHUNK):
        at = {owner_id: literal(seen_at, instant) for owner_id, seen_at in chunk}
        conn.execute(
            update(owner_accounts)
            .where(owner_accounts.c.id.in_(list(at)))
            .values(last_seen_at=case(at, value=owner_accounts.c.id))
        )


class OwnerLedger:
    """The run's owner outcomes: added to its counts once committed, recorded per owner."""

    def __init__(
        self,
        *,
        engine: Engine,
        result: RunResult,
        dry_run: bool,
        check_lock: Callable[[], None],
    ) -> None:
        self.engine = engine
        self.result = result
        self.dry_run = dry_run
        self.check_lock = check_lock
        # Outcomes of owners that had nothing else to write: recorded together after the crawl.
        self.quiet: list[OwnerOutcome] = []
        self.locks_applied = 0  # locks seen by the owners applied so far, committed or not

    @property
    def run_id(self) -> int:
        # Dry runs write nothing, so their rows never reach the database.
        return self.result.run_id or 0

    def committed(self, owners: list[tuple[OwnerOutcome, Counts]]) -> None:
        """Add owners whose writes are committed (or who had none) to the run's counts."""
        for outcome, counts in owners:
            self.result.locks_seen += outcome.locks_seen
            self.result.counts.add(counts)

    def record_group(self, conn: Connection, owners: list[tuple[OwnerOutcome, Counts]]) -> None:
        """Before a group commits: the writer lock is still ours, then its owners' run rows."""
        self.check_lock()
        record_owners(conn, self.run_id, [outcome for outcome, _ in owners])

    def record_quiet(self) -> None:
        """Record the owners that had nothing to write: their run rows and last_seen_at."""
        if self.dry_run or not self.quiet:
            return
        with connect(self.engine) as conn, conn.begin():
            record_owners(conn, self.run_id, self.quiet)
        self.quiet.clear()

    def record_quiet_at_end(self) -> None:
        """`record_quiet` for a run ending early (stopped, or failed by Tapkey): their counts
        are in the run's already, and without their rows the run's counts would not be its
        owners' sums. A database that fails here is left to the run's end to report."""
        try:
            self.check_lock()
            self.record_quiet()
        except (StoreError, OperationalError, DBAPIError) as exc:
            log.warning("could not record the owners of run %s: %s", self.run_id, first_line(exc))


def failed_summary(owners: Sequence[OwnerOutcome]) -> str | None:
    """The first failed owner's error, and how many more failed (None if none did)."""
    failed = [o for o in owners if o.status == OwnerStatus.FAILED]
    if not failed:
        return None
    first = failed[0]
    more = f" (+{len(failed) - 1} more owners failed)" if len(failed) > 1 else ""
    return f"owner {first.owner_account_id}: {first.error}{more}"


def _outcome_row(run_id: int, outcome: OwnerOutcome) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "owner_account_id": outcome.owner_account_id,
        "status": outcome.status,
        "locks_seen": outcome.locks_seen,
        "fetched_at": outcome.fetched_at,
        "error": outcome.error,
        **outcome.counts.as_dict(),
    }
