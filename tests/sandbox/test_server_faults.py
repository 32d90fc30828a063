"""The sandbox's faults, hooks and request counters over real HTTP."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from support.helpers import SANDBOX_SECRET, sandbox_owner_ids
from support.sandbox_http import api, get_token

from exporter.sandbox.server import Fault, Sandbox, SandboxRequest

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
