"""Database faults: unreachable, a schema behind or ahead of the code, connections lost mid-run,
a full disk; each ends in a documented exit code and a consistent database."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool, Pool
from support.cli import one_line
from support.helpers import (
    closed_port,
    listening,
    mutate_every_owner,
    run_once,
    sandbox_owner_ids,
)
from support.history import (
    assert_converged,
    assert_history_consistent,
    count_rows,
    run_statuses,
)

from exporter.config.sections import LoggingSettings
from exporter.db import migrate
from exporter.db.engine import make_engine
from exporter.db.schema import (
    bound_locks,
    sync_run_owners,
    sync_runs,
)
from exporter.errors import DatabaseUnavailableError, SchemaVersionError
from exporter.sandbox.server import Sandbox, SandboxRequest
from exporter.service.logging import setup_logging
from exporter.sync import run_records
from exporter.sync.batches import Batching

# These tests kill connections: one that is dropped open instead of closed fails its test.
pytestmark = pytest.mark.usefixtures("collect_garbage")


def _alembic(conn: Any) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrate.migrations_dir()))
    cfg.attributes["connection"] = conn
    return cfg


def _previous_revision() -> str | None:
    from alembic.script import ScriptDirectory

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrate.migrations_dir()))
    head = ScriptDirectory.from_config(cfg).get_revision(migrate.head_revision())
    down = head.down_revision if head is not None else None
    return down if isinstance(down, str) else None


def _migrate(url: str, revision: str | None, *, stamp: str | None = None) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if revision is not None:
                command.upgrade(_alembic(conn), revision)
            if stamp is not None:
                conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": stamp})
            conn.commit()
    finally:
        engine.dispose()


def _revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        return migrate.current_revision(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql://postgres:hunter2@127.0.0.1:CLOSED/inventory", id="postgresql"),
        pytest.param("mysql://root:hunter2@127.0.0.1:CLOSED/inventory", id="mariadb"),
        pytest.param("sqlite:///FILE/inventory.db", id="sqlite-path-under-a-file"),
    ],
)
def test_a_database_unreachable_at_start_exits_5_with_one_line(
    sandbox: Sandbox, tmp_path: Path, url: str
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    url = url.replace("CLOSED", str(closed_port())).replace("FILE", str(tmp_path / "a-file"))

    with pytest.raises(DatabaseUnavailableError) as caught:
        run_once(sandbox, url, tmp_path)

    message = one_line(str(caught.value))
    assert caught.value.exit_code == 5 and "hunter2" not in message
    assert "check [database] url" in message
    assert sandbox.request_count == 0


def test_a_schema_behind_the_code_exits_5_and_writes_nothing(
    sandbox: Sandbox, empty_db_url: str, tmp_path: Path
) -> None:
    previous = _previous_revision()
    _migrate(empty_db_url, previous)  # None: no schema at all, the oldest "behind" there is

    if empty_db_url.startswith("sqlite"):
        # SQLite is upgraded by run-once itself (documented); nothing to refuse.
        assert run_once(sandbox, empty_db_url, tmp_path).status == "succeeded"
        assert _revision(empty_db_url) == migrate.head_revision()
        return
    with pytest.raises(SchemaVersionError, match="exporter db upgrade") as caught:
        run_once(sandbox, empty_db_url, tmp_path)

    assert caught.value.exit_code == 5
    assert sandbox.request_count == 0
    assert _revision(empty_db_url) == previous
    if previous is not None:
        engine = make_engine(empty_db_url)
        try:
            assert count_rows(engine, sync_runs) == 0
        finally:
            engine.dispose()


def test_a_schema_from_a_newer_exporter_exits_5_and_writes_nothing(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    _migrate(db_url, None, stamp="9999_from_the_future")
    try:
        with pytest.raises(SchemaVersionError, match="does not know") as caught:
            run_once(sandbox, db_url, tmp_path)
        assert caught.value.exit_code == 5
        assert sandbox.request_count == 0 and count_rows(engine, sync_runs) == 0
        assert _revision(db_url) == "9999_from_the_future"
    finally:
        _migrate(db_url, None, stamp=migrate.head_revision())  # the fixture's database is shared


@contextlib.contextmanager
def _killing(engine_url: str, when: Callable[[str], bool], times: int = 1) -> Iterator[list[str]]:
    """Kill the server session of the connection about to run a matching statement.

    The kill comes from another session (pg_terminate_backend / KILL), like an administrator
    or a failover would; the statement then fails on a dead connection.
    """
    admin = create_engine(engine_url, isolation_level="AUTOCOMMIT")
    killed: list[str] = []
    postgres = admin.dialect.name == "postgresql"

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if conn.engine is admin or len(killed) >= times or not when(statement):
            return
        killed.append(" ".join(statement.split()[:3]))
        dbapi = conn.connection.dbapi_connection
        with admin.connect() as kill:
            if postgres:
                pid = dbapi.info.backend_pid
                kill.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
            else:
                kill.execute(text(f"KILL CONNECTION {int(dbapi.thread_id())}"))

    try:
        with listening(Engine, before_cursor_execute=before):
            yield killed
    finally:
        admin.dispose()


# SQLite has no server connection to lose.
SERVERS = pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)


@SERVERS
@pytest.mark.parametrize(
    "batching", [pytest.param(Batching(locks=1), id="per-owner"), pytest.param(None, id="grouped")]
)
def test_a_connection_lost_inside_an_owner_rolls_that_owner_back(
    db_url: str, engine: Engine, tmp_path: Path, batching: Batching | None
) -> None:
    url = db_url
    with Sandbox(seed=31, owners=4, locks_per_owner=6) as fake:
        inserts: list[str] = []
        # One owner per transaction: kill the second's. Grouped, the four owners may all share
        # the first transaction: kill that one.
        victim = 2 if batching is not None else 1

        def in_a_transaction(statement: str) -> bool:
            # Each transaction writes its owners' locks and versions (bulk, possibly COPY), then
            # their sync_run_owners rows: kill it just before those rows.
            if statement.startswith("INSERT INTO sync_run_owners"):
                inserts.append(statement)
            return len(inserts) == victim

        lost = pytest.raises(DatabaseUnavailableError, match="lost the database connection \\(")
        with _killing(url, in_a_transaction) as killed, lost:
            run_once(fake, url, tmp_path, tapkey={"workers": 1}, batching=batching)
        assert killed

        # The killed transaction rolled back entirely (one owner, or every owner grouped in it,
        # never part of one); the run records exactly the owners that committed, and is failed.
        with engine.connect() as conn:
            committed = conn.execute(select(func.count()).select_from(sync_run_owners)).scalar()
        assert committed == victim - 1
        assert count_rows(engine, bound_locks) == 6 * committed
        assert [status for status, _ in run_statuses(engine)] == ["failed"]
        assert "rolled back" in (run_statuses(engine)[0][1] or "")
        assert_history_consistent(engine)

        assert_converged(engine, fake, run_once(fake, url, tmp_path))


@SERVERS
def test_a_connection_lost_before_the_run_starts_exits_5_and_writes_no_run(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    url = db_url

    def opening_the_run(statement: str) -> bool:
        return statement.startswith("INSERT INTO sync_runs")

    with (
        _killing(url, opening_the_run) as killed,
        pytest.raises(DatabaseUnavailableError) as caught,
    ):
        run_once(sandbox, url, tmp_path)
    assert killed and caught.value.exit_code == 5
    assert "lost the database connection" in one_line(str(caught.value))
    assert run_statuses(engine) == [] and sandbox.request_count == 0

    assert_converged(engine, sandbox, run_once(sandbox, url, tmp_path))


@SERVERS
@pytest.mark.parametrize("where", ["second owner", "removals"])
def test_a_run_cut_off_by_the_database_is_recorded_by_its_process_when_it_is_back(
    db_url: str,
    engine: Engine,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    # The database goes away in the middle of the run (in the second owner's transaction, or in
    # the removals') and is still away while the run tries to record its end: the process keeps
    # the end, and its next run (`serve`'s next slot) writes it as it happened, not as
    # "interrupted" with counts of 0 and the time it was found.
    monkeypatch.setattr(run_records, "RETRY_WAITS", (0.0, 0.0, 0.0))
    caplog.set_level(logging.INFO)
    url = db_url
    with Sandbox(seed=32, owners=3, locks_per_owner=4) as fake:
        run_once(fake, url, tmp_path)
        mutate_every_owner(fake)
        inserts: list[str] = []

        def cut_off_then_every_try_to_record_the_end(statement: str) -> bool:
            if statement.startswith("INSERT INTO sync_run_owners"):
                inserts.append(statement)
                return where == "second owner" and len(inserts) == 2
            if statement.startswith("UPDATE bound_locks SET removed_at"):
                return where == "removals"
            return statement.startswith("UPDATE sync_runs") and "sync_runs.id =" in statement

        attempts = 1 + len(run_records.RETRY_WAITS)
        with (
            _killing(url, cut_off_then_every_try_to_record_the_end, 1 + attempts) as killed,
            pytest.raises(DatabaseUnavailableError) as lost,
        ):
            run_once(fake, url, tmp_path, tapkey={"workers": 1}, batching=Batching(locks=1))
        assert len(killed) == 1 + attempts
        assert run_statuses(engine)[-1] == ("running", None)
        [warning] = [r for r in caplog.records if "could not record the end" in r.getMessage()]
        assert warning.getMessage().startswith("could not record the end of run 2 (")
        assert warning.exc_info is None and "\n" not in warning.getMessage()  # one line
        counts = ("locks_seen", "updated", "unchanged", "removed")
        with engine.connect() as conn:
            committed = conn.execute(
                select(*(func.sum(sync_run_owners.c[name]) for name in counts)).where(
                    sync_run_owners.c.run_id == 2
                )
            ).one()
        caplog.clear()

        result = run_once(fake, url, tmp_path)

        with engine.connect() as conn:
            runs = conn.execute(select(sync_runs).order_by(sync_runs.c.id)).mappings().all()
        cut = runs[1]
        assert (cut["status"], cut["error"]) == ("failed", one_line(str(lost.value)))
        assert cut["error"].startswith("lost the database connection (")
        # The end it really had: before the next run began, with what its owners committed.
        assert cut["finished_at"] is not None and cut["finished_at"] < runs[2]["started_at"]
        assert tuple(cut[name] for name in counts) == tuple(committed)
        # The renamed lock of each owner that committed; no removal was committed.
        assert (cut["updated"], cut["removed"]) == (1 if where == "second owner" else 3, 0)
        assert any("recorded the end of run 2 (failed at" in r.getMessage() for r in caplog.records)
        assert not any("had no recorded end" in r.getMessage() for r in caplog.records)
        assert_history_consistent(engine)
        assert_converged(engine, fake, result)


@SERVERS
def test_every_connection_killed_mid_crawl_aborts_the_run_and_the_next_converges(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    url = db_url
    name = make_url(url).database
    # The hook runs on the sandbox's request thread and may still be in pg_terminate_backend's
    # wait when the aborted run returns and `admin` is disposed: without a pool its connection
    # is closed as the hook leaves it, instead of going back to a disposed pool still open.
    admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with Sandbox(seed=33, owners=4, locks_per_owner=5) as fake:
        run_once(fake, url, tmp_path)
        mutate_every_owner(fake)

        def kill_all(request: SandboxRequest) -> None:
            if request.route == "locks" and request.number == 3:
                _kill_connections(admin, name)

        fake.reset_counters()  # SandboxRequest.number counts from here
        fake.hooks.append(kill_all)
        try:
            with pytest.raises(DatabaseUnavailableError) as caught:
                run_once(fake, url, tmp_path, tapkey={"workers": 1})
        finally:
            fake.hooks.clear()
            admin.dispose()

        assert caught.value.exit_code == 5
        status, error = run_statuses(engine)[-1]
        assert status == "failed" and error == one_line(str(caught.value))
        assert_history_consistent(engine)
        assert_converged(engine, fake, run_once(fake, url, tmp_path))


def _kill_connections(admin: Engine, database: str | None) -> None:
    with admin.connect() as conn:
        if admin.dialect.name == "postgresql":
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            )
            return
        ids = conn.execute(
            text(
                "SELECT id FROM information_schema.processlist "
                "WHERE db = :db AND id <> CONNECTION_ID()"
            ),
            {"db": database},
        ).scalars()
        for thread in list(ids):
            with contextlib.suppress(Exception):
                conn.execute(text(f"KILL CONNECTION {int(thread)}"))


@SERVERS
def test_connections_killed_mid_run_log_no_traceback(db_url: str, tmp_path: Path) -> None:
    # An unchanged rerun read in pages: MariaDB's KILL finds the stored-text readers idle, so
    # the run meets the dead connections only as it closes them. SQLAlchemy's pool then logged
    # "Exception during reset or similar" with a traceback per connection, mailed by cron
    # beside the run's one line.
    admin = create_engine(db_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    root, pool = logging.getLogger(), logging.getLogger("sqlalchemy.pool")
    handlers, level, pool_level = root.handlers[:], root.level, pool.level
    stderr = io.StringIO()  # what `exporter serve` and `run-once` print
    with Sandbox(seed=34, owners=2, locks_per_owner=20) as fake:
        run_once(fake, db_url, tmp_path, tapkey={"page_size": 5})
        fake.reset_counters()  # SandboxRequest.number counts from here
        fake.hooks.append(
            lambda request: (
                _kill_connections(admin, make_url(db_url).database)
                if request.route == "locks" and request.number == 3
                else None
            )
        )
        setup_logging(LoggingSettings(), stream=stderr)
        try:
            with pytest.raises(DatabaseUnavailableError) as caught:
                run_once(fake, db_url, tmp_path, tapkey={"page_size": 5})
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
            pool.setLevel(pool_level)
            fake.hooks.clear()
            admin.dispose()
    assert caught.value.exit_code == 5
    assert "Traceback" not in stderr.getvalue(), stderr.getvalue()
    assert "run 2 failed" in stderr.getvalue()


def test_sqlite_disk_full_fails_clearly_without_corruption(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'small.db'}"
    engine = make_engine(url)
    with Sandbox(seed=34, owners=3, locks_per_owner=5) as fake:
        run_once(fake, url, tmp_path)
        with engine.connect() as conn:
            pages = conn.execute(text("PRAGMA page_count")).scalar()
        for owner in sandbox_owner_ids(fake):
            for _ in range(60):
                fake.bind_new(owner)

        def cap(dbapi_connection: Any, _record: Any) -> None:
            if isinstance(dbapi_connection, __import__("sqlite3").Connection):
                dbapi_connection.execute(f"PRAGMA max_page_count = {int(pages or 0) + 2}")

        with listening(Pool, connect=cap), pytest.raises(DatabaseUnavailableError) as caught:
            run_once(fake, url, tmp_path)

        message = one_line(str(caught.value))
        assert caught.value.exit_code == 5 and "ran out of space" in message
        assert "free disk space" in message
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        assert_history_consistent(engine)

        result = run_once(fake, url, tmp_path)

        assert [status for status, _ in run_statuses(engine)][-2:] == ["failed", "succeeded"]
        assert_converged(engine, fake, result)
    engine.dispose()
