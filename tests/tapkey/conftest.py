"""Fixtures of the Tapkey client tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def sleeps() -> list[float]:
    """The back-off sleeps a client or token provider asked for (none are really slept)."""
    return []
