"""`exporter demo`: a sandbox in this process, several syncs into a fresh SQLite file."""

from __future__ import annotations

import itertools
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine, text

from exporter.config.loader import load_settings
from exporter.errors import UsageError
from exporter.read import access as access_report
from exporter.read import access_render, asof, log_view
from exporter.read import inventory as report
from exporter.read import runs as runs_report
from exporter.sandbox.server import Sandbox
from exporter.service import job, preflight
from exporter.terminal import visible

DEMO_CLIENT_ID = "demo-client"
DEMO_SECRET = "demo-secret"  # the in-process sandbox's own credential, not a real one


def run_demo(
    path: Path, *, generations: int, console: Console, seed: int = 7, prog: str = "exporter"
) -> None:
    """Load the sandbox's inventory, then sync after each of `generations` random change sets.

    `prog` is how the user invoked the exporter, so the closing hints can be pasted as they are.
    A file at `path` is replaced only if it is an earlier demo's database.
    """
    if path.exists() and not _is_demo_database(path):
        raise UsageError(
            f"{path} exists and is not a demo database; the demo replaces its --db file, so "
            "pass a new path (or delete that file yourself)"
        )
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with Sandbox(
        seed=seed,
        owners=4,
        locks_per_owner=6,
        client_id=DEMO_CLIENT_ID,
        client_secret=DEMO_SECRET,
    ) as sandbox:
        settings = load_settings(
            None,
            env={},
            cwd=path.parent,
            overrides={
                "tapkey.client_id": DEMO_CLIENT_ID,
                "tapkey.client_secret": DEMO_SECRET,
                "tapkey.token_url": sandbox.token_url,
                "tapkey.api_base_url": sandbox.base_url,
                "database.url": f"sqlite:///{path}",
                # Every entity: the access data shows who could open what, when.
                "tapkey.entities": ["contacts", "cards", "grants", "log_entries"],
            },
        )
        engine = preflight.make_engine(settings)
        try:
            for generation in range(generations + 1):
                if generation:
                    applied = sandbox.advance(changes=4, access=6)
                    console.rule(
                        f"Sandbox generation {generation}: {len(applied)} changes applied "
                        "(changes to rcl fields and health readings make no version)"
                    )
                result = job.run_once(settings, trigger="demo")
                counts = ", ".join(f"{k} {v}" for k, v in result.counts.as_dict().items() if v)
                console.print(
                    Text.assemble(
                        (f"Run {result.run_id}", "bold"),
                        f" {result.status}: {result.owners_seen} owners, {result.locks_seen} "
                        f"locks ({counts or 'no changes'}), {result.log_entries} new log entries",
                    )
                )
                for entity, entity_counts in result.access.items():
                    changed = ", ".join(f"{k} {v}" for k, v in entity_counts.as_dict().items() if v)
                    console.print(f"  {entity}: {changed or 'none'}")
                if generation == 0:
                    _print_inventory(console, engine)
                else:
                    _print_changes(console, engine, result.run_id or 0)
            lock = _print_access(console, engine, generations + 1)
            _print_openings(console, engine)
        finally:
            engine.dispose()
    console.print()
    shown = visible(str(path))  # Text objects bypass the console's escaping
    console.print(Text.assemble("The history is in ", (shown, "bold"), ". Look at it with:"))
    db = f"--database-url sqlite:///{path}"
    hints = ["locks", "locks --as-of 1", "changes", "log --limit 20", "runs"]
    if lock is not None:
        hints += [f"access {lock[:8]}", f"access {lock[:8]} --as-of 1"]
    for args in hints:
        console.print(f"  {prog} {args} {db}")
    console.print("or any SQL client, e.g.:")
    console.print("  SELECT owner_name, title, lock_model_name FROM current_bound_locks;")
    console.print(
        "  SELECT changed_at, change_type, title, changed_fields FROM bound_lock_changes "
        "ORDER BY changed_at;"
    )
    console.print(
        "  SELECT lock_title, contact_title, card_title, state FROM current_grants ORDER BY 1;"
    )
    console.print("  SELECT day, title, openings FROM lock_openings_daily ORDER BY day DESC;")


def _print_inventory(console: Console, engine: object) -> None:
    table = Table(title="Inventory after the first load")
    for column in ("owner", "lock id", "title", "model", "bound since"):
        table.add_column(column)
    for row in report.current_locks(engine):  # type: ignore[arg-type]
        table.add_row(
            row["owner_name"] or row["owner_account_id"],
            row["id"][:8],
            row["title"] or "",
            row["lock_model_name"] or "",
            row["bind_date"].date().isoformat() if row["bind_date"] else "",
        )
    console.print(table)


def _print_changes(console: Console, engine: Engine, run_id: int) -> None:
    with runs_report.open_run_changes(engine, run_id) as changes:
        rows = list(changes)
    if not rows:
        console.print("  no changes")
        return
    table = Table(title=f"What run {run_id} recorded")
    for column in ("entity", "id", "change", "fields / reason", "title / name"):
        table.add_column(column)
    for row in rows:
        detail = ", ".join(row.changed_fields or ()) or (row.removal_reason or "")
        table.add_row(row.entity, row.id[:8], row.change_type, detail, row.title or "")
    console.print(table)


def _print_access(console: Console, engine: Engine, last_run: int) -> str | None:
    """A grant's history (one that changed, if any), then who could open its lock at the end
    of run 1 and who can now; returns that lock's id (None without grants)."""
    with engine.connect() as conn:
        # A grant that changed, on a lock still bound: `access LOCK` then has something to show.
        bound = "bound_lock_id IN (SELECT id FROM bound_locks WHERE removed_at IS NULL)"
        changed = (
            conn.execute(
                text(
                    "SELECT grant_id, bound_lock_id FROM grant_changes "
                    f"WHERE change_type <> 'created' AND {bound} ORDER BY changed_at LIMIT 1"
                )
            ).first()
            or conn.execute(
                text(
                    "SELECT grant_id, bound_lock_id FROM grant_changes "
                    "WHERE change_type <> 'created' ORDER BY changed_at LIMIT 1"
                )
            ).first()
            or conn.execute(
                text(
                    "SELECT grant_id, bound_lock_id FROM grant_changes ORDER BY version_id LIMIT 1"
                )
            ).first()
        )
        if changed is None:
            return None
        grant_id, lock_id = changed
        history = conn.execute(
            text(
                "SELECT run_id, changed_at, change_type, changed_fields, removal_reason, state, "
                "lock_title, contact_title, card_title FROM grant_changes "
                "WHERE grant_id = :grant ORDER BY changed_at"
            ),
            {"grant": grant_id},
        ).all()
    console.rule("Access data")
    table = Table(title=f"History of grant {grant_id[:8]}")
    for column in ("run", "when (UTC)", "change", "fields / reason", "state", "lock", "to"):
        table.add_column(column)
    for row in history:
        fields = row.changed_fields
        detail = ", ".join(json.loads(fields) if isinstance(fields, str) else fields or ())
        table.add_row(
            str(row.run_id),
            row.changed_at if isinstance(row.changed_at, str) else str(row.changed_at),
            row.change_type,
            detail or row.removal_reason or "",
            row.state or "",
            row.lock_title or "",
            row.contact_title or row.card_title or "",
        )
    console.print(table)
    now = datetime.now(UTC)
    first = asof.resolve_as_of(engine, "1", now=now)
    for as_of in (first, asof.resolve_as_of(engine, str(last_run), now=now)):
        answer = access_report.who_can_open(engine, lock_id, now=now, as_of=as_of)
        access_render.access_table(answer, console)
    return str(lock_id)


def _print_openings(console: Console, engine: Engine, shown: int = 8) -> None:
    """The most recent openings (TriggerLock commands) the log entries hold."""
    table = Table(title="Recent openings (log entries)")
    for column in ("when (UTC)", "lock", "owner", "by"):
        table.add_column(column)
    with log_view.open_log(engine, limit=None) as feed:
        openings = (r for r in feed.rows if r.log_type == "Command" and r.command == "TriggerLock")
        for row in itertools.islice(openings, shown):
            by = f"contact {row.contact_id[:8]}" if row.contact_id else ""
            if row.bound_card_id:
                by = f"card {row.bound_card_id[:8]}"
            when = row.lock_timestamp.strftime("%Y-%m-%d %H:%M:%S") if row.lock_timestamp else ""
            table.add_row(when, row.title or row.bound_lock_id or "", row.owner_name or "", by)
    console.print(table)


def _is_demo_database(path: Path) -> bool:
    """Whether `path` is a SQLite database whose runs (if any) were all the demo's."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            triggers = {row[0] for row in conn.execute("SELECT DISTINCT trigger FROM sync_runs")}
        finally:
            conn.close()
    except sqlite3.Error:  # not SQLite, or not the exporter's schema
        return False
    return triggers <= {"demo"}
