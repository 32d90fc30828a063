"""The inventory's order when the locks are read owner by owner.

The owners are put in order in Python (`fold` of the name shown, then the id) and each owner's
locks by the database: together they must give the one order `exporter locks` always had, also
for names alike but for ASCII case, non-ASCII letters, no name, an owner missing from
owner_accounts, and (with --as-of) an owner renamed since.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert

from exporter.db.schema import (
    bound_lock_versions,
    bound_locks,
    owner_account_versions,
    owner_accounts,
    sync_runs,
)
from exporter.read import inventory as report
from exporter.read.asof import AsOf

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)
# Owner id -> (name then, name now); None: no owner_accounts row (its locks stay listed).
OWNERS: dict[str, tuple[str | None, str | None] | None] = {
    "o-1": ("beta", "beta"),
    "o-2": ("Beta", "Beta"),  # alike but for case: the id decides
    "o-0": ("ALPHA", "Zulu"),  # renamed: first as of T0, last now
    "o-3": ("Älpha", "Älpha"),  # a non-ASCII letter sorts by code point, after ASCII
    "o-4": (None, None),  # no name: last
    "o-5": ("alpha", "alpha"),
    "o-9": None,  # not in owner_accounts: no name either
}
TITLES = ["b", "B", "a", None, "Ä", "A"]


def _fill(engine: Engine) -> None:
    owner_rows: list[dict[str, Any]] = []
    version_rows: list[dict[str, Any]] = []
    lock_rows: list[dict[str, Any]] = []
    lock_versions: list[dict[str, Any]] = []
    for owner_id, names in OWNERS.items():
        if names is not None:
            then, now = names
            owner_rows.append(dict(id=owner_id, name=now, first_seen_at=T0, updated_at=T1))
            change = dict(id=owner_id, active=True, run_id=1)
            version_rows.append({**change, "name": then, "valid_from": T0, "valid_to": T1})
            version_rows.append({**change, "name": now, "valid_from": T1, "valid_to": None})
        for n, title in enumerate(TITLES):
            lock = dict(id=f"{owner_id}-lock-{5 - n}", owner_account_id=owner_id, title=title)
            lock_rows.append({**lock, "first_seen_at": T0, "updated_at": T0})
            lock_versions.append({**lock, "valid_from": T0, "change_type": "created", "run_id": 1})
    with engine.begin() as conn:
        conn.execute(insert(sync_runs), [dict(started_at=T0, status="succeeded", trigger="manual")])
        conn.execute(insert(owner_accounts), owner_rows)
        conn.execute(
            insert(owner_account_versions), [{**v, "change_type": "created"} for v in version_rows]
        )
        conn.execute(insert(bound_locks), lock_rows)
        conn.execute(insert(bound_lock_versions), lock_versions)


def _expected(at_then: bool) -> list[tuple[str, str | None, str | None, str]]:
    rows = []
    for owner_id, names in OWNERS.items():
        name = None if names is None else names[0 if at_then else 1]
        rows += [
            (owner_id, name, title, f"{owner_id}-lock-{5 - n}") for n, title in enumerate(TITLES)
        ]
    return sorted(rows, key=lambda r: (report.fold(r[1]), r[0], report.fold(r[2]), r[3]))


def test_owner_by_owner_reading_keeps_the_inventory_order(engine: Engine) -> None:
    _fill(engine)
    for as_of in (None, AsOf(T0 + timedelta(minutes=1))):
        with report.open_inventory(engine, as_of=as_of, with_owners=False) as found:
            got = [
                (lock.owner_account_id, lock.owner_name, lock.title, lock.id)
                for lock in found.locks
            ]
        assert got == _expected(at_then=as_of is not None)
        with report.open_inventory(engine, as_of=as_of, owner="o-2", with_owners=False) as found:
            assert {lock.owner_account_id for lock in found.locks} == {"o-2"}
