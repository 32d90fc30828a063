"""Database plumbing: engines, migrations and the single-writer lock."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import stat
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
from sqlalchemy import (
    Connection,
    Dialect,
    Engine,
    Table,
    bindparam,
    create_engine,
    event,
    insert,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError

from exporter.config.urls import masked_url, sqlite_file, without_secrets
from exporter.db.errors import permission_problem, store_error
from exporter.errors import (
    ConfigError,
    DatabaseUnavailableError,
    LockHeldError,
    SchemaVersionError,
    first_line,
)

# Alembic is imported where a migration runs or its scripts are read: a run on a current schema
# needs neither, and its import is a good part of a cron run's start-up.
if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

LOCK_NAME = "tapkey-inventory-exporter"
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
# MariaDB/MySQL have no per-session server keepalive setting (tcp_keepalive_time is global), so
# the connection holding GET_LOCK gets a shorter idle timeout instead: a dead holder's lock is
# released after this long rather than after wait_timeout (8 hours by default). A live run
# touches that connection between owners, far more often than this.
MYSQL_LOCK_WAIT_TIMEOUT = 600


def migrations_dir() -> Path:
    """Where the Alembic scripts live: inside the installed package, or the source checkout."""
    package = Path(__file__).resolve().parents[1]  # exporter/; the wheel puts them in there
    packaged = package / "migrations"
    if (packaged / "env.py").is_file():
        return packaged
    return package.parent / "migrations"


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
    else:
        event.listen(engine, "connect", _postgresql_on_connect)
    return engine


def _driver_problem(drivername: str, exc: BaseException) -> str:
    if isinstance(exc, ImportError):
        extra = "postgres" if drivername.startswith("postgresql") else "mysql"
        return (
            f"[database] url: the database driver for {drivername}:// is not installed "
            f"({exc}); install it with: pip install 'tapkey-inventory-exporter[{extra}]'"
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


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (BI tools, `exporter locks`) work while a sync writes; NORMAL is durable
    # against process crashes, which is what a killed run needs.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # One owner's transaction dirties ~2,000 pages (random lock ids spread over four indexes), so
    # with the default checkpoint every 1,000 WAL pages each commit was followed by a checkpoint
    # copying them all again: a first load of 100,000 locks spent 2-3x longer writing. Checkpoint
    # every ~40 MiB instead, and cache 16 MiB of pages (default 2 MiB) so the indexes stay hot.
    cursor.execute("PRAGMA wal_autocheckpoint=10000")
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
        raise DatabaseUnavailableError(_unreachable(engine, exc)) from None
    with conn:
        yield conn


def _unreachable(engine: Engine, exc: BaseException) -> str:
    reason = first_line(exc)
    return (
        f"cannot connect to the database {masked_url(engine.url)}: "
        f"{without_secrets(reason, engine.url)}; check [database] url and that the server is "
        "running"
    )


@dataclass(frozen=True)
class _InsertPlan:
    sql: str  # INSERT in the driver's paramstyle, or COPY on PostgreSQL (psycopg)
    copy: bool
    order: tuple[int, ...] | None  # positional drivers: row indexes in placeholder order
    names: tuple[str, ...]
    convert: tuple[tuple[int, Callable[[Any], Any]], ...]  # column index, bind processor
    copy_types: tuple[int, ...] | None = None  # binary COPY: the columns' type oids


# Column types whose psycopg binary dumpers take the values the bind processors give (str, bool,
# aware datetime, int, date). Binary COPY costs the client a quarter of text COPY's CPU: text
# format renders every timestamp through isoformat. Any other type (JSONB, whose binary dumper
# would encode an already serialised string again) takes text COPY.
_BINARY_COPY_TYPES = frozenset(
    {"varchar", "text", "bool", "timestamptz", "int2", "int4", "int8", "date"}
)
_COLUMN_TYPES = text(
    "SELECT a.attname, t.typname, t.oid FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
    "WHERE a.attrelid = CAST(:table AS regclass) AND a.attnum > 0 AND NOT a.attisdropped"
)


def _plans(dialect: Dialect) -> dict[tuple[str, tuple[str, ...]], _InsertPlan]:
    """The insert plans built for `dialect`, kept on the dialect itself.

    A plan's bind processors refer to their dialect, so a module-level cache keyed by dialect
    (even a WeakKeyDictionary) kept every disposed engine's dialect alive: `serve` grew by
    ~70 KB with every run that inserted rows. Held by the dialect, they go with its engine.
    """
    plans: dict[tuple[str, tuple[str, ...]], _InsertPlan]
    plans = vars(dialect).setdefault("_exporter_insert_plans", {})
    return plans


def _insert_plan(conn: Connection, table: Table, columns: tuple[str, ...]) -> _InsertPlan:
    dialect = conn.dialect
    plans = _plans(dialect)
    plan = plans.get((table.name, columns))
    if plan is not None:
        return plan
    # The column types' own bind processors: exactly the conversions Core would apply.
    convert = tuple(
        (i, process)
        for i, name in enumerate(columns)
        if (process := table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
    )
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        quote = dialect.identifier_preparer.quote
        target = dialect.identifier_preparer.format_table(table)
        sql = f"COPY {target} ({', '.join(quote(name) for name in columns)}) FROM STDIN"
        types = {row.attname: row for row in conn.execute(_COLUMN_TYPES, {"table": target})}
        if all(types[column].typname in _BINARY_COPY_TYPES for column in columns):
            oids = tuple(types[column].oid for column in columns)
            plan = _InsertPlan(f"{sql} (FORMAT BINARY)", True, None, columns, convert, oids)
        else:
            plan = _InsertPlan(sql, True, None, columns, convert)
    else:
        statement = insert(table).values({name: bindparam(name) for name in columns})
        compiled = statement.compile(dialect=dialect, for_executemany=True)
        order = None
        if compiled.positional:
            assert compiled.positiontup is not None
            order = tuple(columns.index(name) for name in compiled.positiontup)
        plan = _InsertPlan(compiled.string, False, order, columns, convert)
    plans[(table.name, columns)] = plan
    return plan


def insert_many(
    conn: Connection, table: Table, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
) -> None:
    """INSERT `rows` (tuples in `columns` order) with one bulk call to the driver.

    Core's executemany builds and processes a parameter dict per row, which costs more than the
    database spends storing the row (~20 us a row). This applies the same bind processors, once
    per distinct value (timestamps and flags repeat on every row; values that compare equal must
    convert equally), and hands all rows to the driver at once: executemany on SQLite and MariaDB,
    COPY on PostgreSQL (psycopg; binary where the column types allow). COPY bypasses Core's
    execute events.
    """
    if not rows:
        return
    dialect = conn.dialect
    plan = _insert_plan(conn, table, columns)
    values: Sequence[Sequence[Any]] = rows
    if plan.convert:
        # Column by column: convert each distinct value once, then rebuild the rows.
        data: list[Sequence[Any]] = list(zip(*rows, strict=True))
        for i, process in plan.convert:
            column = data[i]
            try:
                converted = {value: process(value) for value in set(column)}
            except TypeError:  # unhashable values (a JSON list): convert every one
                data[i] = [process(value) for value in column]
            else:
                data[i] = [converted[value] for value in column]
        values = list(zip(*data, strict=True))
    if plan.copy:
        dbapi = dialect.loaded_dbapi
        cursor: Any = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor, cursor.copy(plan.sql) as copy:
                if plan.copy_types:
                    copy.set_types(plan.copy_types)
                for row in values:
                    copy.write_row(row)
        except dbapi.Error as exc:
            # The same wrapper Core raises, so callers see one kind of database error.
            raise DBAPIError.instance(plan.sql, None, exc, dbapi.Error, dialect=dialect) from exc
        return
    if plan.order is None:
        params: list[Any] = [dict(zip(plan.names, row, strict=True)) for row in values]
    elif plan.order == tuple(range(len(columns))):
        params = list(values)
    else:
        order = plan.order
        params = [tuple(row[i] for i in order) for row in values]
    conn.exec_driver_sql(plan.sql, params)


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


# A migration script's own revision and the one it follows (see migrations/script.py.mako).
_REVISION = re.compile(r'^revision: str = "(\w+)"$', re.MULTILINE)
_DOWN_REVISION = re.compile(r'^down_revision: [^=]+= (?:"(\w+)"|None)$', re.MULTILINE)


def head_revision() -> str:
    """The schema revision this code expects.

    Read from the scripts' `revision` / `down_revision` lines (the one revision nothing
    follows), which takes a millisecond; Alembic's own reading (it imports every script) decides
    whenever the lines do not give one head. tests/test_migrations.py checks both agree.
    """
    revisions: set[str] = set()
    followed: set[str] = set()
    for path in (migrations_dir() / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        revision, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        if revision is None or down is None:
            return alembic_head_revision()
        revisions.add(revision[1])
        if down[1] is not None:
            followed.add(down[1])
    heads = revisions - followed
    return heads.pop() if len(heads) == 1 else alembic_head_revision()


def alembic_head_revision() -> str:
    """The head revision as Alembic reads it from the scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database).

    Raises DatabasePermissionError when the database user may not read `alembic_version`.
    """
    with connect(engine) as conn:
        return _read_revision(conn)


def _read_revision(conn: Connection) -> str | None:
    # A plain SELECT rather than alembic's get_current_revision: its has_table() check says "no
    # table" on MariaDB when the user may not see it, and on PostgreSQL goes through a
    # dialect-wide lru_cache that keeps the last 128 disposed engines' dialects alive.
    try:
        revisions = list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    except DBAPIError as exc:
        if not _no_such_table(exc):
            raise store_error(exc, conn.engine) from None
        conn.rollback()  # PostgreSQL: the failed statement aborted the transaction
        return None
    conn.rollback()  # end the transaction the SELECT began (DDL may follow on this connection)
    if len(revisions) > 1:
        raise SchemaVersionError(
            f"the database's alembic_version table holds {len(revisions)} revisions "
            f"({', '.join(sorted(revisions))}); this exporter's migrations have one head"
        )
    return str(revisions[0]) if revisions else None


def _no_such_table(exc: DBAPIError) -> bool:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == "42P01":  # PostgreSQL undefined_table
        return True
    if getattr(orig, "sqlite_errorcode", None) is not None:
        return str(orig).startswith("no such table")
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] == 1146  # MySQL/MariaDB ER_NO_SUCH_TABLE


# How long `exporter db upgrade` waits for a run holding the writer lock to finish.
UPGRADE_LOCK_WAIT = 300.0
_NOT_UPGRADED = "the schema was not upgraded: run `exporter db upgrade` again once it has finished"


def upgrade(engine: Engine, *, lock_timeout: float = UPGRADE_LOCK_WAIT) -> None:
    """Bring the schema to the head revision (idempotent), under the writer lock.

    The lock keeps concurrent upgrades (and runs) apart: the first upgrades, the others wait up
    to `lock_timeout` seconds and find the schema current. LockHeldError if it stays held. A
    schema already at head needs no lock (a run may hold it meanwhile).
    """
    if current_revision(engine) == head_revision():
        return
    with WriterLock(engine, timeout=lock_timeout, skipped=_NOT_UPGRADED):
        _upgrade(engine)


def _upgrade(engine: Engine) -> None:
    """Upgrade to head; the caller holds the writer lock."""
    with connect(engine) as conn:
        current = _read_revision(conn)
        if current is not None and not is_known_revision(current):
            raise SchemaVersionError(_unknown_revision_message(current))
        if current == head_revision():
            return
        from alembic import command
        from alembic.util import CommandError as AlembicCommandError

        try:
            command.upgrade(_alembic_config(conn), "head")
        except (SQLAlchemyError, AlembicCommandError) as exc:
            orig = getattr(exc, "orig", None) or exc
            reason = permission_problem(exc, engine) or first_line(orig)
            message = (
                f"upgrading the schema from revision {current or '(none)'} to "
                f"{head_revision()} failed: {reason}; fix the cause and run `exporter db upgrade` "
                "again (SQLite and PostgreSQL undo a failed upgrade; MySQL/MariaDB keep the "
                "steps before the failed one)"
            )
        else:
            conn.commit()
            return
    # Raised outside the except block, so no database traceback is chained to it.
    raise SchemaVersionError(message)


def is_known_revision(revision: str) -> bool:
    """True when `revision` is one of this exporter's migrations."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError as AlembicCommandError

    try:
        return ScriptDirectory.from_config(_alembic_config()).get_revision(revision) is not None
    except AlembicCommandError:
        return False


def _unknown_revision_message(revision: str) -> str:
    return (
        f"the database schema is at revision {revision}, which this exporter version does not "
        "know (a newer exporter upgraded it?); run the exporter version that matches the database"
    )


def check_models(engine: Engine) -> None:
    """Raise if the migrations and the table definitions disagree (alembic `check`)."""
    from alembic import command

    with connect(engine) as conn:
        command.check(_alembic_config(conn))


def require_current(
    engine: Engine, *, auto_upgrade_sqlite: bool = False, lock_timeout: float = 0.0
) -> None:
    """Make sure the schema is at head; upgrade SQLite automatically when asked to.

    The automatic upgrade takes the writer lock (waiting up to `lock_timeout`), so concurrent
    first runs on a new file do not race to create the tables: one does, the others get
    LockHeldError (exit 4) as they would for its run.
    """
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if auto_upgrade_sqlite and backend(engine) == "sqlite":
        with WriterLock(engine, timeout=lock_timeout):
            _upgrade(engine)
        return
    if current is None:
        raise SchemaVersionError(
            "the database has no exporter schema yet; run `exporter db upgrade` first"
        )
    if not is_known_revision(current):
        raise SchemaVersionError(_unknown_revision_message(current))
    raise SchemaVersionError(
        f"the database schema is at revision {current} but this version needs {head}; "
        "run `exporter db upgrade` (or use the exporter version that matches the database)"
    )


_SKIPPED = "this run was skipped (wait for it to finish, or check for a stuck process)"


class WriterLock:
    """The database-wide lock that keeps two syncs (and schema upgrades) from writing at once.

    PostgreSQL: a session advisory lock; MariaDB/MySQL: GET_LOCK. Both are held on a dedicated
    connection for the whole run, because a pooled connection would carry the lock back into the
    pool. SQLite: a file lock beside the database file (same host only), created readable by its
    owner only. The lock dies with its holder's process or connection, so a crashed run never
    blocks the next one. `skipped` ends the LockHeldError message: what did not happen.
    """

    def __init__(self, engine: Engine, *, timeout: float = 0.0, skipped: str = _SKIPPED) -> None:
        self._engine = engine
        self._timeout = timeout
        self._skipped = skipped
        self._conn: Connection | None = None
        self._file: filelock.BaseFileLock | None = None
        self._key: int | None = None

    def acquire(self) -> None:
        """Take the lock, waiting up to `timeout` seconds, or raise LockHeldError."""
        kind = backend(self._engine)
        if kind == "sqlite":
            path = sqlite_path(self._engine)
            if path is not None:
                self._file = _file_lock(Path(f"{path}.lock"))
                if not self._take(self._file_acquire):
                    self._file = None
                    raise LockHeldError(_held_message(str(path), self._skipped))
            return
        try:
            # Autocommit: the locks are session-level anyway, and check(), which runs once per
            # owner, then costs one round trip instead of three (BEGIN, SELECT 1, COMMIT).
            self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except (OperationalError, DBAPIError) as exc:
            raise DatabaseUnavailableError(_unreachable(self._engine, exc)) from None
        try:
            if kind == "postgresql":
                self._key = self._pg_key(self._conn)
                got = self._take(self._pg_acquire)
            else:
                self._conn.execute(text(f"SET SESSION wait_timeout = {MYSQL_LOCK_WAIT_TIMEOUT}"))
                got = self._take(self._mysql_acquire)
        except DBAPIError as exc:
            self._close()
            raise store_error(exc, self._engine) from None
        if not got:
            self._close()
            where = masked_url(self._engine.url)
            raise LockHeldError(_held_message(where, self._skipped))

    def _take(self, attempt: Callable[[float], bool]) -> bool:
        """Try at once; if that fails and there is a timeout, say so and wait."""
        if attempt(0.0):
            return True
        if self._timeout <= 0:
            return False
        log.info(
            "another exporter run holds the writer lock; waiting up to %g s for it", self._timeout
        )
        return attempt(self._timeout)

    def _file_acquire(self, timeout: float) -> bool:
        assert self._file is not None
        try:
            self._file.acquire(timeout=timeout)
        except filelock.Timeout:
            return False
        return True

    def _pg_acquire(self, timeout: float) -> bool:
        assert self._conn is not None
        deadline = time.monotonic() + timeout
        while True:
            got = self._conn.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key}
            ).scalar()
            if got or time.monotonic() >= deadline:
                return bool(got)
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def _mysql_acquire(self, timeout: float) -> bool:
        assert self._conn is not None
        got = self._conn.execute(
            text("SELECT GET_LOCK(:name, :timeout)"), {"name": self._name(), "timeout": timeout}
        ).scalar()
        return bool(got)

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
                f"({first_line(exc)}): check the database "
                "server and run again"
            ) from None

    def release(self) -> None:
        """Release the lock; safe to call twice and after the connection died."""
        if self._file is not None:
            self._file.release()
            self._file = None
        if self._conn is not None:
            # SQLAlchemyError, not just DBAPIError: after check() found the connection dead it
            # is left in a failed transaction, and using it raises PendingRollbackError.
            with contextlib.suppress(SQLAlchemyError):
                if backend(self._engine) == "postgresql":
                    if self._key is not None:
                        self._conn.execute(
                            text("SELECT pg_advisory_unlock(:key)"), {"key": self._key}
                        )
                else:
                    self._conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": self._name()})
                self._conn.commit()
            self._close()

    def _close(self) -> None:
        """Close the lock's connection (ending its session ends any lock it holds)."""
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
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
        # exporters in different schemas of one database apart. Before the first upgrade has
        # created the configured schema, current_schema() is NULL: the first search_path entry
        # is the schema the upgrade creates (migrations/env.py), so the key stays the same.
        schema, path = conn.execute(
            text("SELECT current_schema(), current_setting('search_path')")
        ).one()
        if schema is None:
            schema = str(path).split(",")[0].strip().strip('"')
        return zlib.crc32(f"{LOCK_NAME}:{schema}".encode())


def _file_lock(path: Path) -> filelock.BaseFileLock:
    """A file lock on `path`, created private; an existing lock file keeps its mode."""
    try:
        create_private(path)
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise DatabaseUnavailableError(
            f"cannot create the lock file {path}: {exc.strerror or type(exc).__name__}; "
            "check that this user may write in the database's folder"
        ) from None
    # filelock 3.x changes the file's mode to `mode` on every acquire (0644 by default): give it
    # the mode the file has, so nothing is loosened.
    return filelock.FileLock(path, mode=mode)


def _held_message(where: str, skipped: str) -> str:
    return f"another exporter run holds the writer lock on {where}; {skipped}"
