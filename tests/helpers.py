"""Helpers the tests share: database servers, settings and environments pointing at a sandbox.

Plain functions and constants (fixtures stay in conftest.py); tests import them with
`from helpers import ...`, which works because pytest puts tests/ on sys.path for conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from exporter.config.loader import load_settings
from exporter.config.settings import Settings
from exporter.sandbox.server import Sandbox

POSTGRES_ADMIN = os.environ.get(
    "EXPORTER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
MARIADB_ADMIN = os.environ.get("EXPORTER_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ("sqlite", "postgresql", "mariadb")


def _unavailable(what: str, exc: Exception) -> None:
    reason = f"{what} not reachable: {str(exc).strip().splitlines()[0]}"
    if IN_CI:
        pytest.fail(f"{reason} (CI must test every database)")
    pytest.skip(reason)


def server_database(admin_url: str, name: str) -> Iterator[str]:
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


def database_name(worker_id: str) -> str:
    # The pid keeps concurrent test sessions on one server apart.
    return f"exporter_test_{worker_id}_{os.getpid()}".replace("-", "_")


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
