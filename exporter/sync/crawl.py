"""Fetching every owner's bound locks concurrently, each with its stored texts read just ahead.

The sync engine consumes owners in the order their fetches complete. Each owner's stored payload
texts are read while its first request is in flight (the API client asks for them once the first
page is in), so the client can skip elements whose text is unchanged; the texts may be stale by
the time the engine applies the owner, but only for locks the engine wrote since for another
owner of the same run, and it checks those first (they are in its `seen`).

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
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from sqlalchemy import Connection, Engine

from exporter.db.engine import SQLITE_READER_CACHE_KIB, backend, sqlite_cache
from exporter.db.schema import bound_locks
from exporter.errors import AuthError, Interrupted, TapkeyError
from exporter.sync.versions import load_live_raw, load_live_raw_of
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
        known: Mapping[str, str] | Callable[[], Mapping[str, str] | None] | None = None,
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
    completed: Completions[OwnerLocks] = Completions()

    def fetch(owner_id: str, known: Future[dict[str, dict[str, str]]] | None) -> OwnerLocks:
        if known is None:
            return source.list_bound_locks(owner_id, expand=expand)
        # Asked for once the first page is in: the read need not finish before the request.
        return source.list_bound_locks(
            owner_id, expand=expand, known=lambda: known.result().get(owner_id)
        )

    # Twice as many threads as `workers`: the API client lets `workers` of them have a page in
    # flight, and the others send the request confirming a list's end meanwhile (TapkeyClient).
    # One worker stays one thread, so that owners complete (and are applied) in list order.
    threads = 2 * workers if workers > 1 else 1
    with (
        _StoredTexts(engine, owner_ids, stored_locks) as stored,
        DaemonPool(threads, "fetch") as pool,
    ):

        def submit() -> None:
            owner_id = pending.popleft()
            known = stored.read(owner_id) if stored_locks.get(owner_id) else None
            future = pool.submit(fetch, owner_id, known)
            running[future] = owner_id
            completed.watch(future)

        for _ in range(min(2 * workers, len(pending))):
            submit()
        try:
            while running:
                future = completed.next(STOP_POLL)
                if stop.is_set():
                    return
                if future is None:
                    if idle is not None:
                        idle()
                    continue
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


def call_until_stopped(
    stop: threading.Event, call: Callable[[], T], meanwhile: Callable[[], object] | None = None
) -> T:
    """`call()` on a thread of its own; Interrupted once `stop` is set, leaving it behind.

    `meanwhile()` runs on this thread while `call()` waits for its answer: database reads that
    need not wait for a request hide behind its latency. Its failure is raised only once `call()`
    has returned, so that a failing or stopped `call()` ends the run as if it ran alone.
    """
    with DaemonPool(1, "call") as pool:
        future = pool.submit(call)
        failure: Exception | None = None
        if meanwhile is not None:
            try:
                meanwhile()
            except Exception as exc:  # raised below, unless the call fails first
                failure = exc
        while not wait([future], timeout=STOP_POLL).done:
            if stop.is_set():
                raise Interrupted
        result = future.result()
        if failure is not None:
            raise failure
        return result


class Completions(Generic[T]):
    """Futures in the order they complete, fed by their done callbacks.

    One queue hand-over per completion, where `concurrent.futures.wait(FIRST_COMPLETED)` adds and
    removes a waiter on every running future each time it is called: with lists of a few
    elements (one request each), that bookkeeping cost the consuming thread as much CPU as the
    rest of its work.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Future[T]] = queue.SimpleQueue()

    def watch(self, future: Future[T]) -> None:
        """Hand `future` to `next()` once it is done (or cancelled)."""
        future.add_done_callback(self._queue.put)

    def next(self, timeout: float) -> Future[T] | None:
        """The next future done, or None if none is done within `timeout` seconds."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None


class DaemonPool:
    """`workers` daemon threads running submitted calls, each in the context it was submitted in.

    Unlike a ThreadPoolExecutor, it can be left with calls in flight: its threads never keep the
    process from exiting. The context carries the run id of the log lines (service.logging).
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

    def __enter__(self) -> DaemonPool:
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
    """Reads owners' stored payload texts, in crawl order, ahead of their fetches.

    One thread on one connection, whatever `workers` is: the reads are short, and several threads
    reading at once cost more CPU (in SQLite and for the GIL) than they save in wall time. Except
    on MySQL/MariaDB, where a read mostly waits for the server to bring pages in from the file
    when the table outgrows the buffer pool; two readers overlap those waits (an unchanged rerun
    of 100,000 locks took a quarter less time, measured while an owner's rows still lay one per
    page: before migration 0008 keyed bound_locks by owner there).

    Owners with few stored locks are read together, up to SMALL_BATCH_OWNERS owners and
    SMALL_BATCH_LOCKS locks per statement: for owners of a few dozen locks the statement, not
    its rows, is what costs (a read per owner took about 0.5 ms of CPU, as much as fetching its
    page). Larger owners are read one by one, joined (`load_live_raw`); on PostgreSQL they are
    batched too (`small_owner`).
    """

    #: Owners with fewer stored locks than this are read in batches.
    SMALL_OWNER = 100
    SMALL_BATCH_OWNERS = 200
    SMALL_BATCH_LOCKS = 5000

    def __init__(self, engine: Engine, owner_ids: Sequence[str], stored: Mapping[str, int]) -> None:
        self._engine = engine
        self._batches = plan_text_batches(
            owner_ids,
            stored,
            small=self.small_owner(backend(engine)),
            owners=self.SMALL_BATCH_OWNERS,
            locks=self.SMALL_BATCH_LOCKS,
        )
        self._batch_of = {o: i for i, batch in enumerate(self._batches) for o in batch}
        self._futures: dict[int, Future[dict[str, dict[str, str]]]] = {}
        readers = 2 if backend(engine) == "mysql" else 1
        self._ahead = readers  # batches read ahead of the one asked for
        self._thread = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="read")
        self._local = threading.local()
        self._conns: list[Connection] = []

    @classmethod
    def small_owner(cls, name: str) -> int:
        """Owners with fewer stored locks than this are read in batches on backend `name`.

        On PostgreSQL every owner is (up to SMALL_BATCH_LOCKS locks a statement): psycopg
        builds rows in C, so 5,000 rows cost no more a lock than 500, and each statement saved
        is a round trip the fetches wait for (200 owners of 500 locks, in-process A/B of
        unchanged reruns: medians 0.83-1.27 s in batches against 0.92-1.51 s owner by owner).
        """
        return cls.SMALL_BATCH_LOCKS if name == "postgresql" else cls.SMALL_OWNER

    def read(self, owner_id: str) -> Future[dict[str, dict[str, str]]]:
        """The texts of the owner's batch (owner -> lock id -> text), read on a reader thread;
        the batches after it are read ahead, and those before the one just passed let go."""
        index = self._batch_of[owner_id]
        for ahead in range(index, index + self._ahead + 1):
            if ahead < len(self._batches) and ahead not in self._futures:
                self._futures[ahead] = self._thread.submit(self._load, self._batches[ahead])
        for old in [i for i in self._futures if i < index - 1]:
            del self._futures[old]
        return self._futures[index]

    def _load(self, owner_ids: list[str]) -> dict[str, dict[str, str]]:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._engine.connect()
            self._conns.append(conn)
            if conn.dialect.name == "sqlite":
                sqlite_cache(conn, SQLITE_READER_CACHE_KIB)
            else:
                # Each read is one statement, so its own transaction: without the BEGIN and
                # COMMIT round trips (two of the three per owner on PostgreSQL) the reader,
                # which the fetches wait for, took a third less time.
                conn.execution_options(isolation_level="AUTOCOMMIT")
        if conn.dialect.name != "sqlite":
            # No transaction to end: a commit would be one more round trip per read on
            # MySQL/MariaDB, where PyMySQL sends COMMIT even in autocommit mode (200 of them in
            # an unchanged rerun of 200 owners; psycopg sends nothing).
            return _read_texts(conn, owner_ids)
        with conn.begin():
            return _read_texts(conn, owner_ids)

    def __enter__(self) -> _StoredTexts:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._thread.shutdown(cancel_futures=True)
        for conn in self._conns:
            conn.close()


def _read_texts(conn: Connection, owner_ids: list[str]) -> dict[str, dict[str, str]]:
    if len(owner_ids) == 1:
        return {owner_ids[0]: load_live_raw(conn, owner_ids[0])}
    return load_live_raw_of(conn, bound_locks, owner_ids)


def plan_text_batches(
    owner_ids: Sequence[str], stored: Mapping[str, int], *, small: int, owners: int, locks: int
) -> list[list[str]]:
    """The owners with stored locks, in order, in batches read by one statement each: an owner
    with `small` or more locks alone, others together up to `owners` owners and `locks` locks."""
    batches: list[list[str]] = []
    open_batch: list[str] = []
    open_locks = 0
    for owner_id in owner_ids:
        count = stored.get(owner_id, 0)
        if not count:
            continue
        if count >= small:
            batches.append([owner_id])
            open_batch, open_locks = [], 0  # batches keep the crawl's order
            continue
        if open_batch and (len(open_batch) >= owners or open_locks + count > locks):
            open_batch, open_locks = [], 0
        if not open_batch:
            batches.append(open_batch)
        open_batch.append(owner_id)
        open_locks += count
    return batches
