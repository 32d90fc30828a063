"""What a run does before it syncs: the configuration checks, opening the database at the
current schema, and the Tapkey token provider.

Kept apart from `exporter.service.job` so that it imports neither the tables nor the sync:
`run-once` checks its configuration and the database's schema revision, sends its token request,
and loads the rest (the tables, the sync, the API client) while the request is in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from exporter.config.proxies import Proxy, proxy_for
from exporter.config.settings import Settings
from exporter.db import engine as db_engine
from exporter.db import errors as db_errors
from exporter.db import migrate
from exporter.errors import ConfigError, Interrupted
from exporter.tapkey.auth import TokenProvider
from exporter.tapkey.options import Connection, Timeouts
from exporter.tapkey.retry import RetryPolicy


def check_run_config(settings: Settings) -> None:
    """The configuration errors a run reports before it opens the database or sends anything:
    credentials (and the secret file), the `[privacy]` key, an in-memory database."""
    settings.tapkey.credentials()
    settings.privacy.key()
    refuse_in_memory(settings)


def refuse_in_memory(settings: Settings) -> None:
    """ConfigError if [database] url is an in-memory SQLite database (gone when the run ends)."""
    if db_engine.in_memory(settings.database.url):
        raise ConfigError(
            f"[database] url {settings.database.url} is an in-memory database, "
            "which is gone when the run ends: name a file, e.g. sqlite:///exporter.db"
        )


def make_engine(settings: Settings, *, create: bool = True) -> Engine:
    """The configured database's engine (see db.engine.make_engine for `create`)."""
    return db_engine.make_engine(
        settings.database.url, schema=settings.database.schema_name, create=create
    )


def open_database(settings: Settings, *, dry_run: bool = False) -> Engine:
    """An engine on the configured database, whose schema is current: a SQLite file is created
    or upgraded unless `dry_run`, another database behind the code is a SchemaVersionError."""
    engine = make_engine(settings, create=not dry_run)
    try:
        migrate.require_current(
            engine, auto_upgrade_sqlite=not dry_run, lock_timeout=settings.database.lock_timeout
        )
    except SQLAlchemyError as exc:
        engine.dispose()
        raise db_errors.store_error(exc, engine) from None
    except BaseException:
        engine.dispose()
        raise
    return engine


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


def stoppable_sleep(stop: threading.Event | None) -> Callable[[float], None] | None:
    """A retry wait that raises Interrupted once `stop` is set (None: plain `time.sleep`)."""
    if stop is None:
        return None

    def wait(seconds: float) -> None:
        if stop.wait(seconds):
            raise Interrupted

    return wait


def start_token_request(settings: Settings, *, stop: threading.Event | None) -> TokenProvider:
    """The token provider with its first request on its way (`TokenProvider.fetch_in_background`).

    Pass it to `job.run_once(tokens=...)`, which loads and prepares the sync meanwhile. Call it
    once the configuration and the database's schema are known to be good: a run that then
    stops at the database (writer lock held: exit 4, another client's database: exit 2, the
    database gone: exit 5) has sent one token request it does not use, and nothing else
    (docs/operations.md, "Start-up").
    """
    tokens = make_tokens(settings, sleep=stoppable_sleep(stop))
    tokens.fetch_in_background()
    return tokens
