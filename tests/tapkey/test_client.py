"""TapkeyClient over real HTTP against the sandbox: paging, retries, errors, parsing."""

from __future__ import annotations

import json
import logging
import random
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from exporter.errors import (
    ApiError,
    AuthError,
    ConfigError,
    PagingError,
    PayloadError,
    PermissionDeniedError,
)
from exporter.sandbox.server import Fault, Sandbox, SandboxRequest
from exporter.tapkey.auth import TokenProvider
from exporter.tapkey.client import TapkeyClient
from exporter.tapkey.fields import element_id
from exporter.tapkey.options import MAX_BODY_BYTES, Connection, PageLimits, Timeouts
from exporter.tapkey.page_text import KnownTexts, split_array
from exporter.tapkey.paging import PageSizes, PagingCheck
from exporter.tapkey.records import OwnerLocks, lock_id_hex
from exporter.tapkey.retry import RetryPolicy

SCOPES = ("read:owneraccounts", "read:core:entities")
PAGE = 4

Factory = Callable[..., Any]


def served_text(element: dict[str, Any]) -> str:
    """An element exactly as the sandbox encodes it."""
    return json.dumps(element, sort_keys=True, separators=(",", ":"))


@pytest.fixture
def servers() -> Iterator[list[Sandbox]]:
    started: list[Sandbox] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def make_fake(servers: list[Sandbox]) -> Factory:
    def make(**options: Any) -> Sandbox:
        options.setdefault("owners", 1)
        options.setdefault("locks_per_owner", 3 * PAGE + 1)
        server = Sandbox(seed=7, **options).start()
        servers.append(server)
        return server

    return make


@pytest.fixture
def fake(make_fake: Factory) -> Sandbox:
    return make_fake()


@pytest.fixture
def make_tokens(sleeps: list[float]) -> Factory:
    def make(server: Sandbox, scopes: tuple[str, ...] = SCOPES) -> TokenProvider:
        return TokenProvider(
            client_id="sandbox-client",
            client_secret="sandbox-secret",
            token_url=server.token_url,
            scopes=scopes,
            connection=Connection(Timeouts(2.0, 5.0)),
            retry=RetryPolicy(backoff_factor=0.001),
            sleep=sleeps.append,
        )

    return make


@pytest.fixture
def make_client(sleeps: list[float], make_tokens: Factory) -> Iterator[Factory]:
    clients: list[TapkeyClient] = []

    def make(
        server: Sandbox,
        *,
        scopes: tuple[str, ...] = SCOPES,
        tokens: TokenProvider | None = None,
        base_url: str | None = None,
        page_size: int = PAGE,
        max_restarts: int = 3,
        max_body_bytes: int = MAX_BODY_BYTES,
        timeout: tuple[float, float] = (2.0, 5.0),
        **options: Any,
    ) -> TapkeyClient:
        """A client for `server`; `options` are TapkeyClient's (e.g. `retry`, `workers`)."""
        settings: dict[str, Any] = {
            "connection": Connection(Timeouts(*timeout)),
            "pages": PageLimits(page_size, max_restarts, max_body_bytes),
            "retry": RetryPolicy(backoff_factor=0.001),
            "sleep": sleeps.append,
        }
        settings.update(options)
        client = TapkeyClient(
            base_url=base_url or server.base_url,
            tokens=tokens or make_tokens(server, scopes),
            **settings,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def only_owner(server: Sandbox) -> str:
    return str(server.owners_payload()[0]["id"])


def assert_exact(result: OwnerLocks, server: Sandbox) -> None:
    """The fetched records are the server's current list, in order, with the exact raw text."""
    expected = server.locks_payload(result.owner_id)
    assert [r.id for r in result.records] == [lock["id"] for lock in expected]
    assert [r.raw for r in result.records] == [served_text(lock) for lock in expected]
    assert result.skipped == 0 and not result.skipped_ids and not result.unidentified_skips


def serve_elements(
    server: Sandbox,
    elements: list[str],
    *,
    pretty: bool = False,
    route: str = "locks",
    ignore_skip: bool = False,
) -> None:
    """Serve `elements` (raw JSON texts; mutable mid-crawl) as a list route, honouring paging."""

    def hook(request: SandboxRequest) -> None:
        if request.route != route:
            return
        skip = 0 if ignore_skip else request.skip or 0
        top = request.top or len(elements)
        page = elements[skip : skip + top]
        body = "[\n  " + ",\n  ".join(page) + "\n]\n" if pretty else "[" + ",".join(page) + "]"
        server.add_fault(Fault(route=request.route, kind="body", body=body if page else "[]"))

    server.hooks.append(hook)


def lock_text(lock_id: str | None, **fields: Any) -> str:
    element: dict[str, Any] = {
        "active": True,
        "bindDate": "2018-12-12T12:00:00.000Z",
        "description": "A description for this lock.",
        "lockType": {"id": "TK.Td30", "manufacturerId": 1, "modelName": "Td30"},
        "lockTypeId": "TK.Td30",
        "ownerAccountId": "1",
        "physicalLockId": "BAASNL/7",
        "rclSerialNo": 3,
        "targetType": "Lock",
        "title": "Entrance Door",
        "unbindDate": None,
    }
    if lock_id is not None:
        element["id"] = lock_id
    element.update(fields)
    return json.dumps(element)


# -- paging ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "requests"),
    [
        pytest.param(0, 1, id="empty"),
        pytest.param(1, 2, id="one"),
        pytest.param(PAGE - 1, 2, id="page-1"),
        pytest.param(PAGE, 2, id="page"),
        pytest.param(PAGE + 1, 2, id="page+1"),
        pytest.param(3 * PAGE, 4, id="3pages"),
    ],
)
def test_paging_reads_exactly_the_list(
    make_fake: Factory, make_client: Factory, size: int, requests: int
) -> None:
    fake = make_fake(locks_per_owner=size)
    client = make_client(fake)
    result = client.list_bound_locks(only_owner(fake))
    assert_exact(result, fake)
    assert result.requests == requests == fake.requests["locks"]


@pytest.mark.parametrize("cap", [2, 3, PAGE - 1])
def test_server_side_top_cap_loses_nothing(
    make_fake: Factory, make_client: Factory, cap: int
) -> None:
    fake = make_fake(locks_per_owner=5 * PAGE + 1, max_top=cap)
    result = make_client(fake, page_size=10).list_bound_locks(only_owner(fake))
    assert_exact(result, fake)


def test_page_size_one_still_pages(fake: Sandbox, make_client: Factory) -> None:
    assert_exact(make_client(fake, page_size=1).list_bound_locks(only_owner(fake)), fake)


def test_owners_are_paged_too(make_fake: Factory, make_client: Factory) -> None:
    fake = make_fake(owners=2 * PAGE + 1, locks_per_owner=0)
    owners = make_client(fake).list_owners()
    expected = fake.owners_payload()
    assert [o.id for o in owners] == [o["id"] for o in expected]
    assert [o.raw for o in owners] == [served_text(o) for o in expected]
    assert owners[0].name == expected[0]["name"] and owners[0].active is expected[0]["active"]


def test_ignored_skip_fails_fast(fake: Sandbox, make_client: Factory) -> None:
    fake.ignore_skip = True
    with pytest.raises(PagingError, match=r"ignored \$skip"):
        make_client(fake).list_bound_locks(only_owner(fake))
    assert fake.requests["locks"] == 2


def test_ignored_skip_on_owner_list(make_fake: Factory, make_client: Factory) -> None:
    fake = make_fake(owners=PAGE + 2, locks_per_owner=0)
    fake.ignore_skip = True
    with pytest.raises(PagingError, match="ignored"):
        make_client(fake).list_owners()


def test_single_row_pages_are_not_mistaken_for_the_end(
    make_fake: Factory, make_client: Factory
) -> None:
    fake = make_fake(locks_per_owner=3, max_top=1)  # overlapping pages cannot advance
    with pytest.raises(PagingError):
        make_client(fake, max_restarts=1).list_bound_locks(only_owner(fake))


def on_request(server: Sandbox, number: int, action: Callable[[], object]) -> None:
    """Run `action` just before the locks route answers its `number`-th request."""

    def hook(request: SandboxRequest) -> None:
        if request.route == "locks" and request.number == number:
            action()

    server.hooks.append(hook)


def test_unbind_before_the_position_is_detected_and_reread(
    fake: Sandbox, make_client: Factory
) -> None:
    owner = only_owner(fake)
    first = fake.locks_payload(owner)[0]["id"]
    on_request(fake, 2, lambda: fake.unbind(first))
    result = make_client(fake).list_bound_locks(owner)
    assert_exact(result, fake)
    assert first not in {r.id for r in result.records}
    assert result.requests > 5  # the list was read again


def test_unbind_of_the_overlap_row_is_detected(fake: Sandbox, make_client: Factory) -> None:
    owner = only_owner(fake)
    overlap = fake.locks_payload(owner)[PAGE - 1]["id"]
    on_request(fake, 2, lambda: fake.unbind(overlap))
    assert_exact(make_client(fake).list_bound_locks(owner), fake)


def test_unbind_after_the_position_needs_no_reread(fake: Sandbox, make_client: Factory) -> None:
    owner = only_owner(fake)
    last = fake.locks_payload(owner)[-1]["id"]
    on_request(fake, 2, lambda: fake.unbind(last))
    result = make_client(fake).list_bound_locks(owner)
    assert_exact(result, fake)
    assert result.requests == 4


def test_bind_mid_crawl_is_included(fake: Sandbox, make_client: Factory) -> None:
    owner = only_owner(fake)
    added: list[str] = []
    on_request(fake, 2, lambda: added.append(fake.bind_new(owner)))
    result = make_client(fake).list_bound_locks(owner)
    assert_exact(result, fake)
    assert result.records[-1].id == added[0]


def test_list_emptied_mid_crawl(fake: Sandbox, make_client: Factory) -> None:
    owner = only_owner(fake)

    def unbind_all() -> None:
        for lock in fake.locks_payload(owner):
            fake.unbind(lock["id"])

    on_request(fake, 2, unbind_all)
    result = make_client(fake).list_bound_locks(owner)
    assert result.records == [] and result.requests == 3


def test_insertion_before_the_position_is_detected(fake: Sandbox, make_client: Factory) -> None:
    elements = [lock_text(f"lock-{i}") for i in range(10)]
    on_request(fake, 2, lambda: elements.insert(0, lock_text("new-first")))
    serve_elements(fake, elements)
    result = make_client(fake).list_bound_locks(only_owner(fake))
    assert [r.id for r in result.records] == ["new-first"] + [f"lock-{i}" for i in range(10)]
    assert result.requests == 2 + 4  # first pass stopped at page 2, second pass read 4 pages


def test_list_that_keeps_shifting_fails(make_fake: Factory, make_client: Factory) -> None:
    fake = make_fake(locks_per_owner=40)
    owner = only_owner(fake)

    def unbind_first(request: SandboxRequest) -> None:
        if request.route == "locks" and request.skip:
            fake.unbind(fake.locks_payload(owner)[0]["id"])

    fake.hooks.append(unbind_first)
    with pytest.raises(PagingError, match="kept changing"):
        make_client(fake, max_restarts=2).list_bound_locks(owner)
    assert fake.requests["locks"] == 3 * 2


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


# -- payloads --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param('{"error": "oops"}', "JSON object where a JSON list", id="object"),
        pytest.param("<html>", "not JSON", id="html"),
        pytest.param('[{"id": "a"}, {"id": ', "truncated JSON", id="truncated"),
        pytest.param('[{"id": "a"}] [', "data after the list", id="trailing"),
        pytest.param("", "not JSON", id="empty"),
        pytest.param("42", "JSON int", id="number"),
    ],
)
def test_unreadable_pages_are_payload_errors(
    fake: Sandbox, make_client: Factory, body: str, message: str
) -> None:
    fake.add_fault(Fault(route="locks", kind="body", body=body))
    with pytest.raises(PayloadError, match=message):
        make_client(fake).list_bound_locks(only_owner(fake))
    assert fake.requests["locks"] == 1


def test_absurdly_large_response(fake: Sandbox, make_client: Factory) -> None:
    with pytest.raises(PayloadError, match="more than 1000 bytes"):
        make_client(fake, max_body_bytes=1000).list_bound_locks(only_owner(fake))


def test_skipped_records_are_counted(fake: Sandbox, make_client: Factory) -> None:
    elements = [
        lock_text("good-1"),
        lock_text(None),  # no id
        lock_text(""),  # empty id
        lock_text("x" * 65),  # too long to store
        json.dumps({"id": 5}),  # id not a string
        "[]",  # not an object
        lock_text("bad-date", bindDate="yesterday"),
        lock_text("bad-number", lockType={"manufacturerId": "1"}),
        lock_text("bad-bool", active="yes"),
        lock_text("bad-serial", rclSerialNo=True),
        lock_text("dup-same"),
        lock_text("dup-same"),
        lock_text("dup-diff", title="one"),
        lock_text("dup-diff", title="two"),
        lock_text("dup-bad"),
        lock_text("dup-bad", bindDate=7),
        lock_text("good-2"),
    ]
    serve_elements(fake, elements)
    result = make_client(fake, page_size=5).list_bound_locks(only_owner(fake))
    assert [r.id for r in result.records] == ["good-1", "dup-same", "good-2"]
    unidentified = 5
    with_ids = {"bad-date", "bad-number", "bad-bool", "bad-serial", "dup-diff", "dup-bad"}
    assert result.skipped_ids == frozenset(with_ids)
    assert result.skipped == unidentified + 4 + 1 + 2 + 2
    assert result.unidentified_skips


def test_fields_are_parsed(fake: Sandbox, make_client: Factory) -> None:
    owner = only_owner(fake)
    element = lock_text(
        "lock-1",
        bindDate="2018-12-12T14:00:00.000+02:00",
        rclDate="2018-12-24T12:00:00.1234567Z",
        ownerAccountId="someone-else",
        brandNewField={"nested": [1, 2]},
        title="T\u00fcr",
    )
    serve_elements(fake, [element], pretty=True)
    (record,) = make_client(fake).list_bound_locks(owner).records
    assert record.raw == element  # exact text, unknown field and escapes included
    assert "brandNewField" in record.raw and "\\u00fcr" in record.raw
    assert record.owner_account_id == owner  # the URL's owner wins
    assert record.title == "Tür"
    assert record.bind_date == datetime(2018, 12, 12, 12, 0, tzinfo=UTC)
    assert record.rcl_date == datetime(2018, 12, 24, 12, 0, 0, 123456, tzinfo=UTC)
    assert record.unbind_date is None
    assert record.lock_id_hex == "12-34-BF-FB"
    assert (record.lock_type_id, record.lock_model_name, record.manufacturer_id) == (
        "TK.Td30",
        "Td30",
        1,
    )
    assert (record.active, record.rcl_serial_no, record.target_type) == (True, 3, "Lock")
    assert record.health is None


def test_known_texts_are_listed_as_unchanged_without_parsing(
    fake: Sandbox, make_client: Factory
) -> None:
    elements = [lock_text("same"), lock_text("edited"), lock_text("new"), lock_text("dup")]
    elements.append(elements[-1])  # an identical second copy
    serve_elements(fake, elements)
    known = {
        "same": elements[0],
        "edited": lock_text("edited", title="before"),
        "dup": elements[3],
        "gone": lock_text("gone"),
    }
    result = make_client(fake).list_bound_locks(only_owner(fake), known=known)
    assert result.unchanged_ids == ["same", "dup"]
    assert [(r.id, r.title) for r in result.records] == [
        ("edited", "Entrance Door"),
        ("new", "Entrance Door"),
    ]
    assert (result.skipped, result.skipped_ids) == (1, frozenset())


@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "pretty"])
def test_pages_of_known_texts_are_unchanged_in_any_layout(
    fake: Sandbox, make_client: Factory, pretty: bool
) -> None:
    # Compact pages equal to the stored texts take the whole-page check; pretty ones the scan.
    elements = [lock_text(f"lock-{n}") for n in range(7)]
    elements.insert(3, elements[2])  # an identical second copy, inside a page
    serve_elements(fake, elements, pretty=pretty)
    known = {f"lock-{n}": lock_text(f"lock-{n}") for n in range(7)}
    result = make_client(fake, page_size=3).list_bound_locks(only_owner(fake), known=known)
    assert result.unchanged_ids == [f"lock-{n}" for n in range(7)]
    assert (result.records, result.skipped, result.skipped_ids) == ([], 1, frozenset())


def test_a_known_lock_whose_text_differs_only_in_spacing_is_reparsed(
    fake: Sandbox, make_client: Factory
) -> None:
    # `raw` is the text as received: a server that changes its spacing changes every `raw`.
    respaced = json.dumps(json.loads(lock_text("lock-2")), separators=(",", ":"))
    assert respaced != lock_text("lock-2")
    serve_elements(fake, [lock_text("lock-1"), respaced])
    known = {"lock-1": lock_text("lock-1"), "lock-2": lock_text("lock-2")}
    result = make_client(fake).list_bound_locks(only_owner(fake), known=known)
    assert result.unchanged_ids == ["lock-1"]
    assert [(r.id, r.raw) for r in result.records] == [("lock-2", respaced)]


def test_known_text_does_not_hide_a_conflicting_copy(fake: Sandbox, make_client: Factory) -> None:
    # One copy equals the stored text, another differs: neither can be trusted.
    serve_elements(fake, [lock_text("lock-1"), lock_text("lock-1", title="other")])
    result = make_client(fake).list_bound_locks(
        only_owner(fake), known={"lock-1": lock_text("lock-1")}
    )
    assert (result.records, result.unchanged_ids) == ([], [])
    assert result.skipped_ids == frozenset({"lock-1"}) and result.skipped == 2


# -- pages recognised as stored texts ----------------------------------------------------------


def stored_texts(server: Sandbox, owner: str) -> dict[str, str]:
    """What a sync stored for the owner's current list: texts by lock id, in the API's order."""
    return {lock["id"]: served_text(lock) for lock in server.locks_payload(owner)}


def assert_listed(result: OwnerLocks, server: Sandbox, known: dict[str, str]) -> None:
    """Each lock the server lists now is in the result once: unchanged if the text it has now
    is the stored one, else a record with that text."""
    now = stored_texts(server, result.owner_id)
    unchanged = {lock_id: known[lock_id] for lock_id in result.unchanged_ids}
    records = {r.id: r.raw for r in result.records}
    assert len(unchanged) + len(records) == len(result.unchanged_ids) + len(result.records)
    assert {**unchanged, **records} == now
    assert not any(known.get(lock_id) == raw for lock_id, raw in records.items())
    assert result.skipped == 0 and not result.unidentified_skips


def test_pages_of_stored_texts_are_matched_without_parsing() -> None:
    # Texts that differ early (as real payloads do) are told apart by their first characters.
    texts = {
        f"lock-{n}": lock_text(f"lock-{n}", bindDate=f"2018-12-1{n}T12:00:00Z") for n in range(5)
    }
    stored = list(texts.values())
    known = KnownTexts(texts)

    def unparsed(*ids: str) -> tuple[list[str], list[tuple[None, str]]]:
        return list(ids), [(None, texts[i]) for i in ids]

    assert known.page(f"[{','.join(stored[2:4])}]", 2, 2) == unparsed("lock-2", "lock-3")
    # Shifted (a lock unbound before the page), reordered, capped: walked, still unparsed.
    assert known.page(f"[{','.join(stored[3:5])}]", 2, 2) == unparsed("lock-3", "lock-4")
    assert known.page(f"[{stored[4]},{stored[0]}]", 0, 2) == unparsed("lock-4", "lock-0")
    assert known.page(f"[{stored[2]}]", 2, 2) == unparsed("lock-2")
    assert known.page(f"[{stored[1]},{stored[1]}]", 0, 2) == unparsed("lock-1", "lock-1")
    assert known.page("[]", 5, 2) == ([], [])
    # Anything else is left to the element scan.
    changed = lock_text("lock-3", bindDate="2018-12-13T12:00:00Z", title="new")
    for page in (
        f"[{stored[2]},{changed}]",
        f"[{stored[2]}, {stored[3]}]",
        f"[{stored[2]},{stored[3]}] ",
        f"[{stored[2]}{stored[3]}]",
        f"[{stored[2]},]",
    ):
        assert known.page(page, 2, 2) is None, page


@pytest.mark.parametrize("alike", [False, True], ids=["walked", "by-ids"])
def test_a_recognised_page_is_always_what_the_element_scan_reads(alike: bool) -> None:
    # Pages of stored texts, shuffled, repeated, cut and corrupted: every page of stored texts is
    # recognised, and whatever `page` recognises the full scan reads as exactly those elements.
    rng = random.Random(5)
    texts = {
        f"lock-{n}": lock_text(f"lock-{n}", **({} if alike else {"bindDate": f"2018-12-1{n}"}))
        for n in range(8)
    }
    known = KnownTexts(texts)
    assert bool(known._prefixes()) is not alike  # the pages are walked, or found by their ids
    stored = list(texts.values())
    recognised = 0
    for _ in range(3000):
        whole = "[" + ",".join(rng.choices(stored, k=rng.randint(0, 5))) + "]"
        page = whole
        if rng.random() < 0.3:
            cut = rng.randrange(len(page))
            page = page[:cut] + rng.choice(["", " ", ",", "]", "[", "x", '"']) + page[cut + 1 :]
        elif rng.random() < 0.3:  # a bad separator between two elements
            page = page.replace("},{", "}" + rng.choice(["", " ", "x", ",,", ", "]) + "{", 1)
        found = known.page(page, rng.randint(0, 8), rng.randint(1, 5))
        if found is None:
            assert page != whole, page
            continue
        recognised += 1
        elements = split_array(page, "GET test")
        assert found[0] == [element_id(value) for value, _ in elements], page
        assert [t for _, t in found[1]] == [t for _, t in elements], page
    assert recognised > 1000


def test_stored_texts_alike_at_the_start_are_matched_by_their_ids() -> None:
    # Texts alike but for their ends cannot be walked: one json.loads finds them by their ids.
    texts = {f"lock-{n}": lock_text(f"lock-{n}") for n in range(3)}
    assert len({t[:-20] for t in texts.values()}) == 1
    page = f"[{texts['lock-2']},{texts['lock-0']}]"
    assert KnownTexts(texts).page(page, 0, 2) == (
        ["lock-2", "lock-0"],
        [
            (json.loads(texts["lock-2"]), texts["lock-2"]),
            (json.loads(texts["lock-0"]), texts["lock-0"]),
        ],
    )
    assert KnownTexts(texts).page(f"[{texts['lock-2']}, {texts['lock-0']}]", 0, 2) is None


def test_empty_stored_texts_stand_for_nothing() -> None:
    # raw NULL is read back as "": joined, such texts would make invalid JSON look known.
    assert KnownTexts({"a": "", "b": ""}).page("[,]", 0, 2) is None


@pytest.mark.parametrize("order", ["stored", "reversed"])
def test_an_unchanged_list_is_unchanged_in_any_stored_order(
    make_fake: Factory, make_client: Factory, order: str
) -> None:
    fake = make_fake(locks_per_owner=3 * PAGE + 1)
    owner = only_owner(fake)
    known = stored_texts(fake, owner)
    if order == "reversed":
        known = dict(reversed(known.items()))
    result = make_client(fake).list_bound_locks(owner, known=known)
    assert result.unchanged_ids == [lock["id"] for lock in fake.locks_payload(owner)]
    assert result.records == [] and result.requests == fake.requests["locks"] == 5


@pytest.mark.parametrize("where", ["first", "overlap", "last"])
def test_unbind_mid_crawl_with_stored_texts(
    fake: Sandbox, make_client: Factory, where: str
) -> None:
    owner = only_owner(fake)
    known = stored_texts(fake, owner)
    index = {"first": 0, "overlap": PAGE - 1, "last": -1}[where]
    gone = fake.locks_payload(owner)[index]["id"]
    on_request(fake, 2, lambda: fake.unbind(gone))
    result = make_client(fake).list_bound_locks(owner, known=known)
    assert_listed(result, fake, known)
    assert gone not in result.unchanged_ids


def test_changes_mid_crawl_with_stored_texts(fake: Sandbox, make_client: Factory) -> None:
    owner = only_owner(fake)
    known = stored_texts(fake, owner)
    locks = fake.locks_payload(owner)
    added: list[str] = []

    def change() -> None:
        added.append(fake.bind_new(owner))
        fake.rename(locks[-1]["id"], "Renamed")  # after the position: read as it is now

    on_request(fake, 2, change)
    result = make_client(fake).list_bound_locks(owner, known=known)
    assert_listed(result, fake, known)
    assert {r.id for r in result.records} == {added[0], locks[-1]["id"]}


def test_insertion_before_the_position_with_stored_texts(
    fake: Sandbox, make_client: Factory
) -> None:
    elements = [lock_text(f"lock-{i}") for i in range(10)]
    known = {f"lock-{i}": text for i, text in enumerate(elements)}
    on_request(fake, 2, lambda: elements.insert(0, lock_text("new-first")))
    serve_elements(fake, elements)
    result = make_client(fake).list_bound_locks(only_owner(fake), known=known)
    assert result.unchanged_ids == list(known) and [r.id for r in result.records] == ["new-first"]
    assert result.requests == 2 + 4  # the shift was caught on page 2 and the list read again


def test_ignored_skip_with_stored_texts_fails_fast(fake: Sandbox, make_client: Factory) -> None:
    owner = only_owner(fake)
    known = stored_texts(fake, owner)
    fake.ignore_skip = True
    with pytest.raises(PagingError, match=r"ignored \$skip"):
        make_client(fake).list_bound_locks(owner, known=known)


@pytest.mark.parametrize("cap", [2, PAGE - 1])
def test_top_cap_with_stored_texts_loses_nothing(
    make_fake: Factory, make_client: Factory, cap: int
) -> None:
    fake = make_fake(locks_per_owner=3 * PAGE + 1, max_top=cap)
    owner = only_owner(fake)
    known = stored_texts(fake, owner)
    result = make_client(fake).list_bound_locks(owner, known=known)
    assert result.unchanged_ids == list(known) and result.records == []


def test_health_readings_with_expand(fake: Sandbox, make_client: Factory) -> None:
    owner = only_owner(fake)
    result = make_client(fake).list_bound_locks(owner, expand=["healthStatuses"])
    assert fake.requests["locks"] == result.requests
    readings = [reading for record in result.records for reading in (record.health or ())]
    assert readings and {r.type for r in readings} <= {
        "BatteryVoltage",
        "Temperature",
        "BatteryWarningLevel",
    }
    first = result.records[0]
    assert first.health and first.health[0].physical_lock_id == first.physical_lock_id
    assert all(r.timestamp is not None and r.timestamp.tzinfo is UTC for r in readings)


def test_malformed_health_reading_does_not_skip_the_lock(
    fake: Sandbox, make_client: Factory
) -> None:
    readings = [{"id": 1, "timestamp": "soon", "type": "Temperature", "value": 21.5}, "junk"]
    serve_elements(fake, [lock_text("lock-1", healthStatuses=readings)])
    (record,) = make_client(fake).list_bound_locks(only_owner(fake)).records
    assert record.health is not None and len(record.health) == 1
    assert (record.health[0].id, record.health[0].timestamp, record.health[0].value) == (
        None,
        None,
        21.5,
    )


def test_duplicate_owner_ids_fail(fake: Sandbox, make_client: Factory) -> None:
    owner = '{"id": "o1", "name": "Office", "active": true}'
    serve_elements(fake, [owner, '{"id": "o2"}', owner], route="owners")
    with pytest.raises(PayloadError, match="owner o1 twice"):
        make_client(fake).list_owners()


def test_owner_without_id_fails(fake: Sandbox, make_client: Factory) -> None:
    fake.add_fault(Fault(route="owners", kind="body", body='[{"name": "Office"}]'))
    with pytest.raises(PayloadError, match="without a readable id"):
        make_client(fake).list_owners()


@pytest.mark.parametrize(
    ("physical", "expected"),
    [
        pytest.param("BAASNL/7", "12-34-BF-FB", id="documented"),
        pytest.param("BAASNL_7", "12-34-BF-FB", id="url-safe"),
        pytest.param("AwCqu8w", "AA-BB-CC", id="unpadded"),
        pytest.param("AAChsgq2", None, id="length-mismatch"),
        pytest.param("!!!!", None, id="not-base64"),
        pytest.param("", None, id="empty"),
    ],
)
def test_lock_id_hex(physical: str, expected: str | None) -> None:
    assert lock_id_hex(physical) == expected


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


def test_ignored_skip_with_matching_first_and_last_row(fake: Sandbox, make_client: Factory) -> None:
    # The overlap row "matches" on every repeated page; the repeat must still be caught.
    elements = [lock_text("a"), lock_text("b"), lock_text("c"), lock_text("a")]
    serve_elements(fake, elements, ignore_skip=True)
    with pytest.raises(PagingError, match="ignored"):
        make_client(fake).list_bound_locks(only_owner(fake))


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


# -- the known page size, MaxTop and the end confirmed once per run -------------------------------


def test_a_learned_page_size_ends_short_lists_in_one_request(
    make_fake: Factory, make_client: Factory
) -> None:
    fake = make_fake(owners=3, locks_per_owner=PAGE - 1)
    client = make_client(fake)
    client.paging.learn(PageSizes(honoured=PAGE))
    owners = client.list_owners()
    results = [client.list_bound_locks(o.id) for o in owners]
    for result in results:
        assert_exact(result, fake)
    assert fake.requests["owners"] == 1 and fake.requests["locks"] == 3
    assert client.confirm_paging() == PagingCheck()  # the longest list's end holds
    assert fake.requests["locks"] + fake.requests["owners"] == 5


def test_maxtop_400_steps_the_page_size_down(make_fake: Factory, make_client: Factory) -> None:
    fake = make_fake(locks_per_owner=13, refuse_top=3)
    client = make_client(fake, page_size=10)
    assert_exact(client.list_bound_locks(only_owner(fake)), fake)
    assert client.paging.sizes == PageSizes(honoured=3, max_top=3) and client.paging.changed
    before = fake.requests["locks"]
    assert_exact(client.list_bound_locks(only_owner(fake)), fake)
    assert before == 1 + 7 and fake.requests["locks"] - before == 7  # pages of 3: no 400 again


def test_maxtop_400_without_a_stated_limit_halves(make_fake: Factory, make_client: Factory) -> None:
    fake = make_fake(locks_per_owner=13, refuse_top=3)
    fake.refuse_top_states_limit = False
    client = make_client(fake, page_size=10)
    assert_exact(client.list_bound_locks(only_owner(fake)), fake)
    assert client.paging.sizes.max_top == 2


def test_a_cap_below_the_learned_size_is_caught_by_the_confirmation(
    make_fake: Factory, make_client: Factory
) -> None:
    fake = make_fake(owners=2, locks_per_owner=3 * PAGE, max_top=PAGE - 1)
    client = make_client(fake)
    client.paging.learn(PageSizes(honoured=PAGE))  # learned before the server began to cap
    owners = client.list_owners()
    cut = [client.list_bound_locks(o.id) for o in owners]
    assert [len(r.records) for r in cut] == [PAGE - 1, PAGE - 1]  # looks like the end

    check = client.confirm_paging()

    assert check.unproven == {o.id for o in owners}
    assert check.message is not None and f"cuts pages at {PAGE - 1} rows" in check.message
    # Forgotten, and pages of the cut asked for: a full page of 3 shows that more follow.
    assert client.paging.sizes == PageSizes(max_top=PAGE - 1)
    assert_exact(client.list_bound_locks(owners[0].id), fake)


def test_a_list_that_grew_after_it_was_read_keeps_the_learned_size(
    make_fake: Factory, make_client: Factory
) -> None:
    fake = make_fake(locks_per_owner=PAGE - 2)
    client = make_client(fake)
    client.paging.learn(PageSizes(honoured=PAGE))
    owner = only_owner(fake)
    client.list_bound_locks(owner)
    fake.bind_new(owner)  # appended after the list was read: a lock moved in looks the same
    assert client.confirm_paging() == PagingCheck(frozenset({owner}))  # its removals wait
    assert client.paging.sizes == PageSizes(honoured=PAGE)
