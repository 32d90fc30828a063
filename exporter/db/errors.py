"""Database errors as one line that names the problem and the fix; write rights, found unwritten.

A run that hits a database error reports what it is: out of space, a lost connection, a right
the database user lacks ("the database user cannot write table sync_runs: permission denied"),
or a statement the database refused, never one dressed as another (a missing right used to read
"lost the database connection"). `write_problem` lets `exporter check` find missing rights
without writing anything.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Executable,
    Table,
    delete,
    false,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, OperationalError

from exporter.config.urls import without_secrets
from exporter.errors import (
    DatabasePermissionError,
    DatabaseUnavailableError,
    StoreError,
    first_line,
)


def store_error(exc: BaseException, engine: Engine | None = None) -> StoreError:
    """The one-line error for a database error that ended what was being done.

    Out of space and a lost connection are DatabaseUnavailableError; a missing privilege (a
    read-only role, a read-only SQLite file) is DatabasePermissionError; anything else (a
    statement the database refused) a plain StoreError. All exit 5.
    """
    orig = getattr(exc, "orig", None) or exc
    reason = _reason(orig, engine)
    sqlite = getattr(orig, "sqlite_errorcode", None) is not None
    sqlite_full = getattr(orig, "sqlite_errorcode", None) == 13  # SQLITE_FULL
    pg_full = getattr(orig, "sqlstate", None) in ("53100", "53400")  # disk_full, quota
    mysql_full = bool(getattr(orig, "args", None)) and orig.args[0] in (1021, 1114)
    if sqlite_full or pg_full or mysql_full:
        return DatabaseUnavailableError(
            f"the database ran out of space ({reason}); the transaction in progress was rolled "
            "back, nothing is half-written: free disk space (or raise the database's size limit) "
            "and run again"
        )
    denied = permission_problem(exc, engine)
    if denied is not None:
        return DatabasePermissionError(denied)
    if not sqlite and _connection_lost(exc):
        return DatabaseUnavailableError(
            f"lost the database connection ({reason}); the transaction in progress was rolled "
            "back, nothing is half-written: check the database server and run again"
        )
    return StoreError(
        f"a database statement failed ({reason}); the transaction in progress was rolled back, "
        "nothing is half-written: fix what it names and run again"
    )


# MySQL/MariaDB server errors that end a session (server shutdown, connection killed); client
# errors (2000 and up: gone away, lost connection, ...) all mean the connection is gone.
_MYSQL_SESSION_ENDED = frozenset({1053, 1927, 4031})


def _connection_lost(exc: BaseException) -> bool:
    if getattr(exc, "connection_invalidated", False):
        return True
    orig = getattr(exc, "orig", None)
    if not isinstance(exc, OperationalError) or orig is None:
        return False
    if hasattr(orig, "sqlstate"):  # psycopg: no SQLSTATE means the client lost the server
        state = orig.sqlstate
        return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")
    args: tuple[Any, ...] = getattr(orig, "args", ())
    code = args[0] if args and isinstance(args[0], int) else None
    return code is None or code >= 2000 or code in _MYSQL_SESSION_ENDED


def _reason(orig: BaseException, engine: Engine | None) -> str:
    # A driver may quote the URL or a DSN it was given: the message must not carry its secrets.
    reason = first_line(orig)
    return reason if engine is None else without_secrets(reason, engine.url)


_PG_DENIED = re.compile(r'permission denied for (\w+) "?([^\s"]+)"?')
_MYSQL_DENIED = re.compile(r"(\w+) command denied to user .* for table (\S+)")
_VERBS = {"SELECT": "read", "INSERT": "write", "UPDATE": "write", "DELETE": "write"}
_GRANT = (
    "grant the exporter's database user SELECT, INSERT, UPDATE and DELETE on its tables (on "
    "PostgreSQL also USAGE on their sequences), or use a user that has them"
)
_UPGRADE_AS_OWNER = "run `exporter db upgrade` as a database user that may create and alter tables"


def permission_problem(exc: BaseException, engine: Engine | None) -> str | None:
    """What the database user may not do, as one line with the fix; None if `exc` is not that."""
    orig = getattr(exc, "orig", None) or exc
    reason = _reason(orig, engine)
    statement = (getattr(exc, "statement", None) or "").lstrip()
    first = statement.split(None, 1)[0].upper() if statement else ""
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        if code & 0xFF != 8:  # SQLITE_READONLY and its extended codes
            return None
        path = engine.url.database if engine is not None else None
        return (
            f"the SQLite database{f' {path}' if path else ''} is read-only for this user "
            f"({reason}): give the exporter's user write access to the file and its folder "
            "(SQLite writes -wal and -shm files beside it)"
        )
    args: tuple[Any, ...] = getattr(orig, "args", ())
    if getattr(orig, "sqlstate", None) == "42501":  # PostgreSQL insufficient_privilege
        found = _PG_DENIED.search(reason)
        kind, name = (found[1], found[2]) if found else ("table", "?")
        kind = "table" if kind in ("relation", "view") else kind
        verb = _VERBS.get("INSERT" if first == "COPY" else first, "change")
    elif args and args[0] == 1142:  # MySQL/MariaDB: "<COMMAND> command denied ... for table `t`"
        found = _MYSQL_DENIED.search(str(args[1]) if len(args) > 1 else reason)
        kind = "table"
        name = found[2].split(".")[-1].strip("`'\"") if found else "?"
        verb = _VERBS.get(found[1].upper() if found else first, "change")
    elif args and args[0] in (1044, 1227, 1290):  # database access, a privilege, read-only server
        return f"the database user may not do this ({reason}): {_GRANT}"
    else:
        return None
    if kind == "schema":
        what = f"create tables in schema {name}" if first == "CREATE" else f"use schema {name}"
    elif kind == "sequence":
        what = f"use sequence {name}"
    else:
        what = f"{verb} {kind} {name}"
    fix = _GRANT if verb in ("read", "write") or kind == "sequence" else _UPGRADE_AS_OWNER
    return f"the database user cannot {what}: permission denied; {fix}"


def write_problem(conn: Connection, needs: Mapping[Table, Collection[str]]) -> str | None:
    """Why the database user could not write `needs` (table -> INSERT/UPDATE/DELETE), or None.

    Nothing is written: PostgreSQL is asked for the privileges (it skips the privilege check of
    a statement it can prove touches no row); MariaDB/MySQL and SQLite run statements that touch
    no row, in a transaction that is rolled back (SQLite refuses them on a read-only file).
    """
    if conn.dialect.name == "postgresql":
        return _pg_write_problem(conn, needs)
    transaction = conn.begin()
    try:
        for table, privileges in needs.items():
            for statement in _touching_nothing(table, privileges):
                conn.execute(statement)
    except DBAPIError as exc:
        return permission_problem(exc, conn.engine) or str(store_error(exc, conn.engine))
    finally:
        transaction.rollback()
    return None


def _touching_nothing(table: Table, privileges: Collection[str]) -> Iterator[Executable]:
    """Statements that need `privileges` on `table` but touch no row."""
    column = next(iter(table.primary_key.columns))
    if "INSERT" in privileges:
        # Every column: MariaDB checks that NOT NULL columns get a value even for no rows.
        columns = list(table.columns)
        yield insert(table).from_select([c.name for c in columns], select(*columns).where(false()))
    if "UPDATE" in privileges:
        yield update(table).where(false()).values({column.name: column})
    if "DELETE" in privileges:
        yield delete(table).where(false())


def _pg_write_problem(conn: Connection, needs: Mapping[Table, Collection[str]]) -> str | None:
    for table, privileges in needs.items():
        for privilege in privileges:
            allowed = conn.execute(
                text("SELECT has_table_privilege(:table, :privilege)"),
                {"table": table.name, "privilege": privilege},
            ).scalar()
            if not allowed:
                verb = _VERBS[privilege]
                return (
                    f"the database user cannot {verb} table {table.name}: permission denied; "
                    f"{_GRANT}"
                )
        for column in table.columns:
            if column.autoincrement is not True or "INSERT" not in privileges:
                continue
            allowed = conn.execute(
                text("SELECT has_sequence_privilege(pg_get_serial_sequence(:t, :c), 'USAGE')"),
                {"t": table.name, "c": column.name},
            ).scalar()
            if not allowed:
                return (
                    f"the database user cannot use the sequence of {table.name}.{column.name}: "
                    f"permission denied; {_GRANT}"
                )
    return None
