"""[privacy] on contacts and grants: what hash and drop store of a person, on every backend.

Contacts' identifiers (email addresses), titles (names) and comments must not reach a table or a
log line under hash or drop; a changed setting rewrites every contact once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, func, select, update
from support.helpers import SANDBOX_SECRET
from support.history import assert_history_consistent, expected_access, rows_at
from support.sandbox_access import run_access

from exporter.config.sections import PrivacySettings
from exporter.db.schema import contact_versions, contacts, grants
from exporter.sandbox.server import Sandbox
from exporter.tapkey.access import Privacy

ALL = ["contacts", "cards", "grants"]
KEY = "a-test-key-of-sufficient-length"


def _contacts(fake: Sandbox) -> dict[str, list[dict[str, Any]]]:
    return {owner["id"]: fake.contacts_payload(owner["id"]) for owner in fake.owners_payload()}


def _owner_ids(fake: Sandbox) -> list[str]:
    return [owner["id"] for owner in fake.owners_payload()]


def _count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


@pytest.mark.parametrize("mode", ["hash", "drop"])
def test_privacy_keeps_identifiers_out_of_the_database_and_the_logs(
    mode: str, db_url: str, engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    privacy = PrivacySettings(
        contact_identifier=mode,
        hash_key=KEY if mode == "hash" else None,  # type: ignore[arg-type]
    )
    with Sandbox(seed=10, owners=2, locks_per_owner=2) as fake:
        emails = {
            c.get("identifier", c.get("email")) for items in _contacts(fake).values() for c in items
        }
        first = run_access(fake, db_url, tmp_path, privacy=privacy)
        second = run_access(fake, db_url, tmp_path, privacy=privacy)
        expected = expected_access(
            _contacts(fake),
            "contacts",
            identifier=lambda v: (
                hmac.new(KEY.encode(), v.encode(), hashlib.sha256).hexdigest()
                if mode == "hash"
                else None
            ),
            texts=False,
        )

    assert first.status == second.status == "succeeded"
    assert second.access["contacts"].unchanged == len(expected)  # digests recognise them
    assert second.finished_at is not None
    assert rows_at(engine, "contacts", second.finished_at) == expected
    with engine.connect() as conn:
        stored = " ".join(
            str(value)
            for table in (contacts, grants)
            for row in conn.execute(select(table)).all()
            for value in row
        )
    assert emails and not any(email in stored for email in emails)
    assert not any(email in caplog.text for email in emails)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (("hash", KEY), ("drop", None)),
        (("drop", None), ("hash", KEY)),
        (("hash", KEY), ("hash", KEY[::-1])),
        (("keep", None), ("hash", KEY)),
        (("keep", None), ("drop", None)),
        (("hash", KEY), ("keep", None)),
    ],
    ids=[
        "hash-to-drop",
        "drop-to-hash",
        "new-hash-key",
        "keep-to-hash",
        "keep-to-drop",
        "hash-to-keep",
    ],
)
def test_a_changed_privacy_setting_rewrites_every_contact_on_the_next_run(
    before: tuple[str, str | None],
    after: tuple[str, str | None],
    db_url: str,
    engine: Engine,
    tmp_path: Path,
) -> None:
    def privacy(mode: str, key: str | None) -> PrivacySettings:
        return PrivacySettings(contact_identifier=mode, hash_key=key)  # type: ignore[arg-type]

    with Sandbox(seed=10, owners=2, locks_per_owner=2) as fake:
        run_access(fake, db_url, tmp_path, privacy=privacy(*before))
        second = run_access(fake, db_url, tmp_path, privacy=privacy(*after))
        mode, key = after
        expected = expected_access(
            _contacts(fake),
            "contacts",
            identifier=lambda v: _stored_identifier(mode, key, v),
            texts=mode == "keep",
        )

    assert second.status == "succeeded" and second.access["contacts"].updated == len(expected)
    assert second.finished_at is not None
    assert rows_at(engine, "contacts", second.finished_at) == expected
    # Names and comments go (or come back) with the switch between keep and hash/drop.
    if (before[0] == "keep") != (mode == "keep"):
        with engine.connect() as conn:
            updates = conn.execute(
                select(contact_versions.c.changed_fields).where(
                    contact_versions.c.run_id == second.run_id
                )
            ).scalars()
            assert all("title" in _fields(fields) for fields in updates)
    assert_history_consistent(engine)


def _stored_identifier(mode: str, key: str | None, value: str) -> str | None:
    if mode == "hash":
        assert key is not None
        return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()
    return value if mode == "keep" else None


def _fields(value: Any) -> list[str]:
    return list(json.loads(value) if isinstance(value, str) else value)


def _personal_texts(fake: Sandbox) -> set[str]:
    """Every contact's title, comment and email the sandbox lists (personal data)."""
    return {
        text
        for items in _contacts(fake).values()
        for contact in items
        for text in (
            contact["title"],
            contact["comment"],
            contact.get("identifier", contact.get("email")),
        )
        if text
    }


def _stored_texts(engine: Engine) -> list[tuple[str, str, str]]:
    """(table, column, value) of every text held anywhere in the database, every table read."""
    metadata = MetaData()
    metadata.reflect(engine)
    found = []
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)).mappings():
                found.extend(
                    (table.name, column, value)
                    for column, value in row.items()
                    if isinstance(value, str)
                )
    return found


def _holding(stored: list[tuple[str, str, str]], texts: set[str]) -> set[tuple[str, str, str]]:
    """(table, column, personal text) of each text of `texts` that some stored value holds."""
    return {
        (table, column, text) for table, column, value in stored for text in texts if text in value
    }


@pytest.mark.parametrize("mode", ["keep", "hash", "drop"])
def test_contacts_names_comments_and_emails_are_stored_only_under_keep(
    mode: str, db_url: str, engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Under hash/drop the identifier was pseudonymised but the person's name and the notes about
    # them were stored as received, in contacts and contact_versions: the pseudonym was moot.
    caplog.set_level(logging.DEBUG)
    privacy = PrivacySettings(
        contact_identifier=mode,  # type: ignore[arg-type]
        hash_key=KEY if mode == "hash" else None,  # type: ignore[arg-type]
    )
    everything = [*ALL, "log_entries"]
    with Sandbox(seed=16, owners=2, locks_per_owner=2) as fake:
        owner = _owner_ids(fake)[0]
        contact = fake.add_contact(owner, title="Zoe Quintessa", identifier="zoe.q@example.com")
        fake.add_grant(owner, contact_id=contact)
        first = run_access(fake, db_url, tmp_path, privacy=privacy, entities=everything)
        renamed_from = _personal_texts(fake)
        fake.update_contact(contact, title="Zoe Quintessa-Lind", identifier="zoe.l@example.com")
        fake.append_log_entries(owner, 3)
        second = run_access(fake, db_url, tmp_path, privacy=privacy, entities=everything)
        people = renamed_from | _personal_texts(fake)

    assert first.status == second.status == "succeeded"
    stored = _stored_texts(engine)
    holding = _holding(stored, people)
    if mode == "keep":
        assert {text for _, _, text in holding} == people  # the scan finds what is there
        assert {table for table, _, _ in holding} >= {"contacts", "contact_versions"}
    else:
        assert holding == set()
        # The rename is no change where nothing of the name is stored; the new address is, hashed.
        assert second.access["contacts"].updated == (1 if mode == "hash" else 0)
        assert not any(text in caplog.text for text in people)


def test_contacts_stored_by_an_earlier_version_under_hash_lose_names_and_comments_on_the_next_run(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    # Earlier versions stored titles and comments under hash/drop, with payload digests that still
    # recognised every contact as unchanged: nothing would ever have removed them.
    old_digests = hmac.new(
        SANDBOX_SECRET.encode(),
        b"tapkey-exporter payload digest v1 hash " + KEY.encode(),
        hashlib.sha256,
    ).digest()
    old = Privacy("hash", KEY.encode(), old_digests)
    hashed = PrivacySettings(contact_identifier="hash", hash_key=KEY)  # type: ignore[arg-type]
    with Sandbox(seed=17, owners=2, locks_per_owner=2) as fake:
        first = run_access(fake, db_url, tmp_path)
        # What an earlier version stored under hash: identifier hashed, raw digested, texts kept.
        with engine.begin() as conn:
            for table in (contacts, grants):
                for row in conn.execute(select(table.c.id, table.c.raw)).all():
                    raw = old.stored_text(row.raw, personal=True)
                    conn.execute(update(table).where(table.c.id == row.id).values(raw=raw))
            for table, key in (
                (contacts, contacts.c.id),
                (contact_versions, contact_versions.c.version_id),
            ):
                for row_key, identifier in conn.execute(select(key, table.c.identifier)).all():
                    conn.execute(
                        update(table)
                        .where(key == row_key)
                        .values(identifier=old.identifier(identifier))
                    )
        people = _personal_texts(fake)
        second = run_access(fake, db_url, tmp_path, privacy=hashed)
        expected = expected_access(
            _contacts(fake), "contacts", identifier=old.identifier, texts=False
        )

    assert second.status == "succeeded"
    assert second.access["contacts"].updated == len(expected)
    assert second.access["grants"].updated == 0  # their values did not change
    assert second.finished_at is not None
    assert rows_at(engine, "contacts", second.finished_at) == expected
    assert _holding(_stored_texts(engine), people) <= {
        ("contact_versions", column, text)  # the versions of run 1, left as they were
        for column in ("identifier", "title", "comment")
        for text in people
    }
    with engine.connect() as conn:
        assert _count(engine, contacts, contacts.c.title.is_not(None)) == 0
        latest = conn.execute(
            select(contact_versions.c.title).where(contact_versions.c.run_id == second.run_id)
        ).scalars()
        assert set(latest) == {None}
    assert first.run_id is not None
    assert_history_consistent(engine)
