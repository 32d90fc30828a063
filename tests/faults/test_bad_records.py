"""Records that cannot be read (served through a paging hook): skipped, counted, left as stored;
an owner whose page cannot be read fails alone and writes none of it."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from support.cli import one_line
from support.helpers import (
    run_once,
    sandbox_lock_ids,
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
    bound_locks,
    owner_accounts,
    sync_run_owners,
)
from exporter.sandbox.server import Fault, Sandbox, SandboxRequest


def _serve_list(
    fake: Sandbox, owner_id: str, elements: list[str], *, broken_from: int | None = None
) -> None:
    """Serve `elements` (raw JSON texts) as the owner's bound locks, paged like the real API.

    Pages starting at `$skip >= broken_from` are invalid JSON.
    """

    def page(request: SandboxRequest) -> None:
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
    run_once(sandbox, db_url, tmp_path)
    owner = sandbox_owner_ids(sandbox)[0]
    elements = _elements(sandbox, owner)
    nameless = elements[1]["id"]
    del elements[1]["id"]
    elements[0]["title"] = "still synced"
    missing = elements.pop(3)["id"]  # looks unbound, but an unknown element may be it
    before = stored_locks(engine, owner)
    _serve_list(sandbox, owner, _texts(elements))

    result = run_once(sandbox, db_url, tmp_path)

    assert result.status == "succeeded"
    assert result.counts.skipped == 1 and run_row(engine, result.run_id)["skipped"] == 1
    assert result.counts.removed == 0 and result.counts.updated == 1
    after = stored_locks(engine, owner)
    assert after[missing] == before[missing] and after[nameless] == before[nameless]
    assert after[elements[0]["id"]]["title"] == "still synced"
    assert_history_consistent(engine)
    sandbox.hooks.clear()
    assert_converged(engine, sandbox, run_once(sandbox, db_url, tmp_path))


WRONG_TYPES = [
    pytest.param({"bindDate": "yesterday"}, id="date-that-does-not-parse"),
    pytest.param({"bindDate": "0001-01-01T00:00:00+01:00"}, id="date-in-year-0-in-utc"),
    pytest.param({"rclSerialNo": "3"}, id="number-as-string"),
    pytest.param(
        {"lockType": {"id": "TK.Td30", "manufacturerId": "1"}}, id="nested-number-as-string"
    ),
    pytest.param({"active": "yes"}, id="bool-as-string"),
    pytest.param({"title": 42}, id="number-for-a-string"),
    pytest.param({"lockType": "TK.Td30"}, id="string-for-an-object"),
    # A lone UTF-16 surrogate (JSON "\\ud800"): no database stores it; it failed the whole run.
    pytest.param({"title": "Door \ud800"}, id="lone-surrogate"),
    pytest.param(
        {"lockType": {"id": "TK.Td30", "modelName": "\udfffM"}}, id="nested-lone-surrogate"
    ),
    # PostgreSQL's text cannot hold NUL: it failed every run there; the same on every database.
    pytest.param({"title": "a\x00b"}, id="nul"),
]


@pytest.mark.parametrize("bad", WRONG_TYPES)
def test_a_record_with_wrong_types_is_skipped_counted_and_left_as_stored(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path, bad: dict[str, Any]
) -> None:
    run_once(sandbox, db_url, tmp_path)
    owner = sandbox_owner_ids(sandbox)[0]
    elements = _elements(sandbox, owner)
    broken = elements[1]["id"]
    elements[1].update({"description": "never stored", **bad})
    unbound = elements.pop(3)["id"]
    before = stored_locks(engine, owner)
    _serve_list(sandbox, owner, _texts(elements))

    result = run_once(sandbox, db_url, tmp_path)

    assert result.status == "succeeded" and result.counts.skipped == 1
    assert run_row(engine, result.run_id)["skipped"] == 1
    after = stored_locks(engine, owner)
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
    # INTEGER columns: PostgreSQL refused the update (failing the run), MariaDB too.
    pytest.param({"rclSerialNo": 2**31}, "rclSerialNo is out of the range", id="serial-no-2-31"),
    pytest.param(
        {"lockType": {"id": "TK.Td30", "manufacturerId": -(2**31) - 1}},
        "lockType.manufacturerId is out of the range",
        id="manufacturer-id",
    ),
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
    run_once(sandbox, db_url, tmp_path)
    owner = sandbox_owner_ids(sandbox)[0]
    elements = _elements(sandbox, owner)
    long = elements[1]["id"]
    elements[1].update(bad)
    elements[2]["title"] = "still synced"
    before = stored_locks(engine)
    _serve_list(sandbox, owner, _texts(elements))

    result = run_once(sandbox, db_url, tmp_path)

    assert result.status == "succeeded" and result.counts.skipped == 1
    assert result.counts.updated == 1 and run_row(engine, result.run_id)["skipped"] == 1
    after = stored_locks(engine)
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
    owner = sandbox_owner_ids(sandbox)[0]
    lock = sandbox_lock_ids(sandbox, owner)[0]
    title, description, name = "T\u00fcr " * 25_000, "\u00e9" * 300_000, "N" * 100_000
    sandbox.update_lock(lock, title=title, description=description)
    sandbox.update_owner(owner, name=name)

    result = run_once(sandbox, db_url, tmp_path)
    again = run_once(sandbox, db_url, tmp_path)

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
    assert_converged(engine, sandbox, again)


def _owner_rows(engine: Engine) -> dict[str, dict[str, Any]]:
    """The stored owner accounts, but for last_seen_at (which every fetch moves)."""
    with engine.connect() as conn:
        rows = conn.execute(select(owner_accounts).order_by(owner_accounts.c.id)).mappings()
        return {r["id"]: {k: v for k, v in r.items() if k != "last_seen_at"} for r in rows}


def _list_also_owner(fake: Sandbox, extra: dict[str, Any]) -> None:
    """Serve the owner list with `extra` appended, paged like the real API."""

    def page(request: SandboxRequest) -> None:
        if request.route != "owners":
            return
        owners = [*fake.owners_payload(), extra]
        skip = request.skip or 0
        rows = owners[skip : None if request.top is None else skip + request.top]
        fake.add_fault(Fault("owners", kind="body", body=json.dumps(rows)))

    fake.hooks.append(page)


@pytest.mark.parametrize("what", ["long id", "long element", "lone surrogate", "nul"])
def test_an_owner_the_database_cannot_hold_fails_alone(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path, what: str
) -> None:
    # Other owners are never lost: the run syncs them and is partial; that owner is left as it is.
    run_once(sandbox, db_url, tmp_path)
    owners = sandbox_owner_ids(sandbox)
    for owner in owners:
        sandbox.rename(sandbox_lock_ids(sandbox, owner)[0], f"renamed {owner[:6]}")
    if what == "long id":
        bad = "o" * 65
        _list_also_owner(sandbox, {"id": bad, "name": "x", "active": True})
    else:
        bad = owners[0]
        names = {"long element": "N" * 4_200_000, "lone surrogate": "N\udc00", "nul": "N\x00"}
        sandbox.update_owner(bad, name=names[what])
    before = stored_locks(engine, bad)
    owners_before = _owner_rows(engine)

    result = run_once(sandbox, db_url, tmp_path)

    assert result.status == "partial" and result.counts.updated == 2 + (what == "long id")
    failed = [o for o in result.owners if o.status == "failed"]
    assert [o.owner_account_id for o in failed] == [bad]
    too_long = {
        "long id": "its id is 65 characters",
        "long element": "its element is 4,2",
        "lone surrogate": "name holds a lone UTF-16 surrogate",
        "nul": "name holds a NUL character",
    }[what]
    assert failed[0].error is not None and failed[0].error.startswith(too_long)
    assert "the owner and its locks were left as stored" in failed[0].error
    assert run_row(engine, result.run_id)["error"].startswith(f"owner {bad}: {too_long}")
    assert stored_locks(engine, bad) == before and _owner_rows(engine) == owners_before
    with engine.connect() as conn:
        rows = conn.execute(
            select(sync_run_owners.c.owner_account_id, sync_run_owners.c.status).where(
                sync_run_owners.c.run_id == result.run_id
            )
        ).all()
    expected_rows = {(o, "complete") for o in owners if o != bad}
    if what != "long id":
        expected_rows.add((bad, "failed"))  # a 65-character id has no row to go in
    assert set(map(tuple, rows)) == expected_rows
    assert_history_consistent(engine)


def test_unknown_new_fields_are_kept_in_raw_and_make_no_version(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    owner = sandbox_owner_ids(sandbox)[0]
    elements = _elements(sandbox, owner)
    for element in elements:
        element["doorSensor"] = {"state": "closed", "since": "2030-01-01T00:00:00Z"}
        element["batteryPercent"] = 87
    versions = count_rows(engine, bound_lock_versions)
    _serve_list(sandbox, owner, _texts(elements))

    result = run_once(sandbox, db_url, tmp_path)

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
    run_once(sandbox, db_url, tmp_path)
    owner = sandbox_owner_ids(sandbox)[0]
    elements = _elements(sandbox, owner)
    copy = dict(elements[0], title="a different title") if conflicting else dict(elements[0])
    before = stored_locks(engine, owner)
    _serve_list(sandbox, owner, _texts([*elements, copy]))

    result = run_once(sandbox, db_url, tmp_path)

    assert result.status == "succeeded"
    assert result.counts.skipped == (2 if conflicting else 1)
    assert result.counts.removed == 0 and result.counts.updated == 0
    assert stored_locks(engine, owner) == before
    assert_history_consistent(engine)


def test_a_page_that_cannot_be_read_fails_the_owner_and_writes_none_of_it(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Sandbox(seed=12, owners=2, locks_per_owner=7) as fake:
        run_once(fake, db_url, tmp_path, tapkey={"page_size": 3})
        owner = sandbox_owner_ids(fake)[0]
        elements = _elements(fake, owner)
        elements[0]["title"] = "on the readable first page"
        before = stored_locks(engine, owner)
        _serve_list(fake, owner, _texts(elements), broken_from=1)

        result = run_once(fake, db_url, tmp_path, tapkey={"page_size": 3})

        assert result.status == "partial"
        assert "invalid or truncated JSON" in one_line(
            run_owner_row(engine, result.run_id, owner)["error"]
        )
        assert stored_locks(engine, owner) == before  # never half an owner
        assert_history_consistent(engine)
        fake.hooks.clear()
        assert_converged(engine, fake, run_once(fake, db_url, tmp_path, tapkey={"page_size": 3}))


@pytest.mark.parametrize("bad", ["Anna \udc00", "Anna\x00"], ids=["lone-surrogate", "nul"])
def test_a_contact_with_an_unstorable_title_is_skipped_on_every_database(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path, bad: str
) -> None:
    # A lone UTF-16 surrogate (JSON "\udc00") cannot be encoded for any database, a NUL not for
    # PostgreSQL: either failed the whole run. The contact is skipped, like a wrong type.
    access = {"entities": ["contacts", "cards", "grants"]}
    run_once(sandbox, db_url, tmp_path, tapkey=access)
    owner = sandbox_owner_ids(sandbox)[0]
    first, second = (c["id"] for c in sandbox.contacts_payload(owner)[:2])
    sandbox.update_contact(first, title=bad)
    sandbox.update_contact(second, title="still synced")

    result = run_once(sandbox, db_url, tmp_path, tapkey=access)

    assert result.status == "succeeded"
    assert result.access["contacts"].skipped == 1 and result.access["contacts"].updated == 1
    with engine.connect() as conn:
        titles = dict(conn.execute(text("SELECT id, title FROM contacts")).all())
    assert titles[first] != bad and titles[second] == "still synced"
    assert_history_consistent(engine)


def test_a_card_whose_capacity_no_integer_column_holds_is_skipped_on_every_database(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # nofGrantsCapacity 2**31: PostgreSQL's binary COPY stored a new card's as -2**31, an update
    # and MariaDB failed the whole run; SQLite stored it. Now skipped like a wrong type.
    access = {"entities": ["cards"]}
    run_once(sandbox, db_url, tmp_path, tapkey=access)
    owner = sandbox_owner_ids(sandbox)[0]
    stored = sandbox.cards_payload(owner)[0]["id"]
    new = sandbox.bind_card(owner)
    for card_id in (stored, new):
        card = sandbox._access.card(card_id)  # no public way to choose a capacity
        card.capacity, card.json = 2**31, None

    result = run_once(sandbox, db_url, tmp_path, tapkey=access)

    assert result.status == "succeeded" and result.access["cards"].skipped == 2
    with engine.connect() as conn:
        capacities = dict(
            conn.execute(text("SELECT id, nof_grants_capacity FROM bound_cards")).all()
        )
    assert new not in capacities and capacities[stored] < 2**31
    assert_history_consistent(engine)
