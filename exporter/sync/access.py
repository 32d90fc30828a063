"""Syncing access data (contacts, bound cards, grants): the lock contract for three more entities.

After the locks, each entity enabled in `[tapkey] entities` is fetched for every listed owner
account (`workers` at a time) and written with the same rules as bound locks (exporter.sync.engine):

- each owner's creates, updates and restores in one transaction of its own; an element whose
  stored text equals the received one is unchanged without becoming a record, and an owner with
  nothing to write gets no transaction;
- removals after every owner of the entity was applied, in one transaction: an element is
  removed only if no complete fetch of this run returned it and its owner's fetch was complete
  (reason `deleted`, for a card `unbound`), or if its owner account was removed
  (`owner_removed`); the deletion guard holds back mass removals per owner as for locks;
- a fetch that fails (a 403 for a missing scope or co-admin right, a 5xx, a bad page) changes
  nothing for that entity of that owner and makes the run `partial`; locks and the other
  entities go on. Only an AuthError (no token at all) ends the run.

A grant whose state changes to Revoked is an update like any other change of a tracked field.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, Table, bindparam, func, insert, select, update

from exporter.config.settings import ENTITY_SCOPES
from exporter.db.bulk import insert_many
from exporter.db.engine import connect
from exporter.db.inlists import chunks
from exporter.db.schema import (
    CARD_TRACKED,
    CONTACT_TRACKED,
    GRANT_TRACKED,
    bound_card_versions,
    bound_cards,
    contact_versions,
    contacts,
    grant_versions,
    grants,
    owner_accounts,
)
from exporter.errors import AuthError, Interrupted, TapkeyError
from exporter.results import Change, Counts
from exporter.sync.crawl import STOP_POLL, _DaemonPool
from exporter.sync.guard import RemovalGuard, locks_held_message
from exporter.sync.versions import (
    close_versions,
    load_live_raw_of,
    load_rows,
    open_created_versions,
    remove_rows,
    version_row,
)
from exporter.tapkey.access import (
    CARD_FIELDS,
    CONTACT_FIELDS,
    GRANT_FIELDS,
    FieldSpec,
    OwnerEntities,
    Privacy,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccessEntity:
    """What the engine needs to know about one entity: route, tables, fields and wording."""

    name: str  # as in [tapkey] entities
    noun: str  # one of them, in messages and dry-run changes
    path: str  # the route under /api/v1/Owners/{id}/
    current: Table
    versions: Table
    tracked: tuple[str, ...]
    fields: tuple[FieldSpec, ...]
    removal_reason: str
    personal: bool  # its payload may carry a contact identifier ([privacy])

    @property
    def scope(self) -> str:
        """The scope its route needs."""
        return ENTITY_SCOPES[self.name]


ACCESS_ENTITIES: dict[str, AccessEntity] = {
    entity.name: entity
    for entity in (
        AccessEntity(
            "contacts", "contact", "Contacts", contacts, contact_versions, CONTACT_TRACKED,
            CONTACT_FIELDS, "deleted", personal=True,
        ),
        AccessEntity(
            "cards", "card", "BoundCards", bound_cards, bound_card_versions, CARD_TRACKED,
            CARD_FIELDS, "unbound", personal=False,
        ),
        AccessEntity(
            "grants", "grant", "Grants", grants, grant_versions, GRANT_TRACKED, GRANT_FIELDS,
            "deleted", personal=True,  # a grant may embed its contact
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class AccessOptions:
    """Which access entities a run syncs (names of ACCESS_ENTITIES) and how privacy applies."""

    entities: tuple[str, ...] = ()
    privacy: Privacy = field(default_factory=Privacy)

    @classmethod
    def of(cls, entities: Sequence[str], privacy: Privacy) -> AccessOptions:
        """The options for `[tapkey] entities` (other entities than these three are ignored)."""
        return cls(tuple(name for name in entities if name in ACCESS_ENTITIES), privacy)


class AccessSource(Protocol):
    """What the engine needs from the Tapkey API client for access data."""

    @property
    def granted_scopes(self) -> frozenset[str] | None: ...

    def list_owner_entities(
        self,
        owner_id: str,
        *,
        path: str,
        scope: str,
        fields: tuple[FieldSpec, ...],
        privacy: Privacy,
        personal: bool,
        known: Mapping[str, str] | None = None,
        what: str = "element",
    ) -> OwnerEntities: ...


@dataclass
class AccessContext:
    """The run's pieces the access phase uses (owned by exporter.sync's run)."""

    engine: Engine
    source: AccessSource
    clock: Callable[[], datetime]
    run_id: int
    dry_run: bool
    stop: threading.Event
    guard: RemovalGuard
    workers: int
    check_lock: Callable[[], None]
    changes: list[Change]  # dry runs list what they would change here


@dataclass
class AccessOutcome:
    """How one entity went: its counts, failed owners (id -> error) and held-back removals."""

    entity: str
    counts: Counts = field(default_factory=Counts)
    failed: dict[str, str] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)
    held_back: dict[str, int] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """One line per distinct failure (naming its owners) and per held-back removal."""
        by_error: dict[str, list[str]] = {}
        for owner_id, error in self.failed.items():
            by_error.setdefault(error, []).append(owner_id)
        lines = []
        for error, owners in by_error.items():
            if len(owners) == 1:
                lines.append(f"{self.entity} of owner {owners[0]}: {error}")
            else:
                shown = ", ".join(owners[:3]) + (", ..." if len(owners) > 3 else "")
                lines.append(f"{self.entity} of {len(owners)} owners ({shown}): {error}")
        return lines + self.held


def sync_access(
    context: AccessContext, owner_ids: Sequence[str], options: AccessOptions
) -> list[AccessOutcome]:
    """Sync the entities of `options` for the listed owners `owner_ids` (module docstring).

    Every (entity, owner) list is fetched in one crawl, `workers` at a time, and applied as it
    arrives; each entity's removals follow once all its owners were applied.
    """
    syncs = [
        _EntitySync(context, ACCESS_ENTITIES[name], options.privacy) for name in options.entities
    ]
    with connect(context.engine) as conn:
        for entity_sync in syncs:
            entity_sync.count_present(conn)
        conn.rollback()
    wanted = [(s, owner_id) for s in syncs if s.readable() for owner_id in owner_ids]
    with connect(context.engine) as conn:
        for entity_sync, owner_id, fetched in _fetch(context, wanted):
            if context.stop.is_set():
                raise Interrupted
            entity_sync.take(conn, owner_id, fetched)
    if context.stop.is_set():
        raise Interrupted
    outcomes = []
    for entity_sync in syncs:
        if not entity_sync.readable():
            missing = entity_sync.missing_scope or ""
            entity_sync.outcome.failed = dict.fromkeys(owner_ids, missing)
            log.warning("%s not synced for any owner: %s", entity_sync.entity.name, missing)
        entity_sync.remove()
        outcome = entity_sync.outcome
        log.info(
            "%s: %s%s",
            outcome.entity,
            ", ".join(f"{k}={v}" for k, v in outcome.counts.as_dict().items()),
            f"; {len(outcome.failed)} owner(s) failed" if outcome.failed else "",
        )
        outcomes.append(outcome)
    return outcomes


def _fetch(
    context: AccessContext, wanted: Sequence[tuple[_EntitySync, str]]
) -> Iterator[tuple[_EntitySync, str, OwnerEntities | TapkeyError]]:
    """Each (entity, owner) list as its fetch completes, at most 2 x workers in flight.

    Stored texts are read ahead on one reader thread, a batch of owners per statement
    (`_TextBatches`), only for owners with stored rows, while earlier fetches are under way.
    """
    pending = deque(wanted)
    running: dict[Future[OwnerEntities], tuple[_EntitySync, str]] = {}

    def fetch(
        item: _EntitySync, owner_id: str, known: Future[dict[str, dict[str, str]]] | None
    ) -> Any:
        entity = item.entity
        return context.source.list_owner_entities(
            owner_id,
            path=entity.path,
            scope=entity.scope,
            fields=entity.fields,
            privacy=item.privacy,
            personal=entity.personal,
            known=known.result().get(owner_id) if known is not None else None,
            what=entity.noun,
        )

    stored = [(item, owner_id) for item, owner_id in wanted if item.before.get(owner_id)]
    with (
        _TextBatches(context.engine, stored) as texts,
        _DaemonPool(context.workers, "access") as pool,
    ):

        def submit() -> None:
            item, owner_id = pending.popleft()
            known = texts.read(item, owner_id) if item.before.get(owner_id) else None
            running[pool.submit(fetch, item, owner_id, known)] = (item, owner_id)

        for _ in range(min(2 * context.workers, len(pending))):
            submit()
        try:
            while running:
                done, _ = wait(running, timeout=STOP_POLL, return_when=FIRST_COMPLETED)
                if context.stop.is_set():
                    return
                for future in done:
                    item, owner_id = running.pop(future)
                    if pending:
                        submit()
                    try:
                        yield item, owner_id, future.result()
                    except AuthError:
                        raise
                    except TapkeyError as exc:
                        yield item, owner_id, exc
        finally:
            for future in running:
                future.cancel()


class _TextBatches:
    """Stored texts of (entity, owner) lists, read a batch of owners per statement ahead of
    their fetches on one reader thread; a batch is let go once the next but one is asked for."""

    SIZE = 200

    def __init__(self, engine: Engine, wanted: Sequence[tuple[_EntitySync, str]]) -> None:
        self._engine = engine
        self._batch_of: dict[tuple[int, str], int] = {}
        self._batches: list[tuple[Table, list[str]]] = []
        for item, owner_id in wanted:
            table = item.entity.current
            if (
                not self._batches
                or self._batches[-1][0] is not table
                or (len(self._batches[-1][1]) >= self.SIZE)
            ):
                self._batches.append((table, []))
            self._batches[-1][1].append(owner_id)
            self._batch_of[id(item), owner_id] = len(self._batches) - 1
        self._futures: dict[int, Future[dict[str, dict[str, str]]]] = {}
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read")
        self._conn: Connection | None = None

    def read(self, item: _EntitySync, owner_id: str) -> Future[dict[str, dict[str, str]]]:
        """The future texts of the owner's batch (owner -> id -> text); the next is read ahead."""
        index = self._batch_of[id(item), owner_id]
        for ahead in (index, index + 1):
            if ahead < len(self._batches) and ahead not in self._futures:
                self._futures[ahead] = self._thread.submit(self._load, *self._batches[ahead])
        for old in [i for i in self._futures if i < index - 1]:
            del self._futures[old]
        return self._futures[index]

    def _load(self, table: Table, owner_ids: list[str]) -> dict[str, dict[str, str]]:
        if self._conn is None:
            self._conn = self._engine.connect()
        with self._conn.begin():
            return load_live_raw_of(self._conn, table, owner_ids)

    def __enter__(self) -> _TextBatches:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._thread.shutdown(cancel_futures=True)
        if self._conn is not None:
            self._conn.close()


class _EntitySync:
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
        self.before = _present_by_owner(conn, self.entity.current)

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
            present = _present_by_owner(conn, table)
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


def _present_by_owner(conn: Connection, table: Table) -> dict[str, int]:
    """Present (not removed) rows per owner id."""
    column = table.c.owner_account_id
    rows = conn.execute(
        select(column, func.count()).where(table.c.removed_at.is_(None)).group_by(column)
    )
    return {owner_id: count for owner_id, count in rows}
