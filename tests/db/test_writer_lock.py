"""The writer lock's own connection: held for the run, closed whatever ends the attempt."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from exporter.db import writer_lock
from exporter.db.writer_lock import WriterLock

SERVERS = pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)


@SERVERS
def test_an_interrupted_wait_for_the_lock_closes_its_connection(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(_seconds: float) -> None:
        raise KeyboardInterrupt

    with WriterLock(engine):
        waiting = WriterLock(engine, timeout=30)
        monkeypatch.setattr(writer_lock.time, "sleep", interrupt)  # PostgreSQL polls
        if engine.dialect.name != "postgresql":  # GET_LOCK waits on the server
            monkeypatch.setattr(WriterLock, "_mysql_acquire", lambda _self, _t: interrupt(_t))
        before = engine.pool.checkedout()
        with pytest.raises(KeyboardInterrupt):
            waiting.acquire()

        assert engine.pool.checkedout() == before  # only the holder's connection is out
