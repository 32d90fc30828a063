"""`exporter check`: credentials, Tapkey access, the database, its paging facts and the removals
held back, each checked and reported on one line; writes nothing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, Table
from sqlalchemy.exc import SQLAlchemyError

from exporter.config.settings import Settings, scopes_for
from exporter.config.urls import display_url, masked_url, sqlite_file
from exporter.db import engine as db_engine
from exporter.db import errors as db_errors
from exporter.db import migrate
from exporter.db.schema import (
    api_paging as api_paging_table,
)
from exporter.db.schema import (
    bound_lock_versions,
    bound_locks,
    guard_holds,
    lock_health_readings,
    log_entry_watermarks,
    owner_account_versions,
    owner_accounts,
    sync_run_owners,
    sync_runs,
)
from exporter.db.schema import log_entries as log_entries_table
from exporter.errors import ConfigError, ExporterError
from exporter.service.job import make_client
from exporter.service.preflight import make_engine, make_tokens, proxy_to, refuse_in_memory
from exporter.sync import api_paging, holds
from exporter.sync.run_records import filled_by


@dataclass(frozen=True)
class CheckResult:
    """One line of `exporter check`: what was checked, whether it passed, and the detail."""

    name: str
    ok: bool
    detail: str
    exit_code: int = 0
    skipped: bool = False  # it needs what an earlier check found broken; not a failure itself


def run_checks(settings: Settings) -> list[CheckResult]:
    """Check the credentials, Tapkey access and the database; writes nothing (`exporter check`).

    Every check runs even if an earlier one failed, so one call shows every problem.
    """
    database = _check_database(settings)
    return [*_check_tapkey(settings), database, *_check_stored_facts(settings, database)]


def _failed(name: str, exc: ExporterError) -> CheckResult:
    return CheckResult(name, False, str(exc), exc.exit_code)


def _skipped(names: tuple[str, ...], reason: str) -> list[CheckResult]:
    return [CheckResult(name, True, reason, skipped=True) for name in names]


def _check_tapkey(settings: Settings) -> list[CheckResult]:
    source = str(settings.source) if settings.source else "environment variables only"
    try:
        client_id, _ = settings.tapkey.credentials()
        tokens = make_tokens(settings)
        via = _via(settings)
    except ExporterError as exc:
        return [_failed("config", exc), *_skipped(("token", "owners"), "needs [tapkey] fixed")]
    results = [CheckResult("config", True, f"{source}; client_id {client_id}{via}")]
    try:
        tokens.token()
    except ExporterError as exc:
        return [*results, _failed("token", exc), *_skipped(("owners",), "needs a token")]
    granted = tokens.granted_scopes
    needed = set(scopes_for(settings.tapkey.entities))
    missing = sorted(needed - granted) if granted is not None else []
    if granted is None:
        results.append(CheckResult("token", True, "fetched (the token endpoint named no scopes)"))
    elif missing:
        detail = (
            f"granted scopes {' '.join(sorted(granted)) or 'none'}, missing {' '.join(missing)}: "
            "add them to [tapkey] scopes and allow them for the OAuth client"
        )
        results.append(CheckResult("token", False, detail, 1))
    else:
        results.append(CheckResult("token", True, f"granted scopes {' '.join(sorted(granted))}"))
    with make_client(settings, tokens=tokens) as client:
        try:
            owners = client.list_owners()
        except ExporterError as exc:
            return [*results, _failed("owners", exc)]
    if not owners:
        detail = (
            "no owner accounts visible: make the OAuth client's service account co-admin of the "
            "owner accounts to export"
        )
        return [*results, CheckResult("owners", False, detail, 1)]
    shown = ", ".join(f"{owner.name or '(no name)'} ({owner.id})" for owner in owners[:10])
    more = f" and {len(owners) - 10} more" if len(owners) > 10 else ""
    results.append(CheckResult("owners", True, f"{len(owners)} visible: {shown}{more}"))
    return results


def _via(settings: Settings) -> str:
    """Which proxy the token and API requests go through, if any (credentials masked)."""
    token = proxy_to(settings, settings.tapkey.token_url)
    api = proxy_to(settings, settings.tapkey.api_base_url)
    if token == api:
        return f"; through proxy {token}" if token else ""
    return f"; token request through {token or 'no proxy'}, API through {api or 'no proxy'}"


def _uncreatable(path: Path) -> str | None:
    """Why a SQLite file could not be created at `path`, as far as shows without writing."""
    folder = path.parent
    while not folder.exists():  # run-once creates the missing folders under the nearest one
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"this user may not write in {folder}"
    return None


def _check_database(settings: Settings) -> CheckResult:
    shown = masked_url(settings.database.url)
    try:
        refuse_in_memory(settings)
    except ConfigError as exc:
        return _failed("database", exc)
    sqlite = settings.database.backend == "sqlite"
    path = sqlite_file(settings.database.url)
    if path is not None and not Path(path).exists():
        # Connecting would create the file: report instead of writing anything.
        problem = _uncreatable(Path(path))
        if problem is not None:
            detail = f"{shown}: the file cannot be created ({problem}); check [database] url"
            return CheckResult("database", False, detail, 5)
        return CheckResult("database", True, f"{shown}: no file yet; run-once creates it")
    engine: Engine | None = None
    head = migrate.head_revision()
    try:
        engine = make_engine(settings)
        revision = migrate.current_revision(engine)
        previous = _last_client_id(engine) if revision is not None else None
        # Whether this user may write, found without writing (see db_errors.write_problem).
        denied = None
        if revision == head:
            with db_engine.connect(engine) as conn:
                denied = db_errors.write_problem(conn, _writes(settings))
    except ExporterError as exc:
        return _failed("database", exc)
    except SQLAlchemyError as exc:
        return _failed("database", db_errors.store_error(exc, engine))
    finally:
        if engine is not None:
            engine.dispose()
    if denied is not None:
        return CheckResult("database", False, f"{shown}: {denied}", 5)
    client_id = settings.tapkey.client_id
    if (
        previous is not None
        and client_id  # without one, [tapkey] is already reported
        and previous != client_id
        and not settings.sync.allow_client_id_change
    ):
        detail = (
            f"{shown} was filled by OAuth client {previous!r}, not {client_id!r}: run-once "
            "would refuse it; use a separate database or see --allow-client-change"
        )
        return CheckResult("database", False, detail, 2)
    if revision == head:
        detail = f"{shown}: reachable, schema at {head} (current), this user may write it"
        return CheckResult("database", True, detail)
    known = revision is None or migrate.is_known_revision(revision)
    if sqlite and known:
        detail = f"{shown}: schema at {revision or 'none'}; run-once upgrades it to {head}"
        return CheckResult("database", True, detail)
    if not known:
        detail = f"{shown}: schema at {revision}, unknown to this exporter version (newer?)"
        return CheckResult("database", False, detail, 5)
    detail = f"{shown}: schema at {revision or 'none'}, needs {head}: run `exporter db upgrade`"
    return CheckResult("database", False, detail, 5)


def _check_stored_facts(settings: Settings, database: CheckResult) -> list[CheckResult]:
    """What the database knows about the API's paging (exporter.tapkey.paging) and the removals
    the deletion guard holds back until confirmed (exporter.sync.holds); read-only, one
    connection."""
    names = ("paging", "holds")
    if not database.ok or "(current)" not in database.detail:
        needs = "needs the database at the current schema"
        return [CheckResult(name, True, needs, skipped=True) for name in names]
    api_url = display_url(settings.tapkey.api_base_url.rstrip("/"))  # as the client keys it
    engine = make_engine(settings, create=False)
    try:
        with db_engine.connect(engine) as conn:
            sizes = api_paging.load(conn, api_url)
            held = holds.load(conn)
    except SQLAlchemyError as exc:
        error = db_errors.store_error(exc, engine)
        return [_failed(name, error) for name in names]
    finally:
        engine.dispose()
    return [
        CheckResult("paging", True, f"{api_url}: {api_paging.describe(sizes)}"),
        CheckResult("holds", True, holds.describe(held)),
    ]


#: The tables every run inserts into and updates.
RUN_TABLES: tuple[Table, ...] = (
    sync_runs,
    sync_run_owners,
    owner_accounts,
    owner_account_versions,
    bound_locks,
    bound_lock_versions,
)


def _writes(settings: Settings) -> dict[Table, tuple[str, ...]]:
    """The tables a run writes, and how (retention deletes only where it is configured)."""
    writes: dict[Table, tuple[str, ...]] = {table: ("INSERT", "UPDATE") for table in RUN_TABLES}
    writes[api_paging_table] = ("INSERT", "DELETE")
    writes[guard_holds] = ("INSERT", "UPDATE", "DELETE")
    if settings.tapkey.expand_health:
        writes[lock_health_readings] = ("INSERT",)
    if settings.sync.health_retention_seconds is not None:
        writes[lock_health_readings] = (*writes.get(lock_health_readings, ()), "DELETE")
    if settings.sync.run_retention_seconds is not None:
        writes[sync_runs] += ("DELETE",)
        writes[sync_run_owners] += ("DELETE",)
    if "log_entries" in settings.tapkey.entities:
        writes[log_entries_table] = ("INSERT",)
        writes[log_entry_watermarks] = ("INSERT", "UPDATE")
        if settings.sync.log_retention_seconds is not None:
            writes[log_entries_table] += ("DELETE",)
    return writes


def _last_client_id(engine: Engine) -> str | None:
    with db_engine.connect(engine) as conn:
        return filled_by(conn)
