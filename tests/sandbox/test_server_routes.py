"""The sandbox's routes over real HTTP: paging with `$top`/`$skip`, payloads, its lifecycle."""

from __future__ import annotations

import base64
import http.client
import json
import re
import signal
import threading
from typing import Any

import pytest
import requests
from support.helpers import sandbox_owner_ids
from support.sandbox_http import GUID, ISO_MS, api, get_token

from exporter.sandbox.server import Sandbox, serve_forever

LOCK_KEYS = {
    "active", "bindDate", "description", "healthStatuses", "id", "lastSeenRclSerialNo",
    "lastSeenRclUpdateDate", "lockType", "lockTypeId", "membershipStatistics", "ownerAccountId",
    "physicalLockId", "rclDate", "rclSerialNo", "supportedFeatures", "targetType", "title",
    "unbindDate",
}  # fmt: skip


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
