"""Shared fixtures: a database per backend (one per xdist worker), the sandbox, settings.

PostgreSQL and MariaDB are expected at the addresses below (override with EXPORTER_TEST_POSTGRES /
EXPORTER_TEST_MARIADB). Outside CI a missing server skips its tests with the reason; in CI
(CI=true) it fails them, so a green CI always means all three databases were tested.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from support.cli import CliResult
from support.helpers import (
    BACKENDS,
    MARIADB_ADMIN,
    POSTGRES_ADMIN,
    database_name,
    server_database,
)
from support.http_servers import Tls, make_tls

from exporter import cli
from exporter.db import migrate
from exporter.db.engine import make_engine
from exporter.sandbox.server import Sandbox

TABLES = (  # calendar_days is static data from migration 0002: never truncated
    "api_paging",
    "guard_holds",
    "grant_versions",
    "bound_card_versions",
    "contact_versions",
    "grants",
    "bound_cards",
    "contacts",
    "log_entries",
    "log_entry_watermarks",
    "lock_health_readings",
    "sync_run_owners",
    "bound_lock_versions",
    "owner_account_versions",
    "bound_locks",
    "owner_accounts",
    "sync_runs",
)


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """Take out the log handler a command run in-process set up (CliRunner, exporter.cli.main).

    Its stream is the captured stderr, closed once the command returns: left on the root
    logger, it turned every later log record of the worker into a "--- Logging error ---" on
    the real stderr, and a test asserting an empty stderr failed or passed by test order.
    """
    root = logging.getLogger()
    level = root.level
    yield
    for handler in root.handlers[:]:
        if type(handler) is logging.StreamHandler:  # setup_logging's; pytest's are subclasses
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def postgresql_url(worker_id: str) -> Iterator[str]:
    """A migrated PostgreSQL database for this worker."""
    for url in server_database(POSTGRES_ADMIN, database_name(worker_id)):
        _upgrade(url)
        yield url


@pytest.fixture(scope="session")
def mariadb_url(worker_id: str) -> Iterator[str]:
    """A migrated MariaDB database for this worker."""
    for url in server_database(MARIADB_ADMIN, database_name(worker_id)):
        _upgrade(url)
        yield url


def _upgrade(url: str) -> None:
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


def _truncate(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
            else:
                conn.execute(text("SET FOREIGN_KEY_CHECKS = 0"))
                for table in TABLES:
                    conn.execute(text(f"TRUNCATE TABLE {table}"))
                conn.execute(text("SET FOREIGN_KEY_CHECKS = 1"))
    finally:
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated database on each backend in turn."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'exporter.db'}"
        _upgrade(url)
        return url
    url = str(request.getfixturevalue(f"{request.param}_url"))
    _truncate(url)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on `db_url`."""
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A small sandbox: 3 owners x 5 locks."""
    with Sandbox(seed=1, owners=3, locks_per_owner=5) as fake:
        yield fake


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path, worker_id: str) -> Iterator[str]:
    """A database with no tables at all, on each backend in turn."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    admin = POSTGRES_ADMIN if request.param == "postgresql" else MARIADB_ADMIN
    yield from server_database(admin, database_name(worker_id) + "_empty")


@pytest.fixture
def collect_garbage() -> Iterator[None]:
    """Collect garbage as the test ends, so a connection it left open fails it, not a later test.

    A connection dropped while open is closed by the garbage collector whenever that runs; its
    ResourceWarning (an error under filterwarnings) then fails some unrelated test. Not for every
    test: one collection costs ~0.4 s in tests/faults' large heaps.
    """
    yield
    gc.collect()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A CA and a server certificate for 127.0.0.1, localhost and tapkey.test (trustme)."""
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(name="exporter_cli")
def exporter_cli_fixture(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Callable[..., CliResult]:
    """Run `exporter.cli.main()` with argv and environment; give back code, stdout, stderr."""

    def run(*args: str, env: dict[str, str] | None = None) -> CliResult:
        for name in [name for name in os.environ if name.startswith("EXPORTER_")]:
            monkeypatch.delenv(name)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", ["exporter", *args])
        capsys.readouterr()
        # The command configures logging for the process (a handler on the captured stderr):
        # put pytest's handlers back afterwards so later tests log where they expect.
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            with pytest.raises(SystemExit) as exit_info:
                cli.main()
        finally:
            for handler in root.handlers[:]:
                if handler not in handlers:
                    root.removeHandler(handler)
                    handler.close()
            for handler in handlers:
                if handler not in root.handlers:
                    root.addHandler(handler)
            root.setLevel(level)
        captured = capsys.readouterr()
        code = exit_info.value.code
        return CliResult(code if isinstance(code, int) else 1, captured.out, captured.err)

    return run
