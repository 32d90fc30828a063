"""Redirects: the client secret and the bearer token stay on the configured endpoints.

The sandbox serves https here (a trustme certificate); a second, plain-http sandbox stands for
"somewhere else" and counts what reaches it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support.http_servers import Tls

from exporter.errors import ApiError, AuthError
from exporter.sandbox.server import Fault, Sandbox
from exporter.tapkey.auth import TokenProvider
from exporter.tapkey.client import TapkeyClient
from exporter.tapkey.options import Connection, Timeouts
from exporter.tapkey.transport import MAX_REDIRECTS

SECRET = "redirect-test-secret-7Hq"
SCOPES = ("read:owneraccounts", "read:core:entities")
REDIRECTS = (301, 302, 303, 307, 308)


@pytest.fixture
def secure(tls: Tls) -> Iterator[Sandbox]:
    """The configured Tapkey, over https."""
    with Sandbox(seed=5, owners=3, locks_per_owner=2, client_secret=SECRET, tls=tls.server) as s:
        yield s


@pytest.fixture
def elsewhere() -> Iterator[Sandbox]:
    """Another server (plain http) that accepts the same credentials and tokens it issues."""
    with Sandbox(seed=5, owners=3, locks_per_owner=2, client_secret=SECRET) as server:
        yield server


@pytest.fixture
def other_host(tls: Tls) -> Iterator[Sandbox]:
    """A second https server, reached by the name `localhost` (the configured one: 127.0.0.1)."""
    with Sandbox(seed=5, owners=3, client_secret=SECRET, tls=tls.server) as server:
        yield server


def connection(tls: Tls | None) -> Connection:
    """Short timeouts; https verified against the test CA when `tls` is given."""
    return Connection(Timeouts(2.0, 5.0), verify=str(tls.ca_file) if tls else True)


def tokens(server: Sandbox, tls: Tls | None) -> TokenProvider:
    """A token provider for `server` (over https when `tls` is given)."""
    return TokenProvider(
        client_id="sandbox-client",
        client_secret=SECRET,
        token_url=server.token_url,
        scopes=SCOPES,
        connection=connection(tls),
        sleep=lambda _: None,
    )


def client(server: Sandbox, tls: Tls | None) -> TapkeyClient:
    """An API client for `server` (over https when `tls` is given)."""
    return TapkeyClient(
        base_url=server.base_url,
        tokens=tokens(server, tls),
        connection=connection(tls),
        sleep=lambda _: None,
    )


def redirect(route: Any, status: int, location: str, times: int | None = 1) -> Fault:
    return Fault(route=route, status=status, headers={"Location": location}, times=times)


@pytest.mark.parametrize("status", REDIRECTS)
def test_token_request_is_not_redirected_to_plain_http(
    status: int, secure: Sandbox, elsewhere: Sandbox, tls: Tls
) -> None:
    secure.add_fault(redirect("token", status, elsewhere.token_url))
    with pytest.raises(AuthError) as caught:
        tokens(secure, tls).token()
    message = str(caught.value)
    assert f"redirect (HTTP {status}) to {elsewhere.token_url}" in message
    assert "[tapkey] token_url" in message and SECRET not in message
    assert elsewhere.request_count == 0  # the secret was not re-posted in clear
    assert secure.requests["token"] == 1  # and a redirect is not retried


def test_token_request_follows_no_redirect_even_on_the_same_host(secure: Sandbox, tls: Tls) -> None:
    secure.add_fault(redirect("token", 308, "/CONNECT/TOKEN?next=1"))
    with pytest.raises(AuthError, match=rf"to {secure.base_url}/CONNECT/TOKEN;"):
        tokens(secure, tls).token()
    assert secure.requests["token"] == 1


@pytest.mark.parametrize("status", REDIRECTS)
def test_api_redirect_to_plain_http_is_refused(
    status: int, secure: Sandbox, elsewhere: Sandbox, tls: Tls
) -> None:
    secure.add_fault(redirect("owners", status, f"{elsewhere.base_url}/api/v1/Owners"))
    with client(secure, tls) as api, pytest.raises(ApiError) as caught:
        api.list_owners()
    message = str(caught.value)
    assert f"redirected (HTTP {status}) to {elsewhere.base_url}/api/v1/Owners" in message
    assert f"away from {secure.base_url}" in message and "[tapkey] api_base_url" in message
    assert caught.value.status == status
    assert elsewhere.request_count == 0  # nothing fetched from there, no token sent there


def test_api_redirect_to_another_https_host_is_refused(
    secure: Sandbox, other_host: Sandbox, tls: Tls
) -> None:
    moved = other_host.base_url.replace("127.0.0.1", "localhost") + "/api/v1/Owners"
    secure.add_fault(redirect("owners", 307, moved))
    with client(secure, tls) as api, pytest.raises(ApiError, match=r"\) to https://localhost"):
        api.list_owners()
    assert other_host.request_count == 0  # the bearer token never went there


def test_api_redirect_within_the_origin_is_followed(secure: Sandbox, tls: Tls) -> None:
    # Paths match case-insensitively, so this is the same route under another spelling.
    secure.add_fault(redirect("owners", 301, "/API/V1/OWNERS?%24top=100&%24skip=0"))
    with client(secure, tls) as api:
        owners = api.list_owners()
        assert [o.id for o in owners] == [o["id"] for o in secure.owners_payload()]
        # The redirected request carried the token: the sandbox refuses the owner list without it.
        assert api.request_count == secure.requests["owners"] and api.retry_count == 0


def test_a_redirect_loop_ends(secure: Sandbox, tls: Tls) -> None:
    secure.add_fault(redirect("owners", 302, "/api/v1/Owners?again", times=None))
    with client(secure, tls) as api, pytest.raises(ApiError, match="redirect loop"):
        api.list_owners()
    assert secure.requests["owners"] == MAX_REDIRECTS + 1


def test_the_loopback_sandbox_over_plain_http_follows_its_own_redirects(
    elsewhere: Sandbox,
) -> None:
    elsewhere.add_fault(redirect("owners", 302, "/api/v1/owners?%24top=100&%24skip=0"))
    with client(elsewhere, None) as api:
        assert len(api.list_owners()) == 3


def test_a_redirect_to_https_from_a_plain_http_base_is_refused(
    elsewhere: Sandbox, secure: Sandbox
) -> None:
    # Another origin, even if it is "more secure": the token stays where it was configured.
    elsewhere.add_fault(redirect("owners", 302, f"{secure.base_url}/api/v1/Owners"))
    with client(elsewhere, None) as api, pytest.raises(ApiError, match="redirected"):
        api.list_owners()
    assert secure.request_count == 0


def test_a_redirect_location_is_shown_without_its_query_or_control_characters(
    secure: Sandbox, tls: Tls
) -> None:
    secure.add_fault(redirect("owners", 302, "https://evil.example/\x1b[31mred?token=abc"))
    with client(secure, tls) as api, pytest.raises(ApiError) as caught:
        api.list_owners()
    message = str(caught.value)
    assert "\x1b" not in message and "token=abc" not in message
    assert "https://evil.example/?[31mred" in message
