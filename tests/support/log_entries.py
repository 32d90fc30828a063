"""Runs that read log entries from a sandbox, and the entries it lists, for the log entry tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exporter.config.settings import Settings
from exporter.results import RunResult
from exporter.sandbox.server import Sandbox
from exporter.service import job
from support.helpers import make_settings

SCOPES = "read:owneraccounts read:core:entities read:logs"
# A clock for the runs: the sandbox's entries are from around 2025-01-01.
NOW = datetime(2025, 1, 2, tzinfo=UTC)


def settings_for(fake: Sandbox, db_url: str, tmp_path: Path, **tapkey: Any) -> Settings:
    """Settings that read log entries from `fake` (with scope read:logs)."""
    options: dict[str, Any] = {"entities": ("locks", "log_entries"), "scopes": SCOPES}
    return make_settings(fake, db_url, tmp_path, **{**options, **tapkey})


def run(settings: Settings, now: datetime = NOW) -> RunResult:
    """One run-once at `now` (later runs get later instants from the run's clock anyway)."""
    return job.run_once(settings, now=lambda: now)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def listed_entries(
    fake: Sandbox, keep: Callable[[dict[str, Any]], bool] = lambda e: True
) -> dict[tuple[str, str], dict[str, Any]]:
    """Every entry the sandbox lists now, by (owner, id)."""
    return {
        (owner["id"], entry["id"]): entry
        for owner in fake.owners_payload()
        for entry in fake.log_entries_payload(owner["id"])
        if keep(entry)
    }
