"""A database user without the rights a run needs, or a read-only SQLite file: one line, exit 5.

The message says which right is missing ("the database user cannot write table sync_runs:
permission denied"), never "lost the database connection"; `exporter check` finds the same
without writing anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, inspect, select, text
from sqlalchemy.engine import make_url
from support.cli import CliResult
from support.helpers import subprocess_env

from exporter.db.schema import bound_lock_versions, sync_runs
from exporter.sandbox.server import Sandbox

Cli = Callable[..., CliResult]
DML = ("SELECT", "INSERT", "UPDATE", "DELETE")
SERVERS = pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)


@contextlib.contextmanager
def _user(db_url: str, denied: Mapping[str, tuple[str, ...]]) -> Iterator[str]:
    """A URL for a new database user with SELECT/INSERT/UPDATE/DELETE on every table of the
    database, except the privileges `denied` lists per table ("*": every table)."""
    url = make_url(db_url)
    name = f"{url.database}_user"
    admin = create_engine(db_url, isolation_level="AUTOCOMMIT")
    postgres = admin.dialect.name == "postgresql"
    try:
        with admin.connect() as conn:
            tables = inspect(conn).get_table_names() + inspect(conn).get_view_names()
            if postgres:
                conn.execute(text(f"CREATE ROLE {name} LOGIN"))
                conn.execute(text(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {name}"))
            else:
                conn.execute(text(f"CREATE USER '{name}'@'%'"))
            for table in tables:
                rights = [p for p in DML if p not in denied.get(table, ()) + denied.get("*", ())]
                if rights:
                    target = table if postgres else f"`{url.database}`.`{table}`"
                    grantee = name if postgres else f"'{name}'@'%'"
                    conn.execute(text(f"GRANT {', '.join(rights)} ON {target} TO {grantee}"))
        yield url.set(username=name, password=None).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            if postgres:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :u"
                    ),
                    {"u": name},
                )
                conn.execute(text(f"DROP OWNED BY {name}"))
                conn.execute(text(f"DROP ROLE {name}"))
            else:
                conn.execute(text(f"DROP USER IF EXISTS '{name}'@'%'"))
        admin.dispose()


def _run_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(sync_runs)).scalar_one())


def _error_line(result: CliResult) -> str:
    [line] = [line for line in result.err.splitlines() if line.startswith("error: ")]
    return line


def _database_line(result: CliResult) -> str:
    [line] = [line for line in result.err.splitlines() if "database" in line.split()[:2]]
    return line


@pytest.fixture
def read_only_url(
    db_url: str, sandbox: Sandbox, exporter_cli: Cli, tmp_path: Path
) -> Iterator[str]:
    """A database with one run in it, reached as a user that may read but not write it."""
    assert exporter_cli("run-once", "--quiet", env=subprocess_env(sandbox, db_url)).code == 0
    if db_url.startswith("sqlite"):
        # Root may write any file, so the file is opened read-only instead: SQLite then refuses
        # writes exactly as for a file the user may not write (SQLITE_READONLY).
        path = make_url(db_url).database
        yield f"sqlite:///file:{path}?mode=ro&uri=true"
        return
    with _user(db_url, {"*": ("INSERT", "UPDATE", "DELETE")}) as url:
        yield url


def test_a_read_only_user_or_file_is_named_as_such_and_nothing_is_written(
    read_only_url: str, engine: Engine, sandbox: Sandbox, exporter_cli: Cli
) -> None:
    env = subprocess_env(sandbox, read_only_url)
    runs = _run_count(engine)

    run = exporter_cli("run-once", env=env)
    check = exporter_cli("check", env=env)

    assert run.code == 5 and check.code == 5
    for line in (_error_line(run), _database_line(check)):
        if engine.dialect.name == "sqlite":
            path = make_url(read_only_url).database
            assert f"the SQLite database {path} is read-only for this user" in line
            assert "give the exporter's user write access to the file and its folder" in line
        else:
            assert "the database user cannot write table sync_runs: permission denied; " in line
            assert "grant the exporter's database user SELECT, INSERT, UPDATE and DELETE" in line
        assert "lost the database connection" not in line
    assert "Traceback" not in run.err + check.err
    assert _run_count(engine) == runs


@SERVERS
def test_check_finds_a_table_the_user_may_not_write_without_writing(
    db_url: str, engine: Engine, sandbox: Sandbox, exporter_cli: Cli
) -> None:
    assert exporter_cli("run-once", "--quiet", env=subprocess_env(sandbox, db_url)).code == 0
    with _user(db_url, {bound_lock_versions.name: ("INSERT",)}) as url:
        check = exporter_cli("check", env=subprocess_env(sandbox, url))
        fine = exporter_cli("check", env=subprocess_env(sandbox, db_url))

    assert check.code == 5
    assert "cannot write table bound_lock_versions: permission denied" in _database_line(check)
    assert fine.code == 0
    assert _run_count(engine) == 1


@SERVERS
def test_a_user_that_may_not_read_alembic_version_gets_one_line(
    db_url: str, sandbox: Sandbox, exporter_cli: Cli
) -> None:
    with _user(db_url, {"alembic_version": DML}) as url:
        env = subprocess_env(sandbox, url)
        results = {"run-once": exporter_cli("run-once", env=env)}
        assert sandbox.request_count == 0  # stopped before any API call
        results["db current"] = exporter_cli("db", "current", env=env)
        results["locks"] = exporter_cli("locks", env=env)
        results["check"] = exporter_cli("check", env=env)

    for name, result in results.items():
        assert result.code == 5, (name, result.err)
        line = _database_line(result) if name == "check" else _error_line(result)
        assert "the database user cannot read table alembic_version: permission denied" in line
        assert "Traceback" not in result.err, name
