"""The fault matrix: bad networks, bad payloads, auth trouble, mass removals and a dying database.

Every fault ends in a documented outcome (run status and exit code), a consistent database and one
message that tells the operator what to do; the next clean run converges to the API's state. The
"What happens when..." tables of docs/operations.md are the user-facing copy of this module.

Most faults run in-process (`job.run_once`, the same wiring as `exporter run-once`) on SQLite,
PostgreSQL and MariaDB through the `db_url` fixture; exit codes and output of the real command
are covered in tests/test_cli.py, tests/service/test_check.py and the secrets/CLI sections at the
end.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer
from alembic import command
from alembic.config import Config as AlembicConfig
from helpers import POSTGRES_ADMIN, make_settings, subprocess_env
from history_checks import assert_history_consistent, count_rows, expected_locks, locks_at
from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import Pool

from exporter import cli
from exporter.config.settings import Settings
from exporter.db import store
from exporter.db.schema import (
    bound_lock_versions,
    bound_locks,
    owner_account_versions,
    owner_accounts,
    sync_run_owners,
    sync_runs,
)
from exporter.errors import DatabaseUnavailableError, SchemaVersionError
from exporter.results import RunResult
from exporter.sandbox.server import Fault, Request, Sandbox
from exporter.service import job
from exporter.sync import run_records

EXPORTER = [sys.executable, "-m", "exporter.cli"]
SECRET = "sandbox-secret"


# -- helpers ---------------------------------------------------------------------------------


def _settings(
    fake: Sandbox, db_url: str, tmp_path: Path, sync: dict[str, Any] | None = None, **tapkey: Any
) -> Settings:
    settings = make_settings(fake, db_url, tmp_path, **tapkey)
    if sync:
        settings = settings.model_copy(update={"sync": settings.sync.model_copy(update=sync)})
    return settings


def _run(
    fake: Sandbox,
    db_url: str,
    tmp_path: Path,
    *,
    sync: dict[str, Any] | None = None,
    tapkey: dict[str, Any] | None = None,
    **kwargs: Any,
) -> RunResult:
    return job.run_once(_settings(fake, db_url, tmp_path, sync, **(tapkey or {})), **kwargs)


def _owner_ids(fake: Sandbox) -> list[str]:
    return [owner["id"] for owner in fake.owners_payload()]


def _lock_ids(fake: Sandbox, owner_id: str) -> list[str]:
    return [lock["id"] for lock in fake.locks_payload(owner_id)]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _run_row(engine: Engine, run_id: int | None) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(
            conn.execute(select(sync_runs).where(sync_runs.c.id == run_id)).mappings().one()
        )


def _owner_row(engine: Engine, run_id: int | None, owner_id: str) -> dict[str, Any]:
    query = select(sync_run_owners).where(
        sync_run_owners.c.run_id == run_id, sync_run_owners.c.owner_account_id == owner_id
    )
    with engine.connect() as conn:
        return dict(conn.execute(query).mappings().one())


def _stored(engine: Engine, owner_id: str | None = None) -> dict[str, dict[str, Any]]:
    """Current rows (all columns but `raw`) with their version rows: what "left as stored" means."""
    query = select(bound_locks)
    if owner_id is not None:
        query = query.where(bound_locks.c.owner_account_id == owner_id)
    with engine.connect() as conn:
        rows = {r["id"]: dict(r) for r in conn.execute(query).mappings()}
        for lock_id, row in rows.items():
            row.pop("raw")
            row["versions"] = [
                dict(v)
                for v in conn.execute(
                    select(bound_lock_versions)
                    .where(bound_lock_versions.c.id == lock_id)
                    .order_by(bound_lock_versions.c.valid_from)
                ).mappings()
            ]
    return rows


def _assert_converged(engine: Engine, fake: Sandbox, result: RunResult) -> None:
    assert result.status == "succeeded", result.error
    assert result.finished_at is not None
    assert locks_at(engine, result.finished_at) == expected_locks(fake.snapshot())
    assert_history_consistent(engine)


def _one_line(message: str | None) -> str:
    assert message, "expected a message"
    assert "\n" not in message and "Traceback" not in message, message
    return message


def _count_requests(fake: Sandbox) -> Counter[str]:
    """Requests per owner ("owners"/"token" for those routes), counted from now on."""
    seen: Counter[str] = Counter()

    def hook(request: Request) -> None:
        seen[request.owner_id or request.route] += 1

    fake.hooks.append(hook)
    return seen


def _mutate_every_owner(fake: Sandbox) -> dict[str, tuple[str, str]]:
    """Rename the first lock and unbind the last one of every owner: (renamed, unbound) ids."""
    changed = {}
    for owner_id in _owner_ids(fake):
        ids = _lock_ids(fake, owner_id)
        fake.rename(ids[0], f"renamed {ids[0][:6]}")
        fake.unbind(ids[-1])
        changed[owner_id] = (ids[0], ids[-1])
    return changed


# -- 1-3: network, server, auth and payload faults as one matrix ------------------------------


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
    first = _run(sandbox, db_url, tmp_path)
    assert first.status == "succeeded"
    owner = _owner_ids(sandbox)[0]
    before = _stored(engine, owner)
    versions_before = count_rows(engine, bound_lock_versions)
    changed = _mutate_every_owner(sandbox)
    for fault in case.faults(owner):
        sandbox.add_fault(fault)
    tapkey = {
        key: value.replace("CLOSED", str(_closed_port())) if isinstance(value, str) else value
        for key, value in case.tapkey.items()
    }
    requests = _count_requests(sandbox)

    started = time.monotonic()
    result = _run(sandbox, db_url, tmp_path, tapkey=tapkey, **case.options)
    elapsed = time.monotonic() - started

    assert result.status == case.status, result.error
    assert job.EXIT_CODES[result.status] == {"succeeded": 0, "partial": 3, "failed": 1}[case.status]
    assert elapsed < case.seconds, f"took {elapsed:.1f} s"
    run = _run_row(engine, result.run_id)
    assert run["status"] == case.status and run["error"] == result.error
    if case.status == "partial":
        outcome = _owner_row(engine, result.run_id, owner)
        assert outcome["status"] == "failed"
        assert case.message and case.message in _one_line(outcome["error"])
        assert owner in _one_line(run["error"])
        # The failed owner changed nothing: its renamed lock kept the old title and its
        # unbound lock was not removed; every other owner was synced and its removal made.
        assert _stored(engine, owner) == before
        assert result.counts.removed == len(changed) - 1 and result.counts.updated == 2
    elif case.status == "failed":
        assert case.message and case.message in _one_line(run["error"])
        assert _stored(engine, owner) == before and result.counts.removed == 0
        if result.owners_seen == 0:  # failed before the crawl: nothing was written
            assert count_rows(engine, bound_lock_versions) == versions_before
    else:
        assert result.error is None
        _assert_converged(engine, sandbox, result)
    if case.owner_requests is not None:
        assert requests[owner] == case.owner_requests
    if case.token_requests is not None:
        assert requests["token"] == case.token_requests
    assert_history_consistent(engine)

    sandbox.clear_faults()
    _assert_converged(engine, sandbox, _run(sandbox, db_url, tmp_path))


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_a_token_expiring_mid_run_is_renewed_once(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    now = [1000.0]
    with Sandbox(seed=13, owners=4, locks_per_owner=3, clock=lambda: now[0]) as fake:

        def two_hours_pass(request: Request) -> None:
            if request.route == "locks" and request.number == 3:
                now[0] += 7200  # every token issued so far is now expired server-side

        fake.hooks.append(two_hours_pass)
        requests = _count_requests(fake)

        result = _run(fake, db_url, tmp_path, tapkey={"workers": 1})

        assert requests["token"] == 2
        _assert_converged(engine, fake, result)


# -- 3: records that cannot be read (served through a paging hook) ---------------------------


def _serve_list(
    fake: Sandbox, owner_id: str, elements: list[str], *, broken_from: int | None = None
) -> None:
    """Serve `elements` (raw JSON texts) as the owner's bound locks, paged like the real API.

    Pages starting at `$skip >= broken_from` are invalid JSON.
    """

    def page(request: Request) -> None:
        if request.route != "locks" or request.owner_id != owner_id:
            return
        skip = request.skip or 0
        rows = elements[skip : None if request.top is None else skip + request.top]
        body = "[" + ",".join(rows) + "]"
        if broken_from is not None and skip >= broken_from:
            body = body[: len(body) // 2]
        fake.add_fault(Fault("locks", kind="body", body=body, owner_id=owner_id))

    fake.hooks.append(page)


def _elements(fake: Sandbox, owner_id: str) -> list[dict[str, Any]]:
    return fake.locks_payload(owner_id)


def _texts(elements: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(element) for element in elements]


def test_a_lock_without_id_is_skipped_and_its_owner_removes_nothing(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    _run(sandbox, db_url, tmp_path)
    owner = _owner_ids(sandbox)[0]
    elements = _elements(sandbox, owner)
    nameless = elements[1]["id"]
    del elements[1]["id"]
    elements[0]["title"] = "still synced"
    missing = elements.pop(3)["id"]  # looks unbound, but an unknown element may be it
    before = _stored(engine, owner)
    _serve_list(sandbox, owner, _texts(elements))

    result = _run(sandbox, db_url, tmp_path)

    assert result.status == "succeeded"
    assert result.counts.skipped == 1 and _run_row(engine, result.run_id)["skipped"] == 1
    assert result.counts.removed == 0 and result.counts.updated == 1
    after = _stored(engine, owner)
    assert after[missing] == before[missing] and after[nameless] == before[nameless]
    assert after[elements[0]["id"]]["title"] == "still synced"
    assert_history_consistent(engine)
    sandbox.hooks.clear()
    _assert_converged(engine, sandbox, _run(sandbox, db_url, tmp_path))


WRONG_TYPES = [
    pytest.param({"bindDate": "yesterday"}, id="date-that-does-not-parse"),
    pytest.param({"rclSerialNo": "3"}, id="number-as-string"),
    pytest.param(
        {"lockType": {"id": "TK.Td30", "manufacturerId": "1"}}, id="nested-number-as-string"
    ),
    pytest.param({"active": "yes"}, id="bool-as-string"),
    pytest.param({"title": 42}, id="number-for-a-string"),
    pytest.param({"lockType": "TK.Td30"}, id="string-for-an-object"),
]


@pytest.mark.parametrize("bad", WRONG_TYPES)
def test_a_record_with_wrong_types_is_skipped_counted_and_left_as_stored(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path, bad: dict[str, Any]
) -> None:
    _run(sandbox, db_url, tmp_path)
    owner = _owner_ids(sandbox)[0]
    elements = _elements(sandbox, owner)
    broken = elements[1]["id"]
    elements[1].update({"description": "never stored", **bad})
    unbound = elements.pop(3)["id"]
    before = _stored(engine, owner)
    _serve_list(sandbox, owner, _texts(elements))

    result = _run(sandbox, db_url, tmp_path)

    assert result.status == "succeeded" and result.counts.skipped == 1
    assert _run_row(engine, result.run_id)["skipped"] == 1
    after = _stored(engine, owner)
    assert after[broken] == before[broken]  # not updated, not removed
    assert after[unbound]["removed_at"] is not None  # a known skipped id blocks no removal
    assert_history_consistent(engine)


# Values longer than the exporter stores (records.MAX_FIELD_LENGTHS, MAX_ELEMENT_BYTES): the
# lock is skipped and counted with a warning naming the field, the same on every database.
_HEX_299 = base64.b64encode(bytes([100, 0]) + bytes(range(100))).decode()  # 100 bytes of id
TOO_LONG = [
    pytest.param({"physicalLockId": "A" * 256}, "physicalLockId is 256", id="physical-lock-id"),
    pytest.param({"lockTypeId": "T" * 256}, "lockTypeId is 256", id="lock-type-id"),
    pytest.param(
        {"lockType": {"id": "TK.Td30", "modelName": "M" * 256}},
        "lockType.modelName is 256",
        id="model-name",
    ),
    pytest.param({"targetType": "L" * 65}, "targetType is 65", id="target-type"),
    pytest.param(
        {"physicalLockId": _HEX_299}, "lock_id_hex is 299 characters", id="hex-id-of-a-long-id"
    ),
    pytest.param({"description": "d" * 4_200_000}, "the element is 4,2", id="element-over-4-mib"),
]


@pytest.mark.parametrize(("bad", "named"), TOO_LONG)
def test_a_value_longer_than_the_exporter_stores_skips_the_lock_on_every_database(
    sandbox: Sandbox,
    db_url: str,
    engine: Engine,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    bad: dict[str, Any],
    named: str,
) -> None:
    _run(sandbox, db_url, tmp_path)
    owner = _owner_ids(sandbox)[0]
    elements = _elements(sandbox, owner)
    long = elements[1]["id"]
    elements[1].update(bad)
    elements[2]["title"] = "still synced"
    before = _stored(engine)
    _serve_list(sandbox, owner, _texts(elements))

    result = _run(sandbox, db_url, tmp_path)

    assert result.status == "succeeded" and result.counts.skipped == 1
    assert result.counts.updated == 1 and _run_row(engine, result.run_id)["skipped"] == 1
    after = _stored(engine)
    assert after[long] == before[long]  # left as stored: not updated, cut or removed
    assert after[elements[2]["id"]]["title"] == "still synced"
    assert {k: v for k, v in after.items() if k not in (long, elements[2]["id"])} == {
        k: v for k, v in before.items() if k not in (long, elements[2]["id"])
    }
    [warning] = [r.getMessage() for r in caplog.records if f"{long}: {named}" in r.getMessage()]
    assert f"owner {owner}: skipped 1 " in warning and "the exporter stores" in warning
    assert_history_consistent(engine)


def test_long_free_texts_are_stored_whole_on_every_database(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # A 100,000-character title used to fail the whole run on MariaDB (TEXT holds 64 KiB).
    owner = _owner_ids(sandbox)[0]
    lock = _lock_ids(sandbox, owner)[0]
    title, description, name = "T\u00fcr " * 25_000, "\u00e9" * 300_000, "N" * 100_000
    sandbox.update_lock(lock, title=title, description=description)
    sandbox.update_owner(owner, name=name)

    result = _run(sandbox, db_url, tmp_path)
    again = _run(sandbox, db_url, tmp_path)

    assert result.status == "succeeded" and result.counts.skipped == 0
    assert again.counts.unchanged == result.counts.created  # stored exactly: no new version
    with engine.connect() as conn:
        stored = conn.execute(
            select(bound_locks.c.title, bound_locks.c.description).where(bound_locks.c.id == lock)
        ).one()
        stored_name = conn.execute(
            select(owner_accounts.c.name).where(owner_accounts.c.id == owner)
        ).scalar_one()
        view = conn.execute(
            text("SELECT title, owner_name FROM current_bound_locks WHERE id = :id"), {"id": lock}
        ).one()
    assert tuple(stored) == (title, description) and stored_name == name
    assert tuple(view) == (title, name)
    _assert_converged(engine, sandbox, again)


def _owner_rows(engine: Engine) -> dict[str, dict[str, Any]]:
    """The stored owner accounts, but for last_seen_at (which every fetch moves)."""
    with engine.connect() as conn:
        rows = conn.execute(select(owner_accounts).order_by(owner_accounts.c.id)).mappings()
        return {r["id"]: {k: v for k, v in r.items() if k != "last_seen_at"} for r in rows}


def _list_also_owner(fake: Sandbox, extra: dict[str, Any]) -> None:
    """Serve the owner list with `extra` appended, paged like the real API."""

    def page(request: Request) -> None:
        if request.route != "owners":
            return
        owners = [*fake.owners_payload(), extra]
        skip = request.skip or 0
        rows = owners[skip : None if request.top is None else skip + request.top]
        fake.add_fault(Fault("owners", kind="body", body=json.dumps(rows)))

    fake.hooks.append(page)


@pytest.mark.parametrize("what", ["long id", "long element"])
def test_an_owner_the_database_cannot_hold_fails_alone(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path, what: str
) -> None:
    # Other owners are never lost: the run syncs them and is partial; that owner is left as it is.
    _run(sandbox, db_url, tmp_path)
    owners = _owner_ids(sandbox)
    for owner in owners:
        sandbox.rename(_lock_ids(sandbox, owner)[0], f"renamed {owner[:6]}")
    if what == "long id":
        bad = "o" * 65
        _list_also_owner(sandbox, {"id": bad, "name": "x", "active": True})
    else:
        bad = owners[0]
        sandbox.update_owner(bad, name="N" * 4_200_000)
    before = _stored(engine, bad)
    owners_before = _owner_rows(engine)

    result = _run(sandbox, db_url, tmp_path)

    assert result.status == "partial" and result.counts.updated == 2 + (what == "long id")
    failed = [o for o in result.owners if o.status == "failed"]
    assert [o.owner_account_id for o in failed] == [bad]
    too_long = "its id is 65 characters" if what == "long id" else "its element is 4,2"
    assert failed[0].error is not None and failed[0].error.startswith(too_long)
    assert "the owner and its locks were left as stored" in failed[0].error
    assert _run_row(engine, result.run_id)["error"].startswith(f"owner {bad}: {too_long}")
    assert _stored(engine, bad) == before and _owner_rows(engine) == owners_before
    with engine.connect() as conn:
        rows = conn.execute(
            select(sync_run_owners.c.owner_account_id, sync_run_owners.c.status).where(
                sync_run_owners.c.run_id == result.run_id
            )
        ).all()
    expected_rows = {(o, "complete") for o in owners if o != bad}
    if what == "long element":
        expected_rows.add((bad, "failed"))  # a 65-character id has no row to go in
    assert set(map(tuple, rows)) == expected_rows
    assert_history_consistent(engine)


def test_unknown_new_fields_are_kept_in_raw_and_make_no_version(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    _run(sandbox, db_url, tmp_path)
    owner = _owner_ids(sandbox)[0]
    elements = _elements(sandbox, owner)
    for element in elements:
        element["doorSensor"] = {"state": "closed", "since": "2030-01-01T00:00:00Z"}
        element["batteryPercent"] = 87
    versions = count_rows(engine, bound_lock_versions)
    _serve_list(sandbox, owner, _texts(elements))

    result = _run(sandbox, db_url, tmp_path)

    assert result.status == "succeeded" and result.counts.unchanged == 15
    assert count_rows(engine, bound_lock_versions) == versions
    with engine.connect() as conn:
        raws = conn.execute(
            select(bound_locks.c.raw).where(bound_locks.c.owner_account_id == owner)
        ).scalars()
        assert all('"doorSensor"' in raw and '"batteryPercent": 87' in raw for raw in raws)


@pytest.mark.parametrize("conflicting", [False, True], ids=["identical-copy", "conflicting-copy"])
def test_duplicate_ids_in_one_list(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path, conflicting: bool
) -> None:
    _run(sandbox, db_url, tmp_path)
    owner = _owner_ids(sandbox)[0]
    elements = _elements(sandbox, owner)
    copy = dict(elements[0], title="a different title") if conflicting else dict(elements[0])
    before = _stored(engine, owner)
    _serve_list(sandbox, owner, _texts([*elements, copy]))

    result = _run(sandbox, db_url, tmp_path)

    assert result.status == "succeeded"
    assert result.counts.skipped == (2 if conflicting else 1)
    assert result.counts.removed == 0 and result.counts.updated == 0
    assert _stored(engine, owner) == before
    assert_history_consistent(engine)


def test_a_page_that_cannot_be_read_fails_the_owner_and_writes_none_of_it(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=12, owners=2, locks_per_owner=7) as fake:
        _run(fake, db_url, tmp_path, tapkey={"page_size": 3})
        owner = _owner_ids(fake)[0]
        elements = _elements(fake, owner)
        elements[0]["title"] = "on the readable first page"
        before = _stored(engine, owner)
        _serve_list(fake, owner, _texts(elements), broken_from=1)

        result = _run(fake, db_url, tmp_path, tapkey={"page_size": 3})

        assert result.status == "partial"
        assert "invalid or truncated JSON" in _one_line(
            _owner_row(engine, result.run_id, owner)["error"]
        )
        assert _stored(engine, owner) == before  # never half an owner
        assert_history_consistent(engine)
        fake.hooks.clear()
        _assert_converged(engine, fake, _run(fake, db_url, tmp_path, tapkey={"page_size": 3}))


# -- 4: the deletion guard -------------------------------------------------------------------


@pytest.fixture
def big_sandbox() -> Iterator[Sandbox]:
    """3 owners x 24 locks: enough for the guard's default minimum of 10."""
    with Sandbox(seed=21, owners=3, locks_per_owner=24) as fake:
        yield fake


def _unbind(fake: Sandbox, owner_id: str, count: int) -> set[str]:
    ids = _lock_ids(fake, owner_id)[:count]
    for lock_id in ids:
        fake.unbind(lock_id)
    return set(ids)


def _present(engine: Engine, ids: set[str]) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                select(bound_locks.c.id).where(
                    bound_locks.c.id.in_(sorted(ids)), bound_locks.c.removed_at.is_(None)
                )
            ).scalars()
        )


@pytest.mark.parametrize(
    "confirm",
    [
        pytest.param({"allow_mass_removal_owners": ["OWNER"]}, id="confirm-that-owner"),
        pytest.param({"allow_mass_removal": True}, id="confirm-all"),
        pytest.param({"sync": {"allow_mass_removal": True}}, id="config-allow-mass-removal"),
    ],
)
def test_an_owner_losing_most_of_its_locks_is_held_back_until_confirmed(
    big_sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path, confirm: dict[str, Any]
) -> None:
    fake = big_sandbox
    _run(fake, db_url, tmp_path)
    owner, other = _owner_ids(fake)[:2]
    gone = _unbind(fake, owner, 13)  # 13 of 24: more than half and more than 10
    small = _unbind(fake, other, 2)  # an ordinary removal elsewhere goes through

    held = _run(fake, db_url, tmp_path)

    assert held.status == "partial" and job.EXIT_CODES[held.status] == 3
    assert held.held_back == {owner: 13} and held.counts.removed == 2
    message = _one_line(held.error)
    assert f"--allow-mass-removal-owner {owner}" in message and "13 of its 24 locks" in message
    assert _present(engine, gone) == gone and not _present(engine, small)
    assert message.startswith(_owner_row(engine, held.run_id, owner)["error"] + "; ")
    assert message.endswith(
        "under `exporter serve`, set [sync] allow_mass_removal = true for one run"
    )
    assert _run_row(engine, held.run_id)["status"] == "partial"
    assert_history_consistent(engine)
    again = _run(fake, db_url, tmp_path)  # still held: the guard does not get used to it
    assert again.held_back == {owner: 13}

    options: dict[str, Any] = {
        k: [owner if o == "OWNER" else o for o in v] if isinstance(v, list) else v
        for k, v in confirm.items()
    }
    confirmed = _run(fake, db_url, tmp_path, **options)

    assert confirmed.held_back == {} and confirmed.counts.removed == 13
    _assert_converged(engine, fake, confirmed)


def test_confirming_another_owner_does_not_release_the_held_one(
    big_sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    _run(big_sandbox, db_url, tmp_path)
    owner, other = _owner_ids(big_sandbox)[:2]
    gone = _unbind(big_sandbox, owner, 20)

    result = _run(big_sandbox, db_url, tmp_path, allow_mass_removal_owners=[other])

    assert result.status == "partial" and result.held_back == {owner: 20}
    assert _present(engine, gone) == gone


@pytest.mark.parametrize(
    "count, sync",
    [
        pytest.param(12, {}, id="exactly-half"),
        pytest.param(10, {"mass_removal_max_fraction": 0.0}, id="exactly-min-count"),
        pytest.param(20, {"mass_removal_max_fraction": 0.9}, id="raised-fraction"),
        pytest.param(20, {"mass_removal_min_count": 20}, id="raised-min-count"),
    ],
)
def test_removals_within_the_thresholds_go_through(
    big_sandbox: Sandbox,
    db_url: str,
    engine: Engine,
    tmp_path: Path,
    count: int,
    sync: dict[str, Any],
) -> None:
    _run(big_sandbox, db_url, tmp_path)
    gone = _unbind(big_sandbox, _owner_ids(big_sandbox)[0], count)

    result = _run(big_sandbox, db_url, tmp_path, sync=sync)

    assert result.held_back == {} and result.counts.removed == count
    assert not _present(engine, gone)
    _assert_converged(engine, big_sandbox, result)


def test_lowered_thresholds_hold_back_small_removals(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    _run(sandbox, db_url, tmp_path)
    owner = _owner_ids(sandbox)[0]
    gone = _unbind(sandbox, owner, 3)

    result = _run(
        sandbox,
        db_url,
        tmp_path,
        sync={"mass_removal_min_count": 2, "mass_removal_max_fraction": 0.5},
    )

    assert result.status == "partial" and result.held_back == {owner: 3}
    assert _present(engine, gone) == gone


def test_an_owner_list_losing_more_than_half_is_held_back(
    big_sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    fake = big_sandbox
    _run(fake, db_url, tmp_path)
    lost = _owner_ids(fake)[:2]
    for owner in lost:
        fake.hide_owner(owner)

    held = _run(fake, db_url, tmp_path)

    assert held.status == "partial" and held.held_back == {o: 24 for o in lost}
    message = _one_line(held.error)
    assert "2 of 3 owner accounts" in message and "--allow-mass-removal" in message
    with engine.connect() as conn:
        present = conn.execute(
            select(func.count()).where(owner_accounts.c.removed_at.is_(None))
        ).scalar()
    assert present == 3 and held.counts.removed == 0
    assert_history_consistent(engine)

    partly = _run(fake, db_url, tmp_path, allow_mass_removal_owners=[lost[0]])
    assert partly.held_back == {lost[1]: 24} and partly.counts.removed == 24
    confirmed = _run(fake, db_url, tmp_path, allow_mass_removal=True)
    assert confirmed.counts.removed == 24
    _assert_converged(engine, fake, confirmed)


def test_a_single_vanished_owner_is_judged_by_the_owner_list_rule_only(
    big_sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    _run(big_sandbox, db_url, tmp_path)
    big_sandbox.hide_owner(_owner_ids(big_sandbox)[0])  # 1 of 3 owners, all 24 of its locks

    result = _run(big_sandbox, db_url, tmp_path)

    assert result.held_back == {} and result.counts.removed == 24
    _assert_converged(engine, big_sandbox, result)


def test_an_empty_owner_list_is_held_back(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    _run(sandbox, db_url, tmp_path)
    sandbox.add_fault(Fault("owners", kind="body", body="[]", times=None))

    result = _run(sandbox, db_url, tmp_path)

    assert result.status == "partial" and len(result.held_back) == 3
    assert result.counts.removed == 0 and count_rows(engine, owner_account_versions) == 3


def test_a_dry_run_reports_held_back_removals_without_listing_them(
    big_sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    _run(big_sandbox, db_url, tmp_path)
    owner = _owner_ids(big_sandbox)[0]
    _unbind(big_sandbox, owner, 15)

    result = _run(big_sandbox, db_url, tmp_path, dry_run=True)

    assert result.status == "partial" and result.held_back == {owner: 15}
    assert not [c for c in result.changes if c.change_type == "removed"]
    assert "--allow-mass-removal-owner" in (result.error or "")


# -- 5: database faults ----------------------------------------------------------------------


def _alembic(conn: Any) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(store.migrations_dir()))
    cfg.attributes["connection"] = conn
    return cfg


def _previous_revision() -> str | None:
    from alembic.script import ScriptDirectory

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(store.migrations_dir()))
    head = ScriptDirectory.from_config(cfg).get_revision(store.head_revision())
    down = head.down_revision if head is not None else None
    return down if isinstance(down, str) else None


def _migrate(url: str, revision: str | None, *, stamp: str | None = None) -> None:
    engine = store.make_engine(url)
    try:
        with engine.connect() as conn:
            if revision is not None:
                command.upgrade(_alembic(conn), revision)
            if stamp is not None:
                conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": stamp})
            conn.commit()
    finally:
        engine.dispose()


def _revision(url: str) -> str | None:
    engine = store.make_engine(url)
    try:
        return store.current_revision(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql://postgres:hunter2@127.0.0.1:CLOSED/inventory", id="postgresql"),
        pytest.param("mysql://root:hunter2@127.0.0.1:CLOSED/inventory", id="mariadb"),
        pytest.param("sqlite:///FILE/inventory.db", id="sqlite-path-under-a-file"),
    ],
)
def test_a_database_unreachable_at_start_exits_5_with_one_line(
    sandbox: Sandbox, tmp_path: Path, url: str
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    url = url.replace("CLOSED", str(_closed_port())).replace("FILE", str(tmp_path / "a-file"))

    with pytest.raises(DatabaseUnavailableError) as caught:
        _run(sandbox, url, tmp_path)

    message = _one_line(str(caught.value))
    assert caught.value.exit_code == 5 and "hunter2" not in message
    assert "check [database] url" in message
    assert sandbox.request_count == 0


def test_a_schema_behind_the_code_exits_5_and_writes_nothing(
    sandbox: Sandbox, empty_db_url: str, tmp_path: Path
) -> None:
    previous = _previous_revision()
    _migrate(empty_db_url, previous)  # None: no schema at all, the oldest "behind" there is

    if empty_db_url.startswith("sqlite"):
        # SQLite is upgraded by run-once itself (documented); nothing to refuse.
        assert _run(sandbox, empty_db_url, tmp_path).status == "succeeded"
        assert _revision(empty_db_url) == store.head_revision()
        return
    with pytest.raises(SchemaVersionError, match="exporter db upgrade") as caught:
        _run(sandbox, empty_db_url, tmp_path)

    assert caught.value.exit_code == 5
    assert sandbox.request_count == 0
    assert _revision(empty_db_url) == previous
    if previous is not None:
        engine = store.make_engine(empty_db_url)
        try:
            assert count_rows(engine, sync_runs) == 0
        finally:
            engine.dispose()


def test_a_schema_from_a_newer_exporter_exits_5_and_writes_nothing(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    _migrate(db_url, None, stamp="9999_from_the_future")
    try:
        with pytest.raises(SchemaVersionError, match="does not know") as caught:
            _run(sandbox, db_url, tmp_path)
        assert caught.value.exit_code == 5
        assert sandbox.request_count == 0 and count_rows(engine, sync_runs) == 0
        assert _revision(db_url) == "9999_from_the_future"
    finally:
        _migrate(db_url, None, stamp=store.head_revision())  # the fixture's database is shared


@contextlib.contextmanager
def _killing(engine_url: str, when: Callable[[str], bool], times: int = 1) -> Iterator[list[str]]:
    """Kill the server session of the connection about to run a matching statement.

    The kill comes from another session (pg_terminate_backend / KILL), like an administrator
    or a failover would; the statement then fails on a dead connection.
    """
    admin = create_engine(engine_url, isolation_level="AUTOCOMMIT")
    killed: list[str] = []
    postgres = admin.dialect.name == "postgresql"

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if conn.engine is admin or len(killed) >= times or not when(statement):
            return
        killed.append(" ".join(statement.split()[:3]))
        dbapi = conn.connection.dbapi_connection
        with admin.connect() as kill:
            if postgres:
                pid = dbapi.info.backend_pid
                kill.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
            else:
                kill.execute(text(f"KILL CONNECTION {int(dbapi.thread_id())}"))

    event.listen(Engine, "before_cursor_execute", before)
    try:
        yield killed
    finally:
        event.remove(Engine, "before_cursor_execute", before)
        admin.dispose()


# SQLite has no server connection to lose.
SERVERS = pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)


def _runs(engine: Engine) -> list[tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(select(sync_runs.c.status, sync_runs.c.error).order_by(sync_runs.c.id))
        return [(status, error) for status, error in rows]


@SERVERS
def test_a_connection_lost_inside_an_owner_rolls_that_owner_back(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    url = db_url
    with Sandbox(seed=31, owners=4, locks_per_owner=6) as fake:
        inserts: list[str] = []

        def second_owner(statement: str) -> bool:
            # Each owner's transaction writes its locks and versions (bulk, possibly COPY),
            # then its sync_run_owners row: kill the second owner's just before that row.
            if statement.startswith("INSERT INTO sync_run_owners"):
                inserts.append(statement)
            return len(inserts) == 2

        lost = pytest.raises(DatabaseUnavailableError, match="lost the database connection \\(")
        with _killing(url, second_owner) as killed, lost:
            _run(fake, url, tmp_path, tapkey={"workers": 1})
        assert killed

        # The first owner is complete, the second rolled back entirely, the run marked failed.
        assert count_rows(engine, bound_locks) == 6
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(sync_run_owners)).scalar() == 1
        assert [status for status, _ in _runs(engine)] == ["failed"]
        assert "rolled back" in (_runs(engine)[0][1] or "")
        assert_history_consistent(engine)

        _assert_converged(engine, fake, _run(fake, url, tmp_path))


@SERVERS
def test_a_connection_lost_before_the_run_starts_exits_5_and_writes_no_run(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    url = db_url

    def opening_the_run(statement: str) -> bool:
        return statement.startswith("INSERT INTO sync_runs")

    with (
        _killing(url, opening_the_run) as killed,
        pytest.raises(DatabaseUnavailableError) as caught,
    ):
        _run(sandbox, url, tmp_path)
    assert killed and caught.value.exit_code == 5
    assert "lost the database connection" in _one_line(str(caught.value))
    assert _runs(engine) == [] and sandbox.request_count == 0

    _assert_converged(engine, sandbox, _run(sandbox, url, tmp_path))


@SERVERS
@pytest.mark.parametrize("where", ["second owner", "removals"])
def test_a_run_cut_off_by_the_database_is_recorded_by_its_process_when_it_is_back(
    db_url: str,
    engine: Engine,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    # The database goes away in the middle of the run (in the second owner's transaction, or in
    # the removals') and is still away while the run tries to record its end: the process keeps
    # the end, and its next run (`serve`'s next slot) writes it as it happened, not as
    # "interrupted" with counts of 0 and the time it was found.
    monkeypatch.setattr(run_records, "RETRY_WAITS", (0.0, 0.0, 0.0))
    caplog.set_level(logging.INFO)
    url = db_url
    with Sandbox(seed=32, owners=3, locks_per_owner=4) as fake:
        _run(fake, url, tmp_path)
        _mutate_every_owner(fake)
        inserts: list[str] = []

        def cut_off_then_every_try_to_record_the_end(statement: str) -> bool:
            if statement.startswith("INSERT INTO sync_run_owners"):
                inserts.append(statement)
                return where == "second owner" and len(inserts) == 2
            if statement.startswith("UPDATE bound_locks SET removed_at"):
                return where == "removals"
            return statement.startswith("UPDATE sync_runs") and "sync_runs.id =" in statement

        attempts = 1 + len(run_records.RETRY_WAITS)
        with (
            _killing(url, cut_off_then_every_try_to_record_the_end, 1 + attempts) as killed,
            pytest.raises(DatabaseUnavailableError) as lost,
        ):
            _run(fake, url, tmp_path, tapkey={"workers": 1})
        assert len(killed) == 1 + attempts
        assert _runs(engine)[-1] == ("running", None)
        [warning] = [r for r in caplog.records if "could not record the end" in r.getMessage()]
        assert warning.getMessage().startswith("could not record the end of run 2 (")
        assert warning.exc_info is None and "\n" not in warning.getMessage()  # one line
        counts = ("locks_seen", "updated", "unchanged", "removed")
        with engine.connect() as conn:
            committed = conn.execute(
                select(*(func.sum(sync_run_owners.c[name]) for name in counts)).where(
                    sync_run_owners.c.run_id == 2
                )
            ).one()
        caplog.clear()

        result = _run(fake, url, tmp_path)

        with engine.connect() as conn:
            runs = conn.execute(select(sync_runs).order_by(sync_runs.c.id)).mappings().all()
        cut = runs[1]
        assert (cut["status"], cut["error"]) == ("failed", _one_line(str(lost.value)))
        assert cut["error"].startswith("lost the database connection (")
        # The end it really had: before the next run began, with what its owners committed.
        assert cut["finished_at"] is not None and cut["finished_at"] < runs[2]["started_at"]
        assert tuple(cut[name] for name in counts) == tuple(committed)
        # The renamed lock of each owner that committed; no removal was committed.
        assert (cut["updated"], cut["removed"]) == (1 if where == "second owner" else 3, 0)
        assert any("recorded the end of run 2 (failed at" in r.getMessage() for r in caplog.records)
        assert not any("had no recorded end" in r.getMessage() for r in caplog.records)
        assert_history_consistent(engine)
        _assert_converged(engine, fake, result)


@SERVERS
def test_every_connection_killed_mid_crawl_aborts_the_run_and_the_next_converges(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    url = db_url
    name = make_url(url).database
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with Sandbox(seed=33, owners=4, locks_per_owner=5) as fake:
        _run(fake, url, tmp_path)
        _mutate_every_owner(fake)

        def kill_all(request: Request) -> None:
            if request.route != "locks" or request.number != 3:
                return
            with admin.connect() as conn:
                if admin.dialect.name == "postgresql":
                    conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                            "WHERE datname = :db AND pid <> pg_backend_pid()"
                        ),
                        {"db": name},
                    )
                else:
                    ids = conn.execute(
                        text(
                            "SELECT id FROM information_schema.processlist "
                            "WHERE db = :db AND id <> CONNECTION_ID()"
                        ),
                        {"db": name},
                    ).scalars()
                    for thread in list(ids):
                        with contextlib.suppress(Exception):
                            conn.execute(text(f"KILL CONNECTION {int(thread)}"))

        fake.reset_counters()  # Request.number counts from here
        fake.hooks.append(kill_all)
        try:
            with pytest.raises(DatabaseUnavailableError) as caught:
                _run(fake, url, tmp_path, tapkey={"workers": 1})
        finally:
            fake.hooks.clear()
            admin.dispose()

        assert caught.value.exit_code == 5
        status, error = _runs(engine)[-1]
        assert status == "failed" and error == _one_line(str(caught.value))
        assert_history_consistent(engine)
        _assert_converged(engine, fake, _run(fake, url, tmp_path))


def test_sqlite_disk_full_fails_clearly_without_corruption(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'small.db'}"
    engine = store.make_engine(url)
    with Sandbox(seed=34, owners=3, locks_per_owner=5) as fake:
        _run(fake, url, tmp_path)
        with engine.connect() as conn:
            pages = conn.execute(text("PRAGMA page_count")).scalar()
        for owner in _owner_ids(fake):
            for _ in range(60):
                fake.bind_new(owner)

        def cap(dbapi_connection: Any, _record: Any) -> None:
            if isinstance(dbapi_connection, __import__("sqlite3").Connection):
                dbapi_connection.execute(f"PRAGMA max_page_count = {int(pages or 0) + 2}")

        event.listen(Pool, "connect", cap)
        try:
            with pytest.raises(DatabaseUnavailableError) as caught:
                _run(fake, url, tmp_path)
        finally:
            event.remove(Pool, "connect", cap)

        message = _one_line(str(caught.value))
        assert caught.value.exit_code == 5 and "ran out of space" in message
        assert "free disk space" in message
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        assert_history_consistent(engine)

        result = _run(fake, url, tmp_path)

        assert [status for status, _ in _runs(engine)][-2:] == ["failed", "succeeded"]
        _assert_converged(engine, fake, result)
    engine.dispose()


# -- 7: secrets and transport ----------------------------------------------------------------

DB_PASSWORD = "pw-Sup3rSecret"


def _subprocess(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EXPORTER, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _with_password(db_url: str) -> str:
    """The URL with a password (PostgreSQL here trusts local connections and ignores it)."""
    if not db_url.startswith("postgresql"):
        return db_url
    return make_url(db_url).set(password=DB_PASSWORD).render_as_string(hide_password=False)


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_no_secret_token_or_database_password_in_any_output(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    url = _with_password(db_url)
    env = subprocess_env(sandbox, url)
    env["EXPORTER_LOGGING__LEVEL"] = "DEBUG"
    unreachable = f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:{_closed_port()}/x"
    outputs: dict[str, subprocess.CompletedProcess[str]] = {}

    def run(name: str, *args: str, code: int, **extra: str) -> None:
        result = _subprocess({**env, **extra}, *args)
        assert result.returncode == code, (name, result.stderr[-2000:])
        outputs[name] = result

    def revoke_on_second_page(request: Request) -> None:
        if request.route == "locks" and request.skip:
            sandbox.hooks.remove(revoke_on_second_page)
            sandbox.revoke_tokens()

    run("first load", "run-once", code=0)
    _mutate_every_owner(sandbox)
    run("dry run", "run-once", "--dry-run", code=0)
    sandbox.hooks.append(revoke_on_second_page)
    run("token revoked mid-run, json", "run-once", "--format", "json", code=0)
    sandbox.add_fault(Fault("locks", status=401, times=None))
    run("token rejected twice", "run-once", code=1)
    sandbox.clear_faults()
    echo = f'{{"error":"invalid_request","error_description":"bad secret {SECRET}"}}'
    sandbox.add_fault(Fault("token", status=400, body=echo))
    run("token endpoint echoes the secret", "run-once", code=1)
    sandbox.add_fault(Fault("token", kind="body", body=f'{{"secret": "{SECRET}"}}'))
    run("token response without a token", "run-once", code=1)
    sandbox.clear_faults()
    # These need no sandbox state of their own: run them side by side.
    parallel = {
        "wrong secret": (["run-once"], 1, {"EXPORTER_TAPKEY__CLIENT_SECRET": "not-" + SECRET}),
        "check": (["check"], 0, {}),
        "db current": (["db", "current"], 0, {}),
        "db upgrade": (["db", "upgrade"], 0, {}),
        "database unreachable": (["run-once"], 5, {"EXPORTER_DATABASE__URL": unreachable}),
        "check, database unreachable": (["check"], 5, {"EXPORTER_DATABASE__URL": unreachable}),
    }
    started = {
        name: subprocess.Popen(
            [*EXPORTER, *args],
            env={**env, **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, _code, extra) in parallel.items()
    }
    for name, process in started.items():
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == parallel[name][1], (name, stderr[-2000:])
        outputs[name] = subprocess.CompletedProcess(
            process.args, process.returncode, stdout, stderr
        )

    if engine.dialect.name == "postgresql":
        _database_away_until_after_the_run(sandbox, db_url, run)
        away = outputs["database away"].stderr
        assert "Traceback" not in away and "could not record the end of run" in away
        assert _runs(engine)[-2:] == [("failed", run_records.ABANDONED), ("succeeded", None)]

    tokens = sandbox.issued_tokens
    assert len(tokens) >= 6
    assert "DEBUG" in outputs["first load"].stderr  # the most talkative level really was on
    with engine.connect() as conn:
        stored = [
            json.dumps([list(row) for row in conn.execute(select(table))], default=str)
            for table in (sync_runs, sync_run_owners)
        ]
    assert "refused (401) even with a freshly fetched token" in stored[0]
    texts = {
        f"{name}: {stream}": getattr(result, stream)
        for name, result in outputs.items()
        for stream in ("stdout", "stderr")
    }
    texts.update({"sync_runs": stored[0], "sync_run_owners": stored[1]})
    for where, output in texts.items():
        assert SECRET not in output, f"client secret in {where}"
        assert DB_PASSWORD not in output, f"database password in {where}"
        leaked = [token for token in tokens if token in output]
        assert not leaked, f"access token in {where}"
    assert "postgres:***@" in outputs["database unreachable"].stderr


def _database_away_until_after_the_run(
    fake: Sandbox, db_url: str, run: Callable[..., None]
) -> None:
    """Mid-crawl, PostgreSQL drops every session and refuses new ones until the run has ended.

    The run cannot even record its end (it logs that on one line) and exits 5; once the
    database is back, the next run (another process) marks it failed (abandoned) and goes on.
    """
    name = make_url(db_url).database
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")

    def database_goes_away(request: Request) -> None:
        if request.route != "locks" or not request.skip:
            return
        fake.hooks.remove(database_goes_away)
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                    "WHERE datname = :db"
                ),
                {"db": name},
            )

    fake.hooks.append(database_goes_away)
    try:
        run("database away", "run-once", code=5)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    run("database back", "run-once", code=0)


def _write_config(path: Path, body: str, mode: int) -> Path:
    path.write_text(body, encoding="utf-8")
    path.chmod(mode)
    return path


@dataclass
class CliResult:
    """Exit code and output of one in-process `exporter` call (the real entry point)."""

    code: int
    out: str
    err: str


@pytest.fixture(name="exporter_cli")
def exporter_cli_fixture(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Callable[..., CliResult]:
    """Run `exporter.cli.main()` with argv and environment; give back code, stdout, stderr."""

    def run(*args: str, env: dict[str, str] | None = None) -> CliResult:
        for name in [name for name in os.environ if name.startswith("EXPORTER_")]:
            monkeypatch.delenv(name)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", ["exporter", *args])
        capsys.readouterr()
        # The command configures logging for the process (a handler on the captured stderr):
        # put pytest's handlers back afterwards so later tests log where they expect.
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            with pytest.raises(SystemExit) as exit_info:
                cli.main()
        finally:
            for handler in root.handlers[:]:
                if handler not in handlers:
                    root.removeHandler(handler)
                    handler.close()
            for handler in handlers:
                if handler not in root.handlers:
                    root.addHandler(handler)
            root.setLevel(level)
        captured = capsys.readouterr()
        code = exit_info.value.code
        return CliResult(code if isinstance(code, int) else 1, captured.out, captured.err)

    return run


def test_a_config_file_holding_a_secret_readable_by_others_gets_a_warning(
    sandbox: Sandbox, tmp_path: Path, exporter_cli: Callable[..., CliResult]
) -> None:
    body = (
        f'[tapkey]\nclient_id = "sandbox-client"\nclient_secret = "{SECRET}"\n'
        f'token_url = "{sandbox.token_url}"\napi_base_url = "{sandbox.base_url}"\n'
    )
    shared = _write_config(tmp_path / "shared.toml", body, 0o644)
    private = _write_config(tmp_path / "private.toml", body, 0o600)

    warned = exporter_cli("check", "--config", str(shared))
    quiet = exporter_cli("check", "--config", str(private))

    assert warned.code == 0 and quiet.code == 0
    assert "holds a secret and is readable by every user (mode 0644" in warned.err
    # The owner keeps reading it: root's file may stay readable by its group.
    assert f"chmod {'o-r' if os.geteuid() == 0 else '600'} {shared}" in warned.err
    assert "holds a secret" not in quiet.err
    assert SECRET not in warned.err + warned.out
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_plain_http_to_a_remote_host_is_refused(
    sandbox: Sandbox, tmp_path: Path, exporter_cli: Callable[..., CliResult]
) -> None:
    env = subprocess_env(sandbox, f"sqlite:///{tmp_path / 'x.db'}")
    for key in ("EXPORTER_TAPKEY__API_BASE_URL", "EXPORTER_TAPKEY__TOKEN_URL"):
        result = exporter_cli("run-once", env={**env, key: "http://my.tapkey.example.com"})
        assert result.code == 2
        assert "plain http is only allowed to a loopback host" in _one_line(result.err.strip())
    assert sandbox.request_count == 0


@pytest.fixture
def tls_tapkey(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A minimal Tapkey over HTTPS with a certificate from a private CA: (base URL, CA file)."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import trustme

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            token = {"access_token": "tls-token", "token_type": "Bearer", "expires_in": 3600}
            self._reply(json.dumps(token).encode())

        def do_GET(self) -> None:
            self._reply(b"[]")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", ca_file
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_tls_is_verified_and_a_custom_ca_bundle_is_honoured(
    sandbox: Sandbox, tmp_path: Path, tls_tapkey: tuple[str, Path]
) -> None:
    base, ca_file = tls_tapkey
    url = f"sqlite:///{tmp_path / 'tls.db'}"
    https = {"token_url": f"{base}/connect/token", "api_base_url": base}

    refused = _run(sandbox, url, tmp_path, tapkey=https)
    trusted = _run(sandbox, url, tmp_path, tapkey={**https, "ca_bundle": str(ca_file)})

    assert refused.status == "failed"
    assert "TLS verification of the token endpoint" in _one_line(refused.error)
    assert "ca_bundle" in (refused.error or "")
    assert trusted.status == "succeeded", trusted.error


# -- 8: bad command-line input, on every command ---------------------------------------------


def _commands() -> list[tuple[list[str], list[str], bool]]:
    """Every command as (path, placeholder arguments, takes --config)."""
    root = typer.main.get_command(cli.app)
    found: list[tuple[list[str], list[str], bool]] = []

    def walk(command: Any, path: list[str]) -> None:
        params = list(command.params)
        options = {opt for param in params for opt in getattr(param, "opts", [])}
        arguments = ["1" for p in params if type(p).__name__ == "TyperArgument" and p.required]
        subcommands = getattr(command, "commands", None) or {}
        if path and (not subcommands or params):
            found.append((path, arguments, "--config" in options))
        for name, sub in subcommands.items():
            walk(sub, [*path, name])

    walk(root, [])
    return found


COMMANDS = _commands()
CONFIG_COMMANDS = [c for c in COMMANDS if c[2]]


@pytest.mark.parametrize(
    "path, arguments, _config", COMMANDS, ids=[" ".join(c[0]) for c in COMMANDS]
)
def test_an_unknown_option_is_one_line_and_exit_2(
    exporter_cli: Callable[..., CliResult], path: list[str], arguments: list[str], _config: bool
) -> None:
    result = exporter_cli(*path, *arguments, "--no-such-option")

    assert result.code == 2
    assert _one_line(result.err.strip()) == (
        f"error: No such option: --no-such-option (see 'exporter {' '.join(path)} --help')"
    )


CONFIG_FAULTS = [
    pytest.param(
        "malformed.toml",
        b'[tapkey]\nclient_id = "sandbox-client\n',
        {},
        r"malformed\.toml: invalid TOML: .*\(at line 2, column \d+\)",
        id="malformed-toml",
    ),
    pytest.param(
        "typo.toml",
        b'[tapkey]\nclient_secrte = "x"\n',
        {},
        r"unknown key \[tapkey\] client_secrte in .*typo\.toml; did you mean client_secret\?",
        id="unknown-key",
    ),
    pytest.param(
        "typo-section.toml",
        b"[tapkee]\n",
        {},
        r"unknown section \[tapkee\] in .*; did you mean \[tapkey\]\?",
        id="unknown-section",
    ),
    pytest.param(
        None,
        None,
        {"EXPORTER_TAPKEY__CLIENT_SECRT": "x"},
        r"unknown environment variable EXPORTER_TAPKEY__CLIENT_SECRT: .*did you mean "
        r"EXPORTER_TAPKEY__CLIENT_SECRET\?",
        id="unknown-env-key",
    ),
    pytest.param(
        "a-folder",
        None,
        {},
        r"config file .*a-folder\b.*[Ii]s a directory",
        id="unreadable-config-folder",
    ),
    pytest.param(
        "missing.toml",
        None,
        {},
        r"config file .*missing\.toml\b.*(does not exist|No such file or directory)",
        id="missing-config",
    ),
    pytest.param(
        "latin1.toml",
        b'[tapkey]\nclient_id = "caf\xe9"\n',
        {},
        r"latin1\.toml: not UTF-8 text; save the config file as UTF-8",
        id="not-utf8",
    ),
    pytest.param(
        None,
        None,
        {"EXPORTER_TAPKEY__PAGE_SIZE": "0"},
        r"EXPORTER_TAPKEY__PAGE_SIZE: \[tapkey\] page_size: must be between 1 and 1000",
        id="bad-value",
    ),
    pytest.param(
        None,
        None,
        {"EXPORTER_DATABASE__URL": "sqlite://exporter.db"},
        r"\[database\] url: sqlite://exporter\.db names a host, not a file \(two slashes\): "
        r"write sqlite:///exporter\.db for a relative path",
        id="sqlite-two-slashes",
    ),
    pytest.param(
        None,
        None,
        {"EXPORTER_DATABASE__URL": "mysql://root:pw@127.0.0.1:3306"},
        r"\[database\] url: mysql://root:\*\*\*@127\.0\.0\.1:3306 names no database: add it",
        id="mariadb-without-database",
    ),
    pytest.param(
        None,
        None,
        {"EXPORTER_DATABASE__URL": "postgresql+asyncpg://u@db/x"},
        r"the postgresql driver 'asyncpg' is not supported: the exporter uses psycopg 3; "
        r"write postgresql://",
        id="asyncpg",
    ),
    pytest.param(
        None,
        None,
        {"EXPORTER_DATABASE__URL": "mysql+mysqldb://u@db/x"},
        r"the mysql driver 'mysqldb' is not supported: the exporter uses PyMySQL; write mysql://",
        id="mysqldb",
    ),
]


@pytest.mark.parametrize(
    "path, arguments, _config", CONFIG_COMMANDS, ids=[" ".join(c[0]) for c in CONFIG_COMMANDS]
)
@pytest.mark.parametrize("name, content, env, expected", CONFIG_FAULTS)
def test_bad_configuration_is_one_line_and_exit_2(
    exporter_cli: Callable[..., CliResult],
    tmp_path: Path,
    path: list[str],
    arguments: list[str],
    _config: bool,
    name: str | None,
    content: bytes | None,
    env: dict[str, str],
    expected: str,
) -> None:
    options: list[str] = []
    if name is not None:
        target = tmp_path / name
        if content is not None:
            target.write_bytes(content)
        elif name == "a-folder":
            target.mkdir()
        options = ["--config", str(target)]

    result = exporter_cli(*path, *arguments, *options, env=env)

    assert result.code == 2, result.err
    line = _one_line(result.err.strip())
    assert line.startswith("error: ") and re.search(expected, line), line
    assert result.out == ""


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
@pytest.mark.parametrize("command", ["run-once", "serve"])
def test_an_in_memory_database_is_refused_for_runs(
    sandbox: Sandbox, exporter_cli: Callable[..., CliResult], url: str, command: str
) -> None:
    env = {**subprocess_env(sandbox, url), "EXPORTER_SCHEDULE__EVERY": "1h"}

    result = exporter_cli(command, env=env)

    assert result.code == 2
    assert _one_line(result.err.strip()) == (
        f"error: [database] url {url} is an in-memory database, which is gone when the run "
        "ends: name a file, e.g. sqlite:///exporter.db"
    )
    assert sandbox.request_count == 0


def test_an_unreadable_secret_file_is_one_line_and_exit_2(
    sandbox: Sandbox, tmp_path: Path, exporter_cli: Callable[..., CliResult]
) -> None:
    env = subprocess_env(sandbox, f"sqlite:///{tmp_path / 'x.db'}")
    del env["EXPORTER_TAPKEY__CLIENT_SECRET"]
    (tmp_path / "secret-folder").mkdir()
    env["EXPORTER_TAPKEY__CLIENT_SECRET_FILE"] = str(tmp_path / "secret-folder")

    for name, prefix in (("run-once", "error:"), ("check", "FAILED config")):
        result = exporter_cli(name, env=env)
        assert result.code == 2 and "Traceback" not in result.err
        [line] = [line for line in result.err.splitlines() if line.startswith(prefix)]
        assert "cannot read [tapkey] client_secret_file" in line and "Is a directory" in line
        assert "chmod" not in result.err  # no permission advice about a folder


def test_the_real_command_prints_usage_and_config_errors_on_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[tapkey\nclient_id = "x"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}

    unknown = _subprocess(env, "db", "current", "--bogus")
    malformed = _subprocess(env, "run-once", "--config", str(tmp_path / "bad.toml"))

    assert unknown.returncode == 2 and malformed.returncode == 2
    assert unknown.stderr.count("\n") == 1 and "No such option: --bogus" in unknown.stderr
    assert malformed.stderr.count("\n") == 1 and "(at line 1, column 8)" in malformed.stderr


def test_held_back_removals_on_the_command_line(
    big_sandbox: Sandbox, tmp_path: Path, exporter_cli: Callable[..., CliResult]
) -> None:
    env = subprocess_env(big_sandbox, f"sqlite:///{tmp_path / 'inv.db'}")
    assert exporter_cli("run-once", "--quiet", env=env).code == 0
    first, second = _owner_ids(big_sandbox)[:2]
    _unbind(big_sandbox, first, 14)
    _unbind(big_sandbox, second, 15)

    held = exporter_cli("run-once", env=env)
    # A mistyped id is refused before anything is fetched or written; the start of one id works.
    typo = exporter_cli("run-once", "--allow-mass-removal-owner", f"x{first}", env=env)
    runs = exporter_cli("runs", "--format", "json", env=env)
    assert sum(owner.startswith(first[:8]) for owner in _owner_ids(big_sandbox)) == 1
    one = exporter_cli("run-once", "--allow-mass-removal-owner", first[:8], env=env)
    rest = exporter_cli("run-once", "--allow-mass-removal", "--format", "json", env=env)

    assert typo.code == 2 and typo.err.count("\n") == 1
    assert f"--allow-mass-removal-owner 'x{first}' names no owner account" in typo.err
    assert len(json.loads(runs.out)) == 2  # the first load and the held-back run
    assert held.code == 3
    [warning] = [line for line in held.err.splitlines() if line.startswith("warning: ")]
    assert f"--allow-mass-removal-owner {first}" in warning
    assert f"--allow-mass-removal-owner {second}" in warning
    assert one.code == 3 and f"owner {first}" not in one.err and f"owner {second}" in one.err
    assert rest.code == 0 and json.loads(rest.out)["counts"]["removed"] == 15
