"""Fixtures of the sandbox's own tests: a small seeded sandbox and a plain HTTP session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from exporter.sandbox.server import Sandbox


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """3 owners x 5 locks with the default access data (overrides tests/conftest.py's fixture)."""
    with Sandbox(seed=7) as fake:
        yield fake


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http
