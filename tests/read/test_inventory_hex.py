"""The lock id hex of an inventory at an instant (`exporter locks --as-of`).

A version shows the hex bound_locks holds now only while its physical lock id is the lock's
current one (both NULL counts as the same). The hex is taken from the owner's current locks,
and looked up by id for a lock that has changed owner since; a version of a lock bound_locks
does not hold is not shown. Rows and column batches must agree, on every database.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from exporter.db.schema import bound_lock_versions, bound_locks, owner_accounts, sync_runs
from exporter.read import inventory as report
from exporter.read.asof import AsOf

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)
# lock id -> (owner then, physical lock id then, owner now, physical lock id now, hex now);
# a lock with no "now" has no bound_locks row.
LOCKS: dict[str, tuple[str, str | None, str | None, str | None, str | None]] = {
    "a": ("o-1", "P-a", "o-1", "P-a", "AA"),  # the same device: its hex
    "b": ("o-1", "P-b", "o-1", "P-b2", "BB"),  # another device now: none
    "c": ("o-1", None, "o-1", None, "CC"),  # no physical id then or now: the same
    "d": ("o-1", None, "o-1", "P-d", "DD"),  # none then, one now: not the same
    "e": ("o-1", "P-e", "o-2", "P-e", "EE"),  # moved to o-2 since, same device
    "f": ("o-1", "P-f", "o-2", "P-f2", "FF"),  # moved, another device
    "g": ("o-1", "P-g", None, None, None),  # not in bound_locks: not shown
    "h": ("o-2", "P-h", "o-2", "P-h", "HH"),
    "i": ("o-2", "P-i", "o-1", "P-i", None),  # moved to o-1, no hex
}


def _fill(engine: Engine) -> None:
    locks: list[dict[str, Any]] = []
    versions: list[dict[str, Any]] = []
    for lock_id, (owner, device, owner_now, device_now, hex_id) in LOCKS.items():
        then = dict(id=lock_id, title=lock_id, owner_account_id=owner, physical_lock_id=device)
        changed = (owner, device) != (owner_now, device_now) and owner_now is not None
        versions.append(
            {
                **then,
                "valid_from": T0,
                "valid_to": T1 if changed else None,
                "change_type": "created",
                "run_id": 1,
            }
        )
        if changed:
            now = {**then, "owner_account_id": owner_now, "physical_lock_id": device_now}
            versions.append(
                {**now, "valid_from": T1, "valid_to": None, "change_type": "updated", "run_id": 2}
            )
        if owner_now is not None:
            lock = {**then, "owner_account_id": owner_now, "physical_lock_id": device_now}
            locks.append({**lock, "lock_id_hex": hex_id, "first_seen_at": T0, "updated_at": T1})
    with engine.begin() as conn:
        runs = [
            dict(started_at=t, finished_at=t, status="succeeded", trigger="manual")
            for t in (T0, T1)
        ]
        conn.execute(insert(sync_runs), runs)
        conn.execute(
            insert(owner_accounts),
            [dict(id=o, name=o, first_seen_at=T0, updated_at=T0) for o in ("o-1", "o-2")],
        )
        conn.execute(insert(bound_locks), locks)
        conn.execute(insert(bound_lock_versions), versions)


def _expected(then: bool) -> list[tuple[str, str, str | None]]:
    rows = []
    for lock_id, (owner, device, owner_now, device_now, hex_id) in LOCKS.items():
        if owner_now is None:
            continue
        shown_owner, shown_device = (owner, device) if then else (owner_now, device_now)
        rows.append((shown_owner, lock_id, hex_id if shown_device == device_now else None))
    return sorted(rows)


@pytest.mark.parametrize(
    "at", [pytest.param(T0 + timedelta(minutes=1), id="then"), pytest.param(T1, id="at-change")]
)
def test_hex_as_of_an_instant_is_the_current_hex_of_the_same_device(
    engine: Engine, at: datetime
) -> None:
    _fill(engine)
    expected = _expected(then=at < T1)
    with report.open_inventory(engine, as_of=AsOf(at), with_owners=False) as found:
        rows = [(lock.owner_account_id, lock.id, lock.lock_id_hex) for lock in found.locks]
    with report.open_inventory(engine, as_of=AsOf(at), with_owners=False) as found:
        assert found.columns is not None
        batches = [list(zip(c[0], c[2], c[7], strict=True)) for c in found.columns]
    assert rows == expected
    assert [row for batch in batches for row in batch] == expected
    # Filtered (rows, not columns) and one owner: the same hexes.
    with report.open_inventory(engine, as_of=AsOf(at), owner="o-1", search="") as found:
        assert [(lock.id, lock.lock_id_hex) for lock in found.locks] == [
            (lock_id, hex_id) for owner, lock_id, hex_id in expected if owner == "o-1"
        ]
