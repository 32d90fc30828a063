"""Migrations: an empty database upgrades to head and matches the table definitions."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import inspect

from exporter import store
from exporter.errors import SchemaVersionError

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
