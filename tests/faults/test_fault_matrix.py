"""The fault matrix: bad networks, bad servers, auth trouble and bad payloads, one case a row.

The other sections of the fault suite sit beside this file in tests/faults/: unreadable records,
the deletion guard, database faults, secrets and transport, bad command-line input.

Every fault ends in a documented outcome (run status and exit code), a consistent database and one
message that tells the operator what to do; the next clean run converges to the API's state. The
"What happens when..." tables of docs/operations.md are the user-facing copy of this module.

Most faults run in-process (`job.run_once`, the same wiring as `exporter run-once`) on SQLite,
PostgreSQL and MariaDB through the `db_url` fixture; exit codes and output of the real command
are covered in tests/test_cli_run_once.py, tests/service/test_check.py,
test_secrets_and_transport.py and test_bad_input.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from support.cli import one_line
from support.helpers import (
    closed_port,
    count_requests,
    mutate_every_owner,
    run_once,
    sandbox_owner_ids,
)
from support.history import (
    assert_converged,
    assert_history_consistent,
    count_rows,
    run_owner_row,
    run_row,
    stored_locks,
)

from exporter.db.schema import (
    bound_lock_versions,
)
from exporter.sandbox.server import Fault, Sandbox, SandboxRequest
from exporter.service import job


@dataclass(frozen=True)
class Case:
    """One fault: what to inject, and the outcome it must end in."""

    faults: Callable[[str], list[Fault]]  # given the id of the owner that may fail
    status: str  # succeeded (retried away), partial (that owner failed), failed (whole run)
    message: str | None = None  # in the owner's error (partial) or the run's error (failed)
    tapkey: dict[str, Any] = field(default_factory=dict)  # [tapkey] overrides for this run
    owner_requests: int | None = None  # exact requests for the failing owner: bounded retries
    token_requests: int | None = None  # exact token requests: no retry storm
    seconds: float = 8.0  # the run must end within this (caps on Retry-After and timeouts)
    options: dict[str, Any] = field(default_factory=dict)  # job.run_once keyword arguments


CLOSED = "http://127.0.0.1:CLOSED"
BIG = 64 * 1024 * 1024 + 1


def _status(status: int, times: int | None, **headers: str) -> Callable[[str], list[Fault]]:
    """`status` on the owner's locks route `times` times (None: every time)."""
    sent = {name.replace("_", "-").title(): value for name, value in headers.items()}
    return lambda owner: [Fault("locks", status=status, headers=sent, owner_id=owner, times=times)]


def _burst(status: int) -> Callable[[str], list[Fault]]:
    """`status` once on the owner list and twice on one owner's locks: retried away."""
    return lambda owner: [
        Fault("owners", status=status, times=1),
        Fault("locks", status=status, owner_id=owner, times=2),
    ]


MATRIX = [
    # 1. network and server faults
    # (max_retries is 2: a burst of 2 is retried away, a third failure fails the owner)
    # (owner_requests: 2 refused, then 1 page, then the request confirming its end: the list lost
    # its last lock and ends on a page as long as every other owner's, as a new cap would cut it)
    pytest.param(Case(_status(429, 2), "succeeded", owner_requests=4), id="429-burst"),
    pytest.param(
        Case(_status(429, 2, retry_after="0"), "succeeded", owner_requests=4),
        id="429-burst-retry-after-0",
    ),
    pytest.param(
        Case(
            _status(429, 1, retry_after="86400"),
            "succeeded",
            tapkey={"max_retry_after": 0.05},
            seconds=5,
        ),
        id="429-retry-after-huge-capped",
    ),
    pytest.param(
        Case(
            _status(
                429,
                1,
                retry_after="Wed, 21 Oct 2065 07:28:00 GMT",
                date="Tue, 21 Oct 2025 07:28:00 GMT",
            ),
            "succeeded",
            tapkey={"max_retry_after": 0.05},
            seconds=5,
        ),
        id="429-retry-after-http-date-capped",
    ),
    pytest.param(
        Case(
            _status(429, None, retry_after="0"),
            "partial",
            "still rate-limited (HTTP 429) after 3 attempts",
            owner_requests=3,
        ),
        id="429-forever-retry-after-0",
    ),
    pytest.param(
        Case(
            _status(429, None, retry_after="3600"),
            "partial",
            "still rate-limited",
            tapkey={"max_retry_after": 30, "max_retry_time": 1},
            owner_requests=1,
            seconds=5,
        ),
        id="429-retry-after-beyond-time-budget",
    ),
    *[
        pytest.param(Case(_burst(status), "succeeded"), id=f"{status}-burst")
        for status in (500, 502, 503, 504)
    ],
    pytest.param(
        Case(_status(503, None), "partial", "HTTP 503 after 3 attempts", owner_requests=3),
        id="503-forever-one-owner",
    ),
    pytest.param(
        Case(
            lambda owner: [Fault("owners", status=500, times=None)],
            "failed",
            "HTTP 500 after 3 attempts",
        ),
        id="500-forever-owner-list",
    ),
    pytest.param(
        Case(lambda owner: [Fault("locks", kind="reset", owner_id=owner, times=2)], "succeeded"),
        id="reset-burst",
    ),
    pytest.param(
        Case(
            lambda owner: [Fault("locks", kind="reset", owner_id=owner, times=None)],
            "partial",
            "connection failed after 3 attempts",
            owner_requests=3,
        ),
        id="reset-forever-one-owner",
    ),
    pytest.param(
        Case(lambda owner: [Fault("locks", kind="truncate", owner_id=owner, times=2)], "succeeded"),
        id="reset-mid-body-burst",
    ),
    pytest.param(
        Case(
            lambda owner: [Fault("locks", kind="truncate", owner_id=owner, times=None)],
            "partial",
            "response body was cut off 3 times",
            owner_requests=3,
        ),
        id="reset-mid-body-forever",
    ),
    pytest.param(
        Case(
            lambda owner: [Fault("locks", kind="delay", delay=1.0, owner_id=owner, times=1)],
            "succeeded",
            tapkey={"read_timeout": 0.3},
        ),
        id="slower-than-read-timeout-once",
    ),
    pytest.param(
        Case(
            lambda owner: [Fault("locks", kind="delay", delay=0.6, owner_id=owner, times=None)],
            "partial",
            "timed out after 3 attempts",
            tapkey={"read_timeout": 0.2},
            owner_requests=3,
        ),
        id="slower-than-read-timeout-forever",
    ),
    pytest.param(
        Case(
            lambda owner: [],
            "failed",
            "connection failed after 3 attempts",
            tapkey={"api_base_url": CLOSED},
        ),
        id="api-connection-refused",
    ),
    pytest.param(
        Case(
            lambda owner: [],
            "failed",
            "failed after 3 attempts (network error",
            tapkey={"token_url": CLOSED + "/connect/token"},
        ),
        id="token-endpoint-connection-refused",
    ),
    pytest.param(
        Case(
            lambda owner: [Fault("token", status=503, times=None)],
            "failed",
            "failed after 3 attempts (HTTP 503)",
            token_requests=3,
        ),
        id="token-endpoint-down",
    ),
    pytest.param(
        Case(
            lambda owner: [Fault("token", kind="delay", delay=0.6, times=None)],
            "failed",
            "network error: ReadTimeout",
            tapkey={"read_timeout": 0.2},
            token_requests=3,
        ),
        id="token-endpoint-slow",
    ),
    pytest.param(
        Case(lambda owner: [Fault("token", status=502, times=2)], "succeeded", token_requests=3),
        id="token-endpoint-burst",
    ),
    pytest.param(
        Case(
            lambda owner: [Fault("token", status=429, headers={"Retry-After": "86400"})],
            "succeeded",
            tapkey={"max_retry_after": 0.05},
            token_requests=2,
            seconds=5,
        ),
        id="token-endpoint-429-retry-after-huge",
    ),
    # 2. auth faults
    pytest.param(
        Case(
            lambda owner: [],
            "failed",
            "check [tapkey] client_id and client_secret",
            tapkey={"client_secret": "wrong-secret"},
            token_requests=1,
        ),
        id="wrong-client-secret",
    ),
    pytest.param(
        Case(
            lambda owner: [],
            "failed",
            "check [tapkey] client_id and client_secret",
            tapkey={"client_id": "nobody"},
            token_requests=1,
            options={"allow_client_change": True},
        ),
        id="wrong-client-id",
    ),
    pytest.param(
        Case(
            lambda owner: [Fault("token", status=400, body='{"error":"invalid_client"}')],
            "failed",
            "check [tapkey] client_id and client_secret",
            token_requests=1,
        ),
        id="invalid-client-as-400",
    ),
    pytest.param(
        Case(
            lambda owner: [],
            "failed",
            "lacks scope read:owneraccounts (granted: read:core:entities)",
            tapkey={"scopes": "read:core:entities"},
        ),
        id="403-owner-list-scope-missing",
    ),
    pytest.param(
        Case(
            lambda owner: [Fault("owners", status=403, times=None)],
            "failed",
            "although the token has scope read:owneraccounts",
        ),
        id="403-owner-list-other",
    ),
    pytest.param(
        Case(
            lambda owner: [Fault("locks", status=403, owner_id=owner, times=None)],
            "partial",
            "probably not co-admin of owner",
            owner_requests=1,
        ),
        id="403-one-owner-not-co-admin",
    ),
    pytest.param(
        Case(
            lambda owner: [Fault("locks", status=401, owner_id=owner, times=1)],
            "succeeded",
            token_requests=2,
        ),
        id="401-once-refetches-token",
    ),
    pytest.param(
        Case(
            lambda owner: [Fault("locks", status=401, owner_id=owner, times=None)],
            "failed",
            "refused (401) even with a freshly fetched token",
        ),
        id="401-again-after-refetch-fails-run",
    ),
    # 3. payloads that cannot be read at all
    pytest.param(
        Case(
            lambda owner: [Fault("locks", kind="body", body="[{not json", owner_id=owner)],
            "partial",
            "invalid or truncated JSON",
            owner_requests=1,
        ),
        id="invalid-json-locks",
    ),
    pytest.param(
        Case(
            lambda owner: [Fault("owners", kind="body", body="<html>503</html>")],
            "failed",
            "returned a body that is not JSON",
        ),
        id="invalid-json-owners",
    ),
    pytest.param(
        Case(
            lambda owner: [Fault("locks", kind="body", body='{"value": []}', owner_id=owner)],
            "partial",
            "returned a JSON object where a JSON list was expected",
            owner_requests=1,
        ),
        id="object-instead-of-list-locks",
    ),
    pytest.param(
        Case(
            lambda owner: [Fault("owners", kind="body", body='{"error": "maintenance"}')],
            "failed",
            "returned a JSON object where a JSON list was expected",
        ),
        id="object-instead-of-list-owners",
    ),
    pytest.param(
        Case(
            lambda owner: [
                Fault("locks", kind="body", body='[{"id": "a", "title": "Do', owner_id=owner)
            ],
            "partial",
            "invalid or truncated JSON",
        ),
        id="truncated-json-locks",
    ),
    pytest.param(
        Case(
            lambda owner: [Fault("locks", kind="body", body="[" + " " * BIG + "]", owner_id=owner)],
            "partial",
            "returned more than 64 MiB; lower [tapkey] page_size",
            owner_requests=1,
        ),
        id="absurdly-large-response",
    ),
]


# These faults happen before anything reaches the database: SQLite and PostgreSQL suffice.
@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("case", MATRIX)
def test_fault_matrix(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path, case: Case
) -> None:
    first = run_once(sandbox, db_url, tmp_path)
    assert first.status == "succeeded"
    owner = sandbox_owner_ids(sandbox)[0]
    before = stored_locks(engine, owner)
    versions_before = count_rows(engine, bound_lock_versions)
    changed = mutate_every_owner(sandbox)
    for fault in case.faults(owner):
        sandbox.add_fault(fault)
    tapkey = {
        key: value.replace("CLOSED", str(closed_port())) if isinstance(value, str) else value
        for key, value in case.tapkey.items()
    }
    requests = count_requests(sandbox)

    started = time.monotonic()
    result = run_once(sandbox, db_url, tmp_path, tapkey=tapkey, **case.options)
    elapsed = time.monotonic() - started

    assert result.status == case.status, result.error
    assert job.EXIT_CODES[result.status] == {"succeeded": 0, "partial": 3, "failed": 1}[case.status]
    assert elapsed < case.seconds, f"took {elapsed:.1f} s"
    run = run_row(engine, result.run_id)
    assert run["status"] == case.status and run["error"] == result.error
    if case.status == "partial":
        outcome = run_owner_row(engine, result.run_id, owner)
        assert outcome["status"] == "failed"
        assert case.message and case.message in one_line(outcome["error"])
        assert owner in one_line(run["error"])
        # The failed owner changed nothing: its renamed lock kept the old title and its
        # unbound lock was not removed; every other owner was synced and its removal made.
        assert stored_locks(engine, owner) == before
        assert result.counts.removed == len(changed) - 1 and result.counts.updated == 2
    elif case.status == "failed":
        assert case.message and case.message in one_line(run["error"])
        assert stored_locks(engine, owner) == before and result.counts.removed == 0
        if result.owners_seen == 0:  # failed before the crawl: nothing was written
            assert count_rows(engine, bound_lock_versions) == versions_before
    else:
        assert result.error is None
        assert_converged(engine, sandbox, result)
    if case.owner_requests is not None:
        assert requests[owner] == case.owner_requests
    if case.token_requests is not None:
        assert requests["token"] == case.token_requests
    assert_history_consistent(engine)

    sandbox.clear_faults()
    assert_converged(engine, sandbox, run_once(sandbox, db_url, tmp_path))


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_a_token_expiring_mid_run_is_renewed_once(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    now = [1000.0]
    with Sandbox(seed=13, owners=4, locks_per_owner=3, clock=lambda: now[0]) as fake:

        def two_hours_pass(request: SandboxRequest) -> None:
            if request.route == "locks" and request.number == 3:
                now[0] += 7200  # every token issued so far is now expired server-side

        fake.hooks.append(two_hours_pass)
        requests = count_requests(fake)

        result = run_once(fake, db_url, tmp_path, tapkey={"workers": 1})

        assert requests["token"] == 2
        assert_converged(engine, fake, result)
