"""The deletion guard end to end: mass removals of locks or owners are held back until confirmed."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from support.cli import CliResult, one_line
from support.helpers import (
    run_once,
    sandbox_lock_ids,
    sandbox_owner_ids,
    subprocess_env,
)
from support.history import (
    assert_converged,
    assert_history_consistent,
    count_rows,
    run_owner_row,
    run_row,
)

from exporter.db.schema import (
    bound_locks,
    owner_account_versions,
    owner_accounts,
)
from exporter.sandbox.server import Fault, Sandbox
from exporter.service import job


@pytest.fixture
def big_sandbox() -> Iterator[Sandbox]:
    """3 owners x 24 locks: enough for the guard's default minimum of 10."""
    with Sandbox(seed=21, owners=3, locks_per_owner=24) as fake:
        yield fake


def _unbind(fake: Sandbox, owner_id: str, count: int) -> set[str]:
    ids = sandbox_lock_ids(fake, owner_id)[:count]
    for lock_id in ids:
        fake.unbind(lock_id)
    return set(ids)


def _present(engine: Engine, ids: set[str]) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                select(bound_locks.c.id).where(
                    bound_locks.c.id.in_(sorted(ids)), bound_locks.c.removed_at.is_(None)
                )
            ).scalars()
        )


@pytest.mark.parametrize(
    "confirm",
    [
        pytest.param({"allow_mass_removal_owners": ["OWNER"]}, id="confirm-that-owner"),
        pytest.param({"allow_mass_removal": True}, id="confirm-all"),
        pytest.param({"sync": {"allow_mass_removal": True}}, id="config-allow-mass-removal"),
    ],
)
def test_an_owner_losing_most_of_its_locks_is_held_back_until_confirmed(
    big_sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path, confirm: dict[str, Any]
) -> None:
    fake = big_sandbox
    run_once(fake, db_url, tmp_path)
    owner, other = sandbox_owner_ids(fake)[:2]
    gone = _unbind(fake, owner, 13)  # 13 of 24: more than half and more than 10
    small = _unbind(fake, other, 2)  # an ordinary removal elsewhere goes through

    held = run_once(fake, db_url, tmp_path)

    assert held.status == "partial" and job.EXIT_CODES[held.status] == 3
    assert held.held_back == {owner: 13} and held.counts.removed == 2
    message = one_line(held.error)
    assert f"--allow-mass-removal-owner {owner}" in message and "13 of its 24 locks" in message
    assert _present(engine, gone) == gone and not _present(engine, small)
    assert message.startswith(run_owner_row(engine, held.run_id, owner)["error"] + "; ")
    assert message.endswith(
        "under `exporter serve`, set [sync] allow_mass_removal = true for one run"
    )
    assert run_row(engine, held.run_id)["status"] == "partial"
    assert_history_consistent(engine)
    again = run_once(fake, db_url, tmp_path)  # still held: the guard does not get used to it
    assert again.held_back == {owner: 13}

    options: dict[str, Any] = {
        k: [owner if o == "OWNER" else o for o in v] if isinstance(v, list) else v
        for k, v in confirm.items()
    }
    confirmed = run_once(fake, db_url, tmp_path, **options)

    assert confirmed.held_back == {} and confirmed.counts.removed == 13
    assert_converged(engine, fake, confirmed)


def test_confirming_another_owner_does_not_release_the_held_one(
    big_sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(big_sandbox, db_url, tmp_path)
    owner, other = sandbox_owner_ids(big_sandbox)[:2]
    gone = _unbind(big_sandbox, owner, 20)

    result = run_once(big_sandbox, db_url, tmp_path, allow_mass_removal_owners=[other])

    assert result.status == "partial" and result.held_back == {owner: 20}
    assert _present(engine, gone) == gone


@pytest.mark.parametrize(
    "count, sync",
    [
        pytest.param(12, {}, id="exactly-half"),
        pytest.param(10, {"mass_removal_max_fraction": 0.0}, id="exactly-min-count"),
        pytest.param(20, {"mass_removal_max_fraction": 0.9}, id="raised-fraction"),
        pytest.param(20, {"mass_removal_min_count": 20}, id="raised-min-count"),
    ],
)
def test_removals_within_the_thresholds_go_through(
    big_sandbox: Sandbox,
    db_url: str,
    engine: Engine,
    tmp_path: Path,
    count: int,
    sync: dict[str, Any],
) -> None:
    run_once(big_sandbox, db_url, tmp_path)
    gone = _unbind(big_sandbox, sandbox_owner_ids(big_sandbox)[0], count)

    result = run_once(big_sandbox, db_url, tmp_path, sync=sync)

    assert result.held_back == {} and result.counts.removed == count
    assert not _present(engine, gone)
    assert_converged(engine, big_sandbox, result)


def test_lowered_thresholds_hold_back_small_removals(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    owner = sandbox_owner_ids(sandbox)[0]
    gone = _unbind(sandbox, owner, 3)

    result = run_once(
        sandbox,
        db_url,
        tmp_path,
        sync={"mass_removal_min_count": 2, "mass_removal_max_fraction": 0.5},
    )

    assert result.status == "partial" and result.held_back == {owner: 3}
    assert _present(engine, gone) == gone


def test_an_owner_list_losing_more_than_half_is_held_back(
    big_sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    fake = big_sandbox
    run_once(fake, db_url, tmp_path)
    lost = sandbox_owner_ids(fake)[:2]
    for owner in lost:
        fake.hide_owner(owner)

    held = run_once(fake, db_url, tmp_path)

    assert held.status == "partial" and held.held_back == {o: 24 for o in lost}
    message = one_line(held.error)
    assert "2 of 3 owner accounts" in message and "--allow-mass-removal" in message
    with engine.connect() as conn:
        present = conn.execute(
            select(func.count()).where(owner_accounts.c.removed_at.is_(None))
        ).scalar()
    assert present == 3 and held.counts.removed == 0
    assert_history_consistent(engine)

    partly = run_once(fake, db_url, tmp_path, allow_mass_removal_owners=[lost[0]])
    assert partly.held_back == {lost[1]: 24} and partly.counts.removed == 24
    confirmed = run_once(fake, db_url, tmp_path, allow_mass_removal=True)
    assert confirmed.counts.removed == 24
    assert_converged(engine, fake, confirmed)


def test_a_single_vanished_owner_is_judged_by_the_owner_list_rule_only(
    big_sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(big_sandbox, db_url, tmp_path)
    big_sandbox.hide_owner(sandbox_owner_ids(big_sandbox)[0])  # 1 of 3 owners, all 24 of its locks

    result = run_once(big_sandbox, db_url, tmp_path)

    assert result.held_back == {} and result.counts.removed == 24
    assert_converged(engine, big_sandbox, result)


def test_an_empty_owner_list_is_held_back(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    sandbox.add_fault(Fault("owners", kind="body", body="[]", times=None))

    result = run_once(sandbox, db_url, tmp_path)

    assert result.status == "partial" and len(result.held_back) == 3
    assert result.counts.removed == 0 and count_rows(engine, owner_account_versions) == 3


def test_a_dry_run_reports_held_back_removals_without_listing_them(
    big_sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(big_sandbox, db_url, tmp_path)
    owner = sandbox_owner_ids(big_sandbox)[0]
    _unbind(big_sandbox, owner, 15)

    result = run_once(big_sandbox, db_url, tmp_path, dry_run=True)

    assert result.status == "partial" and result.held_back == {owner: 15}
    assert not [c for c in result.changes if c.change_type == "removed"]
    assert "--allow-mass-removal-owner" in (result.error or "")


def test_held_back_removals_on_the_command_line(
    big_sandbox: Sandbox, tmp_path: Path, exporter_cli: Callable[..., CliResult]
) -> None:
    env = subprocess_env(big_sandbox, f"sqlite:///{tmp_path / 'inv.db'}")
    assert exporter_cli("run-once", "--quiet", env=env).code == 0
    first, second = sandbox_owner_ids(big_sandbox)[:2]
    _unbind(big_sandbox, first, 14)
    _unbind(big_sandbox, second, 15)

    held = exporter_cli("run-once", env=env)
    # A mistyped id is refused before anything is fetched or written; the start of one id works.
    typo = exporter_cli("run-once", "--allow-mass-removal-owner", f"x{first}", env=env)
    runs = exporter_cli("runs", "--format", "json", env=env)
    assert sum(owner.startswith(first[:8]) for owner in sandbox_owner_ids(big_sandbox)) == 1
    one = exporter_cli("run-once", "--allow-mass-removal-owner", first[:8], env=env)
    rest = exporter_cli("run-once", "--allow-mass-removal", "--format", "json", env=env)

    assert typo.code == 2 and typo.err.count("\n") == 1
    assert f"--allow-mass-removal-owner 'x{first}' names no owner account" in typo.err
    assert len(json.loads(runs.out)) == 2  # the first load and the held-back run
    assert held.code == 3
    [warning] = [line for line in held.err.splitlines() if line.startswith("warning: ")]
    assert f"--allow-mass-removal-owner {first}" in warning
    assert f"--allow-mass-removal-owner {second}" in warning
    assert one.code == 3 and f"owner {first}" not in one.err and f"owner {second}" in one.err
    assert rest.code == 0 and json.loads(rest.out)["counts"]["removed"] == 15
