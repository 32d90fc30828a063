"""One sync run built from settings: the wiring shared by `run-once`, the daemon and `check`."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, Table, select
from sqlalchemy.exc import SQLAlchemyError

from exporter.config.proxies import Proxy, proxy_for
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
    lock_health_readings,
    log_entry_watermarks,
    owner_account_versions,
    owner_accounts,
    sync_run_owners,
    sync_runs,
)
from exporter.db.schema import log_entries as log_entries_table
from exporter.db.writer_lock import WriterLock
from exporter.errors import ConfigError, ExporterError, Interrupted, LockHeldError
from exporter.kinds import RunStatus
from exporter.results import RunResult, SyncProgress
from exporter.sync import api_paging, log_entries, retention
from exporter.sync.access import AccessOptions
from exporter.sync.batches import Batching
from exporter.sync.engine import sync, utcnow
from exporter.sync.guard import RemovalGuard, resolve_owner_ids
from exporter.sync.run_records import filled_by
from exporter.tapkey.access import Privacy
from exporter.tapkey.auth import TokenProvider
from exporter.tapkey.client import TapkeyClient
from exporter.tapkey.options import Connection, PageLimits, Timeouts
from exporter.tapkey.retry import RetryPolicy

EXIT_CODES: dict[str, int] = {RunStatus.SUCCEEDED: 0, RunStatus.FAILED: 1, RunStatus.PARTIAL: 3}


def make_engine(settings: Settings, *, create: bool = True) -> Engine:
    """The configured database's engine (see db.engine.make_engine for `create`)."""
    return db_engine.make_engine(
        settings.database.url, schema=settings.database.schema_name, create=create
    )


def refuse_in_memory(settings: Settings) -> None:
    """ConfigError if [database] url is an in-memory SQLite database (gone when the run ends)."""
    if db_engine.in_memory(settings.database.url):
        raise ConfigError(
            f"[database] url {settings.database.url} is an in-memory database, "
            "which is gone when the run ends: name a file, e.g. sqlite:///exporter.db"
        )


def proxy_to(settings: Settings, url: str) -> Proxy | None:
    """The proxy for requests to `url`: `[tapkey] proxy`, else the standard proxy variables."""
    return proxy_for(url, configured=settings.tapkey.proxy, env=settings.proxy_env)


def retry_policy(settings: Settings) -> RetryPolicy:
    """`[tapkey]`'s retry limits: one policy for the token requests and the API requests."""
    tapkey = settings.tapkey
    return RetryPolicy(
        max_retries=tapkey.max_retries,
        backoff_factor=tapkey.backoff_factor,
        # max_retry_after is the longest wait of all, our own backoff's too.
        max_backoff=tapkey.max_retry_after,
        max_retry_after=tapkey.max_retry_after,
        max_retry_time=tapkey.max_retry_time,
    )


def connection_to(settings: Settings, url: str) -> Connection:
    """How requests to `url` go out: `[tapkey]` timeouts and ca_bundle, the proxy for `url`."""
    tapkey = settings.tapkey
    return Connection(
        timeouts=Timeouts(connect=tapkey.connect_timeout, read=tapkey.read_timeout),
        verify=str(tapkey.ca_bundle) if tapkey.ca_bundle else True,
        proxy=proxy_to(settings, url),
    )


def make_tokens(
    settings: Settings,
    *,
    sleep: Callable[[float], None] | None = None,
    retry: RetryPolicy | None = None,
) -> TokenProvider:
    """The client-credentials token provider from `[tapkey]` (`retry`: the client's policy)."""
    tapkey = settings.tapkey
    client_id, secret = tapkey.credentials()
    return TokenProvider(
        client_id=client_id,
        client_secret=secret,
        token_url=tapkey.token_url,
        scopes=tapkey.scope_list,
        connection=connection_to(settings, tapkey.token_url),
        retry=retry if retry is not None else retry_policy(settings),
        sleep=sleep if sleep is not None else time.sleep,
    )


def make_client(
    settings: Settings,
    *,
    sleep: Callable[[float], None] | None = None,
    tokens: TokenProvider | None = None,
    stop: threading.Event | None = None,
) -> TapkeyClient:
    """A Tapkey API client with its token provider (or `tokens`), both from `[tapkey]`.

    Once `stop` is set the client sends no further request (raises Interrupted).
    """
    tapkey = settings.tapkey
    sleep = sleep if sleep is not None else time.sleep
    retry = retry_policy(settings)
    return TapkeyClient(
        base_url=tapkey.api_base_url,
        tokens=tokens if tokens is not None else make_tokens(settings, sleep=sleep, retry=retry),
        connection=connection_to(settings, tapkey.api_base_url),
        retry=retry,
        pages=PageLimits(page_size=tapkey.page_size),
        workers=tapkey.workers,
        sleep=sleep,
        stop=stop,
    )


def run_once(
    settings: Settings,
    *,
    trigger: str = "manual",
    dry_run: bool = False,
    allow_client_change: bool = False,
    now: Callable[[], datetime] = utcnow,
    stop: threading.Event | None = None,
    on_started: Callable[[int], None] | None = None,
    on_client: Callable[[TapkeyClient], None] | None = None,
    allow_mass_removal: bool = False,
    allow_mass_removal_owners: Collection[str] = (),
    batching: Batching | None = None,
    progress: Callable[[SyncProgress], None] | None = None,
) -> RunResult:
    """Check the schema (upgrading SQLite automatically), then run one sync.

    `on_started(run_id)` is called once the run's row exists; `on_client(client)` gets the API
    client before it is used (the daemon reads its request and retry counts afterwards).
    `allow_mass_removal` / `allow_mass_removal_owners` confirm removals the deletion guard
    would hold back (all of them / those of the given owner ids or unique starts of ids; an id
    that names no present owner, or several, is a UsageError before anything is fetched).
    `batching` and `progress` go to the sync (exporter.sync.sync).
    """
    client_id, _ = settings.tapkey.credentials()
    access = access_options(settings)
    refuse_in_memory(settings)
    engine = make_engine(settings, create=not dry_run)
    # Once `stop` is set, no retry is waited for or sent: the back-off raises Interrupted.
    sleep = None if stop is None else lambda seconds: _wait(stop, seconds)
    try:
        migrate.require_current(
            engine, auto_upgrade_sqlite=not dry_run, lock_timeout=settings.database.lock_timeout
        )
        # Checked before anything is fetched or written: a mistyped id would confirm nothing.
        confirmed = (
            resolve_owner_ids(allow_mass_removal_owners, _present_owner_ids(engine))
            if allow_mass_removal_owners
            else frozenset()
        )
        with make_client(settings, sleep=sleep, stop=stop) as client:
            if on_client is not None:
                on_client(client)
            result = sync(
                engine=engine,
                source=client,
                client_id=client_id,
                trigger=trigger,
                now=now,
                workers=settings.tapkey.workers,
                dry_run=dry_run,
                allow_client_change=allow_client_change or settings.sync.allow_client_id_change,
                lock_timeout=settings.database.lock_timeout,
                stop=stop,
                on_started=on_started,
                guard=RemovalGuard(
                    max_fraction=settings.sync.mass_removal_max_fraction,
                    min_count=settings.sync.mass_removal_min_count,
                    allow_all=allow_mass_removal or settings.sync.allow_mass_removal,
                    allow_owners=confirmed,
                ),
                health=settings.tapkey.expand_health,
                batching=batching,
                progress=progress,
                access=access,
                logs=log_options(settings),
            )
        if not dry_run and not (stop is not None and stop.is_set()):
            _apply_retention(engine, settings, now())
        return result
    except SQLAlchemyError as exc:
        # What the sync does not turn into a one-line error itself (the schema check, retention).
        raise db_errors.store_error(exc, engine) from None
    finally:
        engine.dispose()


def access_options(settings: Settings) -> AccessOptions:
    """The access entities of `[tapkey] entities` with `[privacy]` (ConfigError for a bad key)."""
    _, secret = settings.tapkey.credentials()
    privacy = settings.privacy
    return AccessOptions.of(
        settings.tapkey.entities,
        Privacy.from_settings(privacy.contact_identifier, privacy.key(), secret),
    )


def log_options(settings: Settings) -> log_entries.LogOptions | None:
    """How log entries are read, or None when [tapkey] entities leaves them out."""
    if "log_entries" not in settings.tapkey.entities:
        return None
    keep = settings.sync.log_retention_seconds
    return log_entries.LogOptions(
        overlap=timedelta(seconds=settings.sync.log_overlap_seconds),
        retention=None if keep is None else timedelta(seconds=keep),
    )


def _present_owner_ids(engine: Engine) -> set[str]:
    with db_engine.connect(engine) as conn:
        query = select(owner_accounts.c.id).where(owner_accounts.c.removed_at.is_(None))
        return set(conn.execute(query).scalars())


def _apply_retention(engine: Engine, settings: Settings, now: datetime) -> None:
    """Prune per [sync] health_retention / run_retention, under the writer lock.

    Another run that took the lock in the meantime prunes when it finishes: skip quietly.
    """
    keep = settings.sync
    if (
        keep.health_retention_seconds is None
        and keep.run_retention_seconds is None
        and keep.log_retention_seconds is None
    ):
        return
    try:
        with WriterLock(engine):
            retention.prune(
                engine,
                now=now,
                health_max_age=keep.health_retention_seconds,
                run_max_age=keep.run_retention_seconds,
                log_max_age=keep.log_retention_seconds,
            )
    except LockHeldError:
        return


def _wait(stop: threading.Event, seconds: float) -> None:
    if stop.wait(seconds):
        raise Interrupted


@dataclass(frozen=True)
class CheckResult:
    """One line of `exporter check`: what was checked, whether it passed, and the detail."""

    name: str
    ok: bool
    detail: str
    exit_code: int = 0
    skipped: bool = False  # it needs what an earlier check found broken; not a failure itself


def check(settings: Settings) -> list[CheckResult]:
    """Check the credentials, Tapkey access and the database; writes nothing (`exporter check`).

    Every check runs even if an earlier one failed, so one call shows every problem.
    """
    database = _check_database(settings)
    return [*_check_tapkey(settings), database, _check_paging(settings, database)]


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


def _check_paging(settings: Settings, database: CheckResult) -> CheckResult:
    """What the database knows about the API's paging (exporter.tapkey.paging), read-only."""
    if not database.ok or "(current)" not in database.detail:
        return CheckResult("paging", True, "needs the database at the current schema", skipped=True)
    api_url = display_url(settings.tapkey.api_base_url.rstrip("/"))  # as the client keys it
    engine = make_engine(settings, create=False)
    try:
        with db_engine.connect(engine) as conn:
            sizes = api_paging.load(conn, api_url)
    except SQLAlchemyError as exc:
        return _failed("paging", db_errors.store_error(exc, engine))
    finally:
        engine.dispose()
    return CheckResult("paging", True, f"{api_url}: {api_paging.describe(sizes)}")


def _writes(settings: Settings) -> dict[Table, tuple[str, ...]]:
    """The tables a run writes, and how (retention deletes only where it is configured)."""
    writes: dict[Table, tuple[str, ...]] = {
        table: ("INSERT", "UPDATE")
        for table in (
            sync_runs,
            sync_run_owners,
            owner_accounts,
            owner_account_versions,
            bound_locks,
            bound_lock_versions,
        )
    }
    writes[api_paging_table] = ("INSERT", "DELETE")
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
