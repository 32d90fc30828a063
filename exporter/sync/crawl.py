"""Fetching every owner's bound locks concurrently, each with its stored texts read just ahead.

The sync engine consumes owners in the order their fetches complete. Each owner's stored payload
texts are read before its fetch, so the API client can skip elements whose text is unchanged; the
texts may be stale by the time the engine applies the owner, but only for locks the engine wrote
since for another owner of the same run, and it checks those first (they are in its `seen`).

Stopping does not wait for requests: once `stop` is set the crawl ends within `STOP_POLL` and
leaves the fetches in flight behind on daemon threads (a request can hang for `read_timeout`).
They write nothing, send no further request (the client checks `stop`) and end on their own.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections import deque
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, NamedTuple, Protocol, TypeVar

from sqlalchemy import Connection, Engine

from exporter.db.engine import SQLITE_READER_CACHE_KIB, backend, sqlite_cache
from exporter.errors import AuthError, Interrupted, TapkeyError
from exporter.sync.versions import load_live_raw
from exporter.tapkey.paging import PagingCheck, PagingFacts
from exporter.tapkey.records import OwnerLocks, OwnerRecord

T = TypeVar("T")

#: Seconds between two looks at the stop event while waiting for fetches.
STOP_POLL = 0.1


class InventorySource(Protocol):
    """What the engine needs from the Tapkey API client."""

    @property
    def request_count(self) -> int: ...

    @property
    def api_url(self) -> str: ...

    @property
    def paging(self) -> PagingFacts: ...

    def confirm_paging(self) -> PagingCheck: ...

    def list_owners(self, *, stored: Collection[str] | None = None) -> list[OwnerRecord]: ...

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
    idle: Callable[[], None] | None = None,
) -> Generator[tuple[str, OwnerLocks | TapkeyError], None, None]:
    """Fetch owners `workers` at a time, yielding each as it completes (or its TapkeyError).

    At most 2 x workers fetches are in flight, so memory holds a few owners' records, not all.
    Stored texts are read only for owners with stored locks (`stored_locks`: count per owner).
    Once `stop` is set the crawl ends within STOP_POLL seconds, leaving the fetches in flight
    behind (see the module docstring). An AuthError ends the crawl: without a token no owner can
    be read. `idle()` is called (on the consumer's thread) whenever no fetch has completed for
    STOP_POLL seconds: the engine commits its open transaction rather than hold it while waiting.
    """
    pending = deque(owner_ids)
    running: dict[Future[OwnerLocks], str] = {}

    def fetch(owner_id: str, known: Future[dict[str, str]] | None) -> OwnerLocks:
        texts = known.result() if known is not None else None
        return source.list_bound_locks(owner_id, expand=expand, known=texts)

    with _StoredTexts(engine) as stored, _DaemonPool(workers, "fetch") as pool:

        def submit() -> None:
            owner_id = pending.popleft()
            known = stored.read(owner_id) if stored_locks.get(owner_id) else None
            running[pool.submit(fetch, owner_id, known)] = owner_id

        for _ in range(min(2 * workers, len(pending))):
            submit()
        try:
            while running:
                done, _ = wait(running, timeout=STOP_POLL, return_when=FIRST_COMPLETED)
                if stop.is_set():
                    return
                if not done and idle is not None:
                    idle()
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


def call_until_stopped(stop: threading.Event, call: Callable[[], T]) -> T:
    """`call()` on a thread of its own; Interrupted once `stop` is set, leaving it behind."""
    with _DaemonPool(1, "call") as pool:
        future = pool.submit(call)
        while not wait([future], timeout=STOP_POLL).done:
            if stop.is_set():
                raise Interrupted
        return future.result()


class _DaemonPool:
    """`workers` daemon threads running submitted calls, each in the context it was submitted in.

    Unlike a ThreadPoolExecutor, it can be left with calls in flight: its threads never keep the
    process from exiting. The context carries the run id of the log lines (observability).
    """

    def __init__(self, workers: int, name: str) -> None:
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._workers = workers
        for number in range(workers):
            thread = threading.Thread(target=self._work, name=f"{name}_{number}", daemon=True)
            thread.start()

    def submit(self, call: Callable[..., T], *args: Any) -> Future[T]:
        """Queue `call(*args)`; its Future can be cancelled until a thread takes it."""
        future: Future[T] = Future()
        self._queue.put(_Call(future, call, args, contextvars.copy_context()))
        return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if not item.future.set_running_or_notify_cancel():
                continue
            try:
                result = item.context.run(item.call, *item.args)
            except BaseException as exc:  # handed to whoever waits, as ThreadPoolExecutor does
                item.future.set_exception(exc)
            else:
                item.future.set_result(result)
            del item  # not kept alive while waiting for the next call

    def __enter__(self) -> _DaemonPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        # Threads finish what they run (or are left behind by a stop), then take a None and end.
        for _ in range(self._workers):
            self._queue.put(None)


class _Call(NamedTuple):
    future: Future[Any]
    call: Callable[..., Any]
    args: tuple[Any, ...]
    context: contextvars.Context


class _StoredTexts:
    """Reads owners' stored payload texts, in order, ahead of their fetches.

    One thread on one connection, whatever `workers` is: the reads are short, and several threads
    reading at once cost more CPU (in SQLite and for the GIL) than they save in wall time. Except
    on MySQL/MariaDB: InnoDB keeps rows in primary key order, so an owner's rows lie on as many
    pages as it has locks, and a read mostly waits for the server to bring them in; two readers
    overlap those waits (an unchanged rerun of 100,000 locks took a quarter less time).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        readers = 2 if backend(engine) == "mysql" else 1
        self._thread = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="read")
        self._local = threading.local()
        self._conns: list[Connection] = []

    def read(self, owner_id: str) -> Future[dict[str, str]]:
        """The owner's present locks' stored texts, by id (read on a reader thread)."""
        return self._thread.submit(self._load, owner_id)

    def _load(self, owner_id: str) -> dict[str, str]:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._engine.connect()
            self._conns.append(conn)
            sqlite_cache(conn, SQLITE_READER_CACHE_KIB)
        with conn.begin():
            return load_live_raw(conn, owner_id)

    def __enter__(self) -> _StoredTexts:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._thread.shutdown(cancel_futures=True)
        for conn in self._conns:
            conn.close()
