"""Secondary indexes of the lock tables, built once after a first load instead of row by row.

A first load into empty tables inserts every lock and its first version. The indexes keyed on
random lock ids (and the versions' time index) would each be updated row by row at random places,
which costs more than the rows themselves; built once over the loaded rows they cost a fraction.
So a first load drops them while the tables are empty (`drop_for_first_load`) and builds them
again when its writes are done (`restore`). A run that dies in between leaves them missing: every
run restores missing ones before it writes anything, so the next run builds them.

Kept while loading: the primary keys, the owner index of `bound_locks` (the load copies each
owner's new rows into versions through it), the versions' `run_id` index (MariaDB/MySQL refuse
to drop the index of a foreign key; it grows in order anyway) and, on MariaDB/MySQL, the unique
index on `bound_locks.id` (there the primary key is (owner, id): this index is what keeps a lock
id unique, so it is never missing, not even while a first load runs).

On PostgreSQL the foreign key of `bound_lock_versions.run_id` goes the same way: PostgreSQL checks
it with a trigger call per inserted row, about half the server time of the load's `created`
versions (60 owners x 777 locks: 7.5-10.7 against 16.9-21.6 ms an owner). Added again after the
load, it checks every row in one query. Only the run's own `sync_runs` row, written before the
load, is referred to meanwhile.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, Engine, ForeignKeyConstraint, Index, bindparam, select, text
from sqlalchemy.schema import AddConstraint, DropConstraint

from exporter.db.engine import backend, connect
from exporter.db.schema import (
    MYSQL_LOCK_ID_INDEX,
    OPEN_VERSION_INDEXES,
    bound_lock_versions,
    bound_locks,
)

log = logging.getLogger(__name__)

_TABLES = (bound_locks, bound_lock_versions)
_KEPT_COLUMNS = {("owner_account_id", "removed_at"), ("run_id",)}
# Partial unique indexes exist only where the database has them (see schema.OPEN_VERSION_INDEXES).
_PARTIAL = frozenset({"postgresql", "sqlite"})


def deferred(dialect_name: str) -> list[Index]:
    """The indexes a first load builds after its writes, on this kind of database."""
    chosen = []
    for table in _TABLES:
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            if index is MYSQL_LOCK_ID_INDEX:
                continue
            if index in OPEN_VERSION_INDEXES:
                if dialect_name not in _PARTIAL:
                    continue
            elif tuple(column.name for column in index.columns) in _KEPT_COLUMNS:
                continue
            chosen.append(index)
    return chosen


def deferred_keys(dialect_name: str) -> list[ForeignKeyConstraint]:
    """The foreign keys a first load adds after its writes (PostgreSQL only: MariaDB/MySQL and
    SQLite take them as before)."""
    if dialect_name != "postgresql":
        return []
    return [
        key
        for key in bound_lock_versions.foreign_key_constraints
        if list(key.column_keys) == ["run_id"]
    ]


# The index names of the two tables from the catalog. Not SQLAlchemy's inspector: on PostgreSQL
# its reflection caches keep every disposed engine's dialect alive (`serve` builds one per run).
_CATALOG = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name IN :tables",
    "postgresql": (
        "SELECT indexname FROM pg_indexes "
        "WHERE schemaname = current_schema() AND tablename IN :tables"
    ),
    "mysql": (
        "SELECT DISTINCT index_name FROM information_schema.statistics "
        "WHERE table_schema = DATABASE() AND table_name IN :tables"
    ),
}


_KEYS_CATALOG = (
    "SELECT c.conname FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
    "JOIN pg_namespace n ON n.oid = t.relnamespace "
    "WHERE c.contype = 'f' AND n.nspname = current_schema() AND t.relname IN :tables"
)


def _present(conn: Connection) -> set[str]:
    """The names of the two tables' indexes and (PostgreSQL) foreign keys."""
    name = backend(conn.engine)
    tables = {"tables": [t.name for t in _TABLES]}
    query = text(_CATALOG[name]).bindparams(bindparam("tables", expanding=True))
    present = set(conn.execute(query, tables).scalars())
    if deferred_keys(name):
        keys = text(_KEYS_CATALOG).bindparams(bindparam("tables", expanding=True))
        present |= set(conn.execute(keys, tables).scalars())
    return present


def _key_name(conn: Connection, key: ForeignKeyConstraint) -> str:
    """The key's name as its DDL spells it (the metadata's naming convention)."""
    return str(conn.dialect.identifier_preparer.format_constraint(key))


def drop_for_first_load(engine: Engine) -> bool:
    """Drop the deferred indexes if both lock tables are empty; True if they were.

    Its own transaction (MariaDB/MySQL commit around every DDL statement anyway); the caller
    holds the writer lock, so nothing fills the tables meanwhile.
    """
    with connect(engine) as conn, conn.begin():
        for table in _TABLES:
            if conn.execute(select(table.c.id).limit(1)).first() is not None:
                return False
        present = _present(conn)
        for index in deferred(backend(engine)):
            if index.name in present:
                index.drop(conn)
        for key in deferred_keys(backend(engine)):
            if _key_name(conn, key) in present:
                conn.execute(DropConstraint(key))
    log.info("first load into empty tables: their secondary indexes are built after it")
    return True


def restore(engine: Engine) -> list[str]:
    """Create every deferred index and foreign key that is missing (after a first load, or one
    that died); return their names."""
    with connect(engine) as conn, conn.begin():
        present = _present(conn)
        missing = [i for i in deferred(backend(engine)) if i.name not in present]
        for index in missing:
            index.create(conn)
        names = [str(index.name) for index in missing]
        for key in deferred_keys(backend(engine)):
            if (name := _key_name(conn, key)) not in present:
                conn.execute(AddConstraint(key))
                names.append(name)
    return names
