"""The sync engine end to end on every backend: versions opened and closed, removals, moves."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from support.helpers import run_once, sandbox_lock_ids, sandbox_owner_ids
from support.history import assert_history_consistent, count_rows, expected_locks, locks_at
from support.sync_checks import _assert_matches_api, _versions

from exporter.db.schema import (
    bound_lock_versions,
    bound_locks,
    owner_accounts,
    sync_run_owners,
    sync_runs,
)
from exporter.sandbox.server import Sandbox
from exporter.service import preflight


def test_first_load_stores_every_lock_with_a_created_version(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    result = run_once(sandbox, db_url, tmp_path)

    assert result.status == "succeeded"
    assert (result.owners_seen, result.locks_seen, result.counts.created) == (3, 15, 15)
    assert count_rows(engine, bound_locks) == 15
    assert count_rows(engine, owner_accounts) == 3
    versions = _versions(engine, result.run_id or 0)
    assert {v["change_type"] for v in versions} == {"created"}
    _assert_matches_api(engine, sandbox, result)
    with engine.connect() as conn:
        run = conn.execute(select(sync_runs)).mappings().one()
        owners = conn.execute(select(sync_run_owners)).mappings().all()
        raw = conn.execute(
            select(bound_locks.c.id, bound_locks.c.raw, bound_locks.c.lock_id_hex)
        ).all()
    assert run["status"] == "succeeded" and run["client_id"] == "sandbox-client"
    assert run["api_requests"] >= 4
    assert {o["status"] for o in owners} == {"complete"} and len(owners) == 3
    served = {lock["id"] for locks in sandbox.snapshot().values() for lock in locks}
    assert {row.id for row in raw} == served
    assert all(row.raw.startswith("{") and row.lock_id_hex for row in raw)


def test_unchanged_rerun_writes_no_versions_and_rewrites_no_lock_rows(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.lower())

    run_engine_events: list[Engine] = []
    original = preflight.make_engine

    def spying_engine(settings: Any, **kwargs: Any) -> Engine:
        created = original(settings, **kwargs)
        event.listen(created, "before_cursor_execute", record)
        run_engine_events.append(created)
        return created

    preflight.make_engine = spying_engine  # type: ignore[assignment]
    try:
        second = run_once(sandbox, db_url, tmp_path)
    finally:
        preflight.make_engine = original  # type: ignore[assignment]

    assert second.status == "succeeded"
    assert second.counts.as_dict() == {
        "created": 0,
        "updated": 0,
        "removed": 0,
        "restored": 0,
        "unchanged": 15,
        "skipped": 0,
    }
    assert _versions(engine, second.run_id or 0) == []
    writes = [s for s in statements if s.startswith(("insert", "update", "delete"))]
    assert not [s for s in writes if "bound_locks" in s.split("where")[0] and "versions" not in s]
    assert not [s for s in writes if "bound_lock_versions" in s]
    _assert_matches_api(engine, sandbox, second)
    # Owners with nothing to write are still recorded: a run row each, and when last seen.
    with engine.connect() as conn:
        rows = conn.execute(
            select(sync_run_owners).where(sync_run_owners.c.run_id == second.run_id)
        ).mappings()
        fetched = {
            r["owner_account_id"]: (r["status"], r["unchanged"], r["fetched_at"]) for r in rows
        }
        last_seen = dict(
            conn.execute(select(owner_accounts.c.id, owner_accounts.c.last_seen_at)).all()
        )
    assert {o: (status, n) for o, (status, n, _) in fetched.items()} == {
        o: ("complete", 5) for o in sandbox_owner_ids(sandbox)
    }
    assert last_seen == {o: at for o, (_, _, at) in fetched.items()}
    assert all(second.started_at < at < (second.finished_at or at) for at in last_seen.values())
    # The stored texts of these small owners came in one statement, not one per owner.
    parts = [re.split(r"\sfrom\s", s, maxsplit=1) for s in statements if s.startswith("select")]
    texts = [p for p in parts if "raw" in p[0] and p[1].startswith("bound_locks")]
    assert len(texts) == 1, texts
    # Present locks per owner are counted once: with no lock written, the removals reuse it.
    counted = [s for s in statements if "group by bound_locks.owner_account_id" in s]
    assert len(counted) == 1, counted
    # The deletion guard's holds (exporter.sync.holds; usually none): one read, no write.
    holds = [s for s in statements if "guard_holds" in s]
    assert len(holds) == 1 and holds[0].startswith("select"), holds


@pytest.mark.parametrize(
    "mutate, change_type, fields",
    [
        pytest.param(
            lambda f, lock: f.rename(lock, "Renamed door"), "updated", ["title"], id="rename"
        ),
        pytest.param(
            lambda f, lock: f.update_lock(lock, description="new text"),
            "updated",
            ["description"],
            id="description",
        ),
        pytest.param(
            lambda f, lock: f.update_lock(lock, active=False), "updated", ["active"], id="active"
        ),
    ],
)
def test_a_tracked_change_closes_the_old_version_and_opens_a_new_one(
    sandbox: Sandbox,
    db_url: str,
    engine: Engine,
    tmp_path: Path,
    mutate: Callable[[Sandbox, str], None],
    change_type: str,
    fields: list[str],
) -> None:
    run_once(sandbox, db_url, tmp_path)
    lock_id = sandbox_lock_ids(sandbox, sandbox_owner_ids(sandbox)[1])[2]
    mutate(sandbox, lock_id)

    result = run_once(sandbox, db_url, tmp_path)

    versions = _versions(engine, result.run_id or 0)
    assert [(v["id"], v["change_type"]) for v in versions] == [(lock_id, change_type)]
    assert versions[0]["changed_fields"] in (fields, f'["{fields[0]}"]')
    assert result.counts.updated == 1 and result.counts.unchanged == 14
    _assert_matches_api(engine, sandbox, result)


def test_untracked_change_updates_the_row_without_a_version(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    lock_id = sandbox_lock_ids(sandbox, sandbox_owner_ids(sandbox)[0])[0]
    sandbox.update_lock(lock_id, rclSerialNo=4242)

    result = run_once(sandbox, db_url, tmp_path)

    assert _versions(engine, result.run_id or 0) == []
    with engine.connect() as conn:
        row = conn.execute(select(bound_locks).where(bound_locks.c.id == lock_id)).mappings().one()
    assert row["rcl_serial_no"] == 4242 and '"rclSerialNo":4242' in row["raw"].replace(" ", "")
    _assert_matches_api(engine, sandbox, result)


def test_removal_then_restore(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    owner = sandbox_owner_ids(sandbox)[0]
    lock_id = sandbox_lock_ids(sandbox, owner)[1]
    lock = next(item for item in sandbox.locks_payload(owner) if item["id"] == lock_id)
    sandbox.unbind(lock_id)

    removed = run_once(sandbox, db_url, tmp_path)

    assert [
        (v["id"], v["change_type"], v["removal_reason"])
        for v in _versions(engine, removed.run_id or 0)
    ] == [(lock_id, "removed", "unbound")]
    _assert_matches_api(engine, sandbox, removed)

    sandbox.rebind(lock, owner)
    restored = run_once(sandbox, db_url, tmp_path)

    versions = _versions(engine, restored.run_id or 0)
    assert [(v["id"], v["change_type"]) for v in versions] == [(lock_id, "restored")]
    assert restored.counts.restored == 1
    _assert_matches_api(engine, sandbox, restored)


@pytest.mark.parametrize("target_first", [True, False], ids=["target-first", "source-first"])
def test_a_lock_moving_owners_is_an_update_never_a_removal(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path, target_first: bool
) -> None:
    run_once(sandbox, db_url, tmp_path)
    owners = sandbox_owner_ids(sandbox)
    source, target = (owners[2], owners[0]) if target_first else (owners[0], owners[2])
    lock_id = sandbox_lock_ids(sandbox, source)[0]
    sandbox.move(lock_id, target)

    result = run_once(sandbox, db_url, tmp_path, tapkey={"workers": 1})

    versions = _versions(engine, result.run_id or 0)
    assert [(v["id"], v["change_type"], v["owner_account_id"]) for v in versions] == [
        (lock_id, "updated", target)
    ]
    assert result.counts.removed == 0
    _assert_matches_api(engine, sandbox, result)


@pytest.mark.parametrize("stored_owner_first", [True, False], ids=["stored-first", "other-first"])
def test_a_lock_listed_by_two_owners_stays_with_the_first_and_is_never_removed(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path, stored_owner_first: bool
) -> None:
    run_once(sandbox, db_url, tmp_path)
    owners = sandbox_owner_ids(sandbox)
    # workers=1 applies owners in list order, so this picks which listing the run meets first.
    stored, other = (owners[0], owners[2]) if stored_owner_first else (owners[2], owners[0])
    lock_id = sandbox_lock_ids(sandbox, stored)[0]
    sandbox.list_also(lock_id, other)  # a move caught half-way: both lists have the lock

    result = run_once(sandbox, db_url, tmp_path, tapkey={"workers": 1})

    assert result.status == "succeeded"
    # Counted once, under the owner met first; the other listing is not an unreadable "skip".
    counts = result.counts
    assert (counts.created, counts.removed, counts.skipped) == (0, 0, 0)
    assert counts.unchanged + counts.updated == 15
    versions = [(v["id"], v["change_type"], v["owner_account_id"]) for v in _versions(engine, 2)]
    assert versions == ([] if stored_owner_first else [(lock_id, "updated", other)])
    assert_history_consistent(engine)
    # The owner met second says why one of its locks is not under it.
    second = other if stored_owner_first else stored
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                sync_run_owners.c.owner_account_id,
                sync_run_owners.c.status,
                sync_run_owners.c.error,
            ).where(sync_run_owners.c.run_id == result.run_id)
        ).all()
    notes = {owner: error for owner, status, error in rows if status == "complete" and error}
    assert list(notes) == [second]
    assert notes[second] == (
        f"lock also listed by another owner in this run (a move caught half-way?): {lock_id}; "
        "kept under that owner until the next run"
    )

    sandbox.move(lock_id, other)  # the move completes
    settled = run_once(sandbox, db_url, tmp_path, tapkey={"workers": 1})
    assert (settled.counts.created, settled.counts.removed, settled.counts.skipped) == (0, 0, 0)
    _assert_matches_api(engine, sandbox, settled)


def test_dry_run_reports_changes_and_writes_nothing(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    owner = sandbox_owner_ids(sandbox)[0]
    sandbox.rename(sandbox_lock_ids(sandbox, owner)[0], "Dry")
    sandbox.unbind(sandbox_lock_ids(sandbox, owner)[1])
    before = count_rows(engine, bound_lock_versions)

    result = run_once(sandbox, db_url, tmp_path, dry_run=True)

    assert result.run_id is None
    assert sorted(c.change_type for c in result.changes) == ["removed", "updated"]
    assert count_rows(engine, bound_lock_versions) == before
    assert count_rows(engine, sync_runs) == 1


def test_the_clock_stepping_back_still_orders_versions(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    run_once(sandbox, db_url, tmp_path, now=lambda: start)
    sandbox.rename(sandbox_lock_ids(sandbox, sandbox_owner_ids(sandbox)[0])[0], "Earlier clock")

    result = run_once(sandbox, db_url, tmp_path, now=lambda: start - timedelta(days=1))

    assert result.counts.updated == 1
    assert_history_consistent(engine)


@pytest.mark.slow
def test_history_is_exact_across_random_generations(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    rng = random.Random(2024)
    with Sandbox(seed=11, owners=6, locks_per_owner=8) as fake:
        results = [run_once(fake, db_url, tmp_path, tapkey={"page_size": 5})]
        snapshots = [expected_locks(fake.snapshot())]
        for _ in range(8):
            fake.advance(changes=rng.randint(3, 9))
            results.append(run_once(fake, db_url, tmp_path, tapkey={"page_size": 5}))
            snapshots.append(expected_locks(fake.snapshot()))

        assert all(r.status == "succeeded" for r in results)
        for result, snapshot in zip(results, snapshots, strict=True):
            assert result.finished_at is not None
            assert locks_at(engine, result.finished_at) == snapshot, f"run {result.run_id}"
        assert_history_consistent(engine)
