"""A Tapkey client's view of a sandbox: lists served by hand, checks that a list was read exactly.

The client fixtures (`make_fake`, `fake`, `make_tokens`, `make_client`) are in
tests/tapkey/conftest.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from exporter.sandbox.server import Fault, Sandbox, SandboxRequest
from exporter.tapkey.records import OwnerLocks

SCOPES = ("read:owneraccounts", "read:core:entities")
PAGE = 4

Factory = Callable[..., Any]


def served_text(element: dict[str, Any]) -> str:
    """An element exactly as the sandbox encodes it."""
    return json.dumps(element, sort_keys=True, separators=(",", ":"))


def only_owner(server: Sandbox) -> str:
    return str(server.owners_payload()[0]["id"])


def assert_exact(result: OwnerLocks, server: Sandbox) -> None:
    """The fetched records are the server's current list, in order, with the exact raw text."""
    expected = server.locks_payload(result.owner_id)
    assert [r.id for r in result.records] == [lock["id"] for lock in expected]
    assert [r.raw for r in result.records] == [served_text(lock) for lock in expected]
    assert result.skipped == 0 and not result.skipped_ids and not result.unidentified_skips


def serve_elements(
    server: Sandbox,
    elements: list[str],
    *,
    pretty: bool = False,
    route: str = "locks",
    ignore_skip: bool = False,
) -> None:
    """Serve `elements` (raw JSON texts; mutable mid-crawl) as a list route, honouring paging."""

    def hook(request: SandboxRequest) -> None:
        if request.route != route:
            return
        skip = 0 if ignore_skip else request.skip or 0
        top = request.top or len(elements)
        page = elements[skip : skip + top]
        body = "[\n  " + ",\n  ".join(page) + "\n]\n" if pretty else "[" + ",".join(page) + "]"
        server.add_fault(Fault(route=request.route, kind="body", body=body if page else "[]"))

    server.hooks.append(hook)


def lock_text(lock_id: str | None, **fields: Any) -> str:
    element: dict[str, Any] = {
        "active": True,
        "bindDate": "2018-12-12T12:00:00.000Z",
        "description": "A description for this lock.",
        "lockType": {"id": "TK.Td30", "manufacturerId": 1, "modelName": "Td30"},
        "lockTypeId": "TK.Td30",
        "ownerAccountId": "1",
        "physicalLockId": "BAASNL/7",
        "rclSerialNo": 3,
        "targetType": "Lock",
        "title": "Entrance Door",
        "unbindDate": None,
    }
    if lock_id is not None:
        element["id"] = lock_id
    element.update(fields)
    return json.dumps(element)


def on_request(server: Sandbox, number: int, action: Callable[[], object]) -> None:
    """Run `action` just before the locks route answers its `number`-th request."""

    def hook(request: SandboxRequest) -> None:
        if request.route == "locks" and request.number == number:
            action()

    server.hooks.append(hook)
