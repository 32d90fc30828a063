"""Alembic environment: runs on the connection the exporter hands over, or on `sqlalchemy.url`."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import engine_from_config, pool

from exporter.schema import OPEN_VERSION_INDEXES, metadata

# No logging.config.fileConfig() here: it would disable the application's loggers (alembic#714).
config = context.config
_OPEN_VERSION_NAMES = {index.name for index in OPEN_VERSION_INDEXES}


def _include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    # Partial unique indexes exist only where the database supports them (not MariaDB/MySQL).
    if type_ == "index" and name in _OPEN_VERSION_NAMES:
        return context.get_bind().dialect.name in ("postgresql", "sqlite")
    return True


def _run(connection: Any) -> None:
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
