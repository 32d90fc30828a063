"""store: insert_many stores what Core's INSERT stores; engines and files a run leaves behind."""

from __future__ import annotations

import gc
import os
import sqlite3
import stat
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Dialect, Engine, Table, create_engine, event, insert, inspect, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from support.helpers import make_settings

from exporter.db import engine as db_engine
from exporter.db.bulk import _insert_plan, converted, insert_many, sqlite_values
from exporter.db.engine import SQLITE_PAGE_SIZE, make_engine
from exporter.db.errors import store_error
from exporter.db.schema import bound_lock_versions, bound_locks, sync_runs
from exporter.sandbox.server import Sandbox, SandboxRequest
from exporter.service import job

T = datetime(2026, 11, 28, 6, 30, 1, 123456, tzinfo=UTC)
# Values a text format must escape or convert: tabs, newlines, backslashes, quotes, non-ASCII,
# a timestamp in another zone, NULLs, a large integer.
AWKWARD = {
    "owner_account_id": "owner-1",
    "title": 'Tür\t"Süd"\\\n2',
    "description": None,
    "physical_lock_id": "AbC+/d==",
    "lock_type_id": "TKY-1",
    "lock_model_name": "\\N",
    "manufacturer_id": 2_000_000_000,
    "active": False,
    "bind_date": datetime(2020, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=2))),
    "unbind_date": None,
    "target_type": "lock",
}
PLAIN = {**AWKWARD, "title": "Door", "active": True, "manufacturer_id": None, "bind_date": T}


def _rows(engine: Engine, table: Table, key: str, prefix: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(table).where(table.c.id.startswith(prefix)).order_by(table.c.id)
        ).all()
    return [{k: v for k, v in row._asdict().items() if k != key} for row in rows]


def _insert_both(engine: Engine, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert `rows` once with Core (ids prefixed "core-") and once with insert_many ("bulk-")."""
    columns = tuple(rows[0])
    with engine.begin() as conn:
        conn.execute(insert(table), [{**row, "id": f"core-{row['id']}"} for row in rows])
        insert_many(
            conn,
            table,
            columns,
            [tuple(f"bulk-{v}" if k == "id" else v for k, v in row.items()) for row in rows],
        )


def _strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**row, "id": row["id"].split("-", 1)[1]} for row in rows]


def test_new_lock_rows_match_core_insert(engine: Engine) -> None:
    rows = [
        {"id": f"{i}", **values, "lock_id_hex": "12-34", "raw": f'{{"id":"{i}"}}'}
        | {"rcl_serial_no": None, "rcl_date": T, "first_seen_at": T, "updated_at": T}
        for i, values in enumerate((AWKWARD, PLAIN, AWKWARD))
    ]
    _insert_both(engine, bound_locks, rows)

    core = _rows(engine, bound_locks, "", "core-")
    assert len(core) == 3
    assert _strip(_rows(engine, bound_locks, "", "bulk-")) == _strip(core)
    assert core[0]["bind_date"] == AWKWARD["bind_date"]
    assert core[0]["title"] == AWKWARD["title"]


def test_version_rows_with_a_json_column_match_core_insert(engine: Engine) -> None:
    # changed_fields is JSON (JSONB on PostgreSQL): not a binary COPY type, so the text path.
    with engine.begin() as conn:
        run_id = conn.execute(
            insert(sync_runs)
            .values(started_at=T, status="running", trigger="manual")
            .returning(sync_runs.c.id)
        ).scalar_one()
    rows = [
        {"id": "v1", **AWKWARD, "valid_from": T, "valid_to": None, "change_type": "updated"}
        | {"changed_fields": ["title", "active"], "removal_reason": None, "run_id": run_id},
        {"id": "v2", **PLAIN, "valid_from": T, "valid_to": T, "change_type": "created"}
        | {"changed_fields": None, "removal_reason": None, "run_id": run_id},
    ]
    _insert_both(engine, bound_lock_versions, rows)

    core = _rows(engine, bound_lock_versions, "version_id", "core-")
    assert [row["changed_fields"] for row in core] == [["title", "active"], None]
    assert _strip(_rows(engine, bound_lock_versions, "version_id", "bulk-")) == _strip(core)


def test_many_rows_in_several_statements_match_core_insert(engine: Engine) -> None:
    # More rows than one SQLite statement takes, with a remainder: distinct dates (converted one
    # by one), an owner's one instant in another zone and flags (converted once per value).
    zone = timezone(timedelta(hours=-5))
    rows = [
        {"id": f"{i:05d}", **(AWKWARD if i % 3 else PLAIN), "lock_id_hex": None, "raw": "{}"}
        | {"bind_date": T + timedelta(seconds=i, microseconds=i), "active": bool(i % 2)}
        | {"rcl_serial_no": i, "rcl_date": None if i % 5 else T.astimezone(zone)}
        | {"first_seen_at": T.astimezone(zone), "updated_at": T}
        for i in range(1_100)
    ]
    _insert_both(engine, bound_locks, rows)

    core = _rows(engine, bound_locks, "", "core-")
    assert len(core) == 1_100
    assert _strip(_rows(engine, bound_locks, "", "bulk-")) == _strip(core)


def test_sqlite_values_are_the_converted_rows_one_after_another(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    columns = ("id", "owner_account_id", "bind_date", "active", "first_seen_at", "updated_at")
    other = datetime(2026, 11, 28, 7, 30, 1, 123456, tzinfo=timezone(timedelta(hours=1)))
    rows = [
        ("a", "o", T, True, T, T),
        ("b", "o", None, False, other, T),  # `other` is T in another zone
        ("c", "o", T + timedelta(microseconds=1), None, T, T),
    ]
    with engine.connect() as conn:
        plan = _insert_plan(conn, bound_locks, columns)
    engine.dispose()
    text_t = "2026-11-28T06:30:01.123456Z"
    # In placeholder order, which is the table's: `active` comes before `bind_date` there.
    assert sqlite_values(plan, rows) == [
        *("a", "o", 1, text_t, text_t, text_t),
        *("b", "o", 0, None, text_t, text_t),
        *("c", "o", None, "2026-11-28T06:30:01.123457Z", text_t, text_t),
    ]
    with pytest.raises(ValueError, match="6 values"):
        sqlite_values(plan, [("a", "o", T, True, T)])


@pytest.mark.parametrize(
    "column",
    [
        pytest.param([1, 2, 3, 1], id="mostly-distinct"),
        pytest.param([1, 1, 1, 2], id="repeated"),
        pytest.param([[1], [2], [1]], id="unhashable"),
        pytest.param([], id="empty"),
    ],
)
def test_converted_applies_the_processor_to_every_value(column: list[Any]) -> None:
    calls: list[Any] = []

    def process(value: Any) -> str:
        calls.append(value)
        return f"<{value}>"

    assert converted(column, process) == [f"<{value}>" for value in column]
    if column == [1, 1, 1, 2]:
        assert sorted(calls) == [1, 2]  # once per distinct value where values repeat


def _live_dialects() -> int:
    gc.collect()
    return sum(isinstance(obj, Dialect) for obj in gc.get_objects())


def test_runs_that_insert_rows_do_not_grow_memory(db_url: str, tmp_path: Path) -> None:
    # `serve` builds and disposes an engine per run. Every run here inserts new locks (the bulk
    # path caches an insert plan per dialect): nothing of a finished run's engine may stay alive.
    with Sandbox(seed=5, owners=2, locks_per_owner=3) as fake:
        settings = make_settings(fake, db_url, tmp_path, workers=1)
        owners = [owner["id"] for owner in fake.owners_payload()]
        job.run_once(settings)

        def writing_run() -> None:
            for owner in owners:
                fake.unbind(fake.locks_payload(owner)[0]["id"])
                fake.bind_new(owner)
            result = job.run_once(settings)
            assert result.status == "succeeded" and result.counts.created == len(owners)

        for _ in range(5):  # warm up: caches that are filled once, pools, imports
            writing_run()
        dialects = _live_dialects()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            runs = 20
            for _ in range(runs):
                writing_run()
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()

    # Only the exporter's and SQLAlchemy's allocations (the in-process sandbox keeps a history).
    ours = [tracemalloc.Filter(True, "*/sqlalchemy/*"), tracemalloc.Filter(True, "*/exporter/*")]
    sandbox = [tracemalloc.Filter(False, "*/exporter/sandbox*")]
    growth = sum(
        stat.size_diff
        for stat in after.filter_traces(ours)
        .filter_traces(sandbox)
        .compare_to(before.filter_traces(ours).filter_traces(sandbox), "filename")
    )
    assert _live_dialects() <= dialects  # one leaked dialect per run before the fix
    assert growth / runs < 8_000, f"{growth / runs:.0f} bytes a run"  # ~70 KB a run before


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which files are created 0644 unless asked otherwise."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _modes_during_a_run(sandbox: Sandbox, path: Path, tmp_path: Path) -> dict[str, int]:
    """The modes of the database, its -wal/-shm and the lock file while a run is writing."""
    modes: dict[str, int] = {}

    def look(request: SandboxRequest) -> None:
        if request.route == "locks" and not modes:
            for suffix in ("", "-wal", "-shm", ".lock"):
                modes[suffix] = stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode)

    sandbox.hooks.append(look)
    result = job.run_once(make_settings(sandbox, f"sqlite:///{path}", tmp_path))
    assert result.status == "succeeded"
    return modes


def test_a_new_sqlite_database_and_its_files_are_private(
    sandbox: Sandbox, tmp_path: Path, umask_022: None
) -> None:
    path = tmp_path / "data" / "inventory.db"

    modes = _modes_during_a_run(sandbox, path, tmp_path)

    assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600, ".lock": 0o600}


def test_existing_sqlite_files_keep_their_mode(
    sandbox: Sandbox, tmp_path: Path, umask_022: None
) -> None:
    # An administrator's choice (a group that reads the file) is neither loosened nor tightened.
    path = tmp_path / "inventory.db"
    for name in (path, Path(f"{path}.lock")):
        name.touch()
        name.chmod(0o640)

    modes = _modes_during_a_run(sandbox, path, tmp_path)

    assert modes == {"": 0o640, "-wal": 0o640, "-shm": 0o640, ".lock": 0o640}


def _pragmas(path: Path) -> tuple[int, int]:
    """The page size of the SQLite file `path` and the WAL checkpoint a connection of ours gets."""
    engine = make_engine(f"sqlite:///{path}", create=False)
    try:
        with engine.connect() as conn:
            page_size = conn.exec_driver_sql("PRAGMA page_size").scalar()
            checkpoint = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
    finally:
        engine.dispose()
    assert isinstance(page_size, int) and isinstance(checkpoint, int)
    return page_size, checkpoint


def test_a_new_sqlite_database_gets_larger_pages(sandbox: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"

    assert job.run_once(make_settings(sandbox, f"sqlite:///{path}", tmp_path)).counts.created == 15

    assert _pragmas(path) == (SQLITE_PAGE_SIZE, 10000 * 4096 // SQLITE_PAGE_SIZE)
    assert SQLITE_PAGE_SIZE > 4096


def test_an_existing_sqlite_database_keeps_its_4_kib_pages_and_still_syncs(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database an earlier version created, with SQLite's default page size.
    path = tmp_path / "inventory.db"
    settings = make_settings(sandbox, f"sqlite:///{path}", tmp_path)
    with monkeypatch.context() as patched:
        patched.setattr(db_engine, "SQLITE_PAGE_SIZE", 4096)
        assert job.run_once(settings).counts.created == 15
    sandbox.advance(changes=6)

    result = job.run_once(settings)

    counts = result.counts
    assert result.status == "succeeded" and counts.created + counts.updated + counts.removed > 0
    assert _pragmas(path) == (4096, 10000)  # the checkpoint as before: every ~40 MiB
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


@pytest.mark.parametrize("url", ["postgresql+psycopg", "mysql+pymysql"])
def test_database_errors_never_carry_the_urls_secrets(url: str) -> None:
    # A driver message that quotes the DSN (or a password given as a query parameter) it was
    # handed is shown without the password.
    engine = create_engine(f"{url}://app:s3cret-pw@db.example/inv?sslpassword=k3y-pass")
    driver = Exception("connection to 'password=s3cret-pw sslpassword=k3y-pass' refused")
    for exc in (OperationalError("SELECT 1", {}, driver), DBAPIError("SELECT 1", {}, driver)):
        message = str(store_error(exc, engine))
        assert "s3cret-pw" not in message and "k3y-pass" not in message, message
        assert "password=*** sslpassword=***" in message
    engine.dispose()


def test_sqlite_inserts_many_rows_per_statement_in_order(tmp_path: Path) -> None:
    # executemany steps (and lets go of the GIL) once per row; a first load's writer then waited
    # for the fetch threads on every row. 1,300 rows: chunks of 1,024 + 256 + 16 + 4.
    engine = create_engine(f"sqlite:///{tmp_path / 'chunks.db'}")
    bound_locks.create(engine)
    statements: list[tuple[str, bool]] = []
    event.listen(
        engine,
        "before_cursor_execute",
        lambda conn, cursor, sql, params, context, many: statements.append((sql, many)),
    )
    columns = ("id", "owner_account_id", "title", "first_seen_at", "updated_at")
    rows = [(f"lock-{i}", "owner-1", f"Tür {i}", T, T + timedelta(seconds=i)) for i in range(1300)]
    with engine.begin() as conn:
        insert_many(conn, bound_locks, columns, rows)
    try:
        assert [many for _, many in statements] == [False] * 4
        with engine.connect() as conn:
            stored = conn.execute(
                select(*(bound_locks.c[name] for name in columns)).order_by(text("rowid"))
            ).all()
    finally:
        engine.dispose()
    assert [tuple(row) for row in stored] == rows


def test_a_lock_id_is_unique_and_mariadb_stores_an_owners_locks_together(engine: Engine) -> None:
    # InnoDB stores rows in primary key order: on MariaDB/MySQL the key is (owner, id), so that
    # reading one owner's locks (every rerun does) touches a few pages, not one per lock. An id
    # stays unique on every database, also under another owner.
    innodb = engine.dialect.name in ("mysql", "mariadb")
    key = inspect(engine).get_pk_constraint("bound_locks")["constrained_columns"]
    assert key == (["owner_account_id", "id"] if innodb else ["id"])
    lock = {"id": "lock-1", "owner_account_id": "owner-1", "first_seen_at": T, "updated_at": T}
    with engine.begin() as conn:
        conn.execute(insert(bound_locks), lock)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(bound_locks), {**lock, "owner_account_id": "owner-2"})
