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
4. after every owner has been fetched, decides removals in one transaction: a lock is removed only
   if no complete fetch returned it and every list's end is proven (exporter.tapkey.paging), and
   only if its owner's fetch was complete (`unbound`) or its owner vanished from the owner list
   (`owner_removed`); an owner whose fetch failed changes nothing and makes the run `partial`;
   the deletion guard's holds are kept between runs in that transaction (exporter.sync.holds);
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

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError, OperationalError

from exporter.db import indexes
from exporter.db.engine import connect
from exporter.db.errors import store_error
from exporter.db.schema import owner_accounts
from exporter.db.writer_lock import WriterLock
from exporter.errors import Interrupted, StoreError, TapkeyError, first_line
from exporter.kinds import OwnerStatus, RunStatus
from exporter.results import Change, OwnerOutcome, RunResult, SyncProgress
from exporter.sync import api_paging, log_entries, run_records
from exporter.sync.access import AccessContext, AccessOutcome, AccessSource
from exporter.sync.access_sync import sync_access
from exporter.sync.collector import fewer_collections
from exporter.sync.crawl import DaemonPool, InventorySource, call_until_stopped
from exporter.sync.locks import LockSync
from exporter.sync.options import SyncOptions
from exporter.sync.owners import OwnerLedger, failed_summary, write_owners
from exporter.sync.removals import remove_locks
from exporter.sync.versions import Clock, latest_instant
from exporter.tapkey.fields import MAX_ID_LENGTH, padded_id
from exporter.tapkey.paging import PagingCheck
from exporter.tapkey.records import OwnerRecord

log = logging.getLogger(__name__)

_DEFAULT_OPTIONS = SyncOptions()  # frozen: one shared default is safe


def utcnow() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


def sync(
    *,
    engine: Engine,
    source: InventorySource,
    client_id: str,
    options: SyncOptions = _DEFAULT_OPTIONS,
    trigger: str = "manual",
    now: Callable[[], datetime] = utcnow,
    stop: threading.Event | None = None,
    on_started: Callable[[int], None] | None = None,
    progress: Callable[[SyncProgress], None] | None = None,
) -> RunResult:
    """Run one sync and return its outcome; see the module docstring for the rules.

    `options` say how (SyncOptions). `on_started(run_id)` is called once the run's `sync_runs`
    row exists (the daemon tags its log lines and metrics with it).
    `progress` is called from the calling thread once the owner list is known and after every
    owner (owners done and total, locks seen, API requests so far). Setting `stop` ends the run
    as `failed` ("interrupted") at the next owner.

    Raises LockHeldError when another run holds the lock (nothing written), ClientMismatchError
    when the database belongs to another OAuth client, and DatabaseUnavailableError when the
    database goes away. Tapkey failures do not raise: they end in a `failed` or `partial` result.
    """

    def make_run(lock: WriterLock | None, started: Callable[[int], None] | None) -> _Run:
        return _Run(
            engine=engine,
            source=source,
            client_id=client_id,
            options=options,
            trigger=trigger,
            now=now,
            stop=stop or threading.Event(),
            lock=lock,
            on_started=started,
            progress=progress,
        )

    if options.dry_run:
        return make_run(None, None).execute()
    with WriterLock(engine, timeout=options.lock_timeout) as lock:
        run = make_run(lock, on_started)
        try:
            run.prepare(allow_client_change=options.allow_client_change)
        except (OperationalError, DBAPIError) as exc:
            raise store_error(exc, engine) from None
        return run.execute()


class _Run:
    """One run: its collaborators come in whole; the phases run in `execute`."""

    def __init__(
        self,
        *,
        engine: Engine,
        source: InventorySource,
        client_id: str,
        options: SyncOptions,
        trigger: str,
        now: Callable[[], datetime],
        stop: threading.Event,
        lock: WriterLock | None,
        on_started: Callable[[int], None] | None,
        progress: Callable[[SyncProgress], None] | None,
    ) -> None:
        self.engine = engine
        self.source = source
        self.client_id = client_id
        self.trigger = trigger
        self.options = options
        self.workers = options.workers
        self.dry_run = options.dry_run
        self.stop = stop
        self.lock = lock  # None in a dry run, which writes nothing
        self.on_started = on_started
        self.progress = progress
        self.clock = Clock(now, None)
        self.requests_at_start = source.request_count
        self.result = RunResult(
            run_id=None,
            status=RunStatus.RUNNING,
            trigger=trigger,
            started_at=self.clock(),
            dry_run=options.dry_run,
        )
        self.ledger = OwnerLedger(
            engine=engine, result=self.result, dry_run=self.dry_run, check_lock=self._check_lock
        )
        self.locks = LockSync(
            engine=engine,
            result=self.result,
            clock=self.clock,
            dry_run=self.dry_run,
            health=options.health,
            guard=options.guard,
            note=self._note,
            ledger=self.ledger,
        )
        # Ids of the owners present before this run (read with what is known of the paging).
        self.present_owners: frozenset[str] | None = None

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
            self.clock.start_after(latest_instant(conn))
            self.result.started_at = self.clock()
            self._read_paging(conn)
            run_records.check_client(conn, self.client_id, allow_change=allow_client_change)
            self.result.run_id = run_records.open_run(
                conn,
                started_at=self.result.started_at,
                trigger=self.trigger,
                client_id=self.client_id,
            )
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
            with fewer_collections():  # a run's pages are objects by the thousand
                self._phases()
        except (Interrupted, TapkeyError) as exc:
            self.ledger.record_quiet_at_end()  # the owners counted so far get their run rows
            why = "interrupted" if isinstance(exc, Interrupted) else str(exc)
            self._finish(RunStatus.FAILED, why)
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
        end = run_records.end_values(result)
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
        owners = call_until_stopped(
            self.stop, lambda: self.source.list_owners(stored=present), self.locks.count_present
        )
        self.result.owners_seen = len(owners)
        listed = {owner.id for owner in owners}
        owners = [owner for owner in owners if not self._fails_unstorable(owner)]
        with connect(self.engine) as conn, conn.begin():
            vanished = write_owners(
                conn,
                owners,
                listed,
                t=self.clock(),
                run_id=self._run_id,
                dry_run=self.dry_run,
                note=self._note,
            )
        deferred = (
            not self.dry_run
            and not self.locks.had_locks
            and indexes.drop_for_first_load(self.engine)
        )
        self._report()
        complete, removable = self.locks.crawl(
            [owner.id for owner in owners],
            source=self.source,
            workers=self.workers,
            stop=self.stop,
            batching=self.options.batching,
            report=self._report,
        )
        if self.stop.is_set():
            raise Interrupted  # a stop is quick: the next run builds the indexes left out
        if deferred:
            self._build_indexes()
        paging = self._confirm_paging()
        # A list not read to a proven end may hide in its unread tail a lock missing from another
        # list or of a vanished owner (moved there): then nothing is removed or judged.
        proven = not paging.unproven
        removable, vanished = (removable, vanished) if proven else (set(), set())
        self._check_lock()
        self.ledger.record_quiet()
        held = remove_locks(self.locks, removable | vanished, vanished, list_judged=proven)
        logs = self._read_logs([owner.id for owner in owners])
        failed = listed - complete
        access = self._sync_access([owner.id for owner in owners])
        if held or any(o.held for o in access):
            held.append("under `exporter serve`, set [sync] allow_mass_removal = true for one run")
        problems = [p for o in access for p in o.problems()]
        summary = "; ".join(
            m
            for m in (failed_summary(self.result.owners), paging.message, *problems, *held, logs)
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
        if not self.options.access.entities:
            return []
        context = AccessContext(
            engine=self.engine,
            source=cast(AccessSource, self.source),
            clock=self.clock,
            run_id=self._run_id,
            dry_run=self.dry_run,
            stop=self.stop,
            guard=self.options.guard,
            workers=self.workers,
            check_lock=self._check_lock,
            changes=self.result.changes,
            confirm_paging=self._confirm_paging,
            holds=self.locks.holds,
        )
        outcomes = sync_access(context, owner_ids, self.options.access)
        self.result.access.update((outcome.entity, outcome.counts) for outcome in outcomes)
        return outcomes

    def _read_logs(self, owner_ids: list[str]) -> str | None:
        """Store the owners' new log entries; the summary of the owners whose log failed."""
        logs = self.options.logs
        if logs is None or self.dry_run or not owner_ids:
            return None
        self._check_lock()
        source = cast(log_entries.LogSource, self.source)
        learned = self.source.paging.sizes
        with connect(self.engine) as conn, DaemonPool(self.workers, "logs") as pool:
            result = log_entries.read_logs(
                conn,
                source,
                owner_ids,
                run_id=self._run_id,
                clock=self.clock,
                options=logs,
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

    def _fails_unstorable(self, owner: OwnerRecord) -> bool:
        """Fail an owner the database cannot hold (OwnerRecord.problem): it and its locks are
        left as stored, the other owners sync, and the run is partial."""
        if owner.problem is None:
            return False
        error = f"{owner.problem}; the owner and its locks were left as stored"
        outcome = OwnerOutcome(owner.id, OwnerStatus.FAILED, fetched_at=self.clock(), error=error)
        log.warning("owner %s failed: %s", owner.id, error)
        self.result.owners.append(outcome)
        if len(owner.id) <= MAX_ID_LENGTH and not padded_id(owner.id):  # else no run_owners row
            self.ledger.quiet.append(outcome)
        return True

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(
                SyncProgress(
                    owners_done=len(self.result.owners),
                    owners_total=self.result.owners_seen,
                    locks_seen=self.ledger.locks_applied,
                    api_requests=self.source.request_count - self.requests_at_start,
                )
            )

    def _build_indexes(self) -> None:
        """Build the indexes a first load left out, once its locks are in (exporter.db.indexes)."""
        started = time.monotonic()
        built = indexes.restore(self.engine)
        log.info("built %d index(es) in %.1f s", len(built), time.monotonic() - started)

    def _check_lock(self) -> None:
        """Before writing: abort if the writer lock was lost (another run may hold it now)."""
        if self.lock is not None:
            self.lock.check()

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
