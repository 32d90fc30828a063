"""Ids that differ only in trailing spaces: MariaDB/MySQL compare them as one (PAD SPACE).

Every database must hold the same history, and no run may stop at the unique index on `id`.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, select
from support.helpers import run_once, sandbox_lock_ids, sandbox_owner_ids
from support.history import assert_history_consistent, expected_locks, locks_at, rows_at
from support.log_entries import run, settings_for

from exporter.db.schema import log_entries, owner_accounts
from exporter.sandbox.locks import SandboxOwner
from exporter.sandbox.server import Sandbox


def test_a_lock_id_with_a_trailing_space_is_skipped_alike_on_every_database(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    first, second, _ = sandbox_owner_ids(sandbox)
    lock = sandbox.locks_payload(first)[0]
    padded = sandbox.rebind({**lock, "id": lock["id"] + " "}, second)
    expected = expected_locks(sandbox.snapshot())
    del expected[padded]

    result = run_once(sandbox, db_url, tmp_path)

    # On MariaDB the padded id hit uq_bound_locks_id ("Duplicate entry") and failed every run;
    # PostgreSQL and SQLite stored it as a second lock.
    assert result.status == "succeeded", result.error
    assert result.finished_at is not None
    assert result.counts.skipped == 1
    assert locks_at(engine, result.finished_at) == expected
    assert_history_consistent(engine)
    # The lock it resembles goes on as before: renamed, it gets its update.
    sandbox.rename(lock["id"], "Renamed")
    later = run_once(sandbox, db_url, tmp_path)
    assert later.status == "succeeded", later.error
    assert later.finished_at is not None
    assert locks_at(engine, later.finished_at)[lock["id"]]["title"] == "Renamed"
    assert lock["id"] in sandbox_lock_ids(sandbox, first)
    assert_history_consistent(engine)


def test_a_contact_id_with_a_trailing_space_is_skipped_alike_on_every_database(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    access = {"entities": ["contacts"]}
    run_once(sandbox, db_url, tmp_path, tapkey=access)
    owner = sandbox_owner_ids(sandbox)[0]
    first = sandbox.contacts_payload(owner)[0]["id"]
    _rekey_contact(sandbox, owner, sandbox.add_contact(owner, title="Padded"), first + " ")

    result = run_once(sandbox, db_url, tmp_path, tapkey=access)

    # On MariaDB it hit the contacts' primary key and failed the run.
    assert result.status == "succeeded", result.error
    assert result.access["contacts"].skipped == 1
    assert result.finished_at is not None
    assert set(rows_at(engine, "contacts", result.finished_at)) == {
        c["id"] for c in sandbox.contacts_payload(owner) if c["id"] != first + " "
    } | {c["id"] for o in sandbox_owner_ids(sandbox)[1:] for c in sandbox.contacts_payload(o)}
    assert_history_consistent(engine)


def _rekey_contact(fake: Sandbox, owner: str, contact_id: str, new_id: str) -> None:
    """Give a sandbox contact another id (the sandbox draws ids itself)."""
    data = fake._access  # no public way to choose an id
    contact = data.contacts.pop(contact_id)
    del data.owners[owner].contacts[contact_id]
    contact.id, contact.json = new_id, None
    data.contacts[new_id] = data.owners[owner].contacts[new_id] = contact


def test_a_log_entry_id_with_a_trailing_space_is_skipped_alike_on_every_database(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    settings = settings_for(sandbox, db_url, tmp_path)
    owner = sandbox_owner_ids(sandbox)[0]
    first, second = sandbox.append_log_entries(owner, 2)
    entry = next(e for e in sandbox._access.owners[owner].log_entries if e.id == second)
    entry.id, entry.json = first + " ", None

    result = run(settings)

    # On MariaDB it hit the log entries' primary key and failed the owner's log.
    assert result.status == "succeeded", result.error
    with engine.connect() as conn:
        stored = set(conn.execute(select(log_entries.c.id)).scalars())
    listed = {e["id"] for o in sandbox_owner_ids(sandbox) for e in sandbox.log_entries_payload(o)}
    assert first in stored
    assert stored == listed - {first + " "}


def test_an_owner_id_with_a_trailing_space_fails_that_owner_alike_on_every_database(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    run_once(sandbox, db_url, tmp_path)
    owners = sandbox_owner_ids(sandbox)
    padded = owners[0] + " "
    data = sandbox._data  # no public way to choose an owner id
    data.owners[padded] = SandboxOwner(id=padded, name="Padded", active=True)
    data._visible = None

    result = run_once(sandbox, db_url, tmp_path)

    # On MariaDB it hit owner_accounts' primary key and failed every run.
    assert result.status == "partial"
    assert "its id ends with a space" in (result.error or "")
    with engine.connect() as conn:
        assert set(conn.execute(select(owner_accounts.c.id)).scalars()) == set(owners)
    assert_history_consistent(engine)
