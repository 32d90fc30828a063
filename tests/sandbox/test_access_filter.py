"""The sandbox's $filter subset on the access routes, over real HTTP."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from support.helpers import sandbox_owner_ids
from support.sandbox_access import path, when
from support.sandbox_http import api, get_token

from exporter.sandbox.odata import matches, parse_filter
from exporter.sandbox.server import Sandbox

# -- $filter --------------------------------------------------------------------------------------


@pytest.fixture
def logs() -> Iterator[Sandbox]:
    with Sandbox(seed=5, owners=1, locks_per_owner=4, log_entries_per_owner=80) as fake:
        yield fake


def _after(entries: list[dict[str, Any]], moment: dt.datetime, inclusive: bool) -> list[str]:
    """The ids of entries received after `moment` (or at it, if `inclusive`), in list order."""
    received = [(when(e["receivedAt"]), e["id"]) for e in entries]
    return [i for at, i in received if at > moment or (inclusive and at == moment)]


def test_log_entries_filter_on_received_at_type_and_command(
    logs: Sandbox, session: requests.Session
) -> None:
    token = get_token(logs, session)
    owner = sandbox_owner_ids(logs)[0]
    entries = logs.log_entries_payload(owner)
    pivot = entries[30]["receivedAt"]
    moment = when(pivot)
    opening = [
        e["id"] for e in entries if (e["logType"], e["command"]) == ("Command", "TriggerLock")
    ]
    plus_one = (moment + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0+01:00"

    def ids(expression: str, **extra: Any) -> list[str]:
        reply = api(logs, session, path("logs", owner), token, **{"$filter": expression}, **extra)
        assert reply.status_code == 200, reply.text
        return [entry["id"] for entry in reply.json()]

    assert ids(f"receivedAt gt {pivot}") == _after(entries, moment, False)
    assert ids(f"receivedAt ge {pivot}") == _after(entries, moment, True)
    assert ids(f"receivedAt gt {plus_one}") == _after(entries, moment, False)  # 7 digits, offset
    minute = moment.replace(second=0, microsecond=0)
    assert ids(f"receivedAt gt {pivot[:16]}Z") == _after(entries, minute, False)  # no seconds
    assert ids("logType eq 'Command'") == [e["id"] for e in entries if e["logType"] == "Command"]
    assert ids("command eq 'TriggerLock'") == opening
    assert ids("logType eq 'Command' and command eq 'TriggerLock'") == opening
    both = ids(f"receivedAt ge {pivot} and logType eq 'Command' and command eq 'TriggerLock'")
    assert both == [i for i in _after(entries, moment, True) if i in opening]
    assert 0 < len(both) < len(opening) < len(entries)
    paged = ids(f"receivedAt ge {pivot}", **{"$top": 5, "$skip": 5})
    assert paged == _after(entries, moment, True)[5:10]  # filtered first, then paged
    either = ids("logType eq 'DoorAjar' or logType eq 'ClockSync'")
    assert either == [e["id"] for e in entries if e["logType"] in ("DoorAjar", "ClockSync")]


@pytest.mark.parametrize(
    "literal, received_ms, after",
    [
        pytest.param("2025-01-01T00:00:00.0005Z", 1_735_689_600_000, False, id="sub-ms-before"),
        pytest.param("2025-01-01T00:00:00.0005Z", 1_735_689_600_001, True, id="sub-ms-after"),
        pytest.param("2025-01-01T01:00:00+01:00", 1_735_689_600_000, False, id="offset-same"),
        pytest.param("2025-01-01T01:00:00+01:00", 1_735_689_600_001, True, id="offset-after"),
        pytest.param("2024-12-31T23:59-00:01", 1_735_689_600_000, False, id="negative-offset"),
        pytest.param("2024-12-31T23:59:59.999999999999z", 1_735_689_600_000, True, id="12-digits"),
    ],
)
def test_date_time_offset_literals_compare_exactly(
    literal: str, received_ms: int, after: bool
) -> None:
    parsed = parse_filter(f"receivedAt gt {literal}", {"receivedAt": "datetime"})
    assert matches(parsed, lambda name: received_ms) is after


@pytest.mark.parametrize(
    "expression",
    [
        pytest.param("", id="empty"),
        pytest.param("colour eq 'red'", id="unknown-property"),
        pytest.param("logtype eq 'Command'", id="property-case"),
        pytest.param("logType gt 'Command'", id="string-order"),
        pytest.param("logType eq Command", id="unquoted-string"),
        pytest.param("receivedAt gt '2025-01-01T00:00:00Z'", id="quoted-date"),
        pytest.param("receivedAt gt 2025-13-01T00:00:00Z", id="month-13"),
        pytest.param("receivedAt gt 2025-01-01T00:00:00", id="no-offset"),
        pytest.param("receivedAt gt 2025-01-01T00:00:00 01:00", id="plus-as-space"),
        pytest.param("receivedAt GT 2025-01-01T00:00:00Z", id="operator-case"),
        pytest.param("logType eq 'Command' AND command eq 'TriggerLock'", id="and-case"),
        pytest.param("(logType eq 'Command')", id="parentheses"),
        pytest.param("logType eq 'Command' and", id="dangling-and"),
        pytest.param("contactId eq null", id="null"),
        pytest.param("contains(logType, 'Com')", id="function"),
    ],
)
def test_filters_outside_the_subset_are_400_with_an_odata_error(
    logs: Sandbox, session: requests.Session, expression: str
) -> None:
    token = get_token(logs, session)
    reply = api(
        logs, session, path("logs", sandbox_owner_ids(logs)[0]), token, **{"$filter": expression}
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert set(error) == {"code", "message", "target"} and error["target"] == "$filter"
    assert error["message"].startswith("The query specified in the URI is not valid.")


def test_unsupported_query_options_are_400(sandbox: Sandbox, session: requests.Session) -> None:
    token = get_token(sandbox, session)
    owner = sandbox_owner_ids(sandbox)[0]
    ordered = api(sandbox, session, path("logs", owner), token, **{"$orderby": "lockTimestamp"})
    assert ordered.status_code == 400 and ordered.json()["error"]["target"] == "$orderby"
    selected = api(sandbox, session, path("logs", owner), token, **{"$select": "id"})
    assert selected.json() == sandbox.log_entries_payload(owner)  # ignored: more fields are fine
    expanded = api(sandbox, session, path("grants", owner), token, **{"$expand": "contact"})
    assert expanded.status_code == 400


def test_a_server_that_cannot_filter_on_received_at(session: requests.Session) -> None:
    with Sandbox(seed=5, received_at_filter=False) as fake:
        token = get_token(fake, session)
        owner = sandbox_owner_ids(fake)[0]
        where = path("logs", owner)
        refused = api(fake, session, where, token, **{"$filter": "receivedAt gt 2024-01-01T00:00Z"})
        assert refused.status_code == 400
        assert "'receivedAt' cannot be used in the $filter" in refused.json()["error"]["message"]
        typed = api(fake, session, where, token, **{"$filter": "logType eq 'Command'"})
        assert typed.status_code == 200 and typed.json()
        fake.received_at_filter = True
        assert api(
            fake, session, where, token, **{"$filter": "receivedAt gt 2024-01-01T00:00Z"}
        ).json()


def test_simple_filters_on_the_other_routes(sandbox: Sandbox, session: requests.Session) -> None:
    token = get_token(sandbox, session)
    owner = sandbox_owner_ids(sandbox)[0]
    contacts = sandbox.contacts_payload(owner)
    wanted = f"id eq '{contacts[3]['id']}' or id eq '{contacts[1]['id']}'"
    reply = api(sandbox, session, path("contacts", owner), token, **{"$filter": wanted})
    assert reply.json() == [contacts[1], contacts[3]]  # list order, not filter order
    grant = sandbox.grants_payload(owner)[0]
    sandbox.revoke_grant(grant["id"])
    revoked = api(
        sandbox, session, path("grants", owner), token, **{"$filter": "state eq 'Revoked'"}
    )
    assert grant["id"] in [g["id"] for g in revoked.json()]
    assert all(g["state"] == "Revoked" for g in revoked.json())
    title = api(sandbox, session, path("cards", owner), token, **{"$filter": "title eq 'x'"})
    assert title.status_code == 400
