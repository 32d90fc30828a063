"""The sandbox's token endpoint and bearer checks over real HTTP: scopes, expiry, revocation."""

from __future__ import annotations

import base64
import logging

import pytest
import requests
from support.helpers import SANDBOX_SECRET, FakeClock, sandbox_owner_ids
from support.sandbox_http import api, get_token

from exporter.sandbox.server import Sandbox

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
