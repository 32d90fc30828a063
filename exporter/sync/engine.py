"""The sync engine: owner accounts and bound locks from the API in, exact history out.

One run:
1. takes the database's writer lock, writes the ends of this process's earlier runs that the
   database was away for, and marks runs left `running` without an end as failed (abandoned;
   see exporter.sync.run_records);
2. fetches the whole owner list and writes owner creates/updates/restores in one transaction;
3. fetches every owner's bound locks (`workers` at a time) and writes each owner's creates,
   updates and restores in bulk statements, whole owners grouped into bounded transactions while
   the writer has owners queued (exporter.sync.batches: never an owner split, each owner's
   `sync_run_owners` row in its group). A lock whose payload text equals the stored text is
   unchanged without becoming a record; an owner with nothing to write needs no transaction: its
   `sync_run_owners` row and `last_seen_at` are written with the others like it once the crawl
   is over. A first load into empty tables builds their secondary indexes after its writes
   (exporter.db.indexes);
4. after every owner has been fetched, decides removals in one transaction: a lock is removed
   only if no complete fetch of this run returned it, and only if it belongs to an owner whose
   fetch was complete (`unbound`) or to an owner that vanished from the owner list
   (`owner_removed`); an owner whose fetch failed changes nothing and makes the run `partial`;
5. with `logs`, reads every listed owner's new log entries and appends them, each page with the
   watermark it reaches in one transaction (see exporter.sync.log_entries); an owner whose log
   fails makes the run `partial` and changes nothing else;
6. records the outcome in `sync_runs`.

A crash at any point leaves a consistent database: every transaction moves the current tables and
the version tables together, and the next run marks the crashed run failed (abandoned), writes
again what the lost group held and builds any index a dead first load left missing.

Versions are half-open intervals [valid_from, valid_to). Every instant the engine writes comes
from a clock forced to move forward past everything already stored, so the versions of an entity
are strictly ordered even if the system clock steps back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, OperationalError

from exporter.db import indexes
from exporter.db.bulk import insert_many
from exporter.db.engine import connect
from exporter.db.errors import store_error
from exporter.db.inlists import chunks
from exporter.db.schema import (
    LOCK_TRACKED,
    OWNER_TRACKED,
    bound_lock_versions,
    bound_locks,
    owner_account_versions,
    owner_accounts,
    sync_run_owners,
    sync_runs,
)
from exporter.db.writer_lock import WriterLock
from exporter.errors import (
    ClientMismatchError,
    Interrupted,
    StoreError,
    TapkeyError,
    first_line,
)
from exporter.kinds import ChangeType, OwnerStatus, RemovalReason, RunStatus
from exporter.results import Change, Counts, OwnerOutcome, RunResult, SyncProgress
from exporter.sync import api_paging, log_entries, run_records
from exporter.sync import health as lock_health
from exporter.sync.access import (
    AccessContext,
    AccessOptions,
    AccessOutcome,
    AccessSource,
    sync_access,
)
from exporter.sync.batches import Batching, WriteGroup
from exporter.sync.crawl import InventorySource, _DaemonPool, call_until_stopped, crawl
from exporter.sync.guard import RemovalGuard, locks_held_message, owners_held_message
from exporter.sync.versions import (
    LOCK_CURRENT_ONLY,
    Clock,
    close_versions,
    latest_instant,
    load_locks,
    open_created_versions,
    remove_rows,
    version_row,
)
from exporter.tapkey.fields import MAX_ID_LENGTH
from exporter.tapkey.paging import PagingCheck
from exporter.tapkey.records import LockRecord, OwnerLocks, OwnerRecord

log = logging.getLogger(__name__)

# Bulk-insert column orders for new locks (see db.bulk.insert_many); the owner comes from the URL.
assert LOCK_TRACKED[0] == "owner_account_id"
_TRACKED_REST = attrgetter(*LOCK_TRACKED[1:])
_CURRENT = attrgetter(*LOCK_CURRENT_ONLY)
_NEW_LOCK_COLUMNS = ("id", *LOCK_TRACKED, *LOCK_CURRENT_ONLY, "first_seen_at", "updated_at")


def filled_by(conn: Connection) -> str | None:
    """The OAuth client id of the last run that wrote to this database, if any."""
    value = conn.execute(
        select(sync_runs.c.client_id)
        .where(sync_runs.c.status.in_((RunStatus.SUCCEEDED, RunStatus.PARTIAL)))
        .where(sync_runs.c.client_id.is_not(None))
        .order_by(sync_runs.c.id.desc())
        .limit(1)
    ).scalar()
    return None if value is None else str(value)


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


def sync(
    *,
    engine: Engine,
    source: InventorySource,
    client_id: str,
    trigger: str = "manual",
    now: Callable[[], datetime] = utcnow,
    workers: int = 4,
    dry_run: bool = False,
    allow_client_change: bool = False,
    lock_timeout: float = 0.0,
    stop: threading.Event | None = None,
    on_started: Callable[[int], None] | None = None,
    guard: RemovalGuard | None = None,
    health: bool = False,
    batching: Batching | None = None,
    progress: Callable[[SyncProgress], None] | None = None,
    access: AccessOptions | None = None,
    logs: log_entries.LogOptions | None = None,
) -> RunResult:
    """Run one sync and return its outcome; see the module docstring for the rules.

    `on_started(run_id)` is called once the run's `sync_runs` row exists (the daemon tags its
    log lines and metrics with it). `guard` holds back mass removals (default: RemovalGuard()).
    `health` asks for `expand=healthStatuses` and stores new readings (see exporter.sync.health).
    `batching` bounds the transactions that group owners (exporter.sync.batches; default
    Batching()). `progress` is called from the calling thread once the owner list is known and
    after every owner (owners done and total, locks seen, API requests so far).
    `access` names the access entities synced after the locks (see exporter.sync.access); the
    source must then also be an AccessSource.
    `logs` also reads every listed owner's new log entries once the locks are done (see
    exporter.sync.log_entries; not in a dry run); an owner whose log fails makes the run
    `partial`.

    Raises LockHeldError when another run holds the lock (nothing written), ClientMismatchError
    when the database belongs to another OAuth client, and DatabaseUnavailableError when the
    database goes away. Tapkey failures do not raise: they end in a `failed` or `partial` result.
    """
    run = _Run(
        engine=engine,
        source=source,
        client_id=client_id,
        trigger=trigger,
        now=now,
        workers=workers,
        dry_run=dry_run,
        stop=stop or threading.Event(),
    )
    run.guard = guard or RemovalGuard()
    run.health = health
    run.batching = batching or Batching()
    run.progress = progress
    run.access = access or AccessOptions()
    run.logs = logs
    if dry_run:
        return run.execute()
    with WriterLock(engine, timeout=lock_timeout) as lock:
        run.lock = lock
        run.on_started = on_started
        try:
            run.prepare(allow_client_change=allow_client_change)
        except (OperationalError, DBAPIError) as exc:
            raise store_error(exc, engine) from None
        return run.execute()


class _Run:
    def __init__(
        self,
        *,
        engine: Engine,
        source: InventorySource,
        client_id: str,
        trigger: str,
        now: Callable[[], datetime],
        workers: int,
        dry_run: bool,
        stop: threading.Event,
    ) -> None:
        self.engine = engine
        self.source = source
        self.client_id = client_id
        self.trigger = trigger
        self.workers = workers
        self.dry_run = dry_run
        self.stop = stop
        self.lock: WriterLock | None = None
        self.on_started: Callable[[int], None] | None = None
        self.now = now
        self.clock = Clock(now, None)
        self.requests_at_start = source.request_count
        self.result = RunResult(
            run_id=None,
            status=RunStatus.RUNNING,
            trigger=trigger,
            started_at=self.clock(),
            dry_run=dry_run,
        )
        # Lock ids returned by a complete fetch of this run, or skipped with a readable id.
        self.seen: set[str] = set()
        # Whether bound_locks had any row before this run (it is the only writer).
        self.had_locks = True
        # Outcomes of owners that had nothing else to write: recorded together after the crawl.
        self.quiet: list[OwnerOutcome] = []
        # Per owner, the note on locks another owner of this run listed first (_listed_twice).
        self.also_listed: dict[str, str] = {}
        self.guard = RemovalGuard()
        # Ask for health readings and store new ones (lock_health), never as versions.
        self.health = False
        self.access = AccessOptions()
        # Read log entries after the locks (log_entries), when enabled.
        self.logs: log_entries.LogOptions | None = None
        # Present locks per owner and present owners before this run (for the deletion guard).
        self.locks_before: dict[str, int] = {}
        self.owners_before = 0
        # Ids of the owners present before this run (read with what is known of the paging).
        self.present_owners: frozenset[str] | None = None
        self.batching = Batching()
        self.progress: Callable[[SyncProgress], None] | None = None
        self.locks_applied = 0  # locks seen by the owners applied so far, committed or not

    # -- run record ---------------------------------------------------------------------------

    def prepare(self, *, allow_client_change: bool) -> None:
        """Close earlier runs' records, check the client, and open this run's record."""
        unrecorded = run_records.unrecorded(self.engine)
        # Before anything is written: indexes a first load that died did not get to build.
        built = indexes.restore(self.engine)
        if built:
            log.warning(
                "built the missing index(es) %s (a first load that did not finish left them)",
                ", ".join(built),
            )
        with connect(self.engine) as conn, conn.begin():
            # Ends of this process's runs the database was away for, then runs nobody closed.
            run_records.write_unrecorded(conn, unrecorded)
            run_records.mark_abandoned(conn)
            # Read under the lock: nobody else writes now, so this is the true latest instant.
            self.clock = Clock(self.now, latest_instant(conn))
            self.result.started_at = self.clock()
            self._read_paging(conn)
            previous = filled_by(conn)
            if previous is not None and previous != self.client_id and not allow_client_change:
                raise ClientMismatchError(
                    f"this database was filled by OAuth client {previous!r}, but the configuration "
                    f"uses {self.client_id!r}; two clients would remove each other's owners. Use a "
                    "separate database, or pass --allow-client-change ([sync] "
                    "allow_client_id_change = true) if the client was replaced on purpose"
                )
            self.result.run_id = conn.execute(
                insert(sync_runs).values(
                    started_at=self.result.started_at,
                    status=RunStatus.RUNNING,
                    trigger=self.trigger,
                    client_id=self.client_id,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
        run_records.forget(self.engine, unrecorded)
        if self.on_started is not None and self.result.run_id is not None:
            self.on_started(self.result.run_id)
        log.info("run %s started (%s)", self.result.run_id, self.trigger)

    def _read_paging(self, conn: Connection) -> None:
        """What earlier runs learned about the API's paging, and the present owners' ids (a
        page that lists them all ends the owner list; exporter.tapkey.paging, rule 3)."""
        self.source.paging.learn(api_paging.load(conn, self.source.api_url))
        stored = conn.execute(
            select(owner_accounts.c.id).where(owner_accounts.c.removed_at.is_(None))
        ).scalars()
        self.present_owners = frozenset(stored)

    def execute(self) -> RunResult:
        """Run the phases; a failure ends the run as `failed` rather than leaving it open."""
        try:
            self._phases()
        except Interrupted:
            self._finish(RunStatus.FAILED, "interrupted")
        except TapkeyError as exc:
            self._finish(RunStatus.FAILED, str(exc))
        except (OperationalError, DBAPIError) as exc:
            error = store_error(exc, self.engine)
            self._finish(RunStatus.FAILED, str(error))
            raise error from None
        except StoreError as exc:
            self._finish(RunStatus.FAILED, str(exc))
            raise
        except BaseException as exc:
            self._finish(RunStatus.FAILED, first_line(exc))
            raise
        return self.result

    def _finish(self, status: str, error: str | None) -> None:
        result = self.result
        result.status = status
        result.error = error
        result.finished_at = self.clock()
        result.api_requests = self.source.request_count - self.requests_at_start
        if self.dry_run or result.run_id is None:
            return
        end = {
            "status": status,
            "finished_at": result.finished_at,
            "owners_seen": result.owners_seen,
            "locks_seen": result.locks_seen,
            "api_requests": result.api_requests,
            "error": error,
            **result.counts.as_dict(),
        }
        run_records.record_end(
            self.engine, result.run_id, result.started_at, end, wait=self.stop.wait
        )
        log.info(
            "run %s %s: %s",
            result.run_id,
            status,
            ", ".join(f"{k}={v}" for k, v in result.counts.as_dict().items()),
        )

    # -- phases -------------------------------------------------------------------------------

    def _phases(self) -> None:
        if self.present_owners is None:  # a dry run: not read by prepare()
            with connect(self.engine) as conn:
                self._read_paging(conn)
        present = self.present_owners
        owners = call_until_stopped(self.stop, lambda: self.source.list_owners(stored=present))
        self.result.owners_seen = len(owners)
        listed = {owner.id for owner in owners}
        owners = [owner for owner in owners if not self._fails_unstorable(owner)]
        with connect(self.engine) as conn, conn.begin():
            self._count_present(conn)
            vanished = self._write_owners(conn, owners, listed)
        deferred = (
            not self.dry_run and not self.had_locks and indexes.drop_for_first_load(self.engine)
        )
        self._report()
        complete: set[str] = set()
        removable: set[str] = set()
        # One connection for every owner's transaction: no pool checkout and ping per owner.
        # Closing the crawl on the way out stops its threads and returns its reader connection
        # now, not whenever the generator is collected (after the caller disposed the engine).
        # An exception leaves the open group uncommitted: closing the connection rolls it back.
        with connect(self.engine) as conn:
            group: WriteGroup[tuple[OwnerOutcome, Counts]] = WriteGroup(
                conn,
                self.batching,
                on_commit=self._committed,
                before_commit=lambda owners: self._record_group(conn, owners),
            )
            fetches = crawl(
                self.source,
                [owner.id for owner in owners],
                engine=self.engine,
                workers=self.workers,
                stop=self.stop,
                stored_locks=self.locks_before,
                expand=lock_health.EXPAND if self.health else (),
                idle=group.commit,
            )
            with contextlib.closing(fetches):
                for owner_id, fetched in fetches:
                    if self.stop.is_set():
                        break
                    outcome = self._apply_owner(conn, group, owner_id, fetched)
                    self.result.owners.append(outcome)
                    if outcome.status == OwnerStatus.COMPLETE:
                        complete.add(owner_id)
                        assert isinstance(fetched, OwnerLocks)
                        if not fetched.unidentified_skips:
                            removable.add(owner_id)
                    self._report()
            # Stopped or done: every owner in the group is whole, so what it holds is kept.
            group.commit()
        if self.stop.is_set():
            raise Interrupted  # a stop is quick: the next run builds the indexes left out
        if deferred:
            self._build_indexes()
        paging = self._confirm_paging()
        removable -= paging.unproven
        if None in paging.unproven:  # the owner list may have been cut short: nobody vanished
            vanished = set()
        self._check_lock()
        self._record_quiet_owners()
        held = self._remove(removable | vanished, vanished)
        logs = self._read_logs([owner.id for owner in owners])
        failed = listed - complete
        access = self._sync_access([owner.id for owner in owners])
        if held or any(o.held for o in access):
            held.append("under `exporter serve`, set [sync] allow_mass_removal = true for one run")
        problems = [p for o in access for p in o.problems()]
        summary = "; ".join(
            m
            for m in (_failed_summary(self.result.owners), paging.message, *problems, *held, logs)
            if m
        )
        unproven = paging.message is not None
        partial = failed or held or problems or unproven or logs
        self._finish(RunStatus.PARTIAL if partial else RunStatus.SUCCEEDED, summary or None)

    def _confirm_paging(self) -> PagingCheck:
        """Confirm the list ends that need it (exporter.tapkey.paging), and keep what this run
        learned about the API's paging."""
        check = call_until_stopped(self.stop, self.source.confirm_paging)
        if self.source.paging.changed and not self.dry_run:
            self._save_paging()
        return check

    def _save_paging(self) -> None:
        self._check_lock()
        with connect(self.engine) as conn, conn.begin():
            api_paging.save(conn, self.source.api_url, self.source.paging.sizes, self.clock())

    def _sync_access(self, owner_ids: list[str]) -> list[AccessOutcome]:
        """Contacts, cards and grants of the listed owners (exporter.sync.access)."""
        if not self.access.entities:
            return []
        context = AccessContext(
            engine=self.engine,
            source=cast(AccessSource, self.source),
            clock=self.clock,
            run_id=self._run_id,
            dry_run=self.dry_run,
            stop=self.stop,
            guard=self.guard,
            workers=self.workers,
            check_lock=self._check_lock,
            changes=self.result.changes,
        )
        outcomes = sync_access(context, owner_ids, self.access)
        for outcome in outcomes:
            self.result.access[outcome.entity] = outcome.counts
        return outcomes

    def _read_logs(self, owner_ids: list[str]) -> str | None:
        """Store the owners' new log entries; the summary of the owners whose log failed."""
        if self.logs is None or self.dry_run or not owner_ids:
            return None
        self._check_lock()
        source = cast(log_entries.LogSource, self.source)
        learned = self.source.paging.sizes
        with connect(self.engine) as conn, _DaemonPool(self.workers, "logs") as pool:
            result = log_entries.read_logs(
                conn,
                source,
                owner_ids,
                run_id=self._run_id,
                clock=self.clock,
                options=self.logs,
                stop=self.stop,
                before_write=self._check_lock,
                pool=pool,
                workers=self.workers,
            )
        if self.source.paging.sizes != learned:  # the log reader stepped $top down: keep it
            self._save_paging()
        self.result.log_entries = result.stored
        self.result.log_failures = {o.owner_account_id: o.error or "" for o in result.failed}
        return result.summary()

    def _count_present(self, conn: Connection) -> None:
        """Remember what is present before this run changes anything (for the deletion guard)."""
        self.locks_before = _present_by_owner(conn)
        self.owners_before = conn.execute(
            select(func.count()).where(owner_accounts.c.removed_at.is_(None))
        ).scalar_one()
        self.had_locks = conn.execute(select(bound_locks.c.id).limit(1)).first() is not None

    def _fails_unstorable(self, owner: OwnerRecord) -> bool:
        """Fail an owner the database cannot hold (OwnerRecord.problem): it and its locks are
        left as stored, the other owners sync, and the run is partial."""
        if owner.problem is None:
            return False
        error = f"{owner.problem}; the owner and its locks were left as stored"
        outcome = OwnerOutcome(owner.id, OwnerStatus.FAILED, fetched_at=self.clock(), error=error)
        log.warning("owner %s failed: %s", owner.id, error)
        self.result.owners.append(outcome)
        if len(owner.id) <= MAX_ID_LENGTH:  # else it cannot have a sync_run_owners row either
            self.quiet.append(outcome)
        return True

    def _write_owners(
        self, conn: Connection, owners: Sequence[OwnerRecord], listed: set[str]
    ) -> set[str]:
        """Create, update and restore `owners`; return the ids of stored owners not `listed`."""
        t = self.clock()
        stored = {row.id: row for row in conn.execute(select(owner_accounts))}
        new_rows: list[dict[str, Any]] = []
        changed_rows: list[dict[str, Any]] = []
        versions: list[dict[str, Any]] = []
        for owner in owners:
            values = {"name": owner.name, "active": owner.active}
            old = stored.get(owner.id)
            if old is None:
                new_rows.append({"id": owner.id, **values, "first_seen_at": t, "updated_at": t})
                versions.append(
                    version_row(owner.id, values, t, ChangeType.CREATED, None, self._run_id)
                )
                self._note("owner", owner.id, ChangeType.CREATED, owner.id, title=owner.name)
                continue
            fields = _diff(old._mapping, values, OWNER_TRACKED)
            if old.removed_at is None and not fields:
                continue
            kind = ChangeType.RESTORED if old.removed_at is not None else ChangeType.UPDATED
            changed_rows.append({"b_id": owner.id, **values, "removed_at": None, "updated_at": t})
            versions.append(version_row(owner.id, values, t, kind, fields, self._run_id))
            self._note("owner", owner.id, kind, owner.id, fields, title=owner.name)
        vanished = {
            row.id for row in stored.values() if row.removed_at is None and row.id not in listed
        }
        if not self.dry_run:
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
            self.quiet.append(outcome)
            return outcome
        # Only locks that differ from the stored text are loaded or written; without any, no
        # transaction is needed (an empty one still costs a COMMIT round trip on some servers).
        if fetched.records:
            group.begin()
        t = self.clock()
        counts, wrote = self._write_locks(conn, owner_id, fetched, t)
        outcome = OwnerOutcome(
            owner_id,
            OwnerStatus.COMPLETE,
            locks_seen=len(fetched.records) + len(fetched.unchanged_ids),
            counts=counts,
            fetched_at=t,
            error=self.also_listed.get(owner_id),
        )
        self.locks_applied += outcome.locks_seen
        if wrote:
            # Recorded in its group's transaction and counted once that commits: a run that dies
            # first records only what it wrote.
            group.wrote(len(fetched.records), (outcome, counts))
        else:
            # Nothing changed: no transaction of its own (most owners on most runs).
            self.quiet.append(outcome)
            self._committed([(outcome, counts)])
        return outcome

    def _committed(self, owners: list[tuple[OwnerOutcome, Counts]]) -> None:
        """Add owners whose writes are committed (or who had none) to the run's counts."""
        for outcome, counts in owners:
            self.result.locks_seen += outcome.locks_seen
            self.result.counts.add(counts)

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(
                SyncProgress(
                    owners_done=len(self.result.owners),
                    owners_total=self.result.owners_seen,
                    locks_seen=self.locks_applied,
                    api_requests=self.source.request_count - self.requests_at_start,
                )
            )

    def _build_indexes(self) -> None:
        """Build the indexes a first load left out, once its locks are in (exporter.db.indexes)."""
        started = time.monotonic()
        built = indexes.restore(self.engine)
        log.info("built %d index(es) in %.1f s", len(built), time.monotonic() - started)

    def _record_group(self, conn: Connection, owners: list[tuple[OwnerOutcome, Counts]]) -> None:
        """Before a group commits: the writer lock is still ours, then its owners' run rows."""
        self._check_lock()
        self._record_owners(conn, [outcome for outcome, _ in owners])

    def _record_quiet_owners(self) -> None:
        """Record the owners that had nothing to write: their run rows and last_seen_at."""
        if self.dry_run or not self.quiet:
            return
        with connect(self.engine) as conn, conn.begin():
            self._record_owners(conn, self.quiet)
        self.quiet.clear()

    def _record_owners(self, conn: Connection, outcomes: Sequence[OwnerOutcome]) -> None:
        """Owners' `sync_run_owners` rows, and `last_seen_at` of those fetched completely."""
        conn.execute(insert(sync_run_owners), [_outcome_row(self._run_id, o) for o in outcomes])
        seen = [
            {"b_id": o.owner_account_id, "b_at": o.fetched_at}
            for o in outcomes
            if o.status == OwnerStatus.COMPLETE
        ]
        if seen:
            conn.execute(
                update(owner_accounts)
                .where(owner_accounts.c.id == bindparam("b_id"))
                .values(last_seen_at=bindparam("b_at")),
                seen,
            )

    def _check_lock(self) -> None:
        """Before writing: abort if the writer lock was lost (another run may hold it now)."""
        if self.lock is not None:
            self.lock.check()

    def _write_locks(
        self, conn: Connection, owner_id: str, fetched: OwnerLocks, t: datetime
    ) -> tuple[Counts, bool]:
        """Diff one owner's locks against the stored rows and write the differences.

        Returns the counts and whether anything was written.
        """
        counts = Counts(skipped=fetched.skipped)
        self.seen.update(fetched.skipped_ids)
        twice = self._mark_seen(fetched.unchanged_ids)
        counts.unchanged += len(fetched.unchanged_ids) - len(twice)
        again = self._mark_seen([r.id for r in fetched.records])
        records = [r for r in fetched.records if r.id not in again]
        if twice or again:
            self._listed_twice(owner_id, twice | again)
        # Only locks whose text differs from the stored one are loaded and diffed in full (new,
        # changed, moved in, restored). Into a table that was empty when the run began nothing
        # needs loading: a lock this run already wrote is in `seen`, and was skipped above.
        stored = load_locks(conn, [r.id for r in records]) if self.had_locks and records else {}
        new_rows: list[tuple[Any, ...]] = []
        versions: list[dict[str, Any]] = []
        changed: dict[str, list[dict[str, Any]]] = {"updated": [], "restored": [], "refresh": []}
        run_id = self._run_id
        for record in records:
            old = stored.get(record.id)
            if old is None:
                counts.created += 1
                new_rows.append(
                    (record.id, owner_id, *_TRACKED_REST(record), *_CURRENT(record), t, t)
                )
                if self.dry_run:
                    self._note("lock", record.id, ChangeType.CREATED, owner_id, title=record.title)
                continue
            values = _lock_values(record, owner_id)
            current = {name: getattr(record, name) for name in LOCK_CURRENT_ONLY}
            fields = _diff(old, values, LOCK_TRACKED)
            if old["removed_at"] is None and not fields:
                if any(old[name] != value for name, value in current.items()):
                    changed["refresh"].append({"b_id": record.id, **current})
                counts.unchanged += 1
                continue
            kind = ChangeType.RESTORED if old["removed_at"] is not None else ChangeType.UPDATED
            setattr(counts, kind, getattr(counts, kind) + 1)
            changed[kind].append(
                {"b_id": record.id, **values, **current, "removed_at": None, "updated_at": t}
            )
            versions.append(version_row(record.id, values, t, kind, fields, self._run_id))
            self._note("lock", record.id, kind, owner_id, fields, title=record.title)
        wrote = bool(new_rows or versions or any(changed.values()) or (self.health and records))
        if not wrote or self.dry_run:
            return counts, False
        reopened = [row["b_id"] for row in changed["updated"] + changed["restored"]]
        close_versions(conn, bound_lock_versions, reopened, t)
        insert_many(conn, bound_locks, _NEW_LOCK_COLUMNS, new_rows)
        for rows in changed.values():
            if rows:
                conn.execute(update(bound_locks).where(bound_locks.c.id == bindparam("b_id")), rows)
        if new_rows:
            open_created_versions(conn, owner_id, t, run_id)
        if self.health:
            lock_health.store_readings(conn, records, seen_at=t, run_id=run_id)
        if versions:
            conn.execute(insert(bound_lock_versions), versions)
        return counts, True

    def _mark_seen(self, ids: Sequence[str]) -> set[str]:
        """Mark `ids` seen; return those another owner of this run listed first."""
        twice = self.seen.intersection(ids)
        self.seen.update(ids)
        return twice

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

    def _remove(self, owner_ids: set[str], vanished: set[str]) -> list[str]:
        """Remove unseen locks of fully fetched and vanished owners, then vanished owners.

        The deletion guard (RemovalGuard) may hold some of them back; returns one message per
        held-back group, saying how to confirm it.
        """
        guard = self.guard
        held: list[str] = []
        kept_owners: set[str] = set()
        if vanished and guard.too_many_owners(len(vanished), self.owners_before):
            kept_owners = {owner_id for owner_id in vanished if not guard.confirmed(owner_id)}
        with connect(self.engine) as conn, conn.begin():
            t = self.clock()
            gone: dict[str, list[tuple[str, str | None]]] = {}
            for chunk in chunks(self._unconfirmed(conn, owner_ids)):
                rows = conn.execute(
                    select(bound_locks.c.id, bound_locks.c.owner_account_id, bound_locks.c.title)
                    .where(bound_locks.c.removed_at.is_(None))
                    .where(bound_locks.c.owner_account_id.in_(chunk))
                )
                for lock_id, owner_id, title in rows:
                    if lock_id not in self.seen:
                        gone.setdefault(owner_id, []).append((lock_id, title))
            if kept_owners:
                self.result.held_back.update({o: len(gone.get(o, ())) for o in kept_owners})
                held.append(owners_held_message(guard, kept_owners, self.owners_before, gone))
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
                stored = self.locks_before.get(owner_id, 0)
                if (
                    owner_id not in vanished
                    and guard.too_many_locks(len(locks), stored)
                    and not guard.confirmed(owner_id)
                ):
                    self.result.held_back[owner_id] = len(locks)
                    message = locks_held_message(guard, owner_id, len(locks), stored)
                    held.append(message)
                    notes = (self.also_listed.get(owner_id), message)
                    owner_notes[owner_id] = "; ".join(n for n in notes if n)
                    continue
                reason = (
                    RemovalReason.OWNER_REMOVED if owner_id in vanished else RemovalReason.UNBOUND
                )
                doomed[reason].extend(lock_id for lock_id, _ in locks)
                per_owner[owner_id] = len(locks)
                for lock_id, title in locks:
                    self._note("lock", lock_id, ChangeType.REMOVED, owner_id, None, reason, title)
            removed_owners = sorted(vanished - kept_owners)
            removed = sum(len(ids) for ids in doomed.values())
            for outcome in self.result.owners:
                outcome.counts.removed = per_owner.get(outcome.owner_account_id, 0)
                outcome.error = owner_notes.get(outcome.owner_account_id, outcome.error)
            for owner_id in removed_owners:
                self._note(
                    "owner",
                    owner_id,
                    ChangeType.REMOVED,
                    owner_id,
                    None,
                    RemovalReason.OWNER_REMOVED,
                )
            if self.dry_run:
                self.result.counts.removed += removed
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
                    self._run_id,
                )
            remove_rows(
                conn,
                owner_accounts,
                owner_account_versions,
                OWNER_TRACKED,
                removed_owners,
                t,
                "owner_removed",
                self._run_id,
            )
            if per_owner:
                conn.execute(
                    update(sync_run_owners)
                    .where(sync_run_owners.c.run_id == self._run_id)
                    .where(sync_run_owners.c.owner_account_id == bindparam("b_owner"))
                    .values(removed=bindparam("b_removed")),
                    [{"b_owner": o, "b_removed": n} for o, n in per_owner.items()],
                )
            if owner_notes:
                conn.execute(
                    update(sync_run_owners)
                    .where(sync_run_owners.c.run_id == self._run_id)
                    .where(sync_run_owners.c.owner_account_id == bindparam("b_owner"))
                    .values(error=bindparam("b_error")),
                    [{"b_owner": o, "b_error": m} for o, m in owner_notes.items()],
                )
        # Counted once committed: a run that fails in this transaction records what it wrote.
        self.result.counts.removed += removed
        if removed or removed_owners:
            log.info("removed %d lock(s) and %d owner(s)", removed, len(removed_owners))
        for message in held:
            log.warning("%s", message)
        return held

    def _unconfirmed(self, conn: Connection, owner_ids: set[str]) -> list[str]:
        """The owners among `owner_ids` that may still have a present lock this run did not see.

        Every lock this run confirmed under an owner (unchanged, created, updated, restored) is
        present under it now, so an owner with exactly that many present locks has none left to
        remove; only the others are read lock by lock.
        """
        if self.dry_run:
            return sorted(owner_ids)  # nothing was written, so the stored counts prove nothing
        present = _present_by_owner(conn)
        confirmed = {
            o.owner_account_id: o.counts.unchanged
            + o.counts.created
            + o.counts.updated
            + o.counts.restored
            for o in self.result.owners
            if o.status == OwnerStatus.COMPLETE
        }
        return sorted(o for o in owner_ids if present.get(o, 0) != confirmed.get(o, 0))

    # -- helpers ------------------------------------------------------------------------------

    @property
    def _run_id(self) -> int:
        # Dry runs write nothing, so their version rows never reach the database.
        return self.result.run_id or 0

    def _note(
        self,
        entity: str,
        entity_id: str,
        change_type: str,
        owner_id: str | None,
        fields: Sequence[str] | None = None,
        reason: str | None = None,
        title: str | None = None,
    ) -> None:
        if self.dry_run:
            self.result.changes.append(
                Change(
                    entity,
                    entity_id,
                    change_type,
                    owner_id,
                    tuple(fields) if fields else None,
                    reason,
                    title,
                )
            )


def _lock_values(record: LockRecord, owner_id: str) -> dict[str, Any]:
    values = {name: getattr(record, name) for name in LOCK_TRACKED}
    # The URL names the owner whose list this is; that is where the lock is bound now.
    values["owner_account_id"] = owner_id
    return values


def _present_by_owner(conn: Connection) -> dict[str, int]:
    """Present (not removed) locks per owner id."""
    column = bound_locks.c.owner_account_id
    rows = conn.execute(
        select(column, func.count()).where(bound_locks.c.removed_at.is_(None)).group_by(column)
    )
    return {owner_id: count for owner_id, count in rows}


def _diff(old: Mapping[Any, Any], new: Mapping[str, Any], fields: Iterable[str]) -> list[str]:
    return [name for name in fields if old[name] != new[name]]


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


def _failed_summary(owners: Sequence[OwnerOutcome]) -> str | None:
    failed = [o for o in owners if o.status == OwnerStatus.FAILED]
    if not failed:
        return None
    first = failed[0]
    more = f" (+{len(failed) - 1} more owners failed)" if len(failed) > 1 else ""
    return f"owner {first.owner_account_id}: {first.error}{more}"
