"""The Tapkey sandbox over real HTTP: tokens, bearer checks, paging, data, generations, faults."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from support.helpers import SANDBOX_SECRET, FakeClock, sandbox_owner_ids
from support.sandbox_http import GUID, ISO_MS, api, get_token

from exporter.sandbox.server import CHANGE_KINDS, Fault, Sandbox, SandboxRequest, serve_forever

LOCK_KEYS = {
    "active", "bindDate", "description", "healthStatuses", "id", "lastSeenRclSerialNo",
    "lastSeenRclUpdateDate", "lockType", "lockTypeId", "membershipStatistics", "ownerAccountId",
    "physicalLockId", "rclDate", "rclSerialNo", "supportedFeatures", "targetType", "title",
    "unbindDate",
}  # fmt: skip


# -- token endpoint -------------------------------------------------------------------------------


@pytest.mark.parametrize("basic", [True, False], ids=["basic-auth", "form-body"])
def test_token_is_issued_to_the_right_client(
    sandbox: Sandbox, session: requests.Session, basic: bool
) -> None:
    form = {"grant_type": "client_credentials"}
    if not basic:
        form |= {"client_id": "sandbox-client", "client_secret": SANDBOX_SECRET}
    auth = ("sandbox-client", SANDBOX_SECRET) if basic else None
    reply = session.post(sandbox.token_url, data=form, auth=auth, timeout=5)

    assert reply.status_code == 200
    body = reply.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["scope"] == "read:owneraccounts read:core:entities read:grants read:logs"
    assert reply.headers["Cache-Control"] == "no-store"
    assert api(sandbox, session, "/Owners", body["access_token"]).status_code == 200


@pytest.mark.parametrize(
    "form, auth, status, error",
    [
        pytest.param({}, ("sandbox-client", "wrong"), 401, "invalid_client", id="bad-secret"),
        pytest.param({}, ("someone", SANDBOX_SECRET), 401, "invalid_client", id="unknown-client"),
        pytest.param({}, None, 401, "invalid_client", id="no-credentials"),
        pytest.param(
            {"client_id": "other"}, ("sandbox-client", SANDBOX_SECRET), 401, "invalid_client",
            id="basic-and-form-disagree",
        ),
        pytest.param(
            {"grant_type": "password"}, ("sandbox-client", SANDBOX_SECRET), 400,
            "unsupported_grant_type", id="grant-type",
        ),
        pytest.param(
            {"grant_type": ""}, ("sandbox-client", SANDBOX_SECRET), 400, "unsupported_grant_type",
            id="no-grant-type",
        ),
        pytest.param(
            {"scope": "read:owneraccounts write:core:entities"}, ("sandbox-client", SANDBOX_SECRET),
            400, "invalid_scope", id="scope-not-granted",
        ),
    ],
)  # fmt: skip
def test_token_errors(
    sandbox: Sandbox,
    session: requests.Session,
    form: dict[str, str],
    auth: tuple[str, str] | None,
    status: int,
    error: str,
) -> None:
    data = {"grant_type": "client_credentials", **form}
    reply = session.post(sandbox.token_url, data=data, auth=auth, timeout=5)
    assert (reply.status_code, reply.json()["error"]) == (status, error)


def test_token_endpoint_wants_a_form(sandbox: Sandbox, session: requests.Session) -> None:
    reply = session.post(sandbox.token_url, json={"grant_type": "client_credentials"}, timeout=5)
    assert (reply.status_code, reply.json()["error"]) == (400, "invalid_request")


def test_rfc6749_form_encoded_basic_credentials_are_accepted(session: requests.Session) -> None:
    with Sandbox(client_id="id:with colon", client_secret="s3cr&t+") as fake:
        raw = "id%3Awith+colon:s3cr%26t%2B"
        headers = {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}
        data = {"grant_type": "client_credentials"}
        reply = session.post(fake.token_url, data=data, headers=headers, timeout=5)
        assert reply.status_code == 200


def test_a_token_carries_only_the_requested_scopes(
    sandbox: Sandbox, session: requests.Session
) -> None:
    reply = session.post(
        sandbox.token_url,
        data={"grant_type": "client_credentials", "scope": "read:owneraccounts"},
        auth=("sandbox-client", SANDBOX_SECRET),
        timeout=5,
    )
    token = reply.json()["access_token"]
    assert reply.json()["scope"] == "read:owneraccounts"
    assert api(sandbox, session, "/Owners", token).status_code == 200

    denied = api(sandbox, session, f"/Owners/{sandbox_owner_ids(sandbox)[0]}/BoundLocks", token)
    assert (denied.status_code, denied.json()["error"]) == (403, "insufficient_scope")


def test_a_client_without_a_scope_gets_403_on_its_route(session: requests.Session) -> None:
    with Sandbox(granted_scopes="read:core:entities") as fake:
        token = get_token(fake, session)  # no scope asked: everything granted, i.e. one scope
        assert api(fake, session, "/Owners", token).status_code == 403
        owner = fake.snapshot().popitem()[0]
        assert api(fake, session, f"/Owners/{owner}/BoundLocks", token).status_code == 200


def test_secrets_and_tokens_are_never_logged(
    sandbox: Sandbox, session: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter.sandbox.server")
    token = get_token(sandbox, session)
    api(sandbox, session, "/Owners", token)
    api(sandbox, session, "/Owners", "not-a-token")
    assert SANDBOX_SECRET not in caplog.text and token not in caplog.text
    assert SANDBOX_SECRET not in repr(sandbox)


# -- bearer checks --------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "forged"], ids=["missing", "unknown"])
def test_api_without_a_valid_bearer_is_401(
    sandbox: Sandbox, session: requests.Session, token: str | None
) -> None:
    reply = api(sandbox, session, "/Owners", token)
    assert reply.status_code == 401
    assert reply.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert reply.json()["error"] == "invalid_token"


def test_tokens_expire_by_the_injected_clock(session: requests.Session) -> None:
    clock = FakeClock()
    with Sandbox(token_lifetime=1.0, clock=clock) as fake:
        token = get_token(fake, session)
        clock.now += 0.99
        assert api(fake, session, "/Owners", token).status_code == 200
        clock.now += 0.01
        assert api(fake, session, "/Owners", token).status_code == 401


def test_revoked_tokens_are_401(sandbox: Sandbox, session: requests.Session) -> None:
    token = get_token(sandbox, session)
    sandbox.revoke_tokens()
    assert api(sandbox, session, "/Owners", token).status_code == 401
    assert api(sandbox, session, "/Owners", get_token(sandbox, session)).status_code == 200


def test_hidden_and_unknown_owners_are_403(sandbox: Sandbox, session: requests.Session) -> None:
    token = get_token(sandbox, session)
    hidden = sandbox_owner_ids(sandbox)[1]
    sandbox.hide_owner(hidden)

    assert hidden not in sandbox_owner_ids(sandbox) and hidden not in sandbox.snapshot()
    for owner in (hidden, "00000000-0000-4000-8000-000000000000"):
        reply = api(sandbox, session, f"/Owners/{owner}/BoundLocks", token)
        assert (reply.status_code, reply.json()["error"]) == (403, "forbidden")

    sandbox.show_owner(hidden)
    assert api(sandbox, session, f"/Owners/{hidden}/BoundLocks", token).status_code == 200
    assert sandbox_owner_ids(sandbox)[1] == hidden  # back in its old place


# -- routes, paging, payloads ---------------------------------------------------------------------


def test_unknown_paths_are_404_and_wrong_methods_405(
    sandbox: Sandbox, session: requests.Session
) -> None:
    assert session.get(f"{sandbox.base_url}/api/v1/Nope", timeout=5).status_code == 404
    wrong = session.post(f"{sandbox.base_url}/api/v1/Owners", timeout=5)
    assert (wrong.status_code, wrong.headers["Allow"]) == (405, "GET")
    assert wrong.json()["error"] == "method_not_allowed"
    assert session.get(sandbox.token_url, timeout=5).status_code == 405


def test_locks_are_paged_with_top_and_skip(sandbox: Sandbox, session: requests.Session) -> None:
    token = get_token(sandbox, session)
    owner = sandbox_owner_ids(sandbox)[0]
    pages = [
        api(sandbox, session, f"/Owners/{owner}/BoundLocks", token, **{"$top": 2, "$skip": skip})
        for skip in (0, 2, 4, 6)
    ]
    assert [len(page.json()) for page in pages] == [2, 2, 1, 0]
    assert [lock for page in pages for lock in page.json()] == sandbox.locks_payload(owner)
    empty = api(sandbox, session, f"/Owners/{owner}/BoundLocks", token, **{"$top": 0})
    assert empty.json() == []


def test_owners_are_paged_the_same_way(session: requests.Session) -> None:
    with Sandbox(owners=5, locks_per_owner=0) as fake:
        token = get_token(fake, session)
        first = api(fake, session, "/Owners", token, **{"$top": 3}).json()
        rest = api(fake, session, "/Owners", token, **{"$top": 3, "$skip": 3}).json()
        assert first + rest == fake.owners_payload() and len(rest) == 2
        assert set(first[0]) == {"id", "name", "active"}


@pytest.mark.parametrize("params", [{"$top": "-1"}, {"$top": "x"}, {"$skip": "1.5"}, {"$top": ""}])
def test_malformed_odata_options_are_400(
    sandbox: Sandbox, session: requests.Session, params: dict[str, str]
) -> None:
    token = get_token(sandbox, session)
    for path in ("/Owners", f"/Owners/{sandbox_owner_ids(sandbox)[0]}/BoundLocks"):
        reply = api(sandbox, session, path, token, **params)
        assert (reply.status_code, reply.json()["error"]) == (400, "invalid_request")


def test_max_top_caps_pages_silently(session: requests.Session) -> None:
    with Sandbox(locks_per_owner=7, max_top=3) as fake:
        token = get_token(fake, session)
        path = f"/Owners/{sandbox_owner_ids(fake)[0]}/BoundLocks"
        assert len(api(fake, session, path, token, **{"$top": 5}).json()) == 3
        assert len(api(fake, session, path, token).json()) == 3
        assert len(api(fake, session, path, token, **{"$top": 2}).json()) == 2
        assert len(api(fake, session, "/Owners", token).json()) == 3


def test_ignore_skip_returns_the_same_page_forever(
    sandbox: Sandbox, session: requests.Session
) -> None:
    token = get_token(sandbox, session)
    sandbox.ignore_skip = True
    path = f"/Owners/{sandbox_owner_ids(sandbox)[0]}/BoundLocks"
    pages = [api(sandbox, session, path, token, **{"$top": 2, "$skip": s}).json() for s in (0, 2)]
    owners = [
        api(sandbox, session, "/Owners", token, **{"$top": 1, "$skip": s}).json() for s in (0, 1)
    ]
    assert pages[0] == pages[1] and len(pages[0]) == 2
    assert owners[0] == owners[1]


def test_expand_health_statuses(sandbox: Sandbox, session: requests.Session) -> None:
    token = get_token(sandbox, session)
    owner = sandbox_owner_ids(sandbox)[0]
    path = f"/Owners/{owner}/BoundLocks"
    plain = api(sandbox, session, path, token).json()
    expanded = api(sandbox, session, path, token, expand="healthStatuses").json()

    assert all(lock["healthStatuses"] is None for lock in plain)
    assert [{**lock, "healthStatuses": None} for lock in expanded] == plain
    for lock in expanded:
        assert lock["healthStatuses"], "every lock reports at least a battery voltage"
        for reading in lock["healthStatuses"]:
            assert list(reading) == [
                "id",
                "physicalLockId",
                "timestamp",
                "type",
                "value",
                "valueStatus",
            ]
            assert reading["physicalLockId"] == lock["physicalLockId"]
            assert reading["type"] in {"BatteryVoltage", "Temperature", "BatteryWarningLevel"}
            assert reading["valueStatus"] in {"Ok", "Outdated", "Invalid"}
            assert ISO_MS.fullmatch(reading["timestamp"]) and GUID.fullmatch(reading["id"])
    assert api(sandbox, session, path, token, expand="healthStatuses").json() == expanded
    assert api(sandbox, session, path, token, expand="nonsense").status_code == 400
    assert api(sandbox, session, "/Owners", token, expand="healthStatuses").status_code == 400


def test_health_readings_change_with_a_health_change(session: requests.Session) -> None:
    with Sandbox(seed=3, owners=1, locks_per_owner=3) as fake:
        token = get_token(fake, session)
        owner = sandbox_owner_ids(fake)[0]

        def readings() -> dict[str, Any]:
            reply = api(
                fake, session, f"/Owners/{owner}/BoundLocks", token, expand="healthStatuses"
            )
            return {lock["id"]: lock["healthStatuses"] for lock in reply.json()}

        before = readings()
        while not (health := [c for c in fake.advance(1) if c.kind == "health"]):
            before = readings()
        after = readings()
        assert after[str(health[0].lock_id)] != before[str(health[0].lock_id)]


def test_payloads_have_the_documented_shape(sandbox: Sandbox) -> None:
    owners = sandbox.owners_payload()
    assert len(owners) == 3 and all(GUID.fullmatch(owner["id"]) for owner in owners)
    assert all(isinstance(owner["name"], str) and owner["name"] for owner in owners)
    for owner in owners:
        locks = sandbox.locks_payload(owner["id"])
        assert len(locks) == 5
        for lock in locks:
            assert set(lock) == LOCK_KEYS
            assert GUID.fullmatch(lock["id"]) and lock["ownerAccountId"] == owner["id"]
            assert lock["targetType"] == "Lock" and lock["unbindDate"] is None
            assert ISO_MS.fullmatch(lock["bindDate"])
            assert lock["rclDate"] is None or ISO_MS.fullmatch(lock["rclDate"])
            assert lock["rclSerialNo"] is None or isinstance(lock["rclSerialNo"], int)
            assert lock["lockType"]["id"] == lock["lockTypeId"]
            assert set(lock["lockType"]) == {
                "id", "manufacturerId", "modelName", "supportedTechnologies"
            }  # fmt: skip
            assert lock["healthStatuses"] is lock["supportedFeatures"] is None
            assert lock["membershipStatistics"] is None
            raw = base64.b64decode(lock["physicalLockId"], validate=True)
            assert int.from_bytes(raw[:2], "little") == len(raw) - 2 and 4 <= len(raw) - 2 <= 8


def test_the_documented_physical_lock_id_example_decodes_the_same_way() -> None:
    raw = base64.b64decode("BAASNL/7")
    assert int.from_bytes(raw[:2], "little") == 4 and raw[2:].hex("-").upper() == "12-34-BF-FB"


def test_keep_alive_and_content_length_on_one_connection(sandbox: Sandbox) -> None:
    host, port = sandbox.base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        for path in ("/api/v1/Owners", "/nowhere", "/api/v1/Owners"):
            connection.request("GET", path)
            reply = connection.getresponse()
            body = reply.read()
            assert int(reply.headers["Content-Length"]) == len(body)
            assert reply.headers.get("Connection") != "close"
            json.loads(body)
    finally:
        connection.close()


# -- data: determinism and generations -----------------------------------------------------------


def test_the_same_seed_gives_byte_identical_payloads(session: requests.Session) -> None:
    bodies = []
    for _ in range(2):
        with Sandbox(seed=42, owners=2, locks_per_owner=4) as fake:
            token = get_token(fake, session)
            owners = api(fake, session, "/Owners", token)
            locks = [
                api(fake, session, f"/Owners/{o['id']}/BoundLocks", token).content
                for o in owners.json()
            ]
            bodies.append((owners.content, locks))
    assert bodies[0] == bodies[1]
    assert Sandbox(seed=1).snapshot() == Sandbox(seed=1).snapshot()
    assert Sandbox(seed=1).snapshot() != Sandbox(seed=2).snapshot()


def test_advance_is_deterministic() -> None:
    first, second = Sandbox(seed=5), Sandbox(seed=5)
    for _ in range(6):
        assert first.advance(4) == second.advance(4)
        assert first.snapshot() == second.snapshot()
        assert first.owners_payload() == second.owners_payload()
    assert first.generation == 6
    assert Sandbox(seed=6).advance(4) != Sandbox(seed=5).advance(4)


def _state(fake: Sandbox, owners: list[str]) -> dict[str, Any]:
    visible = {owner["id"]: owner for owner in fake.owners_payload()}
    locks = {o: fake.locks_payload(o) for o in owners}
    by_id = {lock["id"]: lock for items in locks.values() for lock in items}
    return {"visible": visible, "locks": locks, "by_id": by_id}


def test_every_change_kind_does_what_it_says() -> None:
    fake = Sandbox(seed=11, owners=4, locks_per_owner=4)
    owners = sandbox_owner_ids(fake)
    seen: set[str] = set()
    for _ in range(200):
        before = _state(fake, owners)
        (change,) = fake.advance(1)
        after = _state(fake, owners)
        seen.add(change.kind)
        lock, was = after["by_id"].get(change.lock_id), before["by_id"].get(change.lock_id)
        owner_locks = after["locks"][change.owner_id]
        match change.kind:
            case "rename" | "description" | "active":
                field = {"rename": "title"}.get(change.kind, change.kind)
                assert lock[field] != was[field]
                assert {**lock, field: was[field]} == was
            case "rcl":
                assert lock["rclSerialNo"] == (was["rclSerialNo"] or 0) + 1
            case "health":
                assert lock == was  # only visible with expand=healthStatuses
            case "unbind":
                assert lock is None and was is not None
                assert len(after["by_id"]) == len(before["by_id"]) - 1
            case "bind":
                assert was is None and owner_locks[-1] == lock
                assert lock["physicalLockId"] not in {
                    other["physicalLockId"] for other in before["by_id"].values()
                }
            case "move":
                assert owner_locks[-1] == lock and lock["ownerAccountId"] == change.owner_id
                assert was["ownerAccountId"] != change.owner_id
                assert {**lock, "ownerAccountId": was["ownerAccountId"]} == was
            case "rebind":
                assert was is None and owner_locks[-1] == lock
                old_id = change.detail.split()[2]
                assert old_id not in after["by_id"]
                assert lock["physicalLockId"] == before["by_id"][old_id]["physicalLockId"]
                assert lock["bindDate"] > before["by_id"][old_id]["bindDate"]
            case "owner_lost":
                assert change.owner_id in before["visible"]
                assert change.owner_id not in after["visible"] and after["visible"]
            case "owner_regained":
                assert change.owner_id not in before["visible"]
                assert change.owner_id in after["visible"]
            case "owner_rename" | "owner_active":
                old = before["visible"].get(change.owner_id)
                new = after["visible"].get(change.owner_id)
                if old and new:  # a hidden owner changes unseen
                    key = "name" if change.kind == "owner_rename" else "active"
                    assert old[key] != new[key] and {**new, key: old[key]} == old
            case _:
                pytest.fail(f"unexpected change kind {change.kind}")
    assert seen == set(CHANGE_KINDS)


def test_a_single_owner_is_never_lost() -> None:
    fake = Sandbox(owners=1, locks_per_owner=2)
    for _ in range(30):
        fake.advance(3)
        assert fake.owners_payload()
    with pytest.raises(ValueError, match="at least one visible owner"):
        fake.hide_owner(sandbox_owner_ids(fake)[0])


def test_direct_mutations() -> None:
    fake = Sandbox(seed=9)
    first, second = sandbox_owner_ids(fake)[:2]
    ids = [lock["id"] for lock in fake.locks_payload(first)]

    fake.unbind(ids[1])  # later locks move up one place
    assert [lock["id"] for lock in fake.locks_payload(first)] == [ids[0], *ids[2:]]
    new = fake.bind_new(first)
    assert fake.locks_payload(first)[-1]["id"] == new and GUID.fullmatch(new)
    fake.rename(ids[0], "Front Door 1")
    fake.update_lock(ids[0], description="new text", active=False, rclSerialNo=42)
    lock = fake.locks_payload(first)[0]
    assert (lock["title"], lock["description"], lock["active"], lock["rclSerialNo"]) == (
        "Front Door 1", "new text", False, 42
    )  # fmt: skip
    with pytest.raises(ValueError, match="cannot set"):
        fake.update_lock(ids[0], colour="red")

    fake.move(ids[0], second)
    moved = fake.locks_payload(second)[-1]
    assert moved["id"] == ids[0] and moved["ownerAccountId"] == second

    physical = next(x for x in fake.locks_payload(first) if x["id"] == ids[2])["physicalLockId"]
    rebound = fake.rebind(ids[2], second)  # Tapkey's rebind: a new bound id, the same device
    assert rebound != ids[2] and ids[2] not in str(fake.snapshot())
    assert fake.locks_payload(second)[-1]["id"] == rebound
    assert fake.locks_payload(second)[-1]["physicalLockId"] == physical

    old = fake.locks_payload(first)[-1]
    fake.unbind(old["id"])
    assert fake.rebind(old, first) == old["id"]  # a payload comes back with the same id
    assert fake.locks_payload(first)[-1] == old
    with pytest.raises(ValueError, match="already bound"):
        fake.rebind(old, first)

    fake.update_owner(first, name="Head Office", active=False)
    assert fake.owners_payload()[0] == {"active": False, "id": first, "name": "Head Office"}
    with pytest.raises(KeyError):
        fake.unbind("no-such-lock")


# -- faults ---------------------------------------------------------------------------------------


def test_status_fault_with_retry_after(sandbox: Sandbox, session: requests.Session) -> None:
    token = get_token(sandbox, session)
    sandbox.add_fault(Fault(route="owners", status=429, headers={"Retry-After": "1"}))
    limited = api(sandbox, session, "/Owners", token)
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "1")
    assert limited.json()["error"] == "sandbox_fault"
    assert api(sandbox, session, "/Owners", token).status_code == 200  # times=1: used up


def test_status_fault_with_a_custom_body_on_the_token_route(
    sandbox: Sandbox, session: requests.Session
) -> None:
    sandbox.add_fault(Fault(route="token", status=503, body="upstream down"))
    data = {"grant_type": "client_credentials"}
    reply = session.post(
        sandbox.token_url, data=data, auth=("sandbox-client", SANDBOX_SECRET), timeout=5
    )
    assert (reply.status_code, reply.text) == (503, "upstream down")
    assert get_token(sandbox, session)


def test_delay_fault(sandbox: Sandbox, session: requests.Session) -> None:
    token = get_token(sandbox, session)
    sandbox.add_fault(Fault(route="owners", kind="delay", delay=0.3))
    started = time.perf_counter()
    assert api(sandbox, session, "/Owners", token).status_code == 200
    assert time.perf_counter() - started >= 0.3
    sandbox.add_fault(Fault(route="owners", kind="delay", delay=0.5))
    with pytest.raises(requests.Timeout):
        session.get(f"{sandbox.base_url}/api/v1/Owners", timeout=0.1)


def test_reset_fault(sandbox: Sandbox, session: requests.Session) -> None:
    token = get_token(sandbox, session)
    sandbox.add_fault(Fault(route="owners", kind="reset"))
    with pytest.raises(requests.ConnectionError, match="reset"):
        api(sandbox, session, "/Owners", token)
    assert api(sandbox, session, "/Owners", token).status_code == 200


def test_truncate_fault(sandbox: Sandbox, session: requests.Session) -> None:
    token = get_token(sandbox, session)
    expected = len(api(sandbox, session, "/Owners", token).content)
    sandbox.add_fault(Fault(route="owners", kind="truncate"))
    reply = session.get(
        f"{sandbox.base_url}/api/v1/Owners",
        headers={"Authorization": f"Bearer {token}"},
        stream=True,
        timeout=5,
    )
    with reply, pytest.raises(requests.exceptions.ChunkedEncodingError):
        assert int(reply.headers["Content-Length"]) == expected
        _ = reply.content
    assert api(sandbox, session, "/Owners", token).status_code == 200


def test_body_fault(sandbox: Sandbox, session: requests.Session) -> None:
    token = get_token(sandbox, session)
    sandbox.add_fault(Fault(route="owners", kind="body", body="[{not json"))
    reply = api(sandbox, session, "/Owners", token)
    assert (reply.status_code, reply.text) == (200, "[{not json")
    with pytest.raises(requests.JSONDecodeError):
        reply.json()


def test_fault_times_after_and_owner(sandbox: Sandbox, session: requests.Session) -> None:
    token = get_token(sandbox, session)
    target, other = sandbox_owner_ids(sandbox)[:2]
    sandbox.add_fault(Fault(route="locks", status=503, owner_id=target, times=2, after=1))

    def status(owner: str) -> int:
        return api(sandbox, session, f"/Owners/{owner}/BoundLocks", token).status_code

    assert [status(target), status(other), status(target), status(target), status(target)] == [
        200, 200, 503, 503, 200
    ]  # fmt: skip

    sandbox.add_fault(Fault(route="locks", status=500, times=None))
    assert [status(other) for _ in range(3)] == [500, 500, 500]
    sandbox.clear_faults()
    assert status(other) == 200


def test_every_matching_fault_counts_a_request_towards_its_after(
    sandbox: Sandbox, session: requests.Session
) -> None:
    token = get_token(sandbox, session)
    sandbox.add_fault(Fault(route="owners", status=500))
    sandbox.add_fault(Fault(route="owners", status=502, after=1))
    codes = [api(sandbox, session, "/Owners", token).status_code for _ in range(3)]
    assert codes == [500, 502, 200]


def test_add_fault_keeps_its_own_copy(sandbox: Sandbox) -> None:
    fault = Fault(route="locks", times=3)
    sandbox.add_fault(fault)
    assert fault.times == 3
    with pytest.raises(ValueError):
        sandbox.add_fault(Fault(route="nope"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="owner_id"):
        sandbox.add_fault(Fault(route="owners", owner_id="x"))


# -- hooks and counters ---------------------------------------------------------------------------


def test_hooks_see_requests_and_can_shift_a_list_mid_crawl(
    sandbox: Sandbox, session: requests.Session
) -> None:
    token = get_token(sandbox, session)
    owner = sandbox_owner_ids(sandbox)[0]
    ids = [lock["id"] for lock in sandbox.locks_payload(owner)]
    seen: list[SandboxRequest] = []

    def unbind_first_on_second_page(request: SandboxRequest) -> None:
        seen.append(request)
        if request.route == "locks" and request.skip == 2:
            sandbox.unbind(ids[0])

    sandbox.hooks.append(unbind_first_on_second_page)
    crawled = []
    for skip in (0, 2, 4):
        page = api(
            sandbox, session, f"/Owners/{owner}/BoundLocks", token, **{"$top": 2, "$skip": skip}
        )
        crawled += [lock["id"] for lock in page.json()]

    assert crawled == [ids[0], ids[1], ids[3], ids[4]]  # ids[2] slipped past the crawl
    assert [(r.route, r.owner_id, r.top, r.skip, r.number) for r in seen] == [
        ("locks", owner, 2, 0, 1), ("locks", owner, 2, 2, 2), ("locks", owner, 2, 4, 3)
    ]  # fmt: skip
    assert seen[0].params == {"$top": "2", "$skip": "0"}


def test_token_requests_reach_hooks_without_the_secret(
    sandbox: Sandbox, session: requests.Session
) -> None:
    seen: list[SandboxRequest] = []
    sandbox.hooks.append(seen.append)
    data = {
        "grant_type": "client_credentials",
        "client_id": "sandbox-client",
        "client_secret": SANDBOX_SECRET,
    }
    assert session.post(sandbox.token_url, data=data, timeout=5).status_code == 200
    assert seen[0].route == "token" and "client_secret" not in seen[0].params


def test_a_failing_hook_is_a_500(sandbox: Sandbox, session: requests.Session) -> None:
    def broken(request: SandboxRequest) -> None:
        raise RuntimeError("boom")

    sandbox.hooks.append(broken)
    assert api(sandbox, session, "/Owners", None).status_code == 500


def test_request_counters(sandbox: Sandbox, session: requests.Session) -> None:
    token = get_token(sandbox, session)
    owners = sandbox_owner_ids(sandbox)
    api(sandbox, session, "/Owners", token)

    def fetch(owner: str) -> int:
        with requests.Session() as own:
            return api(sandbox, own, f"/Owners/{owner}/BoundLocks", token).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(fetch, owners * 10))
    session.get(f"{sandbox.base_url}/elsewhere", timeout=5)

    assert codes == [200] * 30
    assert sandbox.requests == {"token": 1, "owners": 1, "locks": 30}
    assert sandbox.request_count == 33
    sandbox.reset_counters()
    assert sandbox.request_count == 0 and not sandbox.requests


# -- lifecycle ------------------------------------------------------------------------------------


def test_lifecycle(session: requests.Session) -> None:
    fake = Sandbox()
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.base_url
    with fake:
        url = fake.base_url
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert fake.token_url == f"{url}/connect/token"
        assert session.get(f"{url}/api/v1/Owners", timeout=5).status_code == 401
        with pytest.raises(RuntimeError, match="already running"):
            fake.start()
    fake.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        session.get(f"{url}/api/v1/Owners", timeout=5)


@pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
    reason="SIGINT is not handled by Python in this process",
)
def test_serve_forever_stops_on_keyboard_interrupt() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("needs the main thread")
    fake = Sandbox()
    main = threading.main_thread().ident
    threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT)).start()
    serve_forever(fake)
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.base_url
