"""Database plumbing: engines, migrations and the single-writer lock."""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from exporter.errors import DatabaseUnavailableError, LockHeldError, SchemaVersionError

LOCK_NAME = "tapkey-inventory-exporter"

# Keep dead peers from holding the writer lock for hours: the server drops the session (and with it
# the advisory lock / GET_LOCK) once keepalives go unanswered for about a minute.
_PG_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "connect_timeout": 10,
}


def migrations_dir() -> Path:
    """Where the Alembic scripts live: inside the installed package, or the source checkout."""
    packaged = Path(__file__).with_name("migrations")
    if (packaged / "env.py").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"


def backend(engine: Engine) -> str:
    """`sqlite`, `postgresql` or `mysql` (MariaDB included)."""
    name = engine.dialect.name
    return "mysql" if name == "mariadb" else name


def sqlite_path(engine: Engine) -> Path | None:
    """The database file of a file-backed SQLite engine, else None."""
    if backend(engine) != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def make_engine(url: str, *, schema: str | None = None) -> Engine:
    """An engine with the session settings every connection needs (UTC, WAL, keepalives)."""
    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        connect_args["timeout"] = 30
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    elif parsed.get_backend_name() == "postgresql":
        connect_args.update(_PG_KEEPALIVES)
        if schema:
            connect_args["options"] = f"-c search_path={schema}"
    else:
        connect_args.update(init_command="SET time_zone = '+00:00'", connect_timeout=10)
        kwargs["pool_recycle"] = 3600
    engine = create_engine(parsed, connect_args=connect_args, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    elif parsed.get_backend_name() in ("mysql", "mariadb"):
        event.listen(engine, "connect", _mysql_on_connect)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (BI tools, `exporter locks`) work while a sync writes; NORMAL is durable
    # against process crashes, which is what a killed run needs.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _mysql_on_connect(dbapi_connection: Any, _record: Any) -> None:
    sock = getattr(dbapi_connection, "_sock", None)
    if sock is not None:
        import socket

        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


@contextlib.contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """A connection, with connection failures turned into DatabaseUnavailableError."""
    try:
        conn = engine.connect()
    except (OperationalError, DBAPIError) as exc:
        raise DatabaseUnavailableError(_unreachable(engine, exc)) from None
    with conn:
        yield conn


def _unreachable(engine: Engine, exc: BaseException) -> str:
    reason = (
        str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else type(exc).__name__
    )
    return (
        f"cannot connect to the database {engine.url.render_as_string(hide_password=True)}: "
        f"{reason}; check [database] url and that the server is running"
    )


def _alembic_config(connection: Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The schema revision this code expects."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    with connect(engine) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the head revision (idempotent)."""
    with connect(engine) as conn:
        command.upgrade(_alembic_config(conn), "head")
        conn.commit()


def check_models(engine: Engine) -> None:
    """Raise if the migrations and the table definitions disagree (alembic `check`)."""
    with connect(engine) as conn:
        command.check(_alembic_config(conn))


def require_current(engine: Engine, *, auto_upgrade_sqlite: bool = False) -> None:
    """Make sure the schema is at head; upgrade SQLite automatically when asked to."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if auto_upgrade_sqlite and backend(engine) == "sqlite":
        upgrade(engine)
        return
    if current is None:
        raise SchemaVersionError(
            "the database has no exporter schema yet; run `exporter db upgrade` first"
        )
    raise SchemaVersionError(
        f"the database schema is at revision {current} but this version needs {head}; "
        "run `exporter db upgrade` (or use the exporter version that matches the database)"
    )


class WriterLock:
    """The database-wide lock that keeps two syncs from writing at once.

    PostgreSQL: a session advisory lock; MariaDB/MySQL: GET_LOCK. Both are held on a dedicated
    connection for the whole run, because a pooled connection would carry the lock back into the
    pool. SQLite: a file lock beside the database file (same host only). The lock dies with its
    holder's process or connection, so a crashed run never blocks the next one.
    """

    def __init__(self, engine: Engine, *, timeout: float = 0.0) -> None:
        self._engine = engine
        self._timeout = timeout
        self._conn: Connection | None = None
        self._file: filelock.BaseFileLock | None = None

    def acquire(self) -> None:
        """Take the lock, waiting up to `timeout` seconds, or raise LockHeldError."""
        kind = backend(self._engine)
        if kind == "sqlite":
            path = sqlite_path(self._engine)
            if path is None:
                return
            self._file = filelock.FileLock(f"{path}.lock")
            try:
                self._file.acquire(timeout=self._timeout)
            except filelock.Timeout:
                self._file = None
                raise LockHeldError(_held_message(str(path))) from None
            return
        try:
            self._conn = self._engine.connect()
        except (OperationalError, DBAPIError) as exc:
            raise DatabaseUnavailableError(_unreachable(self._engine, exc)) from None
        if kind == "postgresql":
            got = self._conn.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": self._pg_key(self._conn)}
            ).scalar()
        else:
            got = self._conn.execute(
                text("SELECT GET_LOCK(:name, 0)"), {"name": self._name()}
            ).scalar()
        self._conn.commit()
        if not got:
            self._conn.close()
            self._conn = None
            raise LockHeldError(
                _held_message(self._engine.url.render_as_string(hide_password=True))
            )

    def check(self) -> None:
        """Raise DatabaseUnavailableError if the lock's connection has died (the lock is gone)."""
        if self._conn is None:
            return
        try:
            self._conn.execute(text("SELECT 1")).scalar()
            self._conn.commit()
        except (OperationalError, DBAPIError) as exc:
            raise DatabaseUnavailableError(
                "lost the connection that holds the writer lock; the run was aborted "
                f"({str(getattr(exc, 'orig', exc)).strip().splitlines()[0]})"
            ) from None

    def release(self) -> None:
        """Release the lock; safe to call twice and after the connection died."""
        if self._file is not None:
            self._file.release()
            self._file = None
        if self._conn is not None:
            with contextlib.suppress(OperationalError, DBAPIError):
                if backend(self._engine) == "postgresql":
                    self._conn.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": self._pg_key(self._conn)}
                    )
                else:
                    self._conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": self._name()})
                self._conn.commit()
            with contextlib.suppress(OperationalError, DBAPIError):
                self._conn.close()
            self._conn = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def _name(self) -> str:
        # GET_LOCK names are server-wide: scope them to the database.
        return f"{LOCK_NAME}:{self._engine.url.database}"[:64]

    @staticmethod
    def _pg_key(conn: Connection) -> int:
        # Advisory lock keys are per PostgreSQL database already; the schema keeps two
        # exporters in different schemas of one database apart.
        schema = conn.execute(text("SELECT current_schema()")).scalar()
        return zlib.crc32(f"{LOCK_NAME}:{schema}".encode())


def _held_message(where: str) -> str:
    return (
        f"another exporter run holds the writer lock on {where}; this run was skipped "
        "(wait for it to finish, or check for a stuck process)"
    )
