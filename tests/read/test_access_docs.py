"""docs/access.md's SQL runs verbatim on every database and answers what it says."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from support.helpers import make_settings
from support.history import expected_access

from exporter.sandbox.server import Sandbox
from exporter.service import job

ACCESS_DOC = (Path(__file__).resolve().parents[2] / "docs" / "access.md").read_text(
    encoding="utf-8"
)


def _statements() -> list[str]:
    blocks = re.findall(r"```sql\n(.*?)```", ACCESS_DOC, flags=re.S)
    statements = [s.strip() for block in blocks for s in block.split(";")]
    return [s for s in statements if any(not line.startswith("--") for line in s.splitlines())]


def _gives_access(grant: dict[str, Any], at: datetime) -> bool:
    starts, ends = grant["validity_from"], grant["validity_before"]
    return (
        grant["state"] == "Ok" and (starts is None or starts <= at) and (ends is None or ends > at)
    )


def test_the_documented_access_queries_run_and_the_recipe_gives_access_as_of_run_2(
    db_url: str, engine: Engine, tmp_path: Path
) -> None:
    statements = _statements()
    assert len(statements) == 6
    with Sandbox(seed=21, owners=3, locks_per_owner=3, grants_per_owner=10) as fake:
        settings = make_settings(fake, db_url, tmp_path, entities=["contacts", "cards", "grants"])
        job.run_once(settings)
        fake.advance(changes=2, access=12)
        second = job.run_once(settings)
        owners = [owner["id"] for owner in fake.owners_payload()]
        granted = expected_access({o: fake.grants_payload(o) for o in owners}, "grants")
        bound = {lock["id"] for locks in fake.snapshot().values() for lock in locks}
        fake.advance(changes=2, access=12)
        job.run_once(settings)

    assert second.run_id == 2 and second.finished_at is not None
    expected = {
        i
        for i, g in granted.items()
        if _gives_access(g, second.finished_at) and g["bound_lock_id"] in bound
    }
    assert expected  # the seed has grants in force
    with engine.connect() as conn:
        results = [conn.execute(text(statement)).all() for statement in statements]
    recipe = next(i for i, s in enumerate(statements) if "r.id = 2" in s)
    assert {row.grant_id for row in results[recipe]} == expected
    assert results[recipe + 3]  # grants per owner and state
