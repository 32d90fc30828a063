"""TokenProvider against the sandbox's token endpoint: reuse, renewal, errors, transport, logs."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support.helpers import FakeClock

from exporter.config.loader import load_settings
from exporter.config.settings import Settings
from exporter.errors import AuthError, ConfigError
from exporter.sandbox.server import Fault, Sandbox, SandboxRequest
from exporter.service import preflight
from exporter.tapkey.auth import TokenProvider, require_secure_url
from exporter.tapkey.client import TapkeyClient
from exporter.tapkey.options import Connection, Timeouts
from exporter.tapkey.retry import RetryPolicy

SECRET = "sandbox-secret-Zq81"
SCOPES = ("read:owneraccounts", "read:core:entities")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[Sandbox]:
    with Sandbox(seed=3, owners=2, locks_per_owner=3, client_secret=SECRET, clock=clock) as server:
        yield server


@pytest.fixture
def make_provider(
    fake: Sandbox, clock: FakeClock, sleeps: list[float]
) -> Callable[..., TokenProvider]:
    def make(**overrides: Any) -> TokenProvider:
        options: dict[str, Any] = {
            "client_id": "sandbox-client",
            "client_secret": SECRET,
            "token_url": fake.token_url,
            "scopes": SCOPES,
            "connection": Connection(Timeouts(*overrides.pop("timeout", (2.0, 2.0)))),
            "retry": RetryPolicy(
                max_retries=overrides.pop("max_retries", 2),
                backoff_factor=0.01,
                max_retry_after=30.0,
            ),
            "clock": clock,
            "sleep": sleeps.append,
        }
        options.update(overrides)
        return TokenProvider(**options)

    return make


def test_token_is_fetched_once_and_reused(fake: Sandbox, make_provider: Callable[..., Any]) -> None:
    tokens = make_provider()
    first = tokens.token()
    assert all(tokens.token() == first for _ in range(20))
    assert tokens.fetch_count == 1
    assert fake.requests["token"] == 1
    assert tokens.granted_scopes == frozenset(SCOPES)


def test_a_background_fetch_gives_the_first_token(
    fake: Sandbox, make_provider: Callable[..., Any]
) -> None:
    tokens = make_provider()
    tokens.fetch_in_background().join(10)

    assert fake.requests["token"] == 1
    tokens.token()
    assert fake.requests["token"] == 1 and tokens.fetch_count == 1


def test_a_failed_background_fetch_is_raised_once_by_the_next_token_call(
    fake: Sandbox, make_provider: Callable[..., Any], sleeps: list[float]
) -> None:
    # Its retries are spent: the caller gets their outcome, not a second round of them.
    fake.add_fault(Fault(route="token", status=503, times=3))
    tokens = make_provider(max_retries=2)
    tokens.fetch_in_background().join(10)

    with pytest.raises(AuthError, match=r"failed after 3 attempts \(HTTP 503\)"):
        tokens.token()
    assert fake.requests["token"] == 3 and len(sleeps) == 2
    tokens.token()  # afterwards a call fetches as usual
    assert fake.requests["token"] == 4


def test_concurrent_callers_share_one_fetch(
    fake: Sandbox, make_provider: Callable[..., Any]
) -> None:
    tokens = make_provider()
    start = threading.Barrier(8)

    def call(_: int) -> str:
        start.wait()
        return str(tokens.token())

    with ThreadPoolExecutor(8) as pool:
        results = set(pool.map(call, range(8)))
    assert len(results) == 1
    assert fake.requests["token"] == 1


def test_renewal_near_expiry_uses_the_send_time(
    fake: Sandbox, make_provider: Callable[..., Any], clock: FakeClock
) -> None:
    # The token request "takes" 30 s: expiry must count from when it was sent, not received.
    def slow_token_endpoint(request: SandboxRequest) -> None:
        if request.route == "token":
            clock.now += 30

    fake.hooks.append(slow_token_endpoint)
    tokens = make_provider(refresh_margin=60.0)
    sent_at = clock.now
    first = tokens.token()
    clock.now = sent_at + 3600 - 61
    assert tokens.token() == first
    clock.now = sent_at + 3600 - 59  # inside the margin measured from the send time
    second = tokens.token()
    assert second != first
    assert tokens.fetch_count == 2


def test_short_lived_tokens_cap_the_margin(clock: FakeClock, sleeps: list[float]) -> None:
    with Sandbox(client_secret=SECRET, token_lifetime=40.0, clock=clock) as fake:
        tokens = TokenProvider(
            client_id="sandbox-client",
            client_secret=SECRET,
            token_url=fake.token_url,
            scopes=SCOPES,
            connection=Connection(Timeouts(2.0, 2.0)),
            clock=clock,
            refresh_margin=60.0,  # longer than the lifetime: capped to a quarter of it (10 s)
        )
        start = clock.now
        first = tokens.token()
        clock.now = start + 29
        assert tokens.token() == first
        clock.now = start + 31
        assert tokens.token() != first
        assert fake.requests["token"] == 2


def test_invalidate_fetches_anew_once(fake: Sandbox, make_provider: Callable[..., Any]) -> None:
    tokens = make_provider()
    old = tokens.token()
    fake.revoke_tokens()
    tokens.invalidate(old)
    new = tokens.token()
    assert new != old
    tokens.invalidate(old)  # a late caller with the stale token: no second fetch
    assert tokens.token() == new
    assert tokens.fetch_count == 2


def test_revoked_token_is_replaced_after_a_401(
    fake: Sandbox, make_provider: Callable[..., Any]
) -> None:
    tokens = make_provider()
    with TapkeyClient(
        base_url=fake.base_url, tokens=tokens, retry=RetryPolicy(backoff_factor=0.0)
    ) as client:
        owners = client.list_owners()
        fake.revoke_tokens()
        assert client.list_owners() == owners
    assert tokens.fetch_count == 2


def test_invalid_client_names_the_settings_and_hides_the_secret(
    fake: Sandbox, make_provider: Callable[..., Any]
) -> None:
    wrong = "not-the-secret-4711"
    tokens = make_provider(client_secret=wrong)
    with pytest.raises(AuthError) as caught:
        tokens.token()
    message = str(caught.value)
    assert "invalid_client" in message
    assert "client_id" in message and "client_secret_file" in message
    assert wrong not in message and wrong not in repr(caught.value)
    assert wrong not in str(caught.value.__context__)
    assert fake.requests["token"] == 1  # never retried


def test_invalid_scope_names_the_scopes_setting(
    fake: Sandbox, make_provider: Callable[..., Any]
) -> None:
    tokens = make_provider(scopes=["read:owneraccounts", "write:everything"])
    with pytest.raises(AuthError, match=r"invalid_scope.*\[tapkey\] scopes"):
        tokens.token()
    assert fake.requests["token"] == 1


@pytest.mark.parametrize("status", [400, 401])
def test_rejections_are_not_retried(
    fake: Sandbox, make_provider: Callable[..., Any], sleeps: list[float], status: int
) -> None:
    fake.add_fault(Fault(route="token", status=status, times=None))
    with pytest.raises(AuthError):
        make_provider().token()
    assert fake.requests["token"] == 1
    assert sleeps == []


def test_server_errors_are_retried_then_succeed(
    fake: Sandbox, make_provider: Callable[..., Any], sleeps: list[float]
) -> None:
    fake.add_fault(Fault(route="token", status=503, times=2))
    tokens = make_provider(max_retries=2)
    assert tokens.token()
    assert fake.requests["token"] == 3
    assert len(sleeps) == 2 and all(wait > 0 for wait in sleeps)


def test_server_errors_exhaust_the_retries(
    fake: Sandbox, make_provider: Callable[..., Any]
) -> None:
    fake.add_fault(Fault(route="token", status=502, times=None))
    with pytest.raises(AuthError, match=r"/connect/token failed after 3 attempts \(HTTP 502\)"):
        make_provider(max_retries=2).token()
    assert fake.requests["token"] == 3


def test_token_endpoint_retry_after_is_capped(
    fake: Sandbox, make_provider: Callable[..., Any], sleeps: list[float]
) -> None:
    fake.add_fault(Fault(route="token", status=429, headers={"Retry-After": "86400"}))
    assert make_provider().token()
    assert sleeps == [30.0]


def test_slow_token_endpoint_times_out_and_is_retried(
    fake: Sandbox, make_provider: Callable[..., Any]
) -> None:
    fake.add_fault(Fault(route="token", kind="delay", delay=0.5))
    tokens = make_provider(timeout=(2.0, 0.1))
    assert tokens.token()
    assert tokens.fetch_count == 1


def test_unreachable_token_endpoint(make_provider: Callable[..., Any], sleeps: list[float]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/connect/token"
    with pytest.raises(AuthError, match=rf"{url} failed after 2 attempts \(network error"):
        make_provider(token_url=url, max_retries=1).token()
    assert len(sleeps) == 1


def test_token_response_without_scope_or_lifetime(
    fake: Sandbox, make_provider: Callable[..., Any], clock: FakeClock
) -> None:
    fake.add_fault(
        Fault(route="token", kind="body", body='{"access_token":"abc","token_type":"Bearer"}')
    )
    tokens = make_provider()
    assert tokens.token() == "abc"
    assert tokens.granted_scopes is None
    clock.now += 10**7  # no stated lifetime: kept until the API rejects it
    assert tokens.token() == "abc"
    tokens.invalidate("abc")
    assert tokens.token() != "abc"


def test_token_response_without_a_token(fake: Sandbox, make_provider: Callable[..., Any]) -> None:
    fake.add_fault(Fault(route="token", kind="body", body="<html>maintenance</html>"))
    with pytest.raises(AuthError, match="no usable access token"):
        make_provider().token()


@pytest.mark.parametrize(
    "url",
    ["http://login.tapkey.com/connect/token", "ftp://127.0.0.1/x", "https:///nohost", "nonsense"],
)
def test_insecure_token_urls_are_refused(url: str, make_provider: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match=r"\[tapkey\] token_url"):
        make_provider(token_url=url)


def test_plain_http_message_says_use_https() -> None:
    with pytest.raises(ConfigError, match="use https"):
        require_secure_url("http://user:pw@example.com/t", "[tapkey] token_url")
    with pytest.raises(ConfigError) as caught:
        require_secure_url("http://user:pw@example.com/t", "[tapkey] token_url")
    assert "pw" not in str(caught.value)
    require_secure_url("https://login.tapkey.com/connect/token", "[tapkey] token_url")


def test_no_process_wide_insecure_switch(fake: Sandbox, make_provider: Callable[..., Any]) -> None:
    assert make_provider().token()
    assert "OAUTHLIB_INSECURE_TRANSPORT" not in os.environ


def test_no_secret_or_token_in_logs_of_a_full_crawl(
    fake: Sandbox, make_provider: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="requests_oauthlib")  # even if someone turns it up
    caplog.set_level(logging.DEBUG, logger="oauthlib")
    fake.add_fault(Fault(route="locks", status=503))
    tokens = make_provider()
    seen_tokens = []
    with TapkeyClient(
        base_url=fake.base_url, tokens=tokens, retry=RetryPolicy(backoff_factor=0.0)
    ) as client:
        for owner in client.list_owners():
            seen_tokens.append(tokens.token())
            client.list_bound_locks(owner.id)
        fake.revoke_tokens()
        client.list_owners()
        seen_tokens.append(tokens.token())
    assert caplog.records, "DEBUG logging was captured"
    text = caplog.text + "".join(str(record.__dict__) for record in caplog.records)
    assert SECRET not in text
    for token in seen_tokens:
        assert token not in text
    assert repr(tokens).count(SECRET) == 0


def test_tls_failure_is_not_retried(fake: Sandbox, make_provider: Callable[..., Any]) -> None:
    https_url = fake.token_url.replace("http://", "https://")  # the sandbox speaks plain http
    with pytest.raises(AuthError, match=r"TLS verification .* ca_bundle"):
        make_provider(token_url=https_url).token()


def test_token_retries_that_succeed_are_not_warnings(
    fake: Sandbox, make_provider: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake.add_fault(Fault(route="token", status=503, times=2))
    assert make_provider(max_retries=2).token()
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2 and all(r.levelno == logging.INFO for r in retries)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    fake.add_fault(Fault(route="token", status=503, times=3))
    caplog.clear()
    assert make_provider(max_retries=5).token()
    assert [r.levelno for r in caplog.records if "retrying" in r.getMessage()] == [
        logging.INFO,
        logging.INFO,
        logging.WARNING,
    ]


def test_a_token_without_expires_in_says_which_lifetime_is_assumed(
    fake: Sandbox, make_provider: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="exporter.tapkey.auth")
    fake.add_fault(
        Fault(route="token", kind="body", body='{"access_token":"abc","token_type":"Bearer"}')
    )
    tokens = make_provider()
    tokens.token()
    tokens.token()
    lines = [r.getMessage() for r in caplog.records if r.name == "exporter.tapkey.auth"]
    assert len(lines) == 1 and caplog.records[0].levelno == logging.INFO
    assert (
        "no expires_in in the response, so no lifetime is assumed: the token is used until the "
        "API rejects it (401), then a new one is fetched and the request repeated"
    ) in lines[0]
    caplog.clear()
    make_provider().token()  # a stated lifetime is logged as such
    assert "lifetime 3600 s" in caplog.records[0].getMessage()


@pytest.mark.parametrize("expires_in", ["0", "-5", "-0.5"])
def test_an_expires_in_that_is_no_lifetime_is_not_taken_at_its_word(
    fake: Sandbox,
    make_provider: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    expires_in: str,
) -> None:
    # Taken literally, it would make every API request fetch a new token first.
    caplog.set_level(logging.INFO, logger="exporter.tapkey.auth")
    body = f'{{"access_token":"abc","token_type":"Bearer","expires_in":{expires_in}}}'
    fake.add_fault(Fault(route="token", kind="body", body=body))
    tokens = make_provider()
    assert tokens.token() == tokens.token() == "abc"
    assert tokens.fetch_count == 1
    assert "so no lifetime is assumed" in caplog.records[0].getMessage()


def test_an_expires_in_that_is_not_a_number_is_one_clear_error(
    fake: Sandbox, make_provider: Callable[..., Any]
) -> None:
    body = '{"access_token":"abc","token_type":"Bearer","expires_in":"soon"}'
    fake.add_fault(Fault(route="token", kind="body", body=body))
    with pytest.raises(AuthError, match="expires_in is not a number; check"):
        make_provider().token()


def _settings(fake: Sandbox, tmp_path: Path, **tapkey: Any) -> Settings:
    overrides = {
        "tapkey.client_id": "sandbox-client",
        "tapkey.client_secret": SECRET,
        "tapkey.token_url": fake.token_url,
        "tapkey.api_base_url": fake.base_url,
        **{f"tapkey.{key}": value for key, value in tapkey.items()},
    }
    return load_settings(None, env={}, cwd=tmp_path, overrides=overrides)


def test_token_requests_follow_tapkey_max_retries(
    fake: Sandbox, tmp_path: Path, sleeps: list[float]
) -> None:
    fake.add_fault(Fault(route="token", status=503, times=None))
    settings = _settings(fake, tmp_path, max_retries=4, backoff_factor=0.01)
    with pytest.raises(AuthError, match=r"failed after 5 attempts \(HTTP 503\)"):
        preflight.make_tokens(settings, sleep=sleeps.append).token()
    assert fake.requests["token"] == 5 and len(sleeps) == 4


def test_token_requests_keep_to_the_retry_time_budget(
    fake: Sandbox, tmp_path: Path, sleeps: list[float]
) -> None:
    fake.add_fault(Fault(route="token", status=429, headers={"Retry-After": "3"}, times=None))
    settings = _settings(fake, tmp_path, max_retries=20, max_retry_after=3, max_retry_time=10)
    with pytest.raises(AuthError, match=r"failed after 4 attempts \(HTTP 429\)"):
        preflight.make_tokens(settings, sleep=sleeps.append).token()
    assert sleeps == [3.0, 3.0, 3.0]  # a fourth wait would end past 10 s
