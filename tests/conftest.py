"""Shared fixtures: a database per backend (one per xdist worker), the sandbox, settings.

PostgreSQL and MariaDB are expected at the addresses below (override with EXPORTER_TEST_POSTGRES /
EXPORTER_TEST_MARIADB). Outside CI a missing server skips its tests with the reason; in CI
(CI=true) it fails them, so a green CI always means all three databases were tested.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_servers import Tls, make_tls
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from exporter import store
from exporter.config import load_settings
from exporter.sandbox import Sandbox
from exporter.settings import Settings

POSTGRES_ADMIN = os.environ.get(
    "EXPORTER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
MARIADB_ADMIN = os.environ.get("EXPORTER_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ("sqlite", "postgresql", "mariadb")
TABLES = (  # calendar_days is static data from migration 0002: never truncated
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


def _unavailable(what: str, exc: Exception) -> None:
    reason = f"{what} not reachable: {str(exc).strip().splitlines()[0]}"
    if IN_CI:
        pytest.fail(f"{reason} (CI must test every database)")
    pytest.skip(reason)


def _server_database(admin_url: str, name: str) -> Iterator[str]:
    """Create database `name` on the server behind `admin_url`; drop it afterwards."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:
        admin.dispose()
        _unavailable(make_url(admin_url).get_backend_name(), exc)
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            if admin.dialect.name == "postgresql":
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


def _database_name(worker_id: str) -> str:
    # The pid keeps concurrent test sessions on one server apart.
    return f"exporter_test_{worker_id}_{os.getpid()}".replace("-", "_")


@pytest.fixture(scope="session")
def postgresql_url(worker_id: str) -> Iterator[str]:
    """A migrated PostgreSQL database for this worker."""
    for url in _server_database(POSTGRES_ADMIN, _database_name(worker_id)):
        _upgrade(url)
        yield url


@pytest.fixture(scope="session")
def mariadb_url(worker_id: str) -> Iterator[str]:
    """A migrated MariaDB database for this worker."""
    for url in _server_database(MARIADB_ADMIN, _database_name(worker_id)):
        _upgrade(url)
        yield url


def _upgrade(url: str) -> None:
    engine = store.make_engine(url)
    try:
        store.upgrade(engine)
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
    engine = store.make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A small sandbox: 3 owners x 5 locks."""
    with Sandbox(seed=1, owners=3, locks_per_owner=5) as fake:
        yield fake


def make_settings(fake: Sandbox, db_url: str, tmp_path: Path, **tapkey: Any) -> Settings:
    """Settings pointing at `fake` and `db_url`; `tapkey` overrides [tapkey] keys."""
    overrides: dict[str, Any] = {
        "tapkey.client_id": "sandbox-client",
        "tapkey.client_secret": "sandbox-secret",
        "tapkey.token_url": fake.token_url,
        "tapkey.api_base_url": fake.base_url,
        "tapkey.backoff_factor": 0.01,
        "tapkey.max_retries": 2,
        "database.url": db_url,
    }
    overrides.update({f"tapkey.{key}": value for key, value in tapkey.items()})
    return load_settings(None, env={}, cwd=tmp_path, overrides=overrides)


def subprocess_env(fake: Sandbox, db_url: str) -> dict[str, str]:
    """Environment for running the real `exporter` CLI against `fake` and `db_url`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    env.update(
        EXPORTER_TAPKEY__CLIENT_ID="sandbox-client",
        EXPORTER_TAPKEY__CLIENT_SECRET="sandbox-secret",
        EXPORTER_TAPKEY__TOKEN_URL=fake.token_url,
        EXPORTER_TAPKEY__API_BASE_URL=fake.base_url,
        EXPORTER_TAPKEY__BACKOFF_FACTOR="0.01",
        EXPORTER_DATABASE__URL=db_url,
    )
    return env


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path, worker_id: str) -> Iterator[str]:
    """A database with no tables at all, on each backend in turn."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    admin = POSTGRES_ADMIN if request.param == "postgresql" else MARIADB_ADMIN
    yield from _server_database(admin, _database_name(worker_id) + "_empty")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A CA and a server certificate for 127.0.0.1, localhost and tapkey.test (trustme)."""
    return make_tls(tmp_path_factory.mktemp("tls"))
