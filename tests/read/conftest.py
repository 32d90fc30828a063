"""Fixtures of the read-side tests: databases filled by a scripted series of runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from support.helpers import BACKENDS
from support.inventory_data import Cache, InventoryDb

from exporter.db.engine import make_engine


@pytest.fixture(scope="session")
def inventory_cache(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Iterator[Cache]:
    """The filled databases of this test process, built on first use."""
    cache = Cache(tmp_path_factory, worker_id)
    yield cache
    cache.close()


@pytest.fixture(params=BACKENDS)
def inventory_db(request: pytest.FixtureRequest, inventory_cache: Cache) -> InventoryDb:
    """Eight runs of history on each backend (built once per test process)."""
    return inventory_cache.get(str(request.param))


@pytest.fixture
def db(inventory_db: InventoryDb) -> Iterator[Engine]:
    """An engine on the filled database."""
    engine = make_engine(inventory_db.url)
    yield engine
    engine.dispose()
