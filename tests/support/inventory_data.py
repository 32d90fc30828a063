"""A history database filled by real syncs from the sandbox, shared by the read-side tests.

Eight runs, one day apart and the last about an hour ago, over a sandbox that changes in between:
a generation of random changes, then named ones: renames, a description and an active flag
changed, a new lock, a lock moved to another owner, a physical lock re-bound under a new bound
lock id, an unbind and the restore of that lock, an owner account lost and regained, an owner
renamed, a partial run (one owner's fetch fails, nothing else changes) and a last rename. Each
run's expected inventory is the sandbox snapshot taken right after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from exporter.db import migrate
from exporter.db.engine import make_engine
from exporter.sandbox.server import Fault, Sandbox
from exporter.service import job
from exporter.tapkey.records import lock_id_hex
from support.helpers import (
    MARIADB_ADMIN,
    POSTGRES_ADMIN,
    database_name,
    make_settings,
    sandbox_lock_ids,
    sandbox_owner_ids,
    server_database,
)
from support.history import expected_locks

RUNS = 8


@dataclass
class Generation:
    """One run and what the sandbox served at its end."""

    run_id: int
    started_at: datetime
    finished_at: datetime
    status: str
    locks: dict[str, dict[str, Any]]  # expected_locks(snapshot): tracked columns by lock id
    hexes: dict[str, str | None]  # lock id -> customer-facing lock id
    owners: dict[str, str]  # visible owner id -> name


@dataclass
class InventoryDb:
    """The filled database and the facts the tests check it against."""

    url: str
    backend: str
    generations: list[Generation] = field(default_factory=list)
    # Run numbers below count from 0 (the first load); generations[n] is run n.
    renamed: str = ""  # lock id renamed in run 2
    moved: tuple[str, str, str] = ("", "", "")  # lock id, from owner, to owner (run 3)
    rebound: tuple[str, str] = ("", "")  # old bound lock id, new bound lock id (run 3)
    unbound: str = ""  # lock id unbound in run 3, restored in run 5
    lost_owner: str = ""  # owner hidden in run 4, back in run 5
    renamed_owner: tuple[str, str, str] = ("", "", "")  # owner id, old name, new name (run 4)
    partial_owner: str = ""  # owner whose fetch fails in run 6


def build(url: str, backend: str, tmp_path: Path, *, now: datetime) -> InventoryDb:
    """Run the scenario into `url` (an empty database) and record what each run should hold."""
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    db = InventoryDb(url, backend)
    first = now - timedelta(days=RUNS - 1)
    with Sandbox(seed=21, owners=4, locks_per_owner=6) as fake:
        owners = sandbox_owner_ids(fake)
        settings = make_settings(fake, url, tmp_path, max_retries=0)
        unbound_payload: dict[str, Any] = {}
        new = ""
        for number in range(RUNS):
            if number == 1:
                # Random changes first, so that every later, named change stays as named.
                fake.advance(changes=8)
                for owner in set(owners) - set(sandbox_owner_ids(fake)):
                    fake.show_owner(owner)
            elif number == 2:
                db.renamed = sandbox_lock_ids(fake, owners[0])[0]
                fake.rename(db.renamed, "Renamed Door")
                fake.update_lock(
                    sandbox_lock_ids(fake, owners[1])[0], description="Moved to hall B."
                )
                fake.update_lock(sandbox_lock_ids(fake, owners[1])[1], active=False)
                fake.bind_new(owners[3])
            elif number == 3:
                moved = next(i for i in sandbox_lock_ids(fake, owners[0]) if i != db.renamed)
                fake.move(moved, owners[1])
                db.moved = (moved, owners[0], owners[1])
                old = sandbox_lock_ids(fake, owners[3])[0]
                new = fake.rebind(old, owners[2])
                db.rebound = (old, new)
                db.unbound = sandbox_lock_ids(fake, owners[2])[0]
                unbound_payload = next(
                    lock for lock in fake.locks_payload(owners[2]) if lock["id"] == db.unbound
                )
                fake.unbind(db.unbound)
            elif number == 4:
                db.lost_owner = owners[3]
                fake.hide_owner(owners[3])
                old_name = next(o["name"] for o in fake.owners_payload() if o["id"] == owners[0])
                fake.update_owner(owners[0], name="Head Office")
                db.renamed_owner = (owners[0], old_name, "Head Office")
            elif number == 5:
                fake.show_owner(owners[3])
                fake.rebind(unbound_payload, owners[2])
                other = next(
                    i for i in sandbox_lock_ids(fake, owners[2]) if i not in (db.unbound, new)
                )
                fake.update_lock(other, description="Back in use.")
            elif number == 6:
                db.partial_owner = owners[1]
                fake.add_fault(Fault(route="locks", owner_id=owners[1], status=503, times=None))
            elif number == 7:
                fake.clear_faults()
                last = [i for i in sandbox_lock_ids(fake, owners[1]) if i != db.moved[0]][-1]
                fake.rename(last, "Last Change")
            at = first + timedelta(days=number)
            result = job.run_once(settings, now=lambda at=at: at)  # type: ignore[misc]
            assert result.run_id is not None and result.finished_at is not None
            snapshot = fake.snapshot()
            db.generations.append(
                Generation(
                    run_id=result.run_id,
                    started_at=result.started_at,
                    finished_at=result.finished_at,
                    status=result.status,
                    locks=expected_locks(snapshot),
                    hexes={
                        lock["id"]: lock_id_hex(lock["physicalLockId"])
                        for locks in snapshot.values()
                        for lock in locks
                    },
                    owners={o["id"]: o["name"] for o in fake.owners_payload()},
                )
            )
    expected = ["succeeded"] * 6 + ["partial", "succeeded"]
    assert [g.status for g in db.generations] == expected
    return db


class Cache:
    """One filled database per backend per test process, built on first use, dropped at exit.

    Both read-side test modules share it: a parametrized module fixture would be rebuilt every
    time pytest-xdist hands a worker a test of another backend.
    """

    def __init__(self, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> None:
        self._tmp = tmp_path_factory
        self._worker_id = worker_id
        self._built: dict[str, InventoryDb] = {}
        self._cleanup = contextlib.ExitStack()

    def get(self, backend: str) -> InventoryDb:
        """The filled database on `backend`."""
        if backend not in self._built:
            tmp_path = self._tmp.mktemp(f"inventory_{backend}")
            url = self._cleanup.enter_context(
                contextlib.contextmanager(_database)(backend, tmp_path, self._worker_id)
            )
            now = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
            self._built[backend] = build(url, backend, tmp_path, now=now)
        return self._built[backend]

    def close(self) -> None:
        """Drop the server databases (idempotent)."""
        self._cleanup.close()


def _database(backend: str, tmp_path: Path, worker_id: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'inventory.db'}"
        return
    admin = POSTGRES_ADMIN if backend == "postgresql" else MARIADB_ADMIN
    yield from server_database(admin, f"{database_name(worker_id)}_inventory")
