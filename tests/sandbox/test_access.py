"""The sandbox's access data over real HTTP: contacts, bound cards, grants and log entries."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from support.helpers import sandbox_owner_ids
from support.sandbox_http import GUID, ISO_MS, api, get_token

from exporter.sandbox.odata import matches, parse_filter
from exporter.sandbox.server import ACCESS_CHANGE_KINDS, Fault, Sandbox

ROUTES = {  # sandbox route -> (path, payload accessor, scope)
    "contacts": ("Contacts", "contacts_payload", "read:core:entities"),
    "cards": ("BoundCards", "cards_payload", "read:core:entities"),
    "grants": ("Grants", "grants_payload", "read:grants"),
    "logs": ("LogEntries", "log_entries_payload", "read:logs"),
}
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


def payload(fake: Sandbox, route: str, owner: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = getattr(fake, ROUTES[route][1])(owner)
    return result


def path(route: str, owner: str) -> str:
    return f"/Owners/{owner}/{ROUTES[route][0]}"


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def access_state(
    fake: Sandbox, owners: list[str] | None = None
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every list of `owners` (default: the visible ones) by route and owner."""
    owners = sandbox_owner_ids(fake) if owners is None else owners
    return {route: {owner: payload(fake, route, owner) for owner in owners} for route in ROUTES}


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


# -- paging ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", list(ROUTES))
def test_every_route_is_paged_with_top_and_skip(
    sandbox: Sandbox, session: requests.Session, route: str
) -> None:
    token = get_token(sandbox, session)
    owner = sandbox_owner_ids(sandbox)[2]
    expected = payload(sandbox, route, owner)
    pages = [
        api(sandbox, session, path(route, owner), token, **{"$top": 3, "$skip": skip}).json()
        for skip in range(0, len(expected) + 3, 3)
    ]
    assert [item for page in pages for item in page] == expected
    assert pages[-1] == [] and all(len(page) == 3 for page in pages[:-2])
    assert api(sandbox, session, path(route, owner), token, **{"$top": 0}).json() == []
    sandbox.max_top = 2  # the same code path as BoundLocks: a silent server-side cap
    capped = api(sandbox, session, path(route, owner), token, **{"$top": 5, "$skip": 1})
    assert capped.json() == expected[1:3]
    bad = api(sandbox, session, path(route, owner), token, **{"$top": "-1"})
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_request")


def test_a_list_changing_between_pages(sandbox: Sandbox, session: requests.Session) -> None:
    token = get_token(sandbox, session)
    owner = sandbox_owner_ids(sandbox)[0]
    grants = sandbox.grants_payload(owner)
    first = api(sandbox, session, path("grants", owner), token, **{"$top": 3}).json()
    sandbox.remove_grant(grants[0]["id"])  # later grants move up: one is never seen
    second = api(sandbox, session, path("grants", owner), token, **{"$top": 3, "$skip": 3}).json()
    assert first == grants[:3] and second == grants[4:7]

    entries = sandbox.log_entries_payload(owner)
    first = api(sandbox, session, path("logs", owner), token, **{"$top": 8}).json()
    new = sandbox.append_log_entries(owner, 2)  # received now: listed after every older entry
    rest = api(sandbox, session, path("logs", owner), token, **{"$skip": 8}).json()
    assert first + rest == [*entries, *sandbox.log_entries_payload(owner)[-2:]]
    assert [entry["id"] for entry in rest[-2:]] == new


# -- scopes and permissions -----------------------------------------------------------------------


@pytest.mark.parametrize("route", list(ROUTES))
def test_each_route_needs_its_scope(
    sandbox: Sandbox, session: requests.Session, route: str
) -> None:
    owner = sandbox_owner_ids(sandbox)[0]
    scope = ROUTES[route][2]
    allowed = get_token(sandbox, session, scope=scope)
    assert api(sandbox, session, path(route, owner), allowed).status_code == 200
    every = ("read:owneraccounts", "read:core:entities", "read:grants", "read:logs")
    others = get_token(sandbox, session, scope=" ".join(s for s in every if s != scope))
    denied = api(sandbox, session, path(route, owner), others)
    assert (denied.status_code, denied.json()["error"]) == (403, "insufficient_scope")
    assert denied.headers["WWW-Authenticate"].endswith(f'scope="{scope}"')
    assert api(sandbox, session, path(route, owner), None).status_code == 401


def test_a_client_can_be_refused_the_new_scopes(session: requests.Session) -> None:
    with Sandbox(granted_scopes="read:owneraccounts read:core:entities") as fake:
        reply = session.post(
            fake.token_url,
            data={"grant_type": "client_credentials", "scope": "read:core:entities read:logs"},
            auth=("sandbox-client", "sandbox-secret"),
            timeout=5,
        )
        assert (reply.status_code, reply.json()["error"]) == (400, "invalid_scope")
        token = get_token(fake, session)  # no scope asked: the two granted ones
        owner = sandbox_owner_ids(fake)[0]
        assert api(fake, session, path("contacts", owner), token).status_code == 200
        assert api(fake, session, path("logs", owner), token).status_code == 403


def test_deny_answers_403_for_one_route_of_one_owner(
    sandbox: Sandbox, session: requests.Session
) -> None:
    token = get_token(sandbox, session)
    target, other = sandbox_owner_ids(sandbox)[:2]
    sandbox.deny(target, "logs")
    sandbox.deny(other, "locks")

    def status(route: str, owner: str) -> int:
        where = f"/Owners/{owner}/BoundLocks" if route == "locks" else path(route, owner)
        reply = api(sandbox, session, where, token)
        if reply.status_code == 403:
            assert reply.json()["error"] == "forbidden"
        return reply.status_code

    assert [status(r, target) for r in ("locks", *ROUTES)] == [200, 200, 200, 200, 403]
    assert [status(r, other) for r in ("locks", *ROUTES)] == [403, 200, 200, 200, 200]
    sandbox.allow(target, "logs")
    assert status("logs", target) == 200
    with pytest.raises(ValueError, match="route must be one of"):
        sandbox.deny(target, "owners")
    with pytest.raises(KeyError):
        sandbox.deny("no-such-owner", "logs")


def test_hidden_owners_are_403_on_every_access_route(
    sandbox: Sandbox, session: requests.Session
) -> None:
    token = get_token(sandbox, session)
    hidden = sandbox_owner_ids(sandbox)[1]
    sandbox.hide_owner(hidden)
    for route in ROUTES:
        reply = api(sandbox, session, path(route, hidden), token)
        assert (reply.status_code, reply.json()["error"]) == (403, "forbidden")
    assert sandbox.grants_payload(hidden)  # the accessors still show it


# -- $filter --------------------------------------------------------------------------------------


@pytest.fixture
def logs() -> Iterator[Sandbox]:
    with Sandbox(seed=5, owners=1, locks_per_owner=4, log_entries_per_owner=80) as fake:
        yield fake


def _after(entries: list[dict[str, Any]], moment: dt.datetime, inclusive: bool) -> list[str]:
    """The ids of entries received after `moment` (or at it, if `inclusive`), in list order."""
    received = [(when(e["receivedAt"]), e["id"]) for e in entries]
    return [i for at, i in received if at > moment or (inclusive and at == moment)]


def test_log_entries_filter_on_received_at_type_and_command(
    logs: Sandbox, session: requests.Session
) -> None:
    token = get_token(logs, session)
    owner = sandbox_owner_ids(logs)[0]
    entries = logs.log_entries_payload(owner)
    pivot = entries[30]["receivedAt"]
    moment = when(pivot)
    opening = [
        e["id"] for e in entries if (e["logType"], e["command"]) == ("Command", "TriggerLock")
    ]
    plus_one = (moment + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0+01:00"

    def ids(expression: str, **extra: Any) -> list[str]:
        reply = api(logs, session, path("logs", owner), token, **{"$filter": expression}, **extra)
        assert reply.status_code == 200, reply.text
        return [entry["id"] for entry in reply.json()]

    assert ids(f"receivedAt gt {pivot}") == _after(entries, moment, False)
    assert ids(f"receivedAt ge {pivot}") == _after(entries, moment, True)
    assert ids(f"receivedAt gt {plus_one}") == _after(entries, moment, False)  # 7 digits, offset
    minute = moment.replace(second=0, microsecond=0)
    assert ids(f"receivedAt gt {pivot[:16]}Z") == _after(entries, minute, False)  # no seconds
    assert ids("logType eq 'Command'") == [e["id"] for e in entries if e["logType"] == "Command"]
    assert ids("command eq 'TriggerLock'") == opening
    assert ids("logType eq 'Command' and command eq 'TriggerLock'") == opening
    both = ids(f"receivedAt ge {pivot} and logType eq 'Command' and command eq 'TriggerLock'")
    assert both == [i for i in _after(entries, moment, True) if i in opening]
    assert 0 < len(both) < len(opening) < len(entries)
    paged = ids(f"receivedAt ge {pivot}", **{"$top": 5, "$skip": 5})
    assert paged == _after(entries, moment, True)[5:10]  # filtered first, then paged
    either = ids("logType eq 'DoorAjar' or logType eq 'ClockSync'")
    assert either == [e["id"] for e in entries if e["logType"] in ("DoorAjar", "ClockSync")]


@pytest.mark.parametrize(
    "literal, received_ms, after",
    [
        pytest.param("2025-01-01T00:00:00.0005Z", 1_735_689_600_000, False, id="sub-ms-before"),
        pytest.param("2025-01-01T00:00:00.0005Z", 1_735_689_600_001, True, id="sub-ms-after"),
        pytest.param("2025-01-01T01:00:00+01:00", 1_735_689_600_000, False, id="offset-same"),
        pytest.param("2025-01-01T01:00:00+01:00", 1_735_689_600_001, True, id="offset-after"),
        pytest.param("2024-12-31T23:59-00:01", 1_735_689_600_000, False, id="negative-offset"),
        pytest.param("2024-12-31T23:59:59.999999999999z", 1_735_689_600_000, True, id="12-digits"),
    ],
)
def test_date_time_offset_literals_compare_exactly(
    literal: str, received_ms: int, after: bool
) -> None:
    parsed = parse_filter(f"receivedAt gt {literal}", {"receivedAt": "datetime"})
    assert matches(parsed, lambda name: received_ms) is after


@pytest.mark.parametrize(
    "expression",
    [
        pytest.param("", id="empty"),
        pytest.param("colour eq 'red'", id="unknown-property"),
        pytest.param("logtype eq 'Command'", id="property-case"),
        pytest.param("logType gt 'Command'", id="string-order"),
        pytest.param("logType eq Command", id="unquoted-string"),
        pytest.param("receivedAt gt '2025-01-01T00:00:00Z'", id="quoted-date"),
        pytest.param("receivedAt gt 2025-13-01T00:00:00Z", id="month-13"),
        pytest.param("receivedAt gt 2025-01-01T00:00:00", id="no-offset"),
        pytest.param("receivedAt gt 2025-01-01T00:00:00 01:00", id="plus-as-space"),
        pytest.param("receivedAt GT 2025-01-01T00:00:00Z", id="operator-case"),
        pytest.param("logType eq 'Command' AND command eq 'TriggerLock'", id="and-case"),
        pytest.param("(logType eq 'Command')", id="parentheses"),
        pytest.param("logType eq 'Command' and", id="dangling-and"),
        pytest.param("contactId eq null", id="null"),
        pytest.param("contains(logType, 'Com')", id="function"),
    ],
)
def test_filters_outside_the_subset_are_400_with_an_odata_error(
    logs: Sandbox, session: requests.Session, expression: str
) -> None:
    token = get_token(logs, session)
    reply = api(
        logs, session, path("logs", sandbox_owner_ids(logs)[0]), token, **{"$filter": expression}
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert set(error) == {"code", "message", "target"} and error["target"] == "$filter"
    assert error["message"].startswith("The query specified in the URI is not valid.")


def test_unsupported_query_options_are_400(sandbox: Sandbox, session: requests.Session) -> None:
    token = get_token(sandbox, session)
    owner = sandbox_owner_ids(sandbox)[0]
    ordered = api(sandbox, session, path("logs", owner), token, **{"$orderby": "lockTimestamp"})
    assert ordered.status_code == 400 and ordered.json()["error"]["target"] == "$orderby"
    selected = api(sandbox, session, path("logs", owner), token, **{"$select": "id"})
    assert selected.json() == sandbox.log_entries_payload(owner)  # ignored: more fields are fine
    expanded = api(sandbox, session, path("grants", owner), token, **{"$expand": "contact"})
    assert expanded.status_code == 400


def test_a_server_that_cannot_filter_on_received_at(session: requests.Session) -> None:
    with Sandbox(seed=5, received_at_filter=False) as fake:
        token = get_token(fake, session)
        owner = sandbox_owner_ids(fake)[0]
        where = path("logs", owner)
        refused = api(fake, session, where, token, **{"$filter": "receivedAt gt 2024-01-01T00:00Z"})
        assert refused.status_code == 400
        assert "'receivedAt' cannot be used in the $filter" in refused.json()["error"]["message"]
        typed = api(fake, session, where, token, **{"$filter": "logType eq 'Command'"})
        assert typed.status_code == 200 and typed.json()
        fake.received_at_filter = True
        assert api(
            fake, session, where, token, **{"$filter": "receivedAt gt 2024-01-01T00:00Z"}
        ).json()


def test_simple_filters_on_the_other_routes(sandbox: Sandbox, session: requests.Session) -> None:
    token = get_token(sandbox, session)
    owner = sandbox_owner_ids(sandbox)[0]
    contacts = sandbox.contacts_payload(owner)
    wanted = f"id eq '{contacts[3]['id']}' or id eq '{contacts[1]['id']}'"
    reply = api(sandbox, session, path("contacts", owner), token, **{"$filter": wanted})
    assert reply.json() == [contacts[1], contacts[3]]  # list order, not filter order
    grant = sandbox.grants_payload(owner)[0]
    sandbox.revoke_grant(grant["id"])
    revoked = api(
        sandbox, session, path("grants", owner), token, **{"$filter": "state eq 'Revoked'"}
    )
    assert grant["id"] in [g["id"] for g in revoked.json()]
    assert all(g["state"] == "Revoked" for g in revoked.json())
    title = api(sandbox, session, path("cards", owner), token, **{"$filter": "title eq 'x'"})
    assert title.status_code == 400


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


# -- faults ---------------------------------------------------------------------------------------


def test_faults_and_counters_cover_the_access_routes(
    sandbox: Sandbox, session: requests.Session
) -> None:
    token = get_token(sandbox, session)
    target, other = sandbox_owner_ids(sandbox)[:2]
    sandbox.add_fault(Fault(route="logs", status=503, owner_id=target, times=2))
    sandbox.add_fault(Fault(route="contacts", kind="truncate"))

    def status(route: str, owner: str) -> int:
        return api(sandbox, session, path(route, owner), token).status_code

    calls = [("logs", other), ("logs", target), ("grants", target), ("logs", target)] * 1
    calls.append(("logs", target))
    assert [status(*call) for call in calls] == [200, 503, 200, 503, 200]
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # half a body, then closed
        api(sandbox, session, path("contacts", other), token)
    assert sandbox.requests == {"token": 1, "logs": 4, "grants": 1, "contacts": 1}
    with pytest.raises(ValueError, match="routes of one owner"):
        sandbox.add_fault(Fault(route="owners", owner_id=target))
