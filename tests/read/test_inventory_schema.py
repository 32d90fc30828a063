"""The read-side schema: comments, migrations, PostgreSQL schema, read-only roles, calendar."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from support import doc_sql
from support.bi_views import _view_columns
from support.helpers import (
    MARIADB_ADMIN,
    POSTGRES_ADMIN,
    database_name,
    make_settings,
    server_database,
)
from support.inventory_data import InventoryDb

from exporter.db import migrate
from exporter.db.descriptions import COLUMN_COMMENTS, TABLE_COMMENTS
from exporter.db.engine import make_engine
from exporter.db.schema import metadata
from exporter.db.views import VIEW_COMMENTS, VIEWS
from exporter.read import inventory as report
from exporter.sandbox.server import Sandbox
from exporter.service import job, preflight

# -- schema: comments, migration, PostgreSQL schema and read-only role ---------------------------


def test_every_table_view_and_column_is_described(inventory_db: InventoryDb, db: Engine) -> None:
    inspector = inspect(db)
    for name, sql in VIEWS.items():
        columns = [c["name"] for c in inspector.get_columns(name)]
        assert columns == _view_columns(name), name
        assert sql  # every view of views.VIEWS exists in the database
    assert set(inspector.get_view_names()) == set(VIEWS)
    if inventory_db.backend == "sqlite":
        return  # SQLite stores no comments
    for name, table_comment in TABLE_COMMENTS.items():
        assert inspector.get_table_comment(name)["text"] == table_comment
        stored = {c["name"]: c.get("comment") for c in inspector.get_columns(name)}
        assert stored == COLUMN_COMMENTS[name], name
    if inventory_db.backend == "postgresql":
        for name, (view_comment, columns) in VIEW_COMMENTS.items():
            assert inspector.get_table_comment(name)["text"] == view_comment
            stored = {c["name"]: c.get("comment") for c in inspector.get_columns(name)}
            assert stored == columns, name


def test_migration_0002_downgrades_and_upgrades_again(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'down.db'}")
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:
            command.downgrade(migrate.alembic_config(conn), "0001")
            conn.commit()
        assert migrate.current_revision(engine) == "0001"
        assert "bound_lock_change_feed" not in inspect(engine).get_view_names()
        migrate.upgrade(engine)
        migrate.check_models(engine)
    finally:
        engine.dispose()


@pytest.fixture
def pg_database(worker_id: str) -> Iterator[str]:
    """An empty PostgreSQL database."""
    yield from server_database(POSTGRES_ADMIN, f"{database_name(worker_id)}_schema")


def test_a_configured_postgresql_schema_is_created_and_used(
    pg_database: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    settings = make_settings(sandbox, pg_database, tmp_path)
    settings = settings.model_copy(
        update={"database": settings.database.model_copy(update={"schema_name": "tapkey_bi"})}
    )
    engine = preflight.make_engine(settings)
    try:
        migrate.upgrade(engine)  # creates the schema, then everything in it
        migrate.check_models(engine)
        result = job.run_once(settings)
        assert result.status == "succeeded"
        assert len(report.inventory(engine).locks) == 15
    finally:
        engine.dispose()
    plain = create_engine(pg_database)
    try:
        with plain.connect() as conn:
            where = dict(
                conn.execute(
                    text(
                        "SELECT table_name, table_schema FROM information_schema.tables "
                        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
                    )
                ).all()
            )
        assert set(where.values()) == {"tapkey_bi"}
        assert {*metadata.tables, *VIEWS, "alembic_version"} == set(where)
    finally:
        plain.dispose()


def test_the_documented_postgresql_read_only_role_can_read_but_not_write(
    pg_database: str, sandbox: Sandbox, tmp_path: Path, worker_id: str
) -> None:
    engine = make_engine(pg_database)
    migrate.upgrade(engine)
    engine.dispose()
    job.run_once(make_settings(sandbox, pg_database, tmp_path))
    role = f"tapkey_bi_{worker_id}".replace("-", "_")
    database = pg_database.rsplit("/", 1)[1]
    owner = make_url(pg_database).username
    engine = create_engine(pg_database)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
            # The statements of docs/schema.md, with the role, database and owner filled in.
            documented = doc_sql.statements("A read-only role for BI users")
            statements = [s for s in documented if "'@'" not in s]  # the MariaDB ones have a host
            assert len(statements) >= 5
            for statement in statements:
                statement = re.sub(r"\btapkey_bi\b", role, statement)
                statement = statement.replace("DATABASE tapkey ", f"DATABASE {database} ")
                statement = statement.replace("FOR ROLE exporter ", f"FOR ROLE {owner} ")
                conn.execute(text(statement))
            # A table of a later upgrade, created by the role the exporter connects as.
            conn.execute(text("CREATE TABLE a_later_table (id integer)"))
        try:
            with engine.connect() as conn:
                conn.execute(text(f"SET ROLE {role}"))
                for view in VIEWS:
                    conn.execute(text(f"SELECT * FROM {view}")).all()
                assert conn.execute(text("SELECT COUNT(*) FROM current_bound_locks")).scalar() == 15
                assert conn.execute(text("SELECT COUNT(*) FROM a_later_table")).scalar() == 0
                with pytest.raises(DBAPIError, match="permission denied"):
                    conn.execute(text("DELETE FROM bound_locks"))
                conn.rollback()
                conn.execute(text(f"SET ROLE {role}"))
                with pytest.raises(DBAPIError, match="permission denied"):
                    conn.execute(
                        text(
                            "INSERT INTO sync_runs (started_at, status, trigger, "
                            "owners_seen, locks_seen, created, updated, removed, "
                            "restored, unchanged, skipped, api_requests) VALUES "
                            "(now(), 'running', 'manual', 0,0,0,0,0,0,0,0,0)"
                        )
                    )
                conn.rollback()
        finally:
            with engine.begin() as conn:
                conn.execute(text(f"DROP OWNED BY {role}"))
                conn.execute(text(f"DROP ROLE {role}"))
    finally:
        engine.dispose()


@pytest.fixture
def mariadb_database(worker_id: str) -> Iterator[str]:
    """An empty MariaDB database."""
    yield from server_database(MARIADB_ADMIN, f"{database_name(worker_id)}_role")


def test_the_documented_mariadb_read_only_user_can_read_but_not_write(
    mariadb_database: str, sandbox: Sandbox, tmp_path: Path, worker_id: str
) -> None:
    engine = make_engine(mariadb_database)
    migrate.upgrade(engine)
    engine.dispose()
    job.run_once(make_settings(sandbox, mariadb_database, tmp_path))
    user = f"tapkey_bi_{worker_id}".replace("-", "_")
    url = make_url(mariadb_database)
    admin = create_engine(mariadb_database)
    try:
        with admin.begin() as conn:
            conn.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))
            # The statements of docs/schema.md, with the user and database names filled in.
            documented = doc_sql.statements("A read-only role for BI users")
            statements = [s for s in documented if "'@'" in s]
            assert len(statements) >= 2
            for statement in statements:
                statement = statement.replace("'tapkey_bi'@", f"'{user}'@")
                conn.execute(text(statement.replace(" tapkey.* ", f" {url.database}.* ")))
        reader = create_engine(url.set(username=user, password="change-me"))
        try:
            with reader.connect() as conn:
                for view in VIEWS:
                    conn.execute(text(f"SELECT * FROM {view}")).all()
                assert conn.execute(text("SELECT COUNT(*) FROM current_bound_locks")).scalar() == 15
                with pytest.raises(DBAPIError, match="denied"):
                    conn.execute(text("DELETE FROM bound_locks"))
        finally:
            reader.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))
        admin.dispose()


def test_calendar_days_cover_2020_to_2099_on_every_backend(db: Engine) -> None:
    calendar = metadata.tables["calendar_days"]
    with db.connect() as conn:
        rows = conn.execute(select(calendar).order_by(calendar.c.day)).all()
    assert len(rows) == (date(2100, 1, 1) - date(2020, 1, 1)).days
    assert rows[0].day == date(2020, 1, 1) and rows[-1].day == date(2099, 12, 31)
    for row in rows[::97]:
        assert row.day_start == datetime.combine(row.day, datetime.min.time(), tzinfo=UTC)
        assert row.day_end == row.day_start + timedelta(days=1)
