"""Engines and connections: session settings (UTC, WAL, keepalives), SQLite files."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from exporter.config.urls import masked_url, sqlite_file, without_secrets
from exporter.db.tls import connect_sharing_default_tls, is_tls_option, mysql_tls
from exporter.errors import ConfigError, DatabaseUnavailableError, first_line

log = logging.getLogger(__name__)

# TCP keepalives: 30 s idle, then a probe every 10 s, 3 unanswered probes drop the connection.
# On our side (libpq options below, socket options for PyMySQL) they make a run notice a dead
# database host within about a minute instead of hanging on a half-open connection.
_KEEPALIVE = {"idle": 30, "interval": 10, "count": 3}
_PG_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": _KEEPALIVE["idle"],
    "keepalives_interval": _KEEPALIVE["interval"],
    "keepalives_count": _KEEPALIVE["count"],
    "connect_timeout": 10,
}
# On the server's side they make PostgreSQL end the session of a dead exporter host (and with it
# its advisory lock) about a minute later, instead of after the kernel default of about 2 hours.
# Set per session with SET rather than the `options` startup parameter, which poolers refuse.
_PG_SERVER_KEEPALIVES = (
    f"SET tcp_keepalives_idle = {_KEEPALIVE['idle']}; "
    f"SET tcp_keepalives_interval = {_KEEPALIVE['interval']}; "
    f"SET tcp_keepalives_count = {_KEEPALIVE['count']}"
)


def backend(engine: Engine) -> str:
    """`sqlite`, `postgresql` or `mysql` (MariaDB included)."""
    name = engine.dialect.name
    return "mysql" if name == "mariadb" else name


def sqlite_path(engine: Engine) -> Path | None:
    """The database file of a file-backed SQLite engine, else None."""
    database = sqlite_file(engine.url)
    return None if database is None else Path(database)


def in_memory(url: str) -> bool:
    """True for an in-memory SQLite URL (`sqlite://`, `sqlite:///:memory:`, mode=memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return False
    database = parsed.database or ""
    return (
        database in ("", ":memory:")
        or "mode=memory" in database
        or (parsed.query.get("mode") == "memory")
    )


def make_engine(url: str, *, schema: str | None = None, create: bool = True) -> Engine:
    """An engine with the session settings every connection needs (UTC, WAL, keepalives).

    A sync holds at most four connections at once (the writer, the reader of stored texts, the
    writer lock's own and `serve`'s /healthz; five on MySQL/MariaDB, which has two readers): the
    default pool of five covers them. Without
    `create`, a SQLite file that does not exist is an error (connecting would create it); with
    it, a new SQLite file is created readable by its owner only (see `create_private`).
    """
    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        connect_args["timeout"] = 30
        database = sqlite_file(parsed)
        if database is not None:
            if Path(database).is_dir():
                raise DatabaseUnavailableError(
                    f"the SQLite database {database} is a directory; check [database] url, "
                    "which names the database file (e.g. sqlite:///exporter.db)"
                )
            if not create and not Path(database).is_file():
                raise DatabaseUnavailableError(
                    f"the SQLite database {database} does not exist; check [database] url "
                    "(`exporter run-once` or `exporter db upgrade` creates it)"
                )
            if create:
                _create_sqlite_file(Path(database))
    elif parsed.get_backend_name() == "postgresql":
        connect_args.update(_PG_KEEPALIVES)
        if schema:
            connect_args["options"] = f"-c search_path={schema}"
    else:
        connect_args.update(init_command="SET time_zone = '+00:00'", connect_timeout=10)
        kwargs["pool_recycle"] = 3600
        if parsed.get_driver_name() == "pymysql":
            connect_args.update(mysql_tls(parsed.query))
            parsed = parsed.difference_update_query(filter(is_tls_option, parsed.query))
    try:
        engine = create_engine(parsed, connect_args=connect_args, **kwargs)
    except (ImportError, ArgumentError) as exc:
        raise ConfigError(
            without_secrets(_driver_problem(parsed.drivername, exc), parsed)
        ) from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    elif parsed.get_backend_name() in ("mysql", "mariadb"):
        event.listen(engine, "connect", _mysql_on_connect)
        tls_options = connect_args.keys() & {"ssl", "ssl_disabled"}
        if parsed.get_driver_name() == "pymysql" and not tls_options:
            event.listen(engine, "do_connect", connect_sharing_default_tls)
    else:
        event.listen(engine, "connect", _postgresql_on_connect)
    return engine


def _driver_problem(drivername: str, exc: BaseException) -> str:
    if isinstance(exc, ImportError):
        extra = "postgres" if drivername.startswith("postgresql") else "mysql"
        return (
            f"[database] url: the database driver for {drivername}:// is not installed "
            f"({exc}); install it with: pip install 'tapkey-inventory-exporter[{extra}]' (in a "
            f"source checkout: pip install '.[{extra}]')"
        )
    reason = first_line(exc)
    return f"[database] url: {reason}; check [database] url"


def create_private(path: Path) -> None:
    """Create the empty file `path` readable and writable by its owner only, unless it exists.

    Mode 0600 (a stricter umask makes it stricter still); an existing file is left as it is,
    never loosened. Raises OSError if the file cannot be created.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _create_sqlite_file(path: Path) -> None:
    # An empty file is an empty SQLite database. SQLite gives the -wal and -shm files it creates
    # the database file's mode, so those are private too (it would create the file 0644).
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseUnavailableError(
            f"cannot create the folder of the SQLite database {path}: "
            f"{exc.strerror or type(exc).__name__}; check [database] url"
        ) from None
    try:
        create_private(path)
    except OSError as exc:
        raise DatabaseUnavailableError(
            f"cannot create the SQLite database {path}: {exc.strerror or type(exc).__name__}; "
            "check [database] url and that this user may write in its folder"
        ) from None


# SQLite page cache per connection, in KiB: the default (see _sqlite_on_connect) and the sync's
# reader's, which only reads one owner's rows at a time (every connection has its own cache).
SQLITE_CACHE_KIB = 16384
SQLITE_READER_CACHE_KIB = 2048


def sqlite_cache(conn: Connection, kib: int) -> None:
    """Set a SQLite connection's page cache (readers need little; every connection has its own)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA cache_size=-{kib}")
        conn.commit()  # end the transaction the statement began


# The page size of a SQLite database the exporter creates (SQLite's default is 4 KiB). A first
# load of 46,620 locks made 133,700 pwrite64 calls with 4 KiB pages (two a WAL frame, one a page
# a checkpoint copies), 36,000 with 16 KiB (docs/benchmarks.md, branch sqlpages).
SQLITE_PAGE_SIZE = 16384
# The WAL is checkpointed every this many bytes (10,000 pages of 4 KiB), whatever the page size.
SQLITE_CHECKPOINT_BYTES = 10000 * 4096


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Only an empty database takes a page size, and only before WAL is switched on (in WAL mode
    # it never changes): on an existing file the statement does nothing.
    cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
    # WAL lets readers (BI tools, `exporter locks`) work while a sync writes; NORMAL is durable
    # against process crashes, which is what a killed run needs.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # One owner's transaction dirties ~2,000 pages (random lock ids spread over four indexes), so
    # with the default checkpoint every 1,000 WAL pages each commit was followed by a checkpoint
    # copying them all again: a first load of 100,000 locks spent 2-3x longer writing. Checkpoint
    # every ~40 MiB instead, and cache 16 MiB of pages (default 2 MiB) so the indexes stay hot.
    page_size = cursor.execute("PRAGMA page_size").fetchone()[0]
    cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_BYTES // page_size}")
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    cursor.close()


def _postgresql_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(_PG_SERVER_KEEPALIVES)
    cursor.close()
    # Commit so the SETs outlive the implicit transaction they opened.
    dbapi_connection.commit()


def _mysql_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # PyMySQL has no keepalive options. Its Connection keeps the socket in `_sock` (set in
    # Connection.connect(), replaced by the TLS socket after STARTTLS; checked against PyMySQL
    # 1.1/1.2) and turns SO_KEEPALIVE on for TCP, with the kernel's 2-hour timings: tighten them.
    sock = getattr(dbapi_connection, "_sock", None)
    if not isinstance(sock, socket.socket):
        log.warning("cannot set TCP keepalives: this PyMySQL version keeps no socket in _sock")
        return
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket: no network in between
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", _KEEPALIVE["idle"]),
        ("TCP_KEEPINTVL", _KEEPALIVE["interval"]),
        ("TCP_KEEPCNT", _KEEPALIVE["count"]),
    ):
        if hasattr(socket, name):  # Linux names; macOS lacks some
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


@contextlib.contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """A connection, with connection failures turned into DatabaseUnavailableError."""
    try:
        conn = engine.connect()
    except (OperationalError, DBAPIError) as exc:
        raise DatabaseUnavailableError(unreachable(engine, exc)) from None
    with conn:
        yield conn


def unreachable(engine: Engine, exc: BaseException) -> str:
    """The one-line message for a failed connection attempt, without secrets."""
    reason = first_line(exc)
    return (
        f"cannot connect to the database {masked_url(engine.url)}: "
        f"{without_secrets(reason, engine.url)}; check [database] url and that the server is "
        "running"
    )
