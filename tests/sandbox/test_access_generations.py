"""The sandbox's access generations and direct changes of contacts, cards, grants and logs."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from support.helpers import sandbox_owner_ids
from support.sandbox_access import ROUTES, access_state, when

from exporter.sandbox.server import ACCESS_CHANGE_KINDS, Sandbox

# -- generations and direct changes ---------------------------------------------------------------


def test_access_generations_are_deterministic() -> None:
    first, second = Sandbox(seed=5), Sandbox(seed=5)
    for _ in range(5):
        assert first.advance(2, access=6) == second.advance(2, access=6)
        assert access_state(first) == access_state(second)
    assert Sandbox(seed=6).advance(0, access=6) != Sandbox(seed=5).advance(0, access=6)
    untouched = Sandbox(seed=5)
    owners = sandbox_owner_ids(untouched)
    before = access_state(untouched, owners)
    untouched.advance(20)  # lock and owner changes only: the access lists stay as they were
    assert access_state(untouched, owners) == before


def _by_id(state: dict[str, dict[str, list[dict[str, Any]]]], route: str) -> dict[str, Any]:
    return {item["id"]: item for items in state[route].values() for item in items}


def test_every_access_change_kind_does_what_it_says() -> None:
    fake = Sandbox(seed=11, owners=3, locks_per_owner=4)
    owners = sandbox_owner_ids(fake)
    seen: set[str] = set()
    for _ in range(150):
        before = access_state(fake, owners)
        (change,) = fake.advance(0, access=1)
        after = access_state(fake, owners)
        seen.add(change.kind)
        entity = change.entity_id
        changed = {route for route in ROUTES if before[route] != after[route]}
        kind = change.kind
        if kind.startswith("grant_"):
            was, now = _by_id(before, "grants").get(entity), _by_id(after, "grants").get(entity)
            assert changed == {"grants"}
            if kind == "grant_add":
                assert was is None and after["grants"][change.owner_id][-1] == now
                assert now["state"] == "Ok" and now["boundLockId"] == change.lock_id
            elif kind == "grant_revoke":
                assert (was["state"], now["state"], now["active"]) == ("Ok", "Revoked", False)
                assert {**now, "state": "Ok", "active": True} == was
            else:
                assert was is not None and now is None
        elif kind.startswith("contact_"):
            was, now = _by_id(before, "contacts").get(entity), _by_id(after, "contacts").get(entity)
            assert changed == {"contacts"}
            key = "email" if "email" in (was or now) else "identifier"
            if kind == "contact_add":
                assert was is None and after["contacts"][change.owner_id][-1] == now
            elif kind == "contact_rename":
                assert now["title"] != was["title"] and {**now, "title": was["title"]} == was
            elif kind == "contact_identifier":
                assert now[key] != was[key] and {**now, key: was[key]} == was
            else:
                assert was is not None and now is None
        elif kind.startswith("card_"):
            was, now = _by_id(before, "cards").get(entity), _by_id(after, "cards").get(entity)
            assert changed == {"cards"}
            if kind == "card_bind":
                assert was is None and after["cards"][change.owner_id][-1] == now
            else:
                assert was is not None and now is None
        else:
            assert changed == {"logs"}
            old, new = before["logs"][change.owner_id], after["logs"][change.owner_id]
            assert new[: len(old)] == old and new[len(old)].get("id") == entity
            added = new[len(old) :]
            assert all(e["receivedAt"] > old[-1]["receivedAt"] for e in added)
            if kind == "log_entries_late":
                assert {e["boundLockId"] for e in added} == {change.lock_id}
    assert seen == set(ACCESS_CHANGE_KINDS)


def test_direct_changes_of_contacts_and_cards() -> None:
    fake = Sandbox(seed=9)
    owner = sandbox_owner_ids(fake)[0]
    old = fake.contacts_payload(owner)
    new = fake.add_contact(owner, title="Dora Explorer", identifier="dora@example.com")
    legacy = fake.add_contact(owner, legacy_email=True)
    partner = fake.add_contact(owner, ip_id="partner.idp")
    contacts = fake.contacts_payload(owner)
    assert contacts[:-3] == old and [c["id"] for c in contacts[-3:]] == [new, legacy, partner]
    assert contacts[-3]["identifier"] == "dora@example.com" and "identifier" not in contacts[-2]
    assert "@" in contacts[-2]["email"] and contacts[-1]["ipId"] == "partner.idp"
    assert "@" not in contacts[-1]["identifier"]  # an email only for Tapkey users

    fake.update_contact(legacy, title="Old Timer", identifier="old@example.org")
    assert fake.contacts_payload(owner)[-2]["email"] == "old@example.org"
    fake.remove_contact(old[0]["id"])
    assert fake.contacts_payload(owner)[0] == old[1]  # later contacts move up

    cards = fake.cards_payload(owner)
    card = fake.bind_card(owner, title="Lobby badge")
    assert fake.cards_payload(owner)[-1]["title"] == "Lobby badge"
    fake.unbind_card(cards[0]["id"])  # unbound cards leave the list
    assert [c["id"] for c in fake.cards_payload(owner)] == [*[c["id"] for c in cards[1:]], card]
    with pytest.raises(KeyError, match="no bound card"):
        fake.unbind_card(cards[0]["id"])
    with pytest.raises(KeyError, match="no contact"):
        fake.update_contact("nobody", title="x")


def test_direct_changes_of_grants() -> None:
    fake = Sandbox(seed=9)
    owner = sandbox_owner_ids(fake)[0]
    lock = fake.locks_payload(owner)[2]["id"]
    card = fake.cards_payload(owner)[0]["id"]
    grants = fake.grants_payload(owner)
    ical = "DTSTART:20250106T080000\r\nRRULE:FREQ=DAILY"
    timed = fake.add_grant(owner, lock_id=lock, card_id=card, valid_from="2025-01-01T00:00:00.000Z",
                           valid_before="2025-02-01T00:00:00.000Z")  # fmt: skip
    weekly = fake.add_grant(owner, time_restriction_ical=ical)
    listed = fake.grants_payload(owner)
    assert listed[:-2] == grants and [g["id"] for g in listed[-2:]] == [timed, weekly]
    assert (listed[-2]["boundLockId"], listed[-2]["boundCardId"], listed[-2]["contactId"]) == (
        lock, card, None
    )  # fmt: skip
    assert listed[-2]["validBefore"] == "2025-02-01T00:00:00.000Z"
    assert listed[-1]["timeRestrictionIcal"] == ical and listed[-1]["validFrom"] is None

    fake.revoke_grant(timed)
    revoked = fake.grants_payload(owner)[-2]
    assert (revoked["id"], revoked["state"], revoked["active"]) == (timed, "Revoked", False)
    fake.remove_grant(grants[0]["id"])
    assert fake.grants_payload(owner)[0] == grants[1]
    with pytest.raises(ValueError, match="not both"):
        fake.add_grant(owner, contact_id="a", card_id="b")
    with pytest.raises(KeyError, match="no contact"):
        fake.add_grant(owner, contact_id="nobody")
    lockless = Sandbox(locks_per_owner=0)
    with pytest.raises(ValueError, match="no bound lock"):
        lockless.add_grant(sandbox_owner_ids(lockless)[0])


def test_appended_log_entries_online_late_and_at_a_chosen_instant() -> None:
    fake = Sandbox(seed=9)
    owner = sandbox_owner_ids(fake)[0]
    old = fake.log_entries_payload(owner)
    last_no = {e["boundLockId"]: e["entryNo"] for e in old}

    online = fake.append_log_entries(owner, 2)  # of at most two of the five locks
    entries = fake.log_entries_payload(owner)
    assert entries[:-2] == old and [e["id"] for e in entries[-2:]] == online
    for entry in entries[-2:]:
        assert old[-1]["receivedAt"] < "2025-01-01T00:00:00.000Z" <= entry["receivedAt"]
        delay = when(entry["receivedAt"]) - when(entry["lockTimestamp"])
        assert dt.timedelta(0) <= delay < dt.timedelta(minutes=10)
        assert entry["entryNo"] > last_no.get(entry["boundLockId"], 0)
        last_no[entry["boundLockId"]] = entry["entryNo"]

    late = fake.append_log_entries(owner, 4, late=True)
    backlog = fake.log_entries_payload(owner)[-4:]
    assert [e["id"] for e in backlog] == late and len({e["boundLockId"] for e in backlog}) == 1
    lock = backlog[0]["boundLockId"]
    assert [e["entryNo"] for e in backlog] == list(
        range(last_no.get(lock, 0) + 1, last_no.get(lock, 0) + 5)
    )
    assert all(
        when(e["receivedAt"]) - when(e["lockTimestamp"]) > dt.timedelta(hours=1) for e in backlog
    )
    # The quietest lock's backlog: older than entries received before it.
    assert backlog[0]["lockTimestamp"] < entries[-1]["receivedAt"]

    tie = entries[-1]["receivedAt"]
    tied = fake.append_log_entries(owner, 2, received_at=tie)
    listed = fake.log_entries_payload(owner)
    same = [(e["receivedAt"], e["id"]) for e in listed if e["receivedAt"] == tie]
    assert len(same) == 3 and same == sorted(same) and set(tied) < {i for _, i in same}
    assert [(e["receivedAt"], e["id"]) for e in listed] == sorted(
        (e["receivedAt"], e["id"]) for e in listed
    )
    lockless = Sandbox(locks_per_owner=0)
    with pytest.raises(ValueError, match="no bound lock"):
        lockless.append_log_entries(sandbox_owner_ids(lockless)[0])
