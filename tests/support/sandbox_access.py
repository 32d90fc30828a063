"""The sandbox's access routes, their payloads and paths, and its access state, for its tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

from exporter.sandbox.server import Sandbox
from support.helpers import sandbox_owner_ids

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
