"""A run's `sync_runs` row: opened, its end, the end when the database was away, abandoned runs.

A run records its own end: time, status, reason and counts. If the database is away just then,
the write is retried on a new connection a few times; if it stays away, this process keeps the
end and its next run on the same database writes it (under the writer lock, before anything
else), with the time the run really ended.

A run still `running` when another run holds the writer lock was abandoned: its process was
killed, or lost the database and could not record its end (the database alone cannot tell the two
apart, and the process may even be alive). It is marked failed with `ABANDONED`, without an end
time (unknown; the time it was found would make up a duration), and with the counts its owners
committed in `sync_run_owners`, which are exactly what it wrote.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from exporter.db.engine import connect
from exporter.db.schema import CHANGE_COUNTS, sync_run_owners, sync_runs
from exporter.errors import ClientMismatchError, StoreError, first_line
from exporter.kinds import RunStatus
from exporter.results import RunResult

log = logging.getLogger(__name__)

ABANDONED = "abandoned: no end was recorded (its process was killed, or lost the database)"
# Seconds to wait before each retry of recording a run's end (each on a new connection).
RETRY_WAITS = (0.0, 1.0, 3.0)

# Ends this process could not write, by database URL and run id (with the run's started_at).
_unrecorded: dict[str, dict[int, dict[str, Any]]] = {}
_unrecorded_lock = threading.Lock()


def _database(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def filled_by(conn: Connection) -> str | None:
    """The OAuth client id of the last run that wrote to this database, if any."""
    value = conn.execute(
        select(sync_runs.c.client_id)
        .where(sync_runs.c.status.in_((RunStatus.SUCCEEDED, RunStatus.PARTIAL)))
        .where(sync_runs.c.client_id.is_not(None))
        .order_by(sync_runs.c.id.desc())
        .limit(1)
    ).scalar()
    return None if value is None else str(value)


def check_client(conn: Connection, client_id: str, *, allow_change: bool) -> None:
    """Raise ClientMismatchError if another OAuth client filled this database (unless allowed)."""
    previous = filled_by(conn)
    if previous is not None and previous != client_id and not allow_change:
        raise ClientMismatchError(
            f"this database was filled by OAuth client {previous!r}, but the configuration "
            f"uses {client_id!r}; two clients would remove each other's owners. Use a "
            "separate database, or pass --allow-client-change ([sync] "
            "allow_client_id_change = true) if the client was replaced on purpose"
        )


def open_run(conn: Connection, *, started_at: datetime, trigger: str, client_id: str) -> int:
    """Insert a `running` run's row; return its id."""
    return conn.execute(  # type: ignore[no-any-return]
        insert(sync_runs).values(
            started_at=started_at,
            status=RunStatus.RUNNING,
            trigger=trigger,
            client_id=client_id,
        )
    ).inserted_primary_key[0]  # type: ignore[index]


def end_values(result: RunResult) -> dict[str, Any]:
    """The `sync_runs` values of a finished run: status, end, counts and reason."""
    counts = result.counts.as_dict()  # created, updated, ...: named as the columns
    return {
        "status": result.status,
        "finished_at": result.finished_at,
        "owners_seen": result.owners_seen,
        "locks_seen": result.locks_seen,
        "api_requests": result.api_requests,
        "error": result.error,
        **counts,
    }


def record_end(
    engine: Engine,
    run_id: int,
    started_at: datetime,
    end: Mapping[str, Any],
    *,
    wait: Callable[[float], object],
) -> bool:
    """Write a run's end (`sync_runs` values); keep it for this process's next run if the
    database stays away through the retries. True if it was written."""
    problem: BaseException | None = None
    for delay in (None, *RETRY_WAITS):
        if delay is not None:
            wait(delay)
        try:
            with connect(engine) as conn, conn.begin():
                _write_end(conn, run_id, started_at, end)
            return True
        except (StoreError, SQLAlchemyError) as exc:
            problem = exc
    with _unrecorded_lock:
        _unrecorded.setdefault(_database(engine), {})[run_id] = {"started_at": started_at, **end}
    reason = first_line(problem) if problem else "?"
    log.warning(
        "could not record the end of run %s (%s): this process records it at its next run once "
        "the database is back",
        run_id,
        reason,
    )
    return False


def unrecorded(engine: Engine) -> dict[int, dict[str, Any]]:
    """The ends of this process's runs on `engine`'s database that are still to be written."""
    with _unrecorded_lock:
        return dict(_unrecorded.get(_database(engine), {}))


def write_unrecorded(conn: Connection, ends: Mapping[int, Mapping[str, Any]]) -> None:
    """Write ends kept by `record_end` (in the caller's transaction, under the writer lock)."""
    for run_id, values in sorted(ends.items()):
        end = dict(values)
        if _write_end(conn, run_id, end.pop("started_at"), end):
            log.info(
                "recorded the end of run %s (%s at %s), which the database was not there to take "
                "when the run ended",
                run_id,
                end["status"],
                end["finished_at"].isoformat(timespec="seconds"),
            )


def forget(engine: Engine, run_ids: Mapping[int, object]) -> None:
    """Drop kept ends once they are written (or found closed by another run)."""
    with _unrecorded_lock:
        kept = _unrecorded.get(_database(engine), {})
        for run_id in run_ids:
            kept.pop(run_id, None)


def _write_end(conn: Connection, run_id: int, started_at: datetime, end: Mapping[str, Any]) -> bool:
    # started_at makes sure it is the same run (ids restart in a recreated database); an end
    # that is already recorded is kept, but an abandoned mark (no end time) gives way to it.
    written = conn.execute(
        update(sync_runs)
        .where(sync_runs.c.id == run_id)
        .where(sync_runs.c.started_at == started_at)
        .where(sync_runs.c.finished_at.is_(None))
        .values(**end)
    ).rowcount
    return bool(written)


def mark_abandoned(conn: Connection) -> None:
    """Mark runs left `running` as failed/abandoned (the caller holds the writer lock)."""
    runs = list(
        conn.execute(
            select(sync_runs.c.id)
            .where(sync_runs.c.status == RunStatus.RUNNING)
            .order_by(sync_runs.c.id)
        ).scalars()
    )
    if not runs:
        return
    owners = sync_run_owners
    committed = {
        name: select(func.coalesce(func.sum(owners.c[name]), 0))
        .where(owners.c.run_id == sync_runs.c.id)
        .scalar_subquery()
        for name in ("locks_seen", *CHANGE_COUNTS)
    }
    conn.execute(
        update(sync_runs)
        .where(sync_runs.c.id.in_(runs))
        .values(status=RunStatus.FAILED, error=ABANDONED, finished_at=None, **committed)
    )
    log.warning(
        "run(s) %s had no recorded end (the process was killed, or lost the database before it "
        "could record it): marked failed, with the counts of the owners they committed",
        ", ".join(map(str, runs)),
    )
