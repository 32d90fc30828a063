"""The sandbox's access payloads: fields, types, consistency, and the lock data left as it was."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from typing import Any

import pytest
import requests
from support.helpers import sandbox_owner_ids
from support.sandbox_access import ROUTES, access_state, path, payload, when
from support.sandbox_http import GUID, ISO_MS, api, get_token

from exporter.sandbox.server import Sandbox

CONTACT_KEYS = {"comment", "id", "ipId", "ownerId", "title"}
CARD_KEYS = {
    "bindDate", "id", "isActive", "label", "nofGrantsCapacity", "physicalCardId", "title", "uid",
    "unbindDate",
}  # fmt: skip
GRANT_KEYS = {
    "active", "boundCard", "boundCardId", "boundLock", "boundLockId", "contact", "contactId", "id",
    "owner", "state", "timeRestrictionIcal", "validBefore", "validFrom",
}  # fmt: skip
LOG_KEYS = {
    "boundCardId", "boundLockId", "command", "contactId", "entryNo", "id", "lockTimestamp",
    "logType", "receivedAt",
}  # fmt: skip
# A larger mix than the defaults, so that every variant shows up.
RICH = {
    "owners": 4,
    "locks_per_owner": 6,
    "contacts_per_owner": 8,
    "cards_per_owner": 4,
    "grants_per_owner": 14,
    "log_entries_per_owner": 60,
}


# -- payloads -------------------------------------------------------------------------------------


def test_payloads_have_the_documented_fields_and_types() -> None:
    fake = Sandbox(seed=3, **RICH)
    seen: set[str] = set()
    for owner in sandbox_owner_ids(fake):
        locks = {lock["id"] for lock in fake.locks_payload(owner)}
        contacts = {c["id"]: c for c in fake.contacts_payload(owner)}
        cards = {c["id"]: c for c in fake.cards_payload(owner)}
        for contact in contacts.values():
            legacy = "email" in contact
            assert set(contact) == CONTACT_KEYS | {"email" if legacy else "identifier"}
            assert GUID.fullmatch(contact["id"]) and contact["ownerId"] == owner
            identity = contact["email" if legacy else "identifier"]
            if contact["ipId"] == "tapkey":
                assert "@" in identity
                seen.add("legacy email" if legacy else "tapkey identifier")
            else:
                assert not legacy and "@" not in identity
                seen.add("other identity provider")
            assert isinstance(contact["title"], str)
            assert contact["comment"] is None or isinstance(contact["comment"], str)
        for card in cards.values():
            assert set(card) == CARD_KEYS and card["unbindDate"] is None
            uid = bytes.fromhex(card["uid"])
            raw = base64.b64decode(card["physicalCardId"])
            assert int.from_bytes(raw[:2], "little") == len(uid) and raw[2:] == uid
            assert ISO_MS.fullmatch(card["bindDate"]) and isinstance(card["isActive"], bool)
            assert isinstance(card["nofGrantsCapacity"], int) and isinstance(card["label"], str)
        for grant in fake.grants_payload(owner):
            assert set(grant) == GRANT_KEYS and GUID.fullmatch(grant["id"])
            assert grant["boundLockId"] in locks
            assert (grant["contactId"] in contacts) != (grant["boundCardId"] in cards)
            assert grant["active"] is (grant["state"] == "Ok") and grant["state"] in (
                "Ok",
                "Revoked",
            )
            assert grant["contact"] is grant["boundLock"] is grant["owner"] is None
            for key in ("validFrom", "validBefore"):
                assert grant[key] is None or ISO_MS.fullmatch(grant[key])
            if grant["validFrom"] and grant["validBefore"]:
                assert grant["validFrom"] < grant["validBefore"]
            seen.add(grant["state"])
            seen.add("card grant" if grant["boundCardId"] else "contact grant")
            if grant["timeRestrictionIcal"]:
                assert "RRULE:FREQ=WEEKLY" in grant["timeRestrictionIcal"]
                seen.add("ical")
            elif grant["validBefore"]:
                seen.add("valid before")
            elif grant["validFrom"] is None:
                seen.add("unrestricted")
    assert seen == {
        "legacy email", "tapkey identifier", "other identity provider", "Ok", "Revoked",
        "card grant", "contact grant", "ical", "valid before", "unrestricted",
    }  # fmt: skip


def test_log_entries_are_consistent_in_time_and_per_lock() -> None:
    fake = Sandbox(seed=3, **RICH)
    late = other_types = 0
    for owner in sandbox_owner_ids(fake):
        entries = fake.log_entries_payload(owner)
        assert len(entries) > 40  # a lock bound in the last days before 2025 has no history
        grants = fake.grants_payload(owner)
        holders = {(g["boundLockId"], g["contactId"], g["boundCardId"]) for g in grants}
        assert [(e["receivedAt"], e["id"]) for e in entries] == sorted(
            (e["receivedAt"], e["id"]) for e in entries
        )  # the documented order
        by_lock: dict[str, list[dict[str, Any]]] = {}
        for entry in entries:
            assert set(entry) == LOG_KEYS and GUID.fullmatch(entry["id"])
            assert ISO_MS.fullmatch(entry["lockTimestamp"]) and ISO_MS.fullmatch(
                entry["receivedAt"]
            )
            assert entry["lockTimestamp"] <= entry["receivedAt"] < "2025"
            if when(entry["receivedAt"]) - when(entry["lockTimestamp"]) >= dt.timedelta(hours=2):
                late += 1
            if entry["logType"] != "Command":
                other_types += 1
                assert entry["command"] is None and entry["contactId"] is entry["boundCardId"]
            elif entry["contactId"] or entry["boundCardId"]:
                assert (entry["boundLockId"], entry["contactId"], entry["boundCardId"]) in holders
            by_lock.setdefault(entry["boundLockId"], []).append(entry)
        for lock_entries in by_lock.values():  # listed by receivedAt: a lock uploads in order
            numbers = [e["entryNo"] for e in lock_entries]
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
            stamps = [e["lockTimestamp"] for e in lock_entries]
            assert stamps == sorted(stamps)
    assert late >= 5 and other_types >= 5


def test_the_routes_serve_the_payloads_byte_for_byte_the_same_for_a_seed(
    session: requests.Session,
) -> None:
    bodies = []
    for _ in range(2):
        with Sandbox(seed=42, owners=2, locks_per_owner=4) as fake:
            token = get_token(fake, session)
            owner = sandbox_owner_ids(fake)[1]
            replies = {route: api(fake, session, path(route, owner), token) for route in ROUTES}
            for route, reply in replies.items():
                assert reply.status_code == 200 and reply.json() == payload(fake, route, owner)
            bodies.append([reply.content for reply in replies.values()])
            lower = api(fake, session, f"/owners/{owner}/boundcards", token)  # ASP.NET: any case
            assert lower.json() == fake.cards_payload(owner)
    assert bodies[0] == bodies[1]
    assert access_state(Sandbox(seed=1)) != access_state(Sandbox(seed=2))


def test_sizes_are_options_and_zero_means_none() -> None:
    fake = Sandbox(seed=7)
    owner = sandbox_owner_ids(fake)[0]
    defaults = [len(payload(fake, route, owner)) for route in ROUTES]
    assert defaults == [4, 2, 6, 12]
    sized = Sandbox(seed=7, contacts_per_owner=1, cards_per_owner=3, grants_per_owner=0)
    assert [len(payload(sized, route, owner)) for route in ROUTES] == [1, 3, 0, 12]
    empty = Sandbox(
        contacts_per_owner=0, cards_per_owner=0, grants_per_owner=0, log_entries_per_owner=0
    )
    assert not any(lists for lists in access_state(empty).values() for lists in lists.values())
    no_locks = Sandbox(locks_per_owner=0)
    assert not any(no_locks.grants_payload(o) or no_locks.log_entries_payload(o)
                   for o in sandbox_owner_ids(no_locks))  # fmt: skip
    with pytest.raises(ValueError, match="must be >= 0"):
        Sandbox(grants_per_owner=-1)


# -- the existing data is unchanged ---------------------------------------------------------------


def test_owners_locks_and_lock_changes_are_those_of_before_the_access_data() -> None:
    """A digest of owners, locks (with health) and advance() results for several seeds.

    The digest was computed with main's sandbox at 29391d5, before the access data existed:
    tests and benchmarks that rely on a seed's owners, locks and changes are unaffected.
    """
    configs = [(0, 3, 5), (7, 3, 5), (11, 4, 4), (21, 4, 6), (5, 24, 2), (1, 1, 2), (41, 3, 24)]
    digest = hashlib.sha256()
    for seed, owners, locks in configs:
        fake = Sandbox(seed=seed, owners=owners, locks_per_owner=locks)
        for changes in (0, 1, 5, 8, 3, 20, 2, 1000 if seed == 0 else 4):
            if changes:
                applied = [(c.kind, c.owner_id, c.lock_id, c.detail) for c in fake.advance(changes)]
                digest.update(json.dumps(applied).encode())
            digest.update(json.dumps(fake.owners_payload()).encode())
            for owner in list(fake._data.owners):
                digest.update(fake._data.locks_json(owner, health=True))
    assert digest.hexdigest() == "90e29502110c36625d786a2ac05e5a53465e25c8925b3b1497bccc4c424793e7"


def test_access_changes_leave_the_lock_changes_of_a_generation_alone() -> None:
    plain, both = Sandbox(seed=12), Sandbox(seed=12)
    for _ in range(6):
        lock_changes = plain.advance(3)
        assert both.advance(3, access=4)[:3] == lock_changes
        assert both.snapshot() == plain.snapshot()
        assert both.owners_payload() == plain.owners_payload()
