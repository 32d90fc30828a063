"""The sandbox's access routes, their payloads and paths, and its access state, for its tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from exporter.config.sections import PrivacySettings
from exporter.results import RunResult
from exporter.sandbox.server import Sandbox
from exporter.service import job
from support.helpers import make_settings, sandbox_owner_ids

#: The access entities a run syncs unless a test names others.
ACCESS_ENTITIES = ["contacts", "cards", "grants"]

ROUTES = {  # sandbox route -> (path, payload accessor, scope)
    "contacts": ("Contacts", "contacts_payload", "read:core:entities"),
    "cards": ("BoundCards", "cards_payload", "read:core:entities"),
    "grants": ("Grants", "grants_payload", "read:grants"),
    "logs": ("LogEntries", "log_entries_payload", "read:logs"),
}


def payload(fake: Sandbox, route: str, owner: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = getattr(fake, ROUTES[route][1])(owner)
    return result


def path(route: str, owner: str) -> str:
    return f"/Owners/{owner}/{ROUTES[route][0]}"


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def access_state(
    fake: Sandbox, owners: list[str] | None = None
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every list of `owners` (default: the visible ones) by route and owner."""
    owners = sandbox_owner_ids(fake) if owners is None else owners
    return {route: {owner: payload(fake, route, owner) for owner in owners} for route in ROUTES}


def run_access(
    fake: Sandbox,
    db_url: str,
    tmp_path: Path,
    *,
    privacy: PrivacySettings | None = None,
    **tapkey: Any,
) -> RunResult:
    """One `run_once` against `fake` with access data ([tapkey] `entities`: ACCESS_ENTITIES
    unless given), `privacy` and other [tapkey] settings; `allow_*` go to run_once."""
    kwargs = {k: tapkey.pop(k) for k in list(tapkey) if k.startswith("allow_")}
    tapkey.setdefault("entities", ACCESS_ENTITIES)
    settings = make_settings(fake, db_url, tmp_path, **tapkey)
    if privacy is not None:
        settings = settings.model_copy(update={"privacy": privacy})
    return job.run_once(settings, **kwargs)
