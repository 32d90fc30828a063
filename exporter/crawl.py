"""Fetching every owner's bound locks concurrently, each with its stored texts read just ahead.

The sync engine consumes owners in the order their fetches complete. Each owner's stored payload
texts are read before its fetch, so the API client can skip elements whose text is unchanged; the
texts may be stale by the time the engine applies the owner, but only for locks the engine wrote
since for another owner of the same run, and it checks those first (they are in its `seen`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Generator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Protocol

from sqlalchemy import Connection, Engine

from exporter.errors import AuthError, TapkeyError
from exporter.history import load_live_raw
from exporter.records import OwnerLocks, OwnerRecord
from exporter.store import SQLITE_READER_CACHE_KIB, sqlite_cache


class InventorySource(Protocol):
    """What the engine needs from the Tapkey API client."""

    @property
    def request_count(self) -> int: ...

    def list_owners(self) -> list[OwnerRecord]: ...

    def list_bound_locks(
        self,
        owner_id: str,
        *,
        expand: Sequence[str] = (),
        known: Mapping[str, str] | None = None,
    ) -> OwnerLocks: ...


def crawl(
    source: InventorySource,
    owner_ids: Sequence[str],
    *,
    engine: Engine,
    workers: int,
    stop: threading.Event,
    stored_locks: Mapping[str, int],
    expand: Sequence[str] = (),
) -> Generator[tuple[str, OwnerLocks | TapkeyError], None, None]:
    """Fetch owners `workers` at a time, yielding each as it completes (or its TapkeyError).

    At most 2 x workers fetches are in flight, so memory holds a few owners' records, not all.
    Stored texts are read only for owners with stored locks (`stored_locks`: count per owner).
    Once `stop` is set no new fetch starts. An AuthError ends the crawl: without a token no owner
    can be read.
    """
    pending = deque(owner_ids)
    running: dict[Future[OwnerLocks], str] = {}

    def fetch(owner_id: str, known: Future[dict[str, str]] | None) -> OwnerLocks:
        texts = known.result() if known is not None else None
        return source.list_bound_locks(owner_id, expand=expand, known=texts)

    with (
        _StoredTexts(engine) as stored,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool,
    ):

        def submit() -> None:
            owner_id = pending.popleft()
            known = stored.read(owner_id) if stored_locks.get(owner_id) else None
            running[pool.submit(fetch, owner_id, known)] = owner_id

        for _ in range(min(2 * workers, len(pending))):
            submit()
        try:
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    owner_id = running.pop(future)
                    if pending and not stop.is_set():
                        submit()
                    try:
                        yield owner_id, future.result()
                    except AuthError:
                        raise
                    except TapkeyError as exc:
                        yield owner_id, exc
        finally:
            for future in running:
                future.cancel()


class _StoredTexts:
    """Reads owners' stored payload texts, in order, ahead of their fetches.

    One thread on one connection, whatever `workers` is: the reads are short, and several threads
    reading at once cost more CPU (in SQLite and for the GIL) than they save in wall time.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read")
        self._conn: Connection | None = None

    def read(self, owner_id: str) -> Future[dict[str, str]]:
        """The owner's present locks' stored texts, by id (read on the reader thread)."""
        return self._thread.submit(self._load, owner_id)

    def _load(self, owner_id: str) -> dict[str, str]:
        if self._conn is None:
            self._conn = self._engine.connect()
            sqlite_cache(self._conn, SQLITE_READER_CACHE_KIB)
        with self._conn.begin():
            return load_live_raw(self._conn, owner_id)

    def __enter__(self) -> _StoredTexts:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._thread.shutdown(cancel_futures=True)
        if self._conn is not None:
            self._conn.close()
