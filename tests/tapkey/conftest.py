"""Fixtures of the Tapkey client tests: sandboxes, token providers and clients made to order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support.tapkey_client import PAGE, SCOPES, Factory

from exporter.sandbox.server import Sandbox
from exporter.tapkey.auth import TokenProvider
from exporter.tapkey.client import TapkeyClient
from exporter.tapkey.options import MAX_BODY_BYTES, Connection, PageLimits, Timeouts
from exporter.tapkey.retry import RetryPolicy


@pytest.fixture
def sleeps() -> list[float]:
    """The back-off sleeps a client or token provider asked for (none are really slept)."""
    return []


@pytest.fixture
def servers() -> Iterator[list[Sandbox]]:
    started: list[Sandbox] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def make_fake(servers: list[Sandbox]) -> Factory:
    def make(**options: Any) -> Sandbox:
        options.setdefault("owners", 1)
        options.setdefault("locks_per_owner", 3 * PAGE + 1)
        server = Sandbox(seed=7, **options).start()
        servers.append(server)
        return server

    return make


@pytest.fixture
def fake(make_fake: Factory) -> Sandbox:
    return make_fake()


@pytest.fixture
def make_tokens(sleeps: list[float]) -> Factory:
    def make(server: Sandbox, scopes: tuple[str, ...] = SCOPES) -> TokenProvider:
        return TokenProvider(
            client_id="sandbox-client",
            client_secret="sandbox-secret",
            token_url=server.token_url,
            scopes=scopes,
            connection=Connection(Timeouts(2.0, 5.0)),
            retry=RetryPolicy(backoff_factor=0.001),
            sleep=sleeps.append,
        )

    return make


@pytest.fixture
def make_client(sleeps: list[float], make_tokens: Factory) -> Iterator[Factory]:
    clients: list[TapkeyClient] = []

    def make(
        server: Sandbox,
        *,
        scopes: tuple[str, ...] = SCOPES,
        tokens: TokenProvider | None = None,
        base_url: str | None = None,
        page_size: int = PAGE,
        max_restarts: int = 3,
        max_body_bytes: int = MAX_BODY_BYTES,
        timeout: tuple[float, float] = (2.0, 5.0),
        **options: Any,
    ) -> TapkeyClient:
        """A client for `server`; `options` are TapkeyClient's (e.g. `retry`, `workers`)."""
        settings: dict[str, Any] = {
            "connection": Connection(Timeouts(*timeout)),
            "pages": PageLimits(page_size, max_restarts, max_body_bytes),
            "retry": RetryPolicy(backoff_factor=0.001),
            "sleep": sleeps.append,
        }
        settings.update(options)
        client = TapkeyClient(
            base_url=base_url or server.base_url,
            tokens=tokens or make_tokens(server, scopes),
            **settings,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
