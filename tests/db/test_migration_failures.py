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


@pytest.mark.parametrize("empty_db_url", ["mariadb"], indirect=True)
def test_what_a_failed_mariadb_step_created_stays_when_it_also_renamed_a_table(
    empty_db_url: str,
) -> None:
    # A step that renamed a table before it failed shows the new name as created: dropping it
    # would drop the table's rows, their only copy.
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as conn:
            conn.execute(text("CREATE TABLE kept (x INT)"))
            conn.execute(text("INSERT INTO kept VALUES (1)"))
            conn.commit()
            before = migrate._SchemaObjects.read(conn)
            conn.execute(text("RENAME TABLE kept TO renamed"))
            conn.execute(text("CREATE TABLE fresh (y INT)"))

            migrate._drop_created(conn, before)

            assert {"renamed", "fresh"} <= set(inspect(conn).get_table_names())
            assert conn.execute(text("SELECT x FROM renamed")).scalar_one() == 1
    finally:
        engine.dispose()
