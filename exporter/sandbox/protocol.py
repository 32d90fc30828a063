"""What the sandbox and its HTTP handler share: routes, scripted faults, what hooks see, replies.

Kept apart from `server` (the state) and `handler` (the wire) so that neither imports the other
for these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal

__all__ = [
    "FAULT_KINDS",
    "JSON_TYPE",
    "ActiveFault",
    "Fault",
    "Response",
    "Route",
    "SandboxRequest",
    "error_response",
    "odata_error",
    "status_phrase",
    "unauthorized",
]

Route = Literal["token", "owners", "locks", "contacts", "cards", "grants", "logs"]
FAULT_KINDS = ("status", "delay", "reset", "truncate", "body")
JSON_TYPE = "application/json; charset=utf-8"


@dataclass
class Fault:
    """A scripted misbehaviour for requests on one route (see `Sandbox.add_fault`).

    kind ``status``: reply `status` with `headers` and `body` (default: a small JSON error).
    kind ``delay``: sleep `delay` seconds, then answer normally.
    kind ``reset``: close the socket without answering (SO_LINGER 0: the client sees a reset).
    kind ``truncate``: send the real headers (real Content-Length), half the body, then close.
    kind ``body``: reply 200 with exactly `body` (e.g. invalid JSON) and `headers`.
    """

    route: Route
    kind: Literal["status", "delay", "reset", "truncate", "body"] = "status"
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    delay: float = 0.0
    owner_id: str | None = None  # routes of one owner only: just this owner (None = any owner)
    times: int | None = 1  # how many matching requests it hits; None = until cleared
    after: int = 0  # let this many matching requests pass untouched first


@dataclass(frozen=True)
class SandboxRequest:
    """What hooks see of one API request (secrets and tokens are never included)."""

    route: str
    owner_id: str | None
    top: int | None
    skip: int | None
    params: dict[str, str]
    number: int  # 1-based count of requests on this route


@dataclass
class ActiveFault:
    """A fault added to a sandbox, with how many matching requests it has let pass."""

    fault: Fault
    passed: int = 0  # matching requests seen while `after` was not yet reached


@dataclass
class Response:
    """A reply the handler writes: status, body, extra headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = JSON_TYPE


def error_response(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> Response:
    """An OAuth-style JSON error (`error`, `error_description`)."""
    body = json.dumps({"error": error, "error_description": description}, separators=(",", ":"))
    return Response(status, body.encode(), headers or {})


def odata_error(message: str, target: str) -> Response:
    """A 400 with an OData JSON error body, as OData servers answer a query they reject."""
    error = {"code": "BadRequest", "message": message, "target": target}
    return Response(400, json.dumps({"error": error}, separators=(",", ":")).encode())


def unauthorized(description: str) -> Response:
    """A 401 with the bearer challenge for an invalid token."""
    challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    return error_response(401, "invalid_token", description, challenge)


def status_phrase(status: int) -> str:
    """The reason phrase of `status` (made up for codes HTTP does not define)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Sandbox Fault"
