"""Migrations: the schema revision this code expects, the database's, and upgrading (Alembic)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from exporter.db.engine import backend, connect
from exporter.db.errors import permission_problem, store_error
from exporter.db.writer_lock import WriterLock
from exporter.errors import SchemaVersionError, first_line

log = logging.getLogger(__name__)

# Alembic is imported where a migration runs or its scripts are read: a run on a current schema
# needs neither, and its import is a good part of a cron run's start-up.
if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig


def migrations_dir() -> Path:
    """Where the Alembic scripts live: inside the installed package, or the source checkout."""
    package = Path(__file__).resolve().parents[1]  # exporter/; the wheel puts them in there
    packaged = package / "migrations"
    if (packaged / "env.py").is_file():
        return packaged
    return package.parent / "migrations"


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    """Alembic's configuration in code: our scripts, and `connection` to run them on."""
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

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
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
        from alembic.util import CommandError as AlembicCommandError

        try:
            _upgrade_steps(conn, current)
        except (SQLAlchemyError, AlembicCommandError) as exc:
            orig = getattr(exc, "orig", None) or exc
            reason = permission_problem(exc, engine) or first_line(orig)
            message = (
                f"upgrading the schema from revision {current or '(none)'} to "
                f"{head_revision()} failed: {reason}; fix the cause and run `exporter db upgrade` "
                "again (SQLite and PostgreSQL undo a failed upgrade; MySQL/MariaDB keep the "
                "steps before the failed one and drop what it had created)"
            )
        else:
            conn.commit()
            return
    # Raised outside the except block, so no database traceback is chained to it.
    raise SchemaVersionError(message)


def _upgrade_steps(conn: Connection, current: str | None) -> None:
    """Run the migrations from `current` to head.

    SQLite and PostgreSQL run them in one transaction. MySQL/MariaDB commit every DDL statement
    at once, so a step that fails halfway left its first tables behind, and every later attempt
    failed on them ("Table ... already exists"): there each step runs alone, and what a failed
    step created (tables, views, indexes, columns) is dropped again, unless it also dropped or
    renamed a table or column.
    """
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = alembic_config(conn)
    if backend(conn.engine) == "sqlite":
        _sqlite_upgrade(conn, cfg)
        return
    if backend(conn.engine) != "mysql":
        command.upgrade(cfg, "head")
        return
    steps = ScriptDirectory.from_config(cfg).iterate_revisions("head", current or "base")
    for revision in reversed([step.revision for step in steps]):
        before = _SchemaObjects.read(conn)
        try:
            command.upgrade(cfg, revision)
            conn.commit()
        except BaseException:
            _drop_created(conn, before)
            raise


def _sqlite_upgrade(conn: Connection, cfg: AlembicConfig) -> None:
    """Upgrade SQLite in one real transaction.

    Python's sqlite3 begins a transaction only before INSERT, UPDATE or DELETE: each CREATE
    TABLE committed at once, so a step that failed left its first tables behind, and every later
    attempt (each run-once) failed on them. An explicit BEGIN makes the DDL part of the
    transaction, which Alembic then leaves to us.
    """
    from alembic import command

    sqlite = conn.connection.driver_connection
    saved = sqlite.isolation_level  # type: ignore[union-attr]
    sqlite.isolation_level = None  # type: ignore[union-attr]  # issue no BEGIN of its own
    try:
        conn.exec_driver_sql("BEGIN")
        command.upgrade(cfg, "head")
    except BaseException:
        conn.rollback()
        raise
    finally:
        sqlite.isolation_level = saved  # type: ignore[union-attr]


class _SchemaObjects:
    """The tables, views, and each table's columns and indexes, of a MySQL/MariaDB schema."""

    def __init__(self, views: set[str], columns: dict[str, set[str]], indexes: dict[str, set[str]]):
        self.views, self.columns, self.indexes = views, columns, indexes

    @classmethod
    def read(cls, conn: Connection) -> _SchemaObjects:
        """What the schema holds now."""
        inspector = inspect(conn)
        tables = inspector.get_table_names()
        return cls(
            set(inspector.get_view_names()),
            {table: {c["name"] for c in inspector.get_columns(table)} for table in tables},
            {table: {str(i["name"]) for i in inspector.get_indexes(table)} for table in tables},
        )


def _drop_created(conn: Connection, before: _SchemaObjects) -> None:
    """Drop what appeared since `before` (a failed step's work), so the step can run again."""
    quote = conn.dialect.identifier_preparer.quote
    try:
        conn.rollback()
        now = _SchemaObjects.read(conn)
        lost = sorted(before.columns.keys() - now.columns.keys())
        for table in before.columns.keys() & now.columns.keys():
            lost += [f"{table}.{column}" for column in before.columns[table] - now.columns[table]]
        if lost:
            # A rename shows as one gone and one new: what the step created may hold the only
            # copy of that data, so nothing is dropped.
            log.warning(
                "the failed migration step also dropped or renamed %s, so nothing it created is "
                "dropped; restore the database from a backup, or finish the step by hand",
                ", ".join(lost),
            )
            return
        statements = [f"DROP VIEW {quote(view)}" for view in now.views - before.views]
        statements += [
            f"DROP TABLE {quote(table)}" for table in now.columns.keys() - before.columns.keys()
        ]
        for table in now.columns.keys() & before.columns.keys():
            statements += [
                f"DROP INDEX {quote(index)} ON {quote(table)}"
                for index in now.indexes[table] - before.indexes[table]
            ]
            statements += [
                f"ALTER TABLE {quote(table)} DROP COLUMN {quote(column)}"
                for column in now.columns[table] - before.columns[table]
            ]
        conn.execute(text("SET SESSION foreign_key_checks = 0"))
        for statement in statements:
            conn.execute(text(statement))
        conn.execute(text("SET SESSION foreign_key_checks = 1"))
        conn.commit()
    except SQLAlchemyError as exc:  # the database went away: the step's error says more
        log.warning("could not drop what the failed migration step created: %s", first_line(exc))


def is_known_revision(revision: str) -> bool:
    """True when `revision` is one of this exporter's migrations."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError as AlembicCommandError

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
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
        command.check(alembic_config(conn))


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
