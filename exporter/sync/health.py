"""Lock health readings (battery, temperature): stored once each, never as lock versions.

With `[tapkey] expand_health = true` the engine asks for `expand=healthStatuses` and hands every
owner's records to `store_readings` inside that owner's transaction. A reading is identified by
its lock, its type and its own timestamp: it is stored the first time it is seen and never again,
so an unchanged lock costs nothing and "how did the battery change" is a plain query over
`lock_health_readings`. Tapkey calls the readings hints (locks are offline-first).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from exporter.db.inlists import chunks
from exporter.db.schema import lock_health_readings
from exporter.tapkey.records import HealthReading, LockRecord

EXPAND = ("healthStatuses",)


def number(value: str | float | None) -> float | None:
    """A reading's value as a number when it is one ("2.95" -> 2.95, "Low" -> None)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        parsed = float(value)
    except ValueError:
        return None
    return parsed if math.isfinite(parsed) else None


def _rows(records: Iterable[LockRecord], seen_at: datetime, run_id: int) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str, datetime], dict[str, Any]] = {}
    for record in records:
        for reading in record.health or ():
            if not _keyed(reading):
                continue  # without a type and a timestamp a reading cannot be told apart
            assert reading.type is not None and reading.timestamp is not None
            key = (record.id, reading.type, reading.timestamp)
            rows.setdefault(
                key,
                {
                    "bound_lock_id": record.id,
                    "physical_lock_id": _fitting(reading.physical_lock_id, 255),
                    "type": reading.type,
                    "reading_at": reading.timestamp,
                    "value": _fitting(None if reading.value is None else str(reading.value), 255),
                    "value_number": number(reading.value),
                    "value_status": _fitting(reading.value_status, 32),
                    "api_reading_id": _fitting(reading.id, 64),
                    "seen_at": seen_at,
                    "run_id": run_id,
                },
            )
    return list(rows.values())


def _keyed(reading: HealthReading) -> bool:
    return bool(reading.type) and reading.timestamp is not None and len(reading.type or "") <= 64


def _fitting(text: str | None, size: int) -> str | None:
    # A value longer than its column is dropped, never cut: a cut value would be a wrong one.
    return text if text is None or len(text) <= size else None


def store_readings(
    conn: Connection, records: Sequence[LockRecord], *, seen_at: datetime, run_id: int
) -> int:
    """Insert the readings of `records` not stored yet; returns how many were new."""
    rows = _rows(records, seen_at, run_id)
    if not rows:
        return 0
    table = lock_health_readings
    new: list[dict[str, Any]] = []
    lock_ids = sorted({row["bound_lock_id"] for row in rows})
    for ids in chunks(lock_ids):
        chunk = set(ids)
        candidates = [row for row in rows if row["bound_lock_id"] in chunk]
        # Only readings at or after the oldest incoming one can collide: the rest need no load.
        oldest = min(row["reading_at"] for row in candidates)
        stored = {
            (lock_id, kind, at)
            for lock_id, kind, at in conn.execute(
                select(table.c.bound_lock_id, table.c.type, table.c.reading_at)
                .where(table.c.bound_lock_id.in_(chunk))
                .where(table.c.reading_at >= oldest)
            )
        }
        new.extend(
            row
            for row in candidates
            if (row["bound_lock_id"], row["type"], row["reading_at"]) not in stored
        )
    if new:
        conn.execute(insert(table), new)
    return len(new)
