"""The sandbox's access routes over real HTTP: paging, scopes, permissions and faults."""

from __future__ import annotations

import pytest
import requests
from support.helpers import sandbox_owner_ids
from support.sandbox_access import ROUTES, path, payload
from support.sandbox_http import api, get_token

from exporter.sandbox.server import Fault, Sandbox

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
