"""TapkeyClient's failures over real HTTP against the sandbox.

Retries, auth and status errors, TLS, workers sharing one pool, and what the retries log.
"""

from __future__ import annotations

import logging
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.tapkey_client import PAGE, Factory, assert_exact, on_request, only_owner

from exporter.errors import ApiError, AuthError, ConfigError, PayloadError, PermissionDeniedError
from exporter.sandbox.server import Fault, Sandbox
from exporter.tapkey.client import TapkeyClient
from exporter.tapkey.retry import RetryPolicy

# -- retries ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        pytest.param("0", None, id="zero"),
        pytest.param("2", 2.0, id="two"),
        pytest.param("99999", 7.0, id="huge-capped"),
        pytest.param("Fri, 01 Jan 2021 00:00:03 GMT", 3.0, id="http-date"),
    ],
)
def test_429_honours_retry_after(
    fake: Sandbox,
    make_client: Factory,
    sleeps: list[float],
    retry_after: str,
    expected: float | None,
) -> None:
    headers = {"Retry-After": retry_after, "Date": "Fri, 01 Jan 2021 00:00:00 GMT"}
    fake.add_fault(Fault(route="locks", status=429, headers=headers))
    client = make_client(fake, retry=RetryPolicy(backoff_factor=0.05, max_retry_after=7.0))
    assert_exact(client.list_bound_locks(only_owner(fake)), fake)
    assert len(sleeps) == 1 and client.retry_count == 1
    if expected is None:  # Retry-After: 0 still waits a jittered minimum backoff: no hot loop
        assert 0.025 <= sleeps[0] <= 0.05
    else:
        assert sleeps[0] == expected


def test_429_without_retry_after_backs_off(
    fake: Sandbox, make_client: Factory, sleeps: list[float]
) -> None:
    fake.add_fault(Fault(route="owners", status=429, times=3))
    client = make_client(fake, retry=RetryPolicy(backoff_factor=1.0))
    client.list_owners()
    assert len(sleeps) == 3
    for retry, wait in enumerate(sleeps):  # exponential, with jitter in [50%, 100%]
        assert 2**retry * 0.5 <= wait <= 2**retry


def test_5xx_burst_then_success(fake: Sandbox, make_client: Factory) -> None:
    for status in (500, 502, 503, 504):
        fake.add_fault(Fault(route="locks", status=status))
    client = make_client(fake)
    result = client.list_bound_locks(only_owner(fake))
    assert_exact(result, fake)
    assert client.retry_count == 4
    assert result.requests == 5 + 4 == client.request_count  # token fetches are not counted


def test_retries_exhausted(fake: Sandbox, make_client: Factory) -> None:
    fake.add_fault(Fault(route="locks", status=503, times=None))
    client = make_client(fake, retry=RetryPolicy(max_retries=3, backoff_factor=0.001))
    owner = only_owner(fake)
    with pytest.raises(ApiError) as caught:
        client.list_bound_locks(owner)
    assert caught.value.status == 503
    assert f"/api/v1/Owners/{owner}/BoundLocks" in str(caught.value)
    assert "4 attempts" in str(caught.value)
    assert fake.requests["locks"] == 4


def test_retry_time_budget(fake: Sandbox, make_client: Factory, sleeps: list[float]) -> None:
    fake.add_fault(Fault(route="owners", status=500, times=None))
    client = make_client(
        fake, retry=RetryPolicy(max_retries=50, backoff_factor=1.0, max_retry_time=10.0)
    )
    with pytest.raises(ApiError):
        client.list_owners()
    assert sum(sleeps) <= 10.0 and len(sleeps) < 5


def test_connection_reset_is_retried(fake: Sandbox, make_client: Factory) -> None:
    fake.add_fault(Fault(route="locks", kind="reset", times=2))
    assert_exact(make_client(fake).list_bound_locks(only_owner(fake)), fake)


def test_persistent_reset_is_an_api_error(fake: Sandbox, make_client: Factory) -> None:
    fake.add_fault(Fault(route="locks", kind="reset", times=None))
    with pytest.raises(ApiError, match="connection failed after 3 attempts") as caught:
        make_client(fake, retry=RetryPolicy(max_retries=2, backoff_factor=0.001)).list_bound_locks(
            only_owner(fake)
        )
    assert caught.value.status is None


def test_truncated_body_is_retried(fake: Sandbox, make_client: Factory) -> None:
    fake.add_fault(Fault(route="locks", kind="truncate"))
    assert_exact(make_client(fake).list_bound_locks(only_owner(fake)), fake)


def test_persistent_truncation_is_a_payload_error(fake: Sandbox, make_client: Factory) -> None:
    fake.add_fault(Fault(route="locks", kind="truncate", times=None))
    with pytest.raises(PayloadError, match="cut off"):
        make_client(fake, retry=RetryPolicy(max_retries=1, backoff_factor=0.001)).list_bound_locks(
            only_owner(fake)
        )


def test_read_timeout_is_retried(fake: Sandbox, make_client: Factory) -> None:
    fake.add_fault(Fault(route="locks", kind="delay", delay=0.6))
    client = make_client(fake, timeout=(2.0, 0.2))
    assert_exact(client.list_bound_locks(only_owner(fake)), fake)
    assert client.retry_count == 1


def test_connection_refused(fake: Sandbox, make_client: Factory) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Tokens come from the sandbox; the API's port has nobody listening.
    client = make_client(
        fake,
        retry=RetryPolicy(max_retries=1, backoff_factor=0.001),
        base_url=f"http://127.0.0.1:{port}",
    )
    with pytest.raises(ApiError, match="connection failed after 2 attempts"):
        client.list_owners()


# -- auth and status errors ------------------------------------------------------------------------


def test_revoked_token_is_refetched_once(
    fake: Sandbox, make_client: Factory, make_tokens: Factory
) -> None:
    tokens = make_tokens(fake)
    client = make_client(fake, tokens=tokens)
    owner = only_owner(fake)
    on_request(fake, 2, fake.revoke_tokens)
    assert_exact(client.list_bound_locks(owner), fake)
    assert tokens.fetch_count == 2


def test_second_401_is_an_auth_error(
    fake: Sandbox, make_client: Factory, make_tokens: Factory
) -> None:
    fake.add_fault(Fault(route="owners", status=401, times=2))
    tokens = make_tokens(fake)
    with pytest.raises(AuthError, match="401") as caught:
        make_client(fake, tokens=tokens).list_owners()
    assert tokens.token() not in str(caught.value)
    assert fake.requests["owners"] == 2


def test_token_revoked_mid_run_with_many_workers(
    make_fake: Factory, make_client: Factory, make_tokens: Factory
) -> None:
    fake = make_fake(owners=8, locks_per_owner=PAGE * 2)
    tokens = make_tokens(fake)
    client = make_client(fake, workers=4, tokens=tokens)
    owners = client.list_owners()
    on_request(fake, 3, fake.revoke_tokens)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(client.list_bound_locks, [o.id for o in owners]))
    for result in results:
        assert_exact(result, fake)
    assert tokens.fetch_count == 2  # one renewal shared by every worker


def test_403_on_owners_names_the_missing_scope(fake: Sandbox, make_client: Factory) -> None:
    client = make_client(fake, scopes=("read:core:entities",))
    with pytest.raises(PermissionDeniedError, match="lacks scope read:owneraccounts") as caught:
        client.list_owners()
    assert "granted: read:core:entities" in str(caught.value)
    assert caught.value.status == 403


def test_403_on_owners_with_the_scope_granted(fake: Sandbox, make_client: Factory) -> None:
    fake.add_fault(Fault(route="owners", status=403))
    with pytest.raises(PermissionDeniedError, match="although the token has scope"):
        make_client(fake).list_owners()


def test_403_on_locks_suggests_co_admin(make_fake: Factory, make_client: Factory) -> None:
    fake = make_fake(owners=2)
    hidden = only_owner(fake)
    fake.hide_owner(hidden)
    with pytest.raises(PermissionDeniedError, match=f"not co-admin of owner {hidden}"):
        make_client(fake).list_bound_locks(hidden)


def test_403_on_locks_names_a_missing_scope(fake: Sandbox, make_client: Factory) -> None:
    client = make_client(fake, scopes=("read:owneraccounts",))
    with pytest.raises(PermissionDeniedError, match="lacks scope read:core:entities"):
        client.list_bound_locks(only_owner(fake))


@pytest.mark.parametrize("status", [404, 409])
def test_other_4xx_are_api_errors_without_retry(
    fake: Sandbox, make_client: Factory, status: int
) -> None:
    fake.add_fault(Fault(route="locks", status=status))
    with pytest.raises(ApiError) as caught:
        make_client(fake).list_bound_locks(only_owner(fake))
    assert caught.value.status == status and type(caught.value) is ApiError
    assert fake.requests["locks"] == 1


def test_plain_http_api_to_remote_host_is_refused(fake: Sandbox, make_tokens: Factory) -> None:
    tokens = make_tokens(fake)
    with pytest.raises(ConfigError, match=r"api_base_url.*use https"):
        TapkeyClient(base_url="http://my.tapkey.com", tokens=tokens)


# -- concurrency and counters ----------------------------------------------------------------------


def test_workers_share_one_pool(
    make_fake: Factory, make_client: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    fake = make_fake(owners=12, locks_per_owner=2 * PAGE)
    client = make_client(fake, workers=4)
    owners = client.list_owners()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(client.list_bound_locks, [o.id for o in owners]))
    for result in results:
        assert_exact(result, fake)
    api_requests = fake.requests["owners"] + fake.requests["locks"]
    assert client.request_count == api_requests
    assert fake.requests["locks"] == sum(r.requests for r in results)
    assert "pool is full" not in caplog.text


def test_tls_failure_is_not_retried(fake: Sandbox, make_client: Factory) -> None:
    https_url = fake.base_url.replace("http://", "https://")  # the sandbox speaks plain http
    client = make_client(fake, base_url=https_url)
    with pytest.raises(ApiError, match="TLS verification failed"):
        client.list_owners()
    assert client.request_count == 1 and client.retry_count == 0


def retry_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "exporter.tapkey.transport"
        and r.levelno == level
        and "retrying" in r.getMessage()
    ]


def test_retries_that_succeed_are_info_not_warnings(
    fake: Sandbox, make_client: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake.add_fault(Fault(route="locks", status=503, times=2))
    assert_exact(make_client(fake).list_bound_locks(only_owner(fake)), fake)
    assert len(retry_lines(caplog, logging.INFO)) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_request_failing_three_times_warns_once(
    fake: Sandbox, make_client: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake.add_fault(Fault(route="locks", status=503, times=4))
    assert_exact(make_client(fake).list_bound_locks(only_owner(fake)), fake)
    warnings = retry_lines(caplog, logging.WARNING)
    assert len(warnings) == 1 and "(retry 3 of 5)" in warnings[0]
    assert len(retry_lines(caplog, logging.INFO)) == 3


def test_a_404_for_one_owner_after_the_owner_list_says_the_owner_is_gone(
    make_fake: Factory, make_client: Factory
) -> None:
    fake = make_fake(owners=3)
    client = make_client(fake)
    owners = [owner.id for owner in client.list_owners()]
    client.list_bound_locks(owners[0])
    fake.add_fault(Fault(route="locks", status=404, owner_id=owners[1]))
    with pytest.raises(ApiError) as caught:
        client.list_bound_locks(owners[1])
    message = str(caught.value)
    assert f"owner account {owners[1]} is gone" in message
    assert "probably removed, or the OAuth client lost access to it, during the run" in message
    assert "api_base_url" not in message and caught.value.status == 404


def test_a_404_before_anything_worked_points_at_the_base_url(
    fake: Sandbox, make_client: Factory
) -> None:
    fake.add_fault(Fault(route="owners", status=404))
    with pytest.raises(ApiError, match=r"HTTP 404: not found; check \[tapkey\] api_base_url$"):
        make_client(fake).list_owners()
    fake.add_fault(Fault(route="locks", status=404))
    with pytest.raises(ApiError, match=r"HTTP 404: not found; check \[tapkey\] api_base_url$"):
        make_client(fake).list_bound_locks(only_owner(fake))
