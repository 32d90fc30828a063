"""Held-back removals stay held across runs until confirmed (the table guard_holds).

The run that holds removals back also stores the rows that arrived with them; the next plain run
must judge the same removals against what was stored when they were first held back, not against
the larger count, or it lets them through unconfirmed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from support.cli import one_line
from support.helpers import make_settings, run_once, sandbox_lock_ids, sandbox_owner_ids
from support.history import assert_converged, assert_history_consistent

from exporter.db.schema import bound_locks, contacts, guard_holds, owner_accounts, sync_runs
from exporter.results import RunResult
from exporter.sandbox.server import Sandbox
from exporter.service import job
from exporter.sync import holds


@pytest.fixture
def big_sandbox() -> Iterator[Sandbox]:
    """3 owners x 24 locks: enough for the guard's default minimum of 10."""
    with Sandbox(seed=21, owners=3, locks_per_owner=24) as fake:
        yield fake


def _holds(engine: Engine) -> dict[tuple[str, str], tuple[int, int]]:
    """(entity, owner id) -> (base, since_run_id)."""
    c = guard_holds.c
    with engine.connect() as conn:
        rows = conn.execute(select(c.entity, c.owner_account_id, c.base, c.since_run_id))
        return {(entity, owner): (base, run) for entity, owner, base, run in rows}


def _present(engine: Engine, table: Any, ids: set[str]) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                select(table.c.id).where(table.c.id.in_(sorted(ids)), table.c.removed_at.is_(None))
            ).scalars()
        )


def test_owners_held_back_stay_held_when_the_run_stored_new_owners(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # The owner list is replaced: 2 of 3 stored owners vanish and 2 new ones appear.
    with Sandbox(seed=5, owners=5, locks_per_owner=3) as fake:
        a, b, _, d, e = sandbox_owner_ids(fake)
        fake.hide_owner(d)
        fake.hide_owner(e)
        run_once(fake, db_url, tmp_path)
        fake.hide_owner(a)
        fake.hide_owner(b)
        fake.show_owner(d)
        fake.show_owner(e)

        held = run_once(fake, db_url, tmp_path)
        again = run_once(fake, db_url, tmp_path)  # 2 of the 5 now stored: would pass unheld
        holds_then = _holds(engine)
        kept = _present(engine, owner_accounts, {a, b})
        confirmed = run_once(fake, db_url, tmp_path, allow_mass_removal=True)

        assert held.status == "partial" and held.held_back == {a: 3, b: 3}
        assert "2 of 3 owner accounts" in one_line(held.error)
        assert again.status == "partial" and again.held_back == {a: 3, b: 3}
        assert job.EXIT_CODES[again.status] == 3 and again.counts.removed == 0
        assert (
            "held back the removal of 2 owner accounts "
            f"({', '.join(sorted([a, b]))}) and their 6 locks (more than 50% of the 3 owner "
            f"accounts stored when these removals were first held back in run {held.run_id})"
        ) in one_line(again.error)
        assert holds_then == {(holds.OWNER_LIST, ""): (3, held.run_id)} and kept == {a, b}
        assert confirmed.status == "succeeded" and confirmed.counts.removed == 6
        assert _holds(engine) == {}
        assert_converged(engine, fake, confirmed)


def test_confirming_some_held_back_owners_keeps_the_others_held(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # 2 of 3 owners vanish and are held back; the operator confirms one of them. The other one
    # alone would be 1 of 3, under the guard's half: it must still wait for its own confirmation.
    with Sandbox(seed=6, owners=3, locks_per_owner=3) as fake:
        a, b, _ = sandbox_owner_ids(fake)
        run_once(fake, db_url, tmp_path)
        fake.hide_owner(a)
        fake.hide_owner(b)

        held = run_once(fake, db_url, tmp_path)
        one = run_once(fake, db_url, tmp_path, allow_mass_removal_owners=[a])
        other = run_once(fake, db_url, tmp_path)
        kept = _present(engine, owner_accounts, {a, b})
        holds_then = _holds(engine)
        both = run_once(fake, db_url, tmp_path, allow_mass_removal_owners=[b])

        assert held.held_back == {a: 3, b: 3}
        assert one.held_back == {b: 3} and one.counts.removed == 3
        assert other.status == "partial" and other.held_back == {b: 3}
        assert other.counts.removed == 0 and kept == {b}
        assert (
            f"more than 50% of the 3 owner accounts stored when these removals were first held "
            f"back in run {held.run_id}, counting the 1 removed since"
        ) in one_line(other.error)
        assert holds_then == {(holds.OWNER_LIST, ""): (3, held.run_id)}
        assert both.status == "succeeded" and both.counts.removed == 3
        assert _holds(engine) == {} and _present(engine, owner_accounts, {a, b}) == set()
        assert_converged(engine, fake, both)


@pytest.mark.parametrize("ending", ["confirmed", "most-came-back"])
def test_an_owners_replaced_locks_stay_held_until_confirmed_or_back(
    big_sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path, ending: str
) -> None:
    fake = big_sandbox
    run_once(fake, db_url, tmp_path)
    owner = sandbox_owner_ids(fake)[0]
    gone = fake.locks_payload(owner)[:20]  # 20 of its 24 locks go, 25 new ones arrive
    for lock in gone:
        fake.unbind(lock["id"])
    for _ in range(25):
        fake.bind_new(owner)
    gone_ids = {lock["id"] for lock in gone}

    held = run_once(fake, db_url, tmp_path)
    dry = run_once(fake, db_url, tmp_path, dry_run=True)  # reads the hold, writes nothing
    again = run_once(fake, db_url, tmp_path)  # 20 of the 49 now stored: would pass unheld
    holds_then = _holds(engine)

    assert held.held_back == {owner: 20} and held.counts.created == 25
    assert "20 of its 24 locks" in one_line(held.error)
    assert dry.held_back == {owner: 20}
    assert again.status == "partial" and again.held_back == {owner: 20}
    assert again.counts.removed == 0 and _present(engine, bound_locks, gone_ids) == gone_ids
    assert (
        f"owner {owner}: held back the removal of 20 of its locks (more than 50% of the 24 it "
        f"had when these removals were first held back in run {held.run_id}, and more than 10)"
    ) in one_line(again.error)
    assert holds_then == {(holds.LOCKS, owner): (24, held.run_id)}

    if ending == "confirmed":
        last = run_once(fake, db_url, tmp_path, allow_mass_removal_owners=[owner])
        assert last.counts.removed == 20
    else:
        for lock in gone[:15]:
            fake.rebind(lock, owner)
        last = run_once(fake, db_url, tmp_path)  # 5 of the 24 gone: an ordinary removal
        assert last.counts.removed == 5
    assert last.status == "succeeded" and last.held_back == {}
    assert _holds(engine) == {}
    assert_converged(engine, fake, last)


def test_a_hold_and_its_removals_commit_together(
    big_sandbox: Sandbox,
    db_url: str,
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = big_sandbox
    run_once(fake, db_url, tmp_path)
    owner = sandbox_owner_ids(fake)[0]
    gone = set(sandbox_lock_ids(fake, owner)[:20])
    for lock_id in gone:
        fake.unbind(lock_id)
    held = run_once(fake, db_url, tmp_path)
    write = holds.write

    def write_then_fail(*args: Any) -> None:
        write(*args)  # the hold is cleared, the locks are removed: then the transaction fails
        raise RuntimeError("crash in the removal transaction")

    monkeypatch.setattr(holds, "write", write_then_fail)
    with pytest.raises(RuntimeError, match="crash in the removal"):
        run_once(fake, db_url, tmp_path, allow_mass_removal=True)
    monkeypatch.undo()

    assert _holds(engine) == {(holds.LOCKS, owner): (24, held.run_id)}
    assert _present(engine, bound_locks, gone) == gone
    assert_history_consistent(engine)
    confirmed = run_once(fake, db_url, tmp_path, allow_mass_removal=True)
    assert confirmed.counts.removed == 20 and _holds(engine) == {}


def test_run_retention_keeps_the_run_a_hold_names(
    big_sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    start = datetime(2031, 5, 1, tzinfo=UTC)
    fake = big_sandbox
    run_once(fake, db_url, tmp_path, now=lambda: start)
    owner = sandbox_owner_ids(fake)[0]
    for lock_id in sandbox_lock_ids(fake, owner)[:20]:
        fake.unbind(lock_id)
    held = run_once(fake, db_url, tmp_path, now=lambda: start + timedelta(hours=1))  # no version
    later = start + timedelta(days=3)
    last = run_once(fake, db_url, tmp_path, sync={"run_retention": "1d"}, now=lambda: later)

    assert last.held_back == {owner: 20}
    with engine.connect() as conn:
        runs = set(conn.execute(select(sync_runs.c.id)).scalars())
    assert held.run_id in runs and _holds(engine) == {(holds.LOCKS, owner): (24, held.run_id)}


def _run_contacts(fake: Sandbox, db_url: str, tmp_path: Path, **options: Any) -> RunResult:
    settings = make_settings(fake, db_url, tmp_path, entities=["contacts"])
    return job.run_once(settings, **options)


def test_an_owners_replaced_contacts_stay_held_until_confirmed(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=9, owners=2, locks_per_owner=3, contacts_per_owner=14) as fake:
        owner = sandbox_owner_ids(fake)[0]
        _run_contacts(fake, db_url, tmp_path)
        gone = {contact["id"] for contact in fake.contacts_payload(owner)[:12]}
        for contact_id in gone:
            fake.remove_contact(contact_id)
        for _ in range(14):
            fake.add_contact(owner)

        held = _run_contacts(fake, db_url, tmp_path)
        again = _run_contacts(fake, db_url, tmp_path)  # 12 of the 28 now stored
        holds_then = _holds(engine)
        confirmed = _run_contacts(fake, db_url, tmp_path, allow_mass_removal_owners=[owner])

    assert held.status == "partial" and "12 of its 14 contacts" in one_line(held.error)
    assert again.status == "partial" and again.access["contacts"].removed == 0
    assert f"first held back in run {held.run_id}" in one_line(again.error)
    assert holds_then == {("contacts", owner): (14, held.run_id)}
    assert confirmed.status == "succeeded" and confirmed.access["contacts"].removed == 12
    assert _present(engine, contacts, gone) == set() and _holds(engine) == {}
    assert_history_consistent(engine)
