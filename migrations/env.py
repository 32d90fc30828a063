"""Alembic environment: runs on the connection the exporter hands over, or on `sqlalchemy.url`."""

from __future__ import annotations

import re
from typing import Any

from alembic import context
from sqlalchemy import engine_from_config, pool, text

from exporter.db.schema import MYSQL_LOCK_ID_INDEX, OPEN_VERSION_INDEXES, metadata

# No logging.config.fileConfig() here: it would disable the application's loggers (alembic#714).
config = context.config
# Indexes that exist on some databases only: their names and where.
_ONLY_ON = {index.name: ("postgresql", "sqlite") for index in OPEN_VERSION_INDEXES}
_ONLY_ON[MYSQL_LOCK_ID_INDEX.name] = ("mysql", "mariadb")


def _include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    # Partial unique indexes exist only where the database supports them (not MariaDB/MySQL);
    # bound_locks' unique index on id only where id is not its primary key (MariaDB/MySQL).
    if type_ in ("index", "unique_constraint") and name in _ONLY_ON:
        return context.get_bind().dialect.name in _ONLY_ON[name]
    return True


def _create_schema(connection: Any) -> None:
    """Create the PostgreSQL schema named by [database] schema_name if it does not exist yet.

    The engine puts it first on the search_path; while it is missing, current_schema() is NULL
    and nothing (not even alembic_version) could be created.
    """
    if connection.dialect.name != "postgresql":
        return
    if connection.execute(text("SELECT current_schema()")).scalar() is not None:
        return
    first = str(connection.execute(text("SHOW search_path")).scalar()).split(",")[0].strip()
    if re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]{0,62}|"[^"]{1,63}"', first):
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {first}"))


def _run(connection: Any) -> None:
    _create_schema(connection)
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        compare_type=True,
        include_object=_include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as conn:
        _run(conn)


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
