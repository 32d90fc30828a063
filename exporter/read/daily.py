"""Locks present at the end of each UTC day, per owner account and lock model.

The `daily_inventory` view says the same in SQL; this walks the version tables day by day in
Python, and the tests hold both to the same answers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Engine, func, select

from exporter.db.engine import connect
from exporter.db.schema import bound_lock_versions, sync_runs
from exporter.kinds import ChangeType
from exporter.read.inventory import owner_names

_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class DailyCount:
    """Locks present at the end of a UTC day for one owner account and lock model."""

    day: date
    owner_account_id: str
    owner_name: str | None
    lock_model_name: str | None
    locks: int


def daily_inventory(engine: Engine) -> list[DailyCount]:
    """What the `daily_inventory` view shows, computed by walking the versions day by day."""
    with connect(engine) as conn:
        first, last = conn.execute(
            select(func.min(sync_runs.c.started_at), func.max(sync_runs.c.started_at))
        ).one()
        names = owner_names(conn)
        versions = conn.execute(
            select(
                bound_lock_versions.c.owner_account_id,
                bound_lock_versions.c.lock_model_name,
                bound_lock_versions.c.valid_from,
                bound_lock_versions.c.valid_to,
            ).where(bound_lock_versions.c.change_type != ChangeType.REMOVED)
        ).all()
    if first is None:
        return []
    counts: dict[tuple[date, str, str | None], int] = defaultdict(int)
    for owner_id, model, valid_from, valid_to in versions:
        # Present at the day's last instant: valid_from <= end - 1us < valid_to.
        day = max(valid_from.date(), first.date())
        stop = last.date() if valid_to is None else min(last.date(), (valid_to - _TICK).date())
        while day <= stop:
            end = datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC) - _TICK
            if valid_from <= end and (valid_to is None or end < valid_to):
                counts[(day, owner_id, model)] += 1
            day += timedelta(days=1)
    return [
        DailyCount(day, owner_id, names.get(owner_id), model, n)
        for (day, owner_id, model), n in sorted(
            counts.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or "")
        )
    ]
