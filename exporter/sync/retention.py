"""Retention: forget old lock health readings, log entries and run records, never history.

`[sync] health_retention` drops readings taken longer ago than that, but keeps the latest reading
of each lock and type however old (so "battery now" always has an answer). `[sync] run_retention`
drops the per-owner rows of older runs and the `sync_runs` rows no version, reading, log entry,
watermark or held-back removal refers to (runs that changed nothing: most of them); the latest run
is always kept.
`[sync] log_retention` drops log entries that happened (lockTimestamp) longer ago than that
(see exporter.sync.log_entries). Version rows are the history and are never pruned.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, Connection, Engine, delete, func, select

from exporter.db.engine import connect
from exporter.db.inlists import chunks
from exporter.db.schema import (
    lock_health_readings,
    metadata,
    sync_run_owners,
    sync_runs,
)
from exporter.kinds import RunStatus
from exporter.sync import log_entries


@dataclass(frozen=True)
class Pruned:
    """What one prune removed."""

    readings: int = 0
    runs: int = 0
    run_owners: int = 0
    log_entries: int = 0


def prune(
    engine: Engine,
    *,
    now: datetime,
    health_max_age: float | None = None,
    run_max_age: float | None = None,
    log_max_age: float | None = None,
) -> Pruned:
    """Delete what is older than the given ages (seconds; None keeps everything), in one go."""
    with connect(engine) as conn, conn.begin():
        readings = entries = 0
        if health_max_age is not None:
            readings = _prune_readings(conn, now - timedelta(seconds=health_max_age))
        if log_max_age is not None:
            entries = log_entries.prune(conn, now - timedelta(seconds=log_max_age))
        runs = run_owners = 0
        if run_max_age is not None:
            runs, run_owners = _prune_runs(conn, now - timedelta(seconds=run_max_age))
    return Pruned(readings, runs, run_owners, entries)


def _prune_readings(conn: Connection, cutoff: datetime) -> int:
    table = lock_health_readings
    old = conn.execute(
        select(table.c.reading_id, table.c.bound_lock_id, table.c.type, table.c.reading_at)
        .where(table.c.reading_at < cutoff)
        .order_by(table.c.bound_lock_id, table.c.type, table.c.reading_at)
    ).all()
    newest_old: dict[tuple[str, str], int] = {}
    for reading_id, lock_id, kind, _ in old:
        newest_old[(lock_id, kind)] = reading_id  # rows are in time order: the last one wins
    lock_ids = sorted({lock_id for lock_id, _ in newest_old})
    fresh: set[tuple[str, str]] = set()
    for chunk in chunks(lock_ids):
        fresh.update(
            (lock_id, kind)
            for lock_id, kind in conn.execute(
                select(table.c.bound_lock_id, table.c.type)
                .where(table.c.bound_lock_id.in_(chunk))
                .where(table.c.reading_at >= cutoff)
                .distinct()
            )
        )
    # An old reading goes unless it is the latest of its lock and type.
    doomed = [
        reading_id
        for reading_id, lock_id, kind, _ in old
        if newest_old[(lock_id, kind)] != reading_id or (lock_id, kind) in fresh
    ]
    for chunk in chunks(doomed):
        conn.execute(delete(table).where(table.c.reading_id.in_(chunk)))
    return len(doomed)


def _run_referrers() -> list[Column[Any]]:
    """Every column that names a run (the run that wrote a version, a reading, ...; the run that
    first held back a removal, `guard_holds.since_run_id`), except the per-owner run rows', which
    are pruned with their run."""
    return [
        fk.parent
        for table in metadata.sorted_tables
        if table is not sync_run_owners
        for fk in table.foreign_keys
        if fk.column.table is sync_runs
    ]


def _prune_runs(conn: Connection, cutoff: datetime) -> tuple[int, int]:
    latest = conn.execute(select(func.max(sync_runs.c.id))).scalar()
    old = list(
        conn.execute(
            select(sync_runs.c.id)
            .where(sync_runs.c.started_at < cutoff)
            .where(sync_runs.c.status != RunStatus.RUNNING)
            .where(sync_runs.c.id != latest)
        ).scalars()
    )
    run_owners = runs = 0
    for chunk in chunks(old):
        run_owners += conn.execute(
            delete(sync_run_owners).where(sync_run_owners.c.run_id.in_(chunk))
        ).rowcount
        referenced: set[int] = set()
        for column in _run_referrers():
            referenced.update(
                conn.execute(select(column).where(column.in_(chunk)).distinct()).scalars()
            )
        unused = [run_id for run_id in chunk if run_id not in referenced]
        if unused:
            runs += conn.execute(delete(sync_runs).where(sync_runs.c.id.in_(unused))).rowcount
    return runs, run_owners
