"""A migration step that fails on MariaDB/MySQL (no transactional DDL) can be run again."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import inspect, text

from exporter.db import migrate
from exporter.db.engine import make_engine
from exporter.errors import SchemaVersionError


@pytest.mark.parametrize("empty_db_url", ["mariadb"], indirect=True)
def test_a_step_that_failed_halfway_runs_again_once_the_cause_is_fixed(empty_db_url: str) -> None:
    # 0006 creates six tables. A table by that name made by hand (the cause) stops it at its
    # fifth: the four before it were committed at once (MariaDB's DDL), and every later attempt
    # failed on them ("Table 'bound_cards' already exists") although the cause was gone.
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as conn:
            command.upgrade(migrate.alembic_config(conn), "0005")
            conn.commit()
            before = set(inspect(conn).get_table_names()) | set(inspect(conn).get_view_names())
            conn.execute(text("CREATE TABLE contact_versions (x INT)"))
        with pytest.raises(SchemaVersionError, match="'contact_versions' already exists"):
            migrate.upgrade(engine)
        assert migrate.current_revision(engine) == "0005"
        with engine.connect() as conn:
            left = set(inspect(conn).get_table_names()) | set(inspect(conn).get_view_names())
            assert left == before | {"contact_versions"}  # 0006's tables were dropped again
            conn.execute(text("DROP TABLE contact_versions"))  # the cause, fixed
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        migrate.check_models(engine)
    finally:
        engine.dispose()
