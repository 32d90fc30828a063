"""First loads near the write floor: owners grouped into bounded transactions, and the lock
tables' secondary indexes built after the load (exporter.sync.batches, exporter.db.indexes)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, insert, select, text
from support.helpers import listening, make_settings
from support.history import assert_history_consistent, expected_locks, locks_at

from exporter.db import indexes, migrate
from exporter.db.engine import backend, connect
from exporter.db.schema import bound_locks, sync_run_owners, sync_runs
from exporter.results import RunResult, SyncProgress
from exporter.sandbox.server import Sandbox, SandboxRequest
from exporter.service import job
from exporter.sync.batches import Batching, WriteGroup


def _run(fake: Sandbox, db_url: str, tmp_path: Path, **kwargs: Any) -> RunResult:
    return job.run_once(make_settings(fake, db_url, tmp_path, workers=2), **kwargs)


def _missing_indexes(engine: Engine) -> set[str]:
    expected = {str(index.name) for index in indexes.deferred(backend(engine))}
    with connect(engine) as conn:
        return expected - indexes._present(conn)


# -- WriteGroup ----------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{tmp_path / 'group.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (owner TEXT)"))
    return engine


def _rows(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT owner FROM t ORDER BY owner")).scalars())


@pytest.mark.parametrize(
    ("batching", "advance", "committed_after"),
    [
        pytest.param(Batching(locks=10, seconds=60), 0.0, ["a", "b", "c"], id="locks bound"),
        pytest.param(Batching(locks=1000, seconds=2), 0.8, ["a", "b", "c"], id="time bound"),
        pytest.param(Batching(locks=1), 0.0, ["a"], id="one owner each"),
    ],
)
def test_a_group_commits_whole_owners_once_a_bound_is_reached(
    sqlite_engine: Engine, batching: Batching, advance: float, committed_after: list[str]
) -> None:
    clock = _Clock()
    handed: list[list[str]] = []
    with sqlite_engine.connect() as conn:
        group: WriteGroup[str] = WriteGroup(
            conn, batching, on_commit=handed.append, monotonic=clock
        )
        for owner in ("a", "b", "c"):
            group.begin()
            conn.execute(text("INSERT INTO t VALUES (:o)"), {"o": owner})
            clock.now += advance
            group.wrote(4, owner)
            if handed:
                break
        # What was handed over is exactly what another connection sees committed.
        assert handed == [committed_after]
        assert _rows(sqlite_engine) == committed_after


def test_an_open_group_is_lost_whole_and_counted_nowhere(sqlite_engine: Engine) -> None:
    handed: list[list[str]] = []
    with sqlite_engine.connect() as conn:
        group: WriteGroup[str] = WriteGroup(conn, Batching(), on_commit=handed.append)
        for owner in ("a", "b"):
            group.begin()
            conn.execute(text("INSERT INTO t VALUES (:o)"), {"o": owner})
            group.wrote(1, owner)
    # Closing the connection with the group open rolls it back, as a crash would.
    assert handed == [] and _rows(sqlite_engine) == []
    with sqlite_engine.connect() as conn:
        group = WriteGroup(conn, Batching(), on_commit=handed.append)
        group.commit()  # nothing open: nothing happens
        group.begin()
        group.begin()  # one transaction, however often an owner asks
        conn.execute(text("INSERT INTO t VALUES ('c')"))
        group.wrote(1, "c")
        group.commit()
    assert handed == [["c"]] and _rows(sqlite_engine) == ["c"]


# -- the sync ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _statements() -> Iterator[list[str]]:
    """Every statement any engine runs meanwhile, and "COMMIT" for every commit of a connection
    that ran a statement since its last one (not the writer lock's, which commits its checks)."""
    seen: list[str] = []
    active: set[int] = set()

    def executed(
        conn: Any, _cursor: Any, statement: str, params: Any, _context: Any, many: bool
    ) -> None:
        # Once per row of an executemany (one row of sync_run_owners per owner).
        seen.extend([statement.lstrip()] * (len(params) if many else 1))
        active.add(id(conn))

    def committed(conn: Any) -> None:
        autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        if id(conn) in active and not autocommit:
            seen.append("COMMIT")
        active.discard(id(conn))

    with listening(Engine, before_cursor_execute=executed, commit=committed):
        yield seen


def _owners_per_commit(statements: list[str]) -> list[int]:
    """For each transaction that recorded owners: how many."""
    groups, owners = [], 0
    for statement in statements:
        if statement.startswith("INSERT INTO sync_run_owners"):
            owners += 1
        elif statement == "COMMIT" and owners:
            groups.append(owners)
            owners = 0
    return groups


def test_a_first_load_groups_owners_and_records_each_exactly(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=3, owners=24, locks_per_owner=3) as fake:
        with _statements() as statements:
            result = _run(fake, db_url, tmp_path)
        second = _run(fake, db_url, tmp_path)

    assert result.status == "succeeded" and result.counts.created == 72
    # Owners share transactions (the writer rarely waits for a fetch here): far fewer commits
    # than owners, and every owner's row in exactly one of them.
    groups = _owners_per_commit(statements)
    assert sum(groups) == 24 and len(groups) < 24 / 2
    with engine.connect() as conn:
        rows = conn.execute(
            select(func.count(), func.sum(sync_run_owners.c.created)).where(
                sync_run_owners.c.run_id == result.run_id
            )
        ).one()
    assert tuple(rows) == (24, 72)
    assert second.counts.unchanged == 72 and second.finished_at is not None
    assert locks_at(engine, second.finished_at) == expected_locks(fake.snapshot())
    assert_history_consistent(engine)


def test_one_owner_per_transaction_when_asked(db_url: str, engine: Engine, tmp_path: Path) -> None:
    with Sandbox(seed=3, owners=6, locks_per_owner=3) as fake, _statements() as statements:
        result = _run(fake, db_url, tmp_path, batching=Batching(locks=1))
    assert result.status == "succeeded"
    assert _owners_per_commit(statements) == [1] * 6


def test_progress_reports_owners_locks_and_requests(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    seen: list[SyncProgress] = []
    with Sandbox(seed=4, owners=5, locks_per_owner=4) as fake:
        result = _run(fake, db_url, tmp_path, progress=seen.append)
        fake.rename(fake.locks_payload(fake.owners_payload()[0]["id"])[0]["id"], "renamed")
        again: list[SyncProgress] = []
        rerun = _run(fake, db_url, tmp_path, progress=again.append)

    for run, reports in ((result, seen), (rerun, again)):
        assert [p.owners_done for p in reports] == list(range(6))
        assert {p.owners_total for p in reports} == {5}
        assert reports[0].locks_seen == 0 and reports[0].api_requests >= 1  # the owner list
        assert reports[-1].locks_seen == run.locks_seen == 20
        # The crawl's last report; a list end confirmed after it may add a request.
        assert run.api_requests - 1 <= reports[-1].api_requests <= run.api_requests
        locks = [p.locks_seen for p in reports]
        assert locks == sorted(locks)


# -- indexes -------------------------------------------------------------------------------------


def test_a_first_load_builds_the_lock_indexes_after_its_writes(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    deferred = {str(index.name) for index in indexes.deferred(backend(engine))}
    assert deferred  # the lock_id_hex index and the versions' id and time indexes at least
    with Sandbox(seed=5, owners=4, locks_per_owner=5) as fake:
        with _statements() as first:
            result = _run(fake, db_url, tmp_path)
        fake.bind_new(fake.owners_payload()[0]["id"])
        with _statements() as rerun:
            _run(fake, db_url, tmp_path)

    assert result.status == "succeeded"
    # (COPY on PostgreSQL bypasses the events; the versions are copied by INSERT ... SELECT)
    inserts = [i for i, s in enumerate(first) if s.startswith("INSERT INTO bound_lock_versions")]
    dropped = {i: s for i, s in enumerate(first) if s.startswith("DROP INDEX")}
    created = {i: s for i, s in enumerate(first) if s.startswith(("CREATE INDEX", "CREATE UNIQUE"))}
    assert {_named(s, deferred) for s in dropped.values()} == deferred
    assert {_named(s, deferred) for s in created.values()} == deferred
    assert max(dropped) < min(inserts) and max(inserts) < min(created)
    # Into tables that hold rows, nothing is dropped or built.
    assert not [s for s in rerun if s.startswith(("DROP INDEX", "CREATE INDEX", "CREATE UNIQUE"))]
    assert _missing_indexes(engine) == set()
    migrate.check_models(engine)  # the schema matches the migrations again
    assert_history_consistent(engine)


def _named(statement: str, names: set[str]) -> str:
    [name] = [name for name in names if name in statement]
    return name


def test_indexes_a_first_load_did_not_build_are_built_by_the_next_run(
    db_url: str, engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stop = threading.Event()

    def stop_after_two_owners(progress: SyncProgress) -> None:
        if progress.owners_done == 2:
            stop.set()  # as SIGTERM would; a kill leaves the same state (tests/test_crash.py)

    with Sandbox(seed=6, owners=6, locks_per_owner=4) as fake:
        stopped = _run(fake, db_url, tmp_path, stop=stop, progress=stop_after_two_owners)
        assert (stopped.status, stopped.error) == ("failed", "interrupted")
        missing = _missing_indexes(engine)
        assert missing == {str(i.name) for i in indexes.deferred(backend(engine))}
        if backend(engine) == "postgresql":
            assert _run_key(engine) == []
        assert_history_consistent(engine)  # what it committed is whole, indexes or not
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(bound_locks)).scalar() >= 8

        caplog.set_level(logging.WARNING, logger="exporter.sync")
        result = _run(fake, db_url, tmp_path)

    assert result.status == "succeeded"
    assert _missing_indexes(engine) == set()
    [warning] = [r.getMessage() for r in caplog.records if "missing index" in r.getMessage()]
    assert "a first load that did not finish left them" in warning
    if backend(engine) == "postgresql":
        assert _RUN_KEY in warning
        assert _run_key(engine) == ["FOREIGN KEY (run_id) REFERENCES sync_runs(id)"]
    migrate.check_models(engine)
    assert result.finished_at is not None
    assert locks_at(engine, result.finished_at) == expected_locks(fake.snapshot())
    assert_history_consistent(engine)


_RUN_KEY = "fk_bound_lock_versions_run_id_sync_runs"
_KEYS = (
    "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
    f"WHERE conname = '{_RUN_KEY}' AND conrelid = CAST('bound_lock_versions' AS regclass)"
)


def _run_key(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text(_KEYS)).scalars())


def test_postgresql_checks_the_versions_run_key_once_after_a_first_load(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # PostgreSQL checks a foreign key with a trigger call per inserted row: a first load adds
    # the versions' run_id key after its writes, checking every row at once.
    with Sandbox(seed=5, owners=4, locks_per_owner=5) as fake:
        with _statements() as first:
            result = _run(fake, db_url, tmp_path)
        fake.bind_new(fake.owners_payload()[0]["id"])
        with _statements() as rerun:
            _run(fake, db_url, tmp_path)

    assert result.status == "succeeded"
    keys = {i: s for i, s in enumerate(first) if "CONSTRAINT" in s}
    assert not [s for s in rerun if "CONSTRAINT" in s]
    if backend(engine) != "postgresql":
        assert keys == {}  # MariaDB/MySQL and SQLite as before
        return
    inserts = [i for i, s in enumerate(first) if s.startswith("INSERT INTO bound_lock_versions")]
    [(dropped, drop), (added, add)] = sorted(keys.items())
    assert drop.startswith("ALTER TABLE bound_lock_versions DROP CONSTRAINT " + _RUN_KEY)
    assert add.startswith("ALTER TABLE bound_lock_versions ADD CONSTRAINT " + _RUN_KEY)
    assert dropped < min(inserts) and max(inserts) < added
    assert _run_key(engine) == ["FOREIGN KEY (run_id) REFERENCES sync_runs(id)"]


def test_tables_with_rows_keep_their_indexes(engine: Engine) -> None:
    with connect(engine) as conn, conn.begin():
        conn.execute(
            insert(sync_runs).values(id=1, started_at=_T, status="running", trigger="manual")
        )
        conn.execute(
            insert(bound_locks).values(
                id="l1", owner_account_id="o1", first_seen_at=_T, updated_at=_T
            )
        )
    assert indexes.drop_for_first_load(engine) is False
    assert _missing_indexes(engine) == set()


_T = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_first_loads_confirming_request_does_not_hold_up_the_next_owner(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # Two workers: the confirming request of an owner's short list (nothing is stored, so the
    # end is confirmed at once) goes out while the next owners' first pages are in flight.
    # Lists longer than the owner list: no page seen yet proves where they end.
    first_pages = threading.Event()
    overlapped: list[bool] = []

    def hook(request: SandboxRequest) -> None:
        if request.route != "locks":
            return
        if not request.skip:
            if request.number > 2:  # a first page after the first two owners'
                first_pages.set()
        else:  # a confirming request
            overlapped.append(first_pages.wait(timeout=5))

    with Sandbox(seed=4, owners=4, locks_per_owner=5) as fake:
        fake.hooks.append(hook)
        result = job.run_once(make_settings(fake, db_url, tmp_path, workers=2))
        requests = fake.requests["locks"]

    assert result.status == "succeeded" and result.counts.created == 20
    assert overlapped and all(overlapped)
    assert requests == 8  # each list's page and the request confirming its end
    assert_history_consistent(engine)
