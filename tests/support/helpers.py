"""Helpers the tests share: database servers, settings, runs and environments pointing at a sandbox.

Plain functions and constants (fixtures stay in conftest.py files); tests import them with
`from support.helpers import ...`, which works because pytest puts tests/ on sys.path for
tests/conftest.py.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

from exporter.config.loader import load_settings
from exporter.config.settings import Settings
from exporter.results import RunResult
from exporter.sandbox.server import Sandbox, SandboxRequest
from exporter.service import job

POSTGRES_ADMIN = os.environ.get(
    "EXPORTER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
MARIADB_ADMIN = os.environ.get("EXPORTER_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ("sqlite", "postgresql", "mariadb")
# The client secret the sandbox accepts (tests check it never shows in output).
SANDBOX_SECRET = "sandbox-secret"


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
        "tapkey.client_secret": SANDBOX_SECRET,
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
        EXPORTER_TAPKEY__CLIENT_SECRET=SANDBOX_SECRET,
        EXPORTER_TAPKEY__TOKEN_URL=fake.token_url,
        EXPORTER_TAPKEY__API_BASE_URL=fake.base_url,
        EXPORTER_TAPKEY__BACKOFF_FACTOR="0.01",
        EXPORTER_DATABASE__URL=db_url,
    )
    return env


def settings_with(
    fake: Sandbox, db_url: str, tmp_path: Path, sync: dict[str, Any] | None = None, **tapkey: Any
) -> Settings:
    """`make_settings` with [sync] keys overridden too."""
    settings = make_settings(fake, db_url, tmp_path, **tapkey)
    if sync:
        settings = settings.model_copy(update={"sync": settings.sync.model_copy(update=sync)})
    return settings


def run_once(
    fake: Sandbox,
    db_url: str,
    tmp_path: Path,
    *,
    sync: dict[str, Any] | None = None,
    tapkey: dict[str, Any] | None = None,
    **kwargs: Any,
) -> RunResult:
    """One in-process run (the wiring of `exporter run-once`) against `fake` into `db_url`."""
    return job.run_once(settings_with(fake, db_url, tmp_path, sync, **(tapkey or {})), **kwargs)


@contextmanager
def listening(target: Any, **hooks: Callable[..., Any]) -> Iterator[None]:
    """SQLAlchemy event hooks on `target` (an engine, `Engine`, `Pool`) for the block only.

    The hooks are named by their events: `listening(Engine, commit=on_commit)`. Listeners on a
    class outlive the test that added them, so they are removed even when the block fails.
    """
    for name, hook in hooks.items():
        event.listen(target, name, hook)
    try:
        yield
    finally:
        for name, hook in hooks.items():
            event.remove(target, name, hook)


def sandbox_owner_ids(fake: Sandbox) -> list[str]:
    """The owner ids the sandbox serves now, in its order."""
    return [owner["id"] for owner in fake.owners_payload()]


def sandbox_lock_ids(fake: Sandbox, owner_id: str) -> list[str]:
    """The lock ids the sandbox serves for `owner_id` now, in its order."""
    return [lock["id"] for lock in fake.locks_payload(owner_id)]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def count_requests(fake: Sandbox) -> Counter[str]:
    """Requests per owner ("owners"/"token" for those routes), counted from now on."""
    seen: Counter[str] = Counter()

    def hook(request: SandboxRequest) -> None:
        seen[request.owner_id or request.route] += 1

    fake.hooks.append(hook)
    return seen


def mutate_every_owner(fake: Sandbox) -> dict[str, tuple[str, str]]:
    """Rename the first lock and unbind the last one of every owner: (renamed, unbound) ids."""
    changed = {}
    for owner_id in sandbox_owner_ids(fake):
        ids = sandbox_lock_ids(fake, owner_id)
        fake.rename(ids[0], f"renamed {ids[0][:6]}")
        fake.unbind(ids[-1])
        changed[owner_id] = (ids[0], ids[-1])
    return changed


class FakeClock:
    """A monotonic clock moved by hand, for the sandbox and the token provider."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
