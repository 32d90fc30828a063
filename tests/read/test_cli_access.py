"""`exporter access LOCK` / `--contact ID`: who can open what, now or as of a run (all backends)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from support.helpers import make_settings
from typer.testing import CliRunner

from exporter import cli
from exporter.cli import app
from exporter.config.sections import PrivacySettings
from exporter.sandbox.server import Sandbox
from exporter.service import job


@pytest.fixture
def filled(db_url: str, tmp_path: Path) -> dict[str, Any]:
    """Two runs: a contact granted a lock in run 1 and revoked before run 2, and a card grant."""
    with Sandbox(seed=31, owners=2, locks_per_owner=2, grants_per_owner=0) as fake:
        owner = fake.owners_payload()[0]["id"]
        lock = fake.locks_payload(owner)[0]["id"]
        fake.rename(lock, "Server room \x1b[31m")
        contact = fake.add_contact(owner, title="Anna Huber", identifier="anna@example.com")
        card = fake.bind_card(owner, title="Visitor 1")
        revoked = fake.add_grant(owner, lock_id=lock, contact_id=contact)
        kept = fake.add_grant(owner, lock_id=lock, card_id=card)
        expired = fake.add_grant(
            owner, lock_id=lock, contact_id=contact, valid_before="2020-01-01T00:00:00.000Z"
        )
        other = fake.locks_payload(owner)[1]["id"]
        unbound = fake.add_grant(owner, lock_id=other, card_id=card)
        settings = make_settings(fake, db_url, tmp_path, entities=["contacts", "cards", "grants"])
        job.run_once(settings)
        fake.revoke_grant(revoked)
        fake.unbind(other)
        job.run_once(settings)
    config = tmp_path / "config.toml"
    config.write_text("")
    return {
        "url": db_url,
        "config": config,
        "lock": lock,
        "contact": contact,
        "revoked": revoked,
        "kept": kept,
        "expired": expired,
        "other": other,
        "unbound": unbound,
    }


@pytest.fixture
def exporter(filled: dict[str, Any]) -> Any:
    runner = CliRunner()
    saved = cli.out._width
    cli.out.width = 250

    def run(*args: str) -> Any:
        return runner.invoke(
            app,
            list(args),
            env={"EXPORTER_CONFIG": str(filled["config"]), "EXPORTER_DATABASE__URL": filled["url"]},
        )

    yield run
    cli.out._width = saved


def _grant_ids(result: Any) -> set[str]:
    assert result.exit_code == 0, (result.output, result.stderr)
    return {grant["grant_id"] for grant in json.loads(result.stdout)["grants"]}


def test_who_can_open_a_lock_now_and_as_of_an_earlier_run(
    filled: dict[str, Any], exporter: Any
) -> None:
    lock = filled["lock"]
    assert _grant_ids(exporter("access", lock, "-f", "json")) == {filled["kept"]}
    as_of_1 = _grant_ids(exporter("access", lock, "--as-of", "1", "-f", "json"))
    assert as_of_1 == {filled["kept"], filled["revoked"]}  # expired never counts
    by_prefix = exporter("access", lock[:8], "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(by_prefix.stdout)))
    assert [row["grant_id"] for row in rows] == [filled["kept"]]
    assert rows[0]["lock_title"] == "Server room \x1b[31m"  # CSV stays exact


def test_a_grant_of_an_unbound_lock_opens_nothing(filled: dict[str, Any], exporter: Any) -> None:
    now = exporter("access", filled["other"], "-f", "json")
    assert _grant_ids(now) == set() and json.loads(now.stdout)["bound"] is False
    assert _grant_ids(exporter("access", filled["other"], "--as-of", "1", "-f", "json")) == {
        filled["unbound"]
    }
    table = exporter("access", filled["other"])
    assert "the lock was not bound then" in table.stdout


def test_what_a_contact_can_open(filled: dict[str, Any], exporter: Any) -> None:
    assert _grant_ids(exporter("access", "--contact", filled["contact"], "-f", "json")) == set()
    by_identifier = exporter(
        "access", "--contact", "anna@example.com", "--as-of", "1", "-f", "json"
    )
    assert _grant_ids(by_identifier) == {filled["revoked"]}


def test_the_table_shows_api_text_escaped(filled: dict[str, Any], exporter: Any) -> None:
    result = exporter("access", filled["lock"], "--as-of", "1")
    assert result.exit_code == 0, result.output
    assert "Server room \\x1b[31m" in result.stdout and "\x1b" not in result.stdout
    assert "Anna Huber" in result.stdout and "anna@example.com" in result.stdout
    assert "end of run 1" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "give either a LOCK or --contact", id="neither"),
        pytest.param(["x", "--contact", "y"], "give either a LOCK or --contact", id="both"),
        pytest.param(["no-such-lock"], "no bound lock has the id", id="unknown-lock"),
        pytest.param(["--contact", "nobody"], "no contact has the id", id="unknown-contact"),
        pytest.param(["--contact", "x", "--as-of", "99"], "no run 99", id="unknown-run"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(exporter: Any, args: list[str], message: str) -> None:
    result = exporter("access", *args)
    assert result.exit_code == 2, (result.output, result.stderr)
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_an_identifier_shows_the_grants_of_that_person_in_every_owner_account(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A person added by two owner accounts is a contact (an id) in each, with one identifier.
    with Sandbox(seed=32, owners=2, locks_per_owner=1, grants_per_owner=0) as fake:
        granted = set()
        for index, owner in enumerate(o["id"] for o in fake.owners_payload()):
            contact = fake.add_contact(owner, title=f"Anna {index}", identifier="anna@example.com")
            granted.add(fake.add_grant(owner, contact_id=contact))
        settings = make_settings(fake, db_url, tmp_path, entities=["contacts", "grants"])
        job.run_once(settings)
    env = {"EXPORTER_DATABASE__URL": db_url, "EXPORTER_CONFIG": str(tmp_path / "none.toml")}
    (tmp_path / "none.toml").write_text("")
    result = CliRunner().invoke(
        app, ["access", "--contact", "anna@example.com", "-f", "json"], env=env
    )
    assert _grant_ids(result) == granted
    assert len(json.loads(result.stdout)["ids"]) == 2
    monkeypatch.setattr(cli.out, "_width", 250)
    table = CliRunner().invoke(app, ["access", "--contact", "anna@example.com"], env=env)
    assert "Bound lock id" in table.stdout and "Identifier / label" not in table.stdout


def _privacy_env(db_url: str, tmp_path: Path, mode: str, key: str) -> dict[str, str]:
    """The environment of a CLI call reading `db_url` under [privacy] `mode` (no config file)."""
    (tmp_path / "none.toml").write_text("")
    return {
        "EXPORTER_DATABASE__URL": db_url,
        "EXPORTER_CONFIG": str(tmp_path / "none.toml"),
        "EXPORTER_PRIVACY__CONTACT_IDENTIFIER": mode,
        **({"EXPORTER_PRIVACY__HASH_KEY": key} if mode == "hash" else {}),
    }


@pytest.mark.parametrize("mode", ["hash", "drop"])
def test_an_identifier_is_looked_up_as_privacy_stores_it(
    db_url: str, tmp_path: Path, mode: str
) -> None:
    # Stored as its keyed hash, an e-mail address was found by no lookup: the message said to
    # give the contact id, which a person does not know.
    key = "k" * 32
    with Sandbox(seed=33, owners=1, locks_per_owner=1, grants_per_owner=0) as fake:
        owner = fake.owners_payload()[0]["id"]
        contact = fake.add_contact(owner, title="Anna", identifier="anna@example.com")
        granted = fake.add_grant(owner, contact_id=contact)
        settings = make_settings(fake, db_url, tmp_path, entities=["contacts", "grants"])
        privacy = PrivacySettings(contact_identifier=mode, hash_key=key if mode == "hash" else None)
        job.run_once(settings.model_copy(update={"privacy": privacy}))
    env = _privacy_env(db_url, tmp_path, mode, key)

    result = CliRunner().invoke(
        app, ["access", "--contact", "anna@example.com", "-f", "json"], env=env
    )

    if mode == "hash":
        assert _grant_ids(result) == {granted}
    else:
        assert result.exit_code == 2
        assert "identifiers are not stored" in result.stderr


@pytest.mark.parametrize("mode", ["keep", "hash", "drop"])
def test_access_and_changes_show_a_contacts_name_only_under_keep(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    # Under hash/drop `access` printed the contact's name next to its hashed address.
    key = "k" * 32
    with Sandbox(seed=34, owners=1, locks_per_owner=1, grants_per_owner=0) as fake:
        owner = fake.owners_payload()[0]["id"]
        lock = fake.locks_payload(owner)[0]["id"]
        contact = fake.add_contact(owner, title="Zoe Quintessa", identifier="zoe.q@example.com")
        granted = fake.add_grant(owner, lock_id=lock, contact_id=contact)
        comment = fake.contacts_payload(owner)[-1]["comment"]
        settings = make_settings(fake, db_url, tmp_path, entities=["contacts", "grants"])
        privacy = PrivacySettings(contact_identifier=mode, hash_key=key if mode == "hash" else None)
        job.run_once(settings.model_copy(update={"privacy": privacy}))
    env = _privacy_env(db_url, tmp_path, mode, key)
    monkeypatch.setattr(cli.out, "_width", 250)
    formats: list[list[str]] = [[], ["-f", "csv"], ["-f", "json"]]
    commands = [
        *(["access", lock, *fmt] for fmt in formats),
        *(["access", "--contact", contact, *fmt] for fmt in formats),
        *(["changes", "--entity", "contact,grant", *fmt] for fmt in formats),
    ]
    outputs = []
    for args in commands:
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 0, (args, result.output)
        assert granted in result.stdout
        outputs.append(result.output)
    shown = "\n".join(outputs)

    personal = {"Zoe Quintessa", "zoe.q@example.com", *([comment] if comment else [])}
    if mode == "keep":
        assert {"Zoe Quintessa", "zoe.q@example.com"} <= {t for t in personal if t in shown}
    else:
        assert not any(text in shown for text in personal)
        assert f"contact {contact}" in outputs[0]  # the table still says who it is
