"""The access phase of a run: every (entity, owner) list fetched in one crawl, `workers` at a
time, and applied as it arrives; each entity's removals once all its owners were applied.

The rules are the lock contract (exporter.sync.access); one entity's writes and removals are
exporter.sync.entity_sync.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy import Connection, Engine, Table

from exporter.db.engine import connect
from exporter.errors import AuthError, Interrupted, TapkeyError
from exporter.sync.access import ACCESS_ENTITIES, AccessContext, AccessOptions, AccessOutcome
from exporter.sync.crawl import STOP_POLL, Completions, DaemonPool
from exporter.sync.entity_sync import EntitySync
from exporter.sync.versions import load_live_raw_of
from exporter.tapkey.access import OwnerEntities

# The access phase's lines keep the logger name they had before it had a module of its own.
log = logging.getLogger("exporter.sync.access")


def sync_access(
    context: AccessContext, owner_ids: Sequence[str], options: AccessOptions
) -> list[AccessOutcome]:
    """Sync the entities of `options` for the listed owners `owner_ids` (module docstring).

    Every (entity, owner) list is fetched in one crawl, `workers` at a time, and applied as it
    arrives; each entity's removals follow once all its owners were applied.
    """
    syncs = [
        EntitySync(context, ACCESS_ENTITIES[name], options.privacy) for name in options.entities
    ]
    with connect(context.engine) as conn:
        for entity_sync in syncs:
            entity_sync.count_present(conn)
        conn.rollback()
    wanted = [(s, owner_id) for s in syncs if s.readable() for owner_id in owner_ids]
    for entity_sync, owner_id in wanted:
        entity_sync.awaited.add(owner_id)
    with connect(context.engine) as conn:
        for entity_sync, owner_id, fetched in _fetch(context, wanted):
            if context.stop.is_set():
                raise Interrupted
            entity_sync.take(conn, owner_id, fetched)
        if not context.stop.is_set():
            for entity_sync in syncs:
                entity_sync.settle_moves(conn)
    if context.stop.is_set():
        raise Interrupted
    _confirm_ends(context, syncs)
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


def _confirm_ends(context: AccessContext, syncs: Sequence[EntitySync]) -> None:
    """Confirm the ends of the access lists, as those of the lock lists were before the locks'
    removals: a list whose end is not proven (the server has started to cut pages short) keeps
    its rows this run; the next run reads it at the page size the cut taught."""
    check = context.confirm_paging()
    for entity_sync in syncs:
        route = entity_sync.entity.route
        entity_sync.removable = {
            owner_id
            for owner_id in entity_sync.removable
            if route.end_key(owner_id) not in check.unproven
        }
    if check.message and syncs:
        syncs[0].outcome.unproven = check.message


def _fetch(
    context: AccessContext, wanted: Sequence[tuple[EntitySync, str]]
) -> Iterator[tuple[EntitySync, str, OwnerEntities | TapkeyError]]:
    """Each (entity, owner) list as its fetch completes, at most 2 x workers in flight.

    Stored texts are read ahead on one reader thread, a batch of owners per statement
    (`_TextBatches`), only for owners with stored rows, while earlier fetches are under way.
    """
    pending = deque(wanted)
    running: dict[Future[OwnerEntities], tuple[EntitySync, str]] = {}
    completed: Completions[OwnerEntities] = Completions()

    def fetch(
        item: EntitySync, owner_id: str, known: Future[dict[str, dict[str, str]]] | None
    ) -> Any:
        texts = known.result().get(owner_id, {}) if known is not None else {}
        return context.source.list_owner_entities(owner_id, item.entity.route, item.privacy, texts)

    stored = [(item, owner_id) for item, owner_id in wanted if item.before.get(owner_id)]
    with (
        _TextBatches(context.engine, stored) as texts,
        DaemonPool(context.workers, "access") as pool,
    ):

        def submit() -> None:
            item, owner_id = pending.popleft()
            known = texts.read(item, owner_id) if item.before.get(owner_id) else None
            future = pool.submit(fetch, item, owner_id, known)
            running[future] = (item, owner_id)
            completed.watch(future)

        for _ in range(min(2 * context.workers, len(pending))):
            submit()
        try:
            while running:
                future = completed.next(STOP_POLL)
                if context.stop.is_set():
                    return
                if future is None:
                    continue
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

    def __init__(self, engine: Engine, wanted: Sequence[tuple[EntitySync, str]]) -> None:
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

    def read(self, item: EntitySync, owner_id: str) -> Future[dict[str, dict[str, str]]]:
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
