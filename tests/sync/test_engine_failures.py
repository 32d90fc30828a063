"""The sync engine when owners or the API fail: partial runs, no false removals, retries."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, func, select
from support.helpers import run_once, sandbox_lock_ids, sandbox_owner_ids
from support.history import (
    assert_counts_match_versions,
    assert_history_consistent,
    count_rows,
    locks_at,
)
from support.sync_checks import _assert_matches_api, _versions

from exporter.db.schema import (
    bound_lock_versions,
    bound_locks,
    owner_account_versions,
    owner_accounts,
    sync_run_owners,
)
from exporter.results import SyncProgress
from exporter.sandbox.server import Fault, Sandbox, SandboxRequest


def test_an_owner_lost_and_regained(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    owner = sandbox_owner_ids(sandbox)[1]
    locks = set(sandbox_lock_ids(sandbox, owner))
    sandbox.hide_owner(owner)

    lost = run_once(sandbox, db_url, tmp_path)

    versions = _versions(engine, lost.run_id or 0)
    assert {(v["id"], v["removal_reason"]) for v in versions} == {
        (lock, "owner_removed") for lock in locks
    }
    with engine.connect() as conn:
        owner_row = (
            conn.execute(select(owner_accounts).where(owner_accounts.c.id == owner))
            .mappings()
            .one()
        )
    assert owner_row["removed_at"] is not None
    assert lost.status == "succeeded"
    _assert_matches_api(engine, sandbox, lost)

    sandbox.show_owner(owner)
    regained = run_once(sandbox, db_url, tmp_path)

    assert {v["id"] for v in _versions(engine, regained.run_id or 0)} == locks
    assert regained.counts.restored == len(locks)
    with engine.connect() as conn:
        kinds = (
            conn.execute(
                select(owner_account_versions.c.change_type)
                .where(owner_account_versions.c.id == owner)
                .order_by(owner_account_versions.c.valid_from)
            )
            .scalars()
            .all()
        )
    assert kinds == ["created", "removed", "restored"]
    _assert_matches_api(engine, sandbox, regained)


def test_a_failed_owner_makes_the_run_partial_and_removes_nothing(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    owners = sandbox_owner_ids(sandbox)
    failing = owners[0]
    for lock in sandbox_lock_ids(sandbox, failing)[:2]:
        sandbox.unbind(lock)
    sandbox.unbind(sandbox_lock_ids(sandbox, owners[1])[0])
    sandbox.add_fault(Fault(route="locks", owner_id=failing, status=503, times=None))

    result = run_once(sandbox, db_url, tmp_path, tapkey={"max_retries": 1})

    assert result.status == "partial"
    assert result.counts.removed == 1  # only the healthy owner's unbound lock
    with engine.connect() as conn:
        outcome = (
            conn.execute(
                select(sync_run_owners).where(
                    sync_run_owners.c.owner_account_id == failing,
                    sync_run_owners.c.run_id == result.run_id,
                )
            )
            .mappings()
            .one()
        )
        present = conn.execute(
            select(func.count())
            .select_from(bound_locks)
            .where(bound_locks.c.owner_account_id == failing, bound_locks.c.removed_at.is_(None))
        ).scalar()
    assert outcome["status"] == "failed" and "503" in (outcome["error"] or "")
    assert present == 5
    assert_history_consistent(engine)

    sandbox.clear_faults()
    healed = run_once(sandbox, db_url, tmp_path)
    assert healed.status == "succeeded" and healed.counts.removed == 2
    _assert_matches_api(engine, sandbox, healed)


def test_a_list_shifting_mid_crawl_causes_no_false_removal(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=3, owners=2, locks_per_owner=12) as fake:
        run_once(fake, db_url, tmp_path, tapkey={"page_size": 4})
        owner = sandbox_owner_ids(fake)[0]
        first = sandbox_lock_ids(fake, owner)[0]
        fired: list[bool] = []

        def unbind_after_first_page(request: SandboxRequest) -> None:
            if request.owner_id == owner and (request.skip or 0) > 0 and not fired:
                fired.append(True)
                fake.unbind(first)

        fake.hooks.append(unbind_after_first_page)
        result = run_once(fake, db_url, tmp_path, tapkey={"page_size": 4})

        assert fired and result.status == "succeeded"
        assert [(v["id"], v["change_type"]) for v in _versions(engine, result.run_id or 0)] == [
            (first, "removed")
        ]
        _assert_matches_api(engine, fake, result)


def test_token_expiry_mid_run_fetches_a_new_token(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=4, owners=4, locks_per_owner=3) as fake:

        def revoke_once(request: SandboxRequest) -> None:
            if request.route == "locks" and request.number == 2:
                fake.revoke_tokens()

        fake.hooks.append(revoke_once)
        result = run_once(fake, db_url, tmp_path, tapkey={"workers": 1})

        assert result.status == "succeeded" and result.counts.created == 12
        assert fake.requests["token"] == 2
        _assert_matches_api(engine, fake, result)


def test_429_with_retry_after_is_retried(db_url: str, engine: Engine, tmp_path: Path) -> None:
    with Sandbox(seed=5, owners=2, locks_per_owner=3) as fake:
        fake.add_fault(Fault(route="locks", status=429, headers={"Retry-After": "0"}, times=2))
        fake.add_fault(Fault(route="owners", status=429, headers={"Retry-After": "1"}, times=1))

        result = run_once(fake, db_url, tmp_path)

        assert result.status == "succeeded" and result.counts.created == 6
        _assert_matches_api(engine, fake, result)


def test_the_owner_list_failing_fails_the_run_and_changes_nothing(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    first = run_once(sandbox, db_url, tmp_path)
    sandbox.hide_owner(sandbox_owner_ids(sandbox)[0])
    sandbox.add_fault(Fault(route="owners", status=500, times=None))

    result = run_once(sandbox, db_url, tmp_path, tapkey={"max_retries": 1})

    assert result.status == "failed" and "500" in (result.error or "")
    assert locks_at(engine, datetime.now(UTC)) == locks_at(
        engine, first.finished_at or datetime.now(UTC)
    )
    assert count_rows(engine, bound_lock_versions) == 15
    assert_history_consistent(engine)


def test_a_stopped_run_records_every_owner_it_counted(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=3, owners=4, locks_per_owner=3) as fake:
        run_once(fake, db_url, tmp_path)
        owners = sandbox_owner_ids(fake)
        # In list order (workers=1): one owner unchanged, one renamed, one failing, then the stop.
        fake.rename(sandbox_lock_ids(fake, owners[1])[0], "Renamed before the stop")
        fake.add_fault(Fault("locks", status=503, owner_id=owners[2], times=None))
        stop = threading.Event()

        def stop_after_three_owners(progress: SyncProgress) -> None:
            if progress.owners_done == 3:
                stop.set()  # as SIGTERM would

        stopped = run_once(
            fake,
            db_url,
            tmp_path,
            tapkey={"workers": 1, "max_retries": 0},
            stop=stop,
            progress=stop_after_three_owners,
        )

    assert (stopped.status, stopped.error) == ("failed", "interrupted")
    assert (stopped.counts.updated, stopped.counts.unchanged) == (1, 5)
    # The owners with nothing to write were counted as they were applied: their run rows are
    # written too, so the run's counts are its owners' and the versions it wrote.
    with engine.connect() as conn:
        rows = conn.execute(
            select(sync_run_owners.c.owner_account_id, sync_run_owners.c.status).where(
                sync_run_owners.c.run_id == stopped.run_id
            )
        ).all()
    assert sorted(rows) == sorted(
        [(owners[0], "complete"), (owners[1], "complete"), (owners[2], "failed")]
    )
    assert_counts_match_versions(engine, stopped.run_id)
    assert_history_consistent(engine)
