"""TapkeyClient reading the sandbox's payloads.

Unreadable pages, skipped records, parsed fields, health readings, owner ids and lock ids.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from support.tapkey_client import Factory, lock_text, only_owner, serve_elements

from exporter.errors import PayloadError
from exporter.sandbox.server import Fault, Sandbox
from exporter.tapkey.records import lock_id_hex

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


# -- health readings, owner ids, lock ids ----------------------------------------------------------


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
