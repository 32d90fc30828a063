"""One sync run built from settings: the wiring shared by `run-once`, the daemon and `check`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from datetime import datetime, timedelta

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from exporter.config.settings import Settings
from exporter.db import engine as db_engine
from exporter.db import errors as db_errors
from exporter.db.schema import (
    owner_accounts,
)
from exporter.db.writer_lock import WriterLock
from exporter.errors import LockHeldError, StoreError
from exporter.kinds import RunStatus
from exporter.results import RunResult, SyncProgress
from exporter.service.preflight import (
    check_run_config,
    connection_to,
    make_tokens,
    open_database,
    retry_policy,
    stoppable_sleep,
)
from exporter.sync import log_entries, retention
from exporter.sync.access import AccessOptions
from exporter.sync.batches import Batching
from exporter.sync.engine import sync, utcnow
from exporter.sync.guard import RemovalGuard, resolve_owner_ids
from exporter.sync.options import SyncOptions
from exporter.tapkey.access import Privacy
from exporter.tapkey.auth import TokenProvider
from exporter.tapkey.client import TapkeyClient
from exporter.tapkey.options import PageLimits

log = logging.getLogger(__name__)

EXIT_CODES: dict[str, int] = {RunStatus.SUCCEEDED: 0, RunStatus.FAILED: 1, RunStatus.PARTIAL: 3}


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
    engine: Engine | None = None,
    tokens: TokenProvider | None = None,
) -> RunResult:
    """Check the schema (upgrading SQLite automatically), then run one sync.

    `on_started(run_id)` is called once the run's row exists; `on_client(client)` gets the API
    client before it is used (the daemon reads its request and retry counts afterwards).
    `allow_mass_removal` / `allow_mass_removal_owners` confirm removals the deletion guard
    would hold back (all of them / those of the given owner ids or unique starts of ids; an id
    that names no present owner, or several, is a UsageError before anything is fetched).
    `batching` and `progress` go to the sync (exporter.sync.sync). `engine`: the database as
    `preflight.open_database` opened it for this run (the run disposes of it); `tokens`: a
    provider whose first request may be in flight (`preflight.start_token_request`), made from
    these settings and `stop`.
    """
    check_run_config(settings)
    client_id, _ = settings.tapkey.credentials()
    access = access_options(settings)
    if engine is None:
        engine = open_database(settings, dry_run=dry_run)
    # Once `stop` is set, no retry is waited for or sent: the back-off raises Interrupted.
    sleep = stoppable_sleep(stop)
    try:
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
        with make_client(settings, sleep=sleep, tokens=tokens, stop=stop) as client:
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
        # What the sync does not turn into a one-line error itself (retention, say).
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

    Another run that took the lock in the meantime prunes when it finishes: skip quietly. A
    database error is a warning: the run is recorded as it ended (a succeeded run stays exit 0
    and counts as succeeded), and the next run prunes again.
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
    except (SQLAlchemyError, StoreError) as exc:
        error = exc if isinstance(exc, StoreError) else db_errors.store_error(exc, engine)
        log.warning("retention skipped: %s; the run itself is recorded, the next run prunes", error)
