"""Contacts, bound cards and grants: the lock history contract, end to end on every backend."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from support.helpers import make_settings
from support.history import assert_history_consistent, expected_access, rows_at
from support.sandbox_access import run_access

from exporter.db.schema import contact_versions, contacts, grant_versions, grants, sync_runs
from exporter.sandbox.server import Fault, Sandbox
from exporter.service import job

ACCESS = ("contacts", "cards", "grants")
ALL = ["contacts", "cards", "grants"]
KEY = "a-test-key-of-sufficient-length"


def _payloads(fake: Sandbox, entity: str) -> dict[str, list[dict[str, Any]]]:
    read = {
        "contacts": fake.contacts_payload,
        "cards": fake.cards_payload,
        "grants": fake.grants_payload,
    }[entity]
    return {owner["id"]: read(owner["id"]) for owner in fake.owners_payload()}


def _snapshot(fake: Sandbox) -> dict[str, dict[str, dict[str, Any]]]:
    return {entity: expected_access(_payloads(fake, entity), entity) for entity in ACCESS}


def _owner_ids(fake: Sandbox) -> list[str]:
    return [owner["id"] for owner in fake.owners_payload()]


def _count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


@pytest.mark.slow
def test_access_history_is_exact_at_every_run_across_sandbox_generations(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    rng = random.Random(15)
    with Sandbox(
        seed=15, owners=4, locks_per_owner=4, contacts_per_owner=5, cards_per_owner=3,
        grants_per_owner=8,
    ) as fake:  # fmt: skip
        results = [run_access(fake, db_url, tmp_path, page_size=3)]
        snapshots = [_snapshot(fake)]
        for _ in range(7):
            changes = fake.advance(changes=rng.randint(0, 3), access=rng.randint(4, 12))
            assert changes
            results.append(run_access(fake, db_url, tmp_path, page_size=3))
            snapshots.append(_snapshot(fake))

    assert [r.status for r in results] == ["succeeded"] * len(results)
    assert sum(r.access["grants"].updated for r in results) > 0  # revocations happened
    assert sum(r.access["contacts"].removed + r.access["cards"].removed for r in results) > 0
    for result, snapshot in zip(results, snapshots, strict=True):
        assert result.finished_at is not None
        for entity in ACCESS:
            stored = rows_at(engine, entity, result.finished_at)
            assert stored == snapshot[entity], f"{entity} as of run {result.run_id}"
    assert_history_consistent(engine)


def test_a_revoked_grant_is_an_update_and_a_removed_one_a_removal(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=2, owners=2, locks_per_owner=3) as fake:
        owner = _owner_ids(fake)[0]
        revoked, removed = [g["id"] for g in fake.grants_payload(owner) if g["state"] == "Ok"][:2]
        run_access(fake, db_url, tmp_path)
        fake.revoke_grant(revoked)
        fake.remove_grant(removed)

        result = run_access(fake, db_url, tmp_path)

    assert (result.access["grants"].updated, result.access["grants"].removed) == (1, 1)
    with engine.connect() as conn:
        rows = conn.execute(
            select(grant_versions).where(grant_versions.c.run_id == result.run_id)
        ).mappings()
        by_id = {row["id"]: row for row in rows}
    assert by_id[revoked]["change_type"] == "updated"
    assert by_id[revoked]["state"] == "Revoked"
    assert sorted(by_id[revoked]["changed_fields"]) == ["active", "state"]
    assert by_id[removed]["change_type"] == "removed"
    assert by_id[removed]["removal_reason"] == "deleted"
    assert_history_consistent(engine)


def test_an_unchanged_rerun_writes_nothing_and_parses_no_element(
    db_url: str, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Sandbox(seed=4, owners=3, locks_per_owner=3) as fake:
        run_access(fake, db_url, tmp_path, page_size=4)
        versions = {e: _count(engine, t) for e, t in (("grants", grant_versions),)}
        parsed: list[str] = []
        from exporter.tapkey import client as tapkey

        original = tapkey.parse_element

        def spy(*args: Any, **kwargs: Any) -> Any:
            parsed.append(args[1])
            return original(*args, **kwargs)

        monkeypatch.setattr(tapkey, "parse_element", spy)
        result = run_access(fake, db_url, tmp_path, page_size=4)

    assert result.status == "succeeded"
    assert parsed == []
    assert all(c.created + c.updated + c.removed == 0 for c in result.access.values())
    assert {"grants": _count(engine, grant_versions)} == versions


def test_a_missing_scope_makes_the_run_partial_and_leaves_that_entity_alone(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=6, owners=2, locks_per_owner=3) as fake:
        result = run_access(fake, db_url, tmp_path, scopes="read:owneraccounts read:core:entities")

    assert result.status == "partial"
    assert result.error is not None and "read:grants" in result.error
    assert _count(engine, grants) == 0
    assert _count(engine, contacts) == 2 * 4  # contacts and cards go on
    assert result.counts.created == 2 * 3  # and locks


def test_a_403_for_one_owner_changes_nothing_of_that_owner_and_names_the_co_admin_right(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=7, owners=3, locks_per_owner=3) as fake:
        denied, other = _owner_ids(fake)[:2]
        run_access(fake, db_url, tmp_path)
        before = rows_at(engine, "grants", run_access(fake, db_url, tmp_path).finished_at)  # type: ignore[arg-type]
        for grant in fake.grants_payload(denied):
            fake.remove_grant(grant["id"])
        fake.remove_grant(fake.grants_payload(other)[0]["id"])
        fake.deny(denied, "grants")

        result = run_access(fake, db_url, tmp_path)

    assert result.status == "partial"
    assert result.error is not None and f"grants of owner {denied}" in result.error
    assert "co-admin" in result.error
    assert result.access["grants"].removed == 1  # the other owner's removal went through
    assert result.finished_at is not None
    after = rows_at(engine, "grants", result.finished_at)
    assert {k: v for k, v in after.items() if v["owner_account_id"] == denied} == {
        k: v for k, v in before.items() if v["owner_account_id"] == denied
    }
    assert_history_consistent(engine)


def test_a_vanished_owner_takes_its_access_data_with_it(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=8, owners=3, locks_per_owner=2) as fake:
        gone = _owner_ids(fake)[0]
        run_access(fake, db_url, tmp_path)
        fake.hide_owner(gone)
        result = run_access(fake, db_url, tmp_path)

    assert result.status == "succeeded"
    with engine.connect() as conn:
        reasons = set(
            conn.execute(
                select(grant_versions.c.removal_reason).where(
                    grant_versions.c.run_id == result.run_id
                )
            ).scalars()
        )
    assert reasons == {"owner_removed"}
    assert (
        _count(engine, grants, grants.c.owner_account_id == gone, grants.c.removed_at.is_(None))
        == 0
    )
    assert_history_consistent(engine)


def test_mass_removal_of_grants_is_held_back_until_confirmed(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=9, owners=2, locks_per_owner=3, grants_per_owner=14) as fake:
        owner = _owner_ids(fake)[0]
        run_access(fake, db_url, tmp_path)
        for grant in fake.grants_payload(owner)[:12]:
            fake.remove_grant(grant["id"])

        held = run_access(fake, db_url, tmp_path)
        confirmed = run_access(fake, db_url, tmp_path, allow_mass_removal_owners=[owner])

    assert held.status == "partial"
    assert held.error is not None and "12 of its 14 grants" in held.error
    assert held.access["grants"].removed == 0
    assert confirmed.status == "succeeded" and confirmed.access["grants"].removed == 12
    assert_history_consistent(engine)


def test_run_retention_keeps_the_runs_that_wrote_access_versions(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    start = datetime(2031, 5, 1, tzinfo=UTC)
    with Sandbox(seed=12, owners=2, locks_per_owner=2) as fake:
        settings = make_settings(fake, db_url, tmp_path, entities=ALL)
        job.run_once(settings, now=lambda: start)
        fake.revoke_grant(next(g["id"] for g in fake.grants_payload(_owner_ids(fake)[0])))
        revoking = job.run_once(settings, now=lambda: start + timedelta(hours=1))
        idle = job.run_once(settings, now=lambda: start + timedelta(hours=2))
        keep = settings.model_copy(
            update={"sync": settings.sync.model_copy(update={"run_retention": "1d"})}
        )
        last = job.run_once(keep, now=lambda: start + timedelta(days=3))

    assert revoking.access["grants"].updated == 1 and revoking.counts.updated == 0
    assert last.status == "succeeded"
    with engine.connect() as conn:
        runs = set(conn.execute(select(sync_runs.c.id)).scalars())
    assert revoking.run_id in runs and idle.run_id not in runs
    assert_history_consistent(engine)


def test_an_element_without_a_readable_id_holds_back_that_owners_removals(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=13, owners=2, locks_per_owner=2, grants_per_owner=0) as fake:
        owner = _owner_ids(fake)[0]
        first = fake.add_grant(owner)
        fake.add_grant(owner)
        run_access(fake, db_url, tmp_path)
        # The first page lists an element without an id where the first grant was: which
        # stored grant it stands for cannot be told, so none of the owner's grants may go.
        second = json.dumps(fake.grants_payload(owner)[1])
        fake.add_fault(
            Fault("grants", kind="body", owner_id=owner, body=f'[{{"state": "Ok"}},{second}]')
        )
        result = run_access(fake, db_url, tmp_path)

    assert result.status == "succeeded"
    assert (result.access["grants"].skipped, result.access["grants"].removed) == (1, 0)
    assert _count(engine, grants, grants.c.id == first, grants.c.removed_at.is_(None)) == 1
    assert_history_consistent(engine)


def test_a_new_silent_page_cap_removes_no_contact_cut_off_by_it(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=16, owners=2, locks_per_owner=4, contacts_per_owner=5) as fake:
        assert run_access(fake, db_url, tmp_path, entities=["contacts"]).status == "succeeded"
        for owner_id in _owner_ids(fake):  # the server returned pages of 4 locks before
            for lock in fake.locks_payload(owner_id)[2:]:
                fake.unbind(lock["id"])
        # It starts cutting pages at 3, saying nothing: the lock lists (2) fit, the contact
        # lists (5) do not.
        fake.max_top = 3

        cut = run_access(fake, db_url, tmp_path, entities=["contacts"])
        assert cut.access["contacts"].removed == 0
        assert cut.status == "partial" and "was not proven" in (cut.error or "")
        # Pages of 3 are asked for now.
        after = run_access(fake, db_url, tmp_path, entities=["contacts"])
        assert (after.status, after.access["contacts"].removed) == ("succeeded", 0)
    assert _count(engine, contacts, contacts.c.removed_at.is_not(None)) == 0
    assert_history_consistent(engine)


def test_a_date_out_of_range_in_utc_skips_its_grant_and_the_run_goes_on(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # .NET's DateTime.MinValue with a local offset is in year 0 in UTC: an OverflowError
    # failed the whole run.
    with Sandbox(seed=17, owners=2, locks_per_owner=1, grants_per_owner=2) as fake:
        owner = _owner_ids(fake)[1]
        bad = fake.add_grant(owner, valid_from="0001-01-01T00:00:00+01:00")
        late = fake.add_grant(owner, valid_before="9999-12-31T23:30:00-01:00")
        result = run_access(fake, db_url, tmp_path, entities=["grants"])
        listed = {g["id"] for items in _payloads(fake, "grants").values() for g in items}
    expected = listed - {bad, late}
    assert result.status == "succeeded" and result.access["grants"].skipped == 2
    with engine.connect() as conn:
        assert set(conn.execute(select(grants.c.id)).scalars()) == expected
    assert_history_consistent(engine)


def test_a_contact_listed_by_two_owners_stays_with_the_one_it_is_stored_under(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # Whichever list came in first took it: with a slow answer now and then, every run moved
    # it to the other owner and back, versions of changes that never happened.
    with Sandbox(seed=18, owners=3, locks_per_owner=1) as fake:
        first, _, other = _owner_ids(fake)
        contact = fake.contacts_payload(first)[0]["id"]
        fake._access.owners[other].contacts[contact] = fake._access.contact(contact)  # both list it
        results = []
        for slow in (other, first, None, first):  # the first load takes the first answer
            if slow is not None:
                fake.add_fault(Fault("contacts", kind="delay", delay=0.5, owner_id=slow))
            results.append(run_access(fake, db_url, tmp_path, entities=["contacts"], workers=3))
    assert [r.status for r in results] == ["succeeded"] * 4
    with engine.connect() as conn:
        versions = conn.execute(
            select(contact_versions.c.change_type, contact_versions.c.owner_account_id).where(
                contact_versions.c.id == contact
            )
        ).all()
    assert versions == [("created", first)]
    assert_history_consistent(engine)
