"""One sync run built from settings: the wiring shared by `run-once`, the daemon and `check`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from datetime import datetime, timedelta

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from exporter.config.proxies import Proxy, proxy_for
from exporter.config.settings import Settings
from exporter.db import engine as db_engine
from exporter.db import errors as db_errors
from exporter.db import migrate
from exporter.db.schema import (
    owner_accounts,
)
from exporter.db.writer_lock import WriterLock
from exporter.errors import ConfigError, Interrupted, LockHeldError
from exporter.kinds import RunStatus
from exporter.results import RunResult, SyncProgress
from exporter.sync import log_entries, retention
from exporter.sync.access import AccessOptions
from exporter.sync.batches import Batching
from exporter.sync.engine import sync, utcnow
from exporter.sync.guard import RemovalGuard, resolve_owner_ids
from exporter.sync.options import SyncOptions
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
        options = SyncOptions(
            workers=settings.tapkey.workers,
            dry_run=dry_run,
            allow_client_change=allow_client_change or settings.sync.allow_client_id_change,
            lock_timeout=settings.database.lock_timeout,
            guard=RemovalGuard(
                max_fraction=settings.sync.mass_removal_max_fraction,
                min_count=settings.sync.mass_removal_min_count,
                allow_all=allow_mass_removal or settings.sync.allow_mass_removal,
                allow_owners=confirmed,
            ),
            health=settings.tapkey.expand_health,
            batching=batching or Batching(),
            access=access,
            logs=log_options(settings),
        )
        with make_client(settings, sleep=sleep, stop=stop) as client:
            if on_client is not None:
                on_client(client)
            result = sync(
                engine=engine,
                source=client,
                client_id=client_id,
                options=options,
                trigger=trigger,
                now=now,
                stop=stop,
                on_started=on_started,
                progress=progress,
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
