"""Migrations: an empty database upgrades to head and matches the table definitions."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import insert, inspect, select, text

from exporter import store
from exporter.errors import SchemaVersionError
from exporter.schema import SQLITE_TIME_FORMAT, sync_runs

ROOT = Path(__file__).resolve().parent.parent


def test_empty_database_upgrades_to_head_and_matches_the_models(empty_db_url: str) -> None:
    engine = store.make_engine(empty_db_url)
    try:
        assert store.current_revision(engine) is None
        with pytest.raises(SchemaVersionError, match="exporter db upgrade"):
            store.require_current(engine)

        store.upgrade(engine)
        store.upgrade(engine)  # idempotent

        assert store.current_revision(engine) == store.head_revision()
        store.check_models(engine)  # raises if migrations and schema.py disagree
        views = set(inspect(engine).get_view_names())
        assert {"current_bound_locks", "bound_lock_changes"} <= views
        store.require_current(engine)
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
    engine = store.make_engine(empty_db_url)
    try:
        assert store.current_revision(engine) == store.head_revision()
        store.check_models(engine)
    finally:
        engine.dispose()


def test_sqlite_is_upgraded_automatically_when_asked(tmp_path: Path) -> None:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'auto.db'}")
    try:
        store.require_current(engine, auto_upgrade_sqlite=True)
        assert store.current_revision(engine) == store.head_revision()
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
    engine = store.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    store.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(sync_runs).values(started_at=moment, status="running", trigger="manual")
        )
        text = conn.exec_driver_sql("SELECT started_at FROM sync_runs").scalar_one()
        back = conn.execute(select(sync_runs.c.started_at)).scalar_one()
    assert text == moment.astimezone(UTC).strftime(SQLITE_TIME_FORMAT)
    assert len(text) == 27 and back == moment


def test_a_failing_upgrade_is_one_line_and_changes_nothing(db_url: str) -> None:
    # Stamped one revision back, the schema already has what 0003 creates: its first step fails.
    engine = store.make_engine(db_url)
    head = store.head_revision()
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
        with pytest.raises(SchemaVersionError) as failed:
            store.upgrade(engine)
        message = str(failed.value)
        assert message.startswith(f"upgrading the schema from revision 0002 to {head} failed: ")
        assert "run `exporter db upgrade` again" in message and "\n" not in message
        assert failed.value.__cause__ is None and failed.value.__context__ is None
        assert store.current_revision(engine) == "0002"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE alembic_version SET version_num = '{head}'"))
        engine.dispose()
