"""One sync run built from settings: the wiring shared by `run-once`, the daemon and `check`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine

from exporter import store
from exporter.auth import TokenProvider
from exporter.config import Settings
from exporter.sync import RunResult, sync, utcnow
from exporter.tapkey import TapkeyClient

EXIT_CODES = {"succeeded": 0, "failed": 1, "partial": 3}


def make_engine(settings: Settings) -> Engine:
    """The configured database's engine."""
    return store.make_engine(settings.database.url, schema=settings.database.schema_name)


def make_client(
    settings: Settings, *, sleep: Callable[[float], None] | None = None
) -> TapkeyClient:
    """A Tapkey API client with its token provider, both from `[tapkey]`."""
    tapkey = settings.tapkey
    client_id, secret = tapkey.credentials()
    timeout = (tapkey.connect_timeout, tapkey.read_timeout)
    verify: bool | str = str(tapkey.ca_bundle) if tapkey.ca_bundle else True
    tokens = TokenProvider(
        client_id=client_id,
        client_secret=secret,
        token_url=tapkey.token_url,
        scopes=tapkey.scope_list,
        timeout=timeout,
        verify=verify,
    )
    return TapkeyClient(
        base_url=tapkey.api_base_url,
        tokens=tokens,
        page_size=tapkey.page_size,
        workers=tapkey.workers,
        timeout=timeout,
        max_retries=tapkey.max_retries,
        backoff_factor=tapkey.backoff_factor,
        max_retry_after=tapkey.max_retry_after,
        max_retry_time=tapkey.max_retry_time,
        verify=verify,
        **({"sleep": sleep} if sleep is not None else {}),
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
) -> RunResult:
    """Check the schema (upgrading SQLite automatically), then run one sync.

    `on_started(run_id)` is called once the run's row exists; `on_client(client)` gets the API
    client before it is used (the daemon reads its request and retry counts afterwards).
    """
    client_id, _ = settings.tapkey.credentials()
    engine = make_engine(settings)
    # Once `stop` is set, retry back-off stops sleeping so a shutdown is not held up by it.
    sleep = None if stop is None else lambda seconds: _wait(stop, seconds)
    try:
        store.require_current(engine, auto_upgrade_sqlite=not dry_run)
        with make_client(settings, sleep=sleep) as client:
            if on_client is not None:
                on_client(client)
            return sync(
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
            )
    finally:
        engine.dispose()


def _wait(stop: threading.Event, seconds: float) -> None:
    stop.wait(seconds)
