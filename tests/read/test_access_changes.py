"""The change feed covers contacts, cards and grants too (`changes()`, `exporter changes`)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from support.helpers import make_settings
from typer.testing import CliRunner

from exporter import cli
from exporter.cli import app
from exporter.errors import UsageError
from exporter.read import changelog
from exporter.sandbox.server import Sandbox
from exporter.service import job


@pytest.fixture
def history(db_url: str, tmp_path: Path) -> dict[str, Any]:
    """Run 1 adds a contact, a card and a grant; run 2 renames the contact (to a text with an
    ESC), unbinds the card and revokes the grant; run 3 renames a lock."""
    with Sandbox(seed=41, owners=2, locks_per_owner=2, grants_per_owner=0) as fake:
        owner, other = (o["id"] for o in fake.owners_payload())
        lock = fake.locks_payload(owner)[0]["id"]
        contact = fake.add_contact(owner, title="Anna Huber", identifier="anna@example.com")
        card = fake.bind_card(owner, title="Visitor 1")
        grant = fake.add_grant(owner, lock_id=lock, contact_id=contact)
        settings = make_settings(fake, db_url, tmp_path, entities=["contacts", "cards", "grants"])
        runs = [job.run_once(settings).run_id]
        fake.update_contact(contact, title="Anna \x1b[31mMaier")
        fake.unbind_card(card)
        fake.revoke_grant(grant)
        runs.append(job.run_once(settings).run_id)
        fake.rename(lock, "Server room")
        runs.append(job.run_once(settings).run_id)
    config = tmp_path / "config.toml"
    config.write_text("")
    return {
        "url": db_url,
        "config": config,
        "owner": owner,
        "other": other,
        "lock": lock,
        "contact": contact,
        "card": card,
        "grant": grant,
        "runs": runs,
    }


def _key(row: changelog.ChangeRow) -> tuple[Any, ...]:
    return (row.entity, row.id, row.change_type)


def test_the_feed_holds_every_entity_in_time_order(history: dict[str, Any], engine: Engine) -> None:
    rows = changelog.changes(engine).rows
    rank = {entity: i for i, entity in enumerate(changelog.ENTITIES)}
    assert rows == sorted(rows, key=lambda r: (r.changed_at, rank[r.entity], r.id))
    second = {_key(r): r for r in rows if r.run_id == history["runs"][1]}
    assert set(second) == {
        ("contact", history["contact"], "updated"),
        ("card", history["card"], "removed"),
        ("grant", history["grant"], "updated"),
    }
    renamed = second["contact", history["contact"], "updated"]
    assert [(c.field, c.old, c.new) for c in renamed.changes] == [
        ("title", "Anna Huber", "Anna \x1b[31mMaier")
    ]
    assert renamed.title == "Anna \x1b[31mMaier" and renamed.owner_account_id == history["owner"]
    revoked = second["grant", history["grant"], "updated"]
    assert {c.field: c.new for c in revoked.changes} == {"state": "Revoked", "active": False}
    assert revoked.title is None and revoked.lock_id_hex is None
    assert second["card", history["card"], "removed"].removal_reason == "unbound"
    first = {_key(r) for r in rows if r.run_id == history["runs"][0]}
    assert {
        ("contact", history["contact"], "created"),
        ("card", history["card"], "created"),
        ("grant", history["grant"], "created"),
    } <= first


def test_the_feed_filters_by_entity_owner_and_kind(history: dict[str, Any], engine: Engine) -> None:
    everything = changelog.changes(engine).rows
    grants = changelog.changes(engine, entities=("grant",)).rows
    assert grants == [r for r in everything if r.entity == "grant"] and grants
    two = changelog.changes(engine, entities=("lock", "contact")).rows
    assert two == [r for r in everything if r.entity in ("lock", "contact")]
    assert {r.entity for r in two} == {"lock", "contact"}
    mine = changelog.changes(engine, owner=history["other"]).rows
    assert mine and all(r.owner_account_id == history["other"] for r in mine)
    assert not {r.id for r in mine} & {history["contact"], history["card"], history["grant"]}
    removed = changelog.changes(engine, kinds={"removed"}, entities=("card", "grant")).rows
    assert [_key(r) for r in removed] == [("card", history["card"], "removed")]
    with pytest.raises(UsageError, match="unknown entity 'cards'"):
        changelog.changes(engine, entities=("cards",))


@pytest.fixture
def exporter(history: dict[str, Any]) -> Any:
    runner = CliRunner()
    saved = cli.out._width
    cli.out.width = 250

    def run(*args: str) -> Any:
        env = {"EXPORTER_CONFIG": str(history["config"]), "EXPORTER_DATABASE__URL": history["url"]}
        return runner.invoke(app, list(args), env=env)

    yield run
    cli.out._width = saved


def test_exporter_changes_shows_access_changes(history: dict[str, Any], exporter: Any) -> None:
    run = str(history["runs"][1])
    table = exporter("changes", "--run", run)
    assert table.exit_code == 0, (table.output, table.stderr)
    assert "3 changes" in table.stdout
    assert "Anna \\x1b[31mMaier" in table.stdout and "\x1b" not in table.stdout
    assert "state: 'Ok' -> 'Revoked'" in table.stdout and "removed: unbound" in table.stdout

    as_csv = exporter("changes", "--run", run, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {(r["entity"], r["field"]) for r in rows} == {
        ("contact", "title"),
        ("card", ""),
        ("grant", "state"),
        ("grant", "active"),
    }
    assert {r["new"] for r in rows if r["field"] == "title"} == {"Anna \x1b[31mMaier"}

    as_json = exporter("changes", "--run", run, "--format", "json", "--entity", "grant")
    assert [(c["entity"], c["id"]) for c in json.loads(as_json.stdout)] == [
        ("grant", history["grant"])
    ]
    two = exporter("changes", "--format", "json", "--entity", "card,lock", "--entity", "owner")
    assert {c["entity"] for c in json.loads(two.stdout)} == {"owner", "lock", "card"}


def test_exporter_changes_refuses_an_unknown_entity(exporter: Any) -> None:
    result = exporter("changes", "--entity", "grants")
    assert result.exit_code == 2
    assert "unknown entity 'grants'" in result.stderr
