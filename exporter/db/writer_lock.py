"""The writer lock: one sync (or schema upgrade) writes at a time."""

from __future__ import annotations

import contextlib
import logging
import stat
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from exporter.config.urls import masked_url
from exporter.db.engine import backend, create_private, sqlite_path, unreachable
from exporter.db.errors import store_error
from exporter.errors import DatabaseUnavailableError, LockHeldError, first_line

if TYPE_CHECKING:
    import filelock

LOCK_NAME = "tapkey-inventory-exporter"
log = logging.getLogger(__name__)

# MariaDB/MySQL have no per-session server keepalive setting (tcp_keepalive_time is global), so
# the connection holding GET_LOCK gets a shorter idle timeout instead: a dead holder's lock is
# released after this long rather than after wait_timeout (8 hours by default). A live run
# touches that connection between owners, far more often than this.
MYSQL_LOCK_WAIT_TIMEOUT = 600


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
            raise DatabaseUnavailableError(unreachable(self._engine, exc)) from None
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
        except BaseException:
            # Interrupted while waiting (Ctrl-C in `exporter db upgrade`), or the connection's
            # state refused a statement: no __exit__ will close it, and left to the garbage
            # collector a killed connection lingers open.
            self._close()
            raise
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
        import filelock  # SQLite only

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
    import filelock  # SQLite only: PostgreSQL and MariaDB runs never load it

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
