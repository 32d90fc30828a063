"""What the benchmarks share: the sandbox in a process of its own, the bench database, a plain
HTTP crawler (the floor every exporter figure is compared with), the exporter's settings for a
run and fresh client processes (options and results are in `reports`).

Imported as `common` by the scripts beside it (they put this folder on sys.path).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ADMIN_URLS = {
    "postgresql": os.environ.get(
        "EXPORTER_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
    ),
    "mariadb": os.environ.get("EXPORTER_BENCH_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/"),
}
BENCH_DB = "exporter_bench"
CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-secret"  # the sandbox's own fake credentials, not a real secret
LOCK_SCOPES = "read:owneraccounts read:core:entities"

# -- server process ------------------------------------------------------------------------------


def _serve(
    conn: Connection, seed: int, owners: int, locks_per_owner: int, latency: float = 0.0
) -> None:
    """Run the sandbox and obey commands from the control pipe until `stop`."""
    from exporter.sandbox.server import Sandbox

    sandbox = Sandbox(
        seed=seed,
        owners=owners,
        locks_per_owner=locks_per_owner,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        token_lifetime=24 * 3600,
        latency=latency,
    )
    sandbox.start()
    conn.send({"base_url": sandbox.base_url, "token_url": sandbox.token_url})
    try:
        while True:
            command, arg = conn.recv()
            if command == "advance":
                conn.send(len(sandbox.advance(arg)))
            elif command == "reset":
                sandbox.reset_counters()
                conn.send(None)
            elif command == "counts":
                conn.send({"total": sandbox.request_count, **sandbox.requests})
            elif command == "cpu":
                conn.send(time.process_time())
            elif command == "stop":
                break
            else:
                conn.send(ValueError(f"unknown command {command!r}"))
    finally:
        sandbox.stop()
        conn.send(None)


class Server:
    """The sandbox in its own process, driven through a pipe."""

    def __init__(
        self, *, seed: int, owners: int, locks_per_owner: int, latency: float = 0.0
    ) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve,
            args=(child, seed, owners, locks_per_owner, latency),
            name="bench-sandbox",
        )
        self._process.start()
        child.close()
        urls = self._conn.recv()
        self.base_url: str = urls["base_url"]
        self.token_url: str = urls["token_url"]

    def params(
        self, args: argparse.Namespace, workdir: Path | str, db_url: str, **more: Any
    ) -> dict[str, Any]:
        """What a client process gets: this sandbox's URLs, `args`' workers and page size, the
        work folder and the database."""
        return {
            "base_url": self.base_url,
            "token_url": self.token_url,
            "workers": args.workers,
            "page_size": args.page_size,
            "workdir": str(workdir),
            "db_url": db_url,
            **more,
        }

    def call(self, command: str, arg: Any = None) -> Any:
        """Send one command and return its answer."""
        self._conn.send((command, arg))
        answer = self._conn.recv()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the sandbox and wait for its process."""
        if self._process.is_alive():
            self._conn.send(("stop", None))
            self._conn.recv()
        self._process.join(timeout=30)
        self._conn.close()


# -- client processes ----------------------------------------------------------------------------


def in_fresh_process(
    body: Callable[[Connection, str, dict[str, Any]], None], kind: str, params: dict[str, Any]
) -> dict[str, Any]:
    """Run `body(conn, kind, params)` in a new (spawned) process; return what it sends."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=body, args=(child, kind, params), name=f"bench-{kind}")
    process.start()
    child.close()
    try:
        figures: dict[str, Any] = parent.recv()
    except EOFError:
        process.join()
        raise RuntimeError(f"the {kind} process died (exit code {process.exitcode})") from None
    process.join()
    return figures


def run_settings(params: dict[str, Any], **overrides: Any) -> Any:
    """The exporter's settings for a run against the bench sandbox into the bench database."""
    from exporter.config.loader import load_settings

    return load_settings(
        None,
        env={},
        cwd=Path(params["workdir"]),
        overrides={
            "tapkey.client_id": CLIENT_ID,
            "tapkey.client_secret": CLIENT_SECRET,
            "tapkey.token_url": params["token_url"],
            "tapkey.api_base_url": params["base_url"],
            "tapkey.workers": params["workers"],
            "tapkey.page_size": params["page_size"],
            "database.url": params["db_url"],
            **overrides,
        },
    )


class Crawler:
    """A plain client of the sandbox: one pooled `requests.Session`, a token, `json.loads` of
    every page, nothing else; `sent` counts its requests (the token's included).

    `scope` None asks for every scope the client is granted.
    """

    def __init__(self, params: dict[str, Any], *, scope: str | None = LOCK_SCOPES) -> None:
        import requests
        from requests.adapters import HTTPAdapter

        self._base = params["base_url"]
        self._token_url = params["token_url"]
        self._scope = scope
        self.session = requests.Session()
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=params["workers"], max_retries=0)
        self.session.mount("http://", adapter)
        self._workers = params["workers"]
        self.sent = 0
        self._lock = threading.Lock()
        self._headers: dict[str, str] = {}

    def __enter__(self) -> Crawler:
        data = {"grant_type": "client_credentials"}
        if self._scope is not None:
            data["scope"] = self._scope
        answer = self.session.post(
            self._token_url, data=data, auth=(CLIENT_ID, CLIENT_SECRET), timeout=(10, 60)
        )
        answer.raise_for_status()
        self.sent += 1
        token = answer.json()["access_token"]
        self._headers = {"Accept": "application/json", "Authorization": f"Bearer {token}"}
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.session.close()

    def get(self, path: str, top: int, skip: int) -> list[Any]:
        """One page."""
        with self._lock:
            self.sent += 1
        response = self.session.get(
            self._base + path,
            params={"$top": str(top), "$skip": str(skip)},
            headers=self._headers,
            timeout=(10, 60),
        )
        response.raise_for_status()
        page: list[Any] = json.loads(response.content)
        return page

    def read_overlapping(self, path: str, top: int) -> list[Any]:
        """A whole list as the exporter pages it: each page starts at the last row received."""
        rows: list[Any] = []
        largest = 0
        while True:
            skip = 0 if not rows else 1 if len(rows) == 1 else len(rows) - 1
            page = self.get(path, top, skip)
            new = page if not rows else page[1:]
            rows += new
            if not new or len(page) < largest:
                return rows
            largest = max(largest, len(page))

    def owners_and_locks(self, read: Callable[[str, int], list[Any]], top: int) -> dict[str, Any]:
        """Read the owner list, then every owner's bound locks `workers` at a time, with
        `read` (`read_overlapping` or `read_plain`); their numbers and the requests sent."""
        owners = [owner["id"] for owner in read("/api/v1/Owners", top)]
        with ThreadPoolExecutor(max_workers=self._workers) as pool:
            paths = [f"/api/v1/Owners/{owner}/BoundLocks" for owner in owners]
            locks = sum(map(len, pool.map(lambda path: read(path, top), paths)))
        return {
            "status": "succeeded",
            "owners": len(owners),
            "locks": locks,
            "api_requests": self.sent,
        }

    def read_plain(self, path: str, top: int) -> list[Any]:
        """A whole list as a plain client pages it: `$skip` advanced by the rows received, a
        page shorter than `top` ends it."""
        rows: list[Any] = []
        while True:
            page = self.get(path, top, len(rows))
            rows += page
            if len(page) < top:
                return rows


# -- databases -----------------------------------------------------------------------------------


def migrated(db_url: str) -> str:
    """Bring the database at `db_url` to the schema head (the exporter's migrations); its URL."""
    from exporter.db.engine import make_engine
    from exporter.db.migrate import upgrade

    engine = make_engine(db_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return db_url


@contextmanager
def bench_database(db: str, workdir: Path, url: str | None) -> Iterator[Callable[[], str]]:
    """Yield `fresh()`, which empties and migrates the bench database and returns its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    if db == "sqlite":
        path = Path(url.removeprefix("sqlite:///")) if url else workdir / "bench.db"

        def fresh_sqlite() -> str:
            for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return migrated(f"sqlite:///{path}")

        yield fresh_sqlite
        return

    admin_url = url or ADMIN_URLS[db]
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"{BENCH_DB}_{os.getpid()}"
    db_url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            if db == "postgresql":
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))

    def fresh_server() -> str:
        drop()
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        return migrated(db_url)

    try:
        yield fresh_server
    finally:
        drop()
        admin.dispose()
