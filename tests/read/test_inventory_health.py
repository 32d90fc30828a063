"""Lock health readings and retention, against a history made by real syncs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from support.bi_views import _typed_view
from support.helpers import make_settings
from support.history import count_rows

from exporter.db.schema import (
    bound_lock_versions,
    bound_locks,
    lock_health_readings,
    sync_run_owners,
    sync_runs,
)
from exporter.db.types import UTCDateTime
from exporter.sandbox.server import Fault, Sandbox
from exporter.service import job

# -- lock health and retention (item 6) -----------------------------------------------------------


def _served_readings(engine: Engine) -> dict[tuple[str, str, datetime], dict[str, Any]]:
    """The readings in the payloads as received (bound_locks.raw), by (lock, type, timestamp)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(bound_locks.c.id, bound_locks.c.raw).where(bound_locks.c.removed_at.is_(None))
        ).all()
    served = {}
    for lock_id, raw in rows:
        for reading in json.loads(raw)["healthStatuses"] or ():
            at = datetime.fromisoformat(reading["timestamp"].replace("Z", "+00:00"))
            served[(lock_id, reading["type"], at)] = reading
    return served


def _stored_readings(engine: Engine) -> dict[tuple[str, str, datetime], dict[str, Any]]:
    with engine.connect() as conn:
        return {
            (r["bound_lock_id"], r["type"], r["reading_at"]): dict(r)
            for r in conn.execute(select(lock_health_readings)).mappings()
        }


def test_health_readings_are_stored_once_and_never_as_versions(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=27, owners=3, locks_per_owner=5) as fake:
        settings = make_settings(fake, db_url, tmp_path, expand_health=True)
        first = job.run_once(settings)
        served = _served_readings(engine)
        stored = _stored_readings(engine)
        assert served and set(stored) == set(served)
        for key, reading in served.items():
            row = stored[key]
            assert (row["value"], row["value_status"], row["api_reading_id"]) == (
                reading["value"],
                reading["valueStatus"],
                reading["id"],
            )
            assert row["run_id"] == first.run_id and row["physical_lock_id"]
            if reading["type"] == "BatteryVoltage":
                assert row["value_number"] == pytest.approx(float(reading["value"]))
            if reading["type"] == "BatteryWarningLevel":
                assert row["value_number"] is None
        versions = count_rows(engine, bound_lock_versions)

        again = job.run_once(settings)
        assert again.counts.unchanged == 15 and _stored_readings(engine) == stored

        (change,) = fake.advance(1)
        assert change.kind == "health"  # seed 27's first change
        third = job.run_once(settings)

        assert count_rows(engine, bound_lock_versions) == versions  # never a lock version
        assert third.counts.updated == 0 and third.counts.unchanged == 15
        now_stored = _stored_readings(engine)
        new = {k: v for k, v in now_stored.items() if k not in stored}
        assert new and {k[0] for k in new} == {change.lock_id}
        assert {v["run_id"] for v in new.values()} == {third.run_id}
        assert set(now_stored) == set(stored) | set(_served_readings(engine))

    query = _typed_view(
        "current_lock_health",
        reading_at=UTCDateTime(),
        seen_at=UTCDateTime(),
        value_number=lock_health_readings.c.value_number.type,
    )
    with engine.connect() as conn:
        latest = {(r["bound_lock_id"], r["type"]): r for r in conn.execute(query).mappings()}
    expected: dict[tuple[str, str], datetime] = {}
    for lock_id, kind, at in now_stored:
        expected[(lock_id, kind)] = max(at, expected.get((lock_id, kind), at))
    assert {k: v["reading_at"] for k, v in latest.items()} == expected


def test_a_health_value_longer_than_its_column_is_dropped_never_cut(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # Readings are hints: a field longer than its column loses that field, the reading stays.
    owner = sandbox.owners_payload()[0]["id"]
    elements = sandbox.locks_payload(owner)
    lock = elements[0]["id"]
    reading = {
        "id": "r" * 65,
        "physicalLockId": "AAChsgq2",
        "timestamp": "2030-01-01T00:00:00Z",
        "type": "Temperature",
        "value": "7" * 300,
        "valueStatus": "S" * 33,
    }
    elements[0]["healthStatuses"] = [reading]
    sandbox.add_fault(Fault("locks", kind="body", body=json.dumps(elements), owner_id=owner))

    result = job.run_once(make_settings(sandbox, db_url, tmp_path, expand_health=True))

    assert result.status == "succeeded" and result.counts.skipped == 0
    [row] = [r for r in _stored_readings(engine).values() if r["bound_lock_id"] == lock]
    assert (row["type"], row["physical_lock_id"]) == ("Temperature", "AAChsgq2")
    assert (row["value"], row["value_status"], row["api_reading_id"]) == (None, None, None)
    assert row["value_number"] == pytest.approx(float("7" * 300))


def test_without_expand_health_nothing_is_asked_or_stored(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    job.run_once(make_settings(sandbox, db_url, tmp_path))
    assert count_rows(engine, lock_health_readings) == 0
    with engine.connect() as conn:
        raws = conn.execute(select(bound_locks.c.raw)).scalars().all()
    assert all(json.loads(raw)["healthStatuses"] is None for raw in raws)


def test_retention_keeps_history_the_latest_run_and_the_latest_readings(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    start = datetime(2031, 5, 1, tzinfo=UTC)
    with Sandbox(seed=27, owners=3, locks_per_owner=5) as fake:
        settings = make_settings(fake, db_url, tmp_path, expand_health=True)
        first = job.run_once(settings, now=lambda: start)
        idle = job.run_once(settings, now=lambda: start + timedelta(hours=1))
        fake.advance(1)  # new health readings for one lock
        health_only = job.run_once(settings, now=lambda: start + timedelta(hours=2))
        readings = _stored_readings(engine)
        versions = count_rows(engine, bound_lock_versions)

        keep = settings.model_copy(
            update={
                "sync": settings.sync.model_copy(
                    update={"run_retention": "1d", "health_retention": "1d"}
                )
            }
        )
        last = job.run_once(keep, now=lambda: start + timedelta(days=3))

    assert count_rows(engine, bound_lock_versions) == versions
    with engine.connect() as conn:
        runs = set(conn.execute(select(sync_runs.c.id)).scalars())
        outcomes = set(conn.execute(select(sync_run_owners.c.run_id)).scalars())
    # Every reading (taken in 2025) is older than a day: only the latest per lock and type stay.
    latest: dict[tuple[str, str], datetime] = {}
    for lock_id, kind, at in readings:
        latest[(lock_id, kind)] = max(at, latest.get((lock_id, kind), at))
    kept = {(k[0], k[1], at) for k, at in latest.items()}
    assert set(_stored_readings(engine)) == kept
    assert len(readings) > len(latest)
    # The idle run is referenced by nothing; the first wrote versions; the third stays while a
    # reading it stored does.
    read_by = {readings[key]["run_id"] for key in kept}
    assert runs == {first.run_id, last.run_id} | (read_by & {health_only.run_id})
    assert idle.run_id not in runs
    assert outcomes == {last.run_id}
