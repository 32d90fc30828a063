"""A failed migration step can be run again once its cause is fixed, on every database."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import inspect, text

from exporter.db import migrate
from exporter.db.engine import make_engine
from exporter.errors import SchemaVersionError


def test_a_step_that_failed_halfway_runs_again_once_the_cause_is_fixed(empty_db_url: str) -> None:
    # 0006 creates six tables. A table by that name made by hand (the cause) stops it at its
    # fifth: on MariaDB (DDL commits at once) and on SQLite (Python's sqlite3 opens no
    # transaction before DDL) the four before it were committed, and every later attempt (on
    # SQLite: every run-once) failed on them ("Table 'bound_cards' already exists").
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as conn:
            command.upgrade(migrate.alembic_config(conn), "0005")
            conn.commit()
            before = set(inspect(conn).get_table_names()) | set(inspect(conn).get_view_names())
            conn.execute(text("CREATE TABLE contact_versions (x INT)"))
            conn.commit()
        with pytest.raises(SchemaVersionError, match=r"contact_versions.? already exists"):
            migrate.upgrade(engine)
        assert migrate.current_revision(engine) == "0005"
        with engine.connect() as conn:
            left = set(inspect(conn).get_table_names()) | set(inspect(conn).get_view_names())
            assert left == before | {"contact_versions"}  # 0006's tables were dropped again
            conn.execute(text("DROP TABLE contact_versions"))  # the cause, fixed
            conn.commit()
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        migrate.check_models(engine)
    finally:
        engine.dispose()
