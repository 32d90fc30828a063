"""Migrations: an empty database upgrades to head and matches the table definitions."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, insert, inspect, select, text
from support.helpers import make_settings

from exporter.db import migrate
from exporter.db.engine import make_engine
from exporter.db.schema import (
    bound_lock_versions,
    bound_locks,
    calendar_days,
    lock_health_readings,
    metadata,
    owner_account_versions,
    owner_accounts,
    sync_run_owners,
    sync_runs,
)
from exporter.db.types import SQLITE_TIME_FORMAT
from exporter.db.views import VIEWS
from exporter.db.writer_lock import WriterLock
from exporter.errors import SchemaVersionError
from exporter.sandbox.server import Sandbox
from exporter.service import job
from exporter.sync.engine import sync
from exporter.sync.options import SyncOptions
from exporter.tapkey.fields import MAX_ELEMENT_BYTES
from exporter.tapkey.records import MAX_FIELD_LENGTHS

ROOT = Path(__file__).resolve().parents[2]


def test_empty_database_upgrades_to_head_and_matches_the_models(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        assert migrate.current_revision(engine) is None
        with pytest.raises(SchemaVersionError, match="exporter db upgrade"):
            migrate.require_current(engine)

        migrate.upgrade(engine)
        migrate.upgrade(engine)  # idempotent

        assert migrate.current_revision(engine) == migrate.head_revision()
        migrate.check_models(engine)  # raises if migrations and schema.py disagree
        views = set(inspect(engine).get_view_names())
        assert {"current_bound_locks", "bound_lock_changes"} <= views
        migrate.require_current(engine)
    finally:
        engine.dispose()


def test_concurrent_upgrades_of_an_empty_database_all_succeed(empty_db_url: str) -> None:
    # Each upgrade takes the writer lock: one creates the schema, the others wait for it and find
    # the schema current (they used to fail on "table already exists").
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    env["EXPORTER_DATABASE__URL"] = empty_db_url
    upgrades = [
        subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "db", "upgrade"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(upgrade.wait(timeout=120), *upgrade.communicate()) for upgrade in upgrades]

    assert [code for code, _, _ in results] == [0, 0, 0, 0], results
    assert all(out.endswith("(head)\n") for _, out, _ in results)
    engine = make_engine(empty_db_url)
    try:
        assert migrate.current_revision(engine) == migrate.head_revision()
        migrate.check_models(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize("empty_db_url", ["postgresql"], indirect=True)
def test_the_writer_lock_key_is_the_same_before_and_after_the_schema_exists(
    empty_db_url: str,
) -> None:
    # Upgrades of a database whose configured schema does not exist yet, and the runs after
    # them, must take the same advisory lock.
    engine = make_engine(empty_db_url, schema="tapkey")
    try:
        with engine.connect() as conn:
            before = WriterLock._pg_key(conn)
            assert conn.execute(text("SELECT current_schema()")).scalar() is None
        migrate.upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_schema()")).scalar() == "tapkey"
            assert WriterLock._pg_key(conn) == before
    finally:
        engine.dispose()


def test_sqlite_is_upgraded_automatically_when_asked(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'auto.db'}")
    try:
        migrate.require_current(engine, auto_upgrade_sqlite=True)
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()


def test_the_wheel_ships_the_migrations(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("tapkey_inventory_exporter-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "exporter/migrations/env.py" in names
    assert "exporter/migrations/script.py.mako" in names
    shipped = {n.rsplit("/", 1)[-1] for n in names if n.startswith("exporter/migrations/versions/")}
    on_disk = {p.name for p in (ROOT / "migrations" / "versions").glob("*.py")}
    assert on_disk <= shipped


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2021, 11, 30, 17, 9, 53, 92000, tzinfo=UTC),
        datetime(2018, 12, 12, 14, 0, tzinfo=timezone(timedelta(hours=2))),  # stored as 12:00Z
        datetime(2026, 1, 1, tzinfo=UTC),  # no microseconds: still six digits
    ],
)
def test_sqlite_stores_instants_as_fixed_width_utc_text(tmp_path: Path, moment: datetime) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(sync_runs).values(started_at=moment, status="running", trigger="manual")
        )
        text = conn.exec_driver_sql("SELECT started_at FROM sync_runs").scalar_one()
        back = conn.execute(select(sync_runs.c.started_at)).scalar_one()
    assert text == moment.astimezone(UTC).strftime(SQLITE_TIME_FORMAT)
    assert len(text) == 27 and back == moment


def test_a_failing_upgrade_is_one_line_and_changes_nothing(db_url: str) -> None:
    # Stamped at 0002, the schema already has what 0003 creates: the first step fails.
    engine = make_engine(db_url)
    head = migrate.head_revision()
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
        with pytest.raises(SchemaVersionError) as failed:
            migrate.upgrade(engine)
        message = str(failed.value)
        assert message.startswith(f"upgrading the schema from revision 0002 to {head} failed: ")
        assert "run `exporter db upgrade` again" in message and "\n" not in message
        assert failed.value.__cause__ is None and failed.value.__context__ is None
        assert migrate.current_revision(engine) == "0002"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE alembic_version SET version_num = '{head}'"))
        engine.dispose()


def _migrate(engine: Engine, revision: str, *, down: bool = False) -> None:
    with engine.connect() as conn:
        config = migrate.alembic_config(conn)
        (command.downgrade if down else command.upgrade)(config, revision)
        conn.commit()


def _contents(
    engine: Engine, like: dict[str, list[dict[str, object]]] | None = None
) -> dict[str, list[dict[str, object]]]:
    """Every row of every table the database has (tables of later revisions may not exist),
    or of the tables of `like`, in key order (MariaDB reads rows in its primary key's order,
    which 0008 changes for bound_locks)."""
    with engine.connect() as conn:
        present = set(inspect(conn).get_table_names()) if like is None else set(like)
        return {
            table.name: [
                dict(row)
                for row in conn.execute(
                    select(table).order_by(*table.primary_key.columns)
                ).mappings()
            ]
            for table in metadata.sorted_tables
            if table is not calendar_days and table.name in present
        }


def test_upgrading_from_0003_keeps_the_data_and_then_takes_long_values(
    empty_db_url: str, tmp_path: Path
) -> None:
    # 0004 widens MariaDB's free-text columns (TEXT -> MEDIUMTEXT) and rewrites two comments:
    # a database filled at 0003 keeps every row, its views and its comments, and then stores a
    # 100,000-character title that MariaDB refused at 0003. (The data is written at head, whose
    # sync needs api_paging, then the database goes back to 0003 with it.)
    engine = make_engine(empty_db_url)
    try:
        # Filled by today's engine (which reads every table of head), then taken back to 0003.
        migrate.upgrade(engine)
        with Sandbox(seed=7, owners=2, locks_per_owner=3) as fake:
            settings = make_settings(fake, empty_db_url, tmp_path, expand_health=True)
            for _ in range(2):
                with job.make_client(settings) as client:
                    options = SyncOptions(health=True)
                    sync(engine=engine, source=client, client_id="sandbox-client", options=options)
                fake.advance(changes=3)
            _migrate(engine, "0003", down=True)
            before = _contents(engine)
            assert all(before[t.name] for t in (bound_lock_versions, owner_account_versions))

            migrate.upgrade(engine)
            assert _contents(engine, before) == before
            _migrate(engine, "0003", down=True)  # the way back works too, with this data
            assert _contents(engine) == before
            migrate.upgrade(engine)

            assert migrate.current_revision(engine) == migrate.head_revision()
            migrate.check_models(engine)  # types and comments as schema.py says
            assert _contents(engine, before) == before
            with engine.connect() as conn:
                for view in VIEWS:
                    conn.execute(text(f"SELECT * FROM {view}")).all()
            owner = fake.owners_payload()[0]["id"]
            lock = fake.locks_payload(owner)[0]["id"]
            fake.rename(lock, "T" * 100_000)
            fake.update_owner(owner, name="N" * 100_000)
            result = job.run_once(settings)
        assert result.status == "succeeded" and result.counts.skipped == 0
        with engine.connect() as conn:
            title = conn.execute(
                select(bound_locks.c.title).where(bound_locks.c.id == lock)
            ).scalar_one()
            name = conn.execute(
                select(owner_accounts.c.name).where(owner_accounts.c.id == owner)
            ).scalar_one()
        assert (title, name) == ("T" * 100_000, "N" * 100_000)
    finally:
        engine.dispose()


def test_every_column_filled_from_the_api_holds_what_the_exporter_stores() -> None:
    # records.py refuses what would not fit (the lock is skipped); these columns must take the
    # rest, on every database.
    varchar = {
        "physicalLockId": [bound_locks.c.physical_lock_id, bound_lock_versions.c.physical_lock_id],
        "lockTypeId": [bound_locks.c.lock_type_id, bound_lock_versions.c.lock_type_id],
        "lockType.modelName": [
            bound_locks.c.lock_model_name,
            bound_lock_versions.c.lock_model_name,
        ],
        "targetType": [bound_locks.c.target_type, bound_lock_versions.c.target_type],
        "lock_id_hex": [bound_locks.c.lock_id_hex],
    }
    for field, columns in varchar.items():
        for column in columns:
            assert getattr(column.type, "length", None) == MAX_FIELD_LENGTHS[field], column
    free_texts = [
        bound_locks.c.title,
        bound_locks.c.description,
        bound_locks.c.raw,
        bound_lock_versions.c.title,
        bound_lock_versions.c.description,
        owner_accounts.c.name,
        owner_account_versions.c.name,
        sync_runs.c.error,
        sync_run_owners.c.error,
    ]
    for column in free_texts:
        mysql_type = column.type._variant_mapping["mysql"]  # type: ignore[attr-defined]
        assert type(mysql_type).__name__ in ("MEDIUMTEXT", "LONGTEXT"), column
        assert column.type.length is None, column  # unbounded on PostgreSQL and SQLite
    assert MAX_ELEMENT_BYTES < 16 * 1024 * 1024  # MEDIUMTEXT's size
    # Health readings are hints: a value longer than its column is dropped (lock_health.py).
    assert lock_health_readings.c.value.type.length == 255  # type: ignore[attr-defined]


def test_the_quick_head_revision_is_alembics() -> None:
    assert migrate.head_revision() == migrate.alembic_head_revision()
