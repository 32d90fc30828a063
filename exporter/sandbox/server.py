"""A faithful fake of Tapkey's token endpoint and Management API, served over real HTTP.

`Sandbox` serves on a loopback port, in daemon threads:

- ``POST /connect/token``: client credentials (HTTP Basic or form body), scopes, expiring tokens.
- ``GET /api/v1/Owners``: the visible owner accounts, paged with OData ``$top``/``$skip``.
- ``GET /api/v1/Owners/{ownerAccountId}/BoundLocks``: an owner's bound locks, shaped like Tapkey's
  documented example, paged the same way; ``expand=healthStatuses`` fills the health readings.
- ``GET /api/v1/Owners/{ownerAccountId}/Contacts``, ``.../BoundCards`` (scope
  ``read:core:entities``), ``.../Grants`` (``read:grants``) and ``.../LogEntries``
  (``read:logs``): an owner's access data, paged the same way, with a small ``$filter`` subset
  (see `exporter.sandbox.access` for the lists and their order, `exporter.sandbox.odata` for
  the filter grammar).

The data comes from a seed (see `exporter.sandbox.data`) and changes in "generations"
(`Sandbox.advance`). Tests can also mutate it directly, inject `Fault`s (error statuses, delays,
connection resets, truncated or invalid bodies), run hooks before a response is built, cap
``$top`` silently or refuse a larger one with OData's 400 (``refuse_top``), make the server ignore
``$skip``, deny one route of one owner, and delay every answer (``latency``, a remote server's
round trip). The sandbox imports
nothing from the exporter: it is a stand-in for Tapkey, not part of the exporter.

This module holds the state and builds the replies; `handler` puts them on the wire and
`protocol` holds what both use (routes, `Fault`, `Request`, replies).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import json
import logging
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote_plus

from exporter.sandbox.access import ACCESS_CHANGE_KINDS, ACCESS_ROUTES, AccessData, AccessRoute
from exporter.sandbox.data import CHANGE_KINDS, LOCK_TYPES, SandboxChange, SandboxInventory
from exporter.sandbox.entities import epoch_ms
from exporter.sandbox.handler import Handler, Server, Server6
from exporter.sandbox.odata import FilterError
from exporter.sandbox.protocol import (
    FAULT_KINDS,
    ActiveFault,
    Fault,
    Request,
    Response,
    Route,
    error_response,
    odata_error,
    unauthorized,
)

__all__ = [
    "ACCESS_CHANGE_KINDS",
    "ACCESS_ROUTES",
    "CHANGE_KINDS",
    "LOCK_TYPES",
    "Fault",
    "Request",
    "Sandbox",
    "SandboxChange",
    "serve_forever",
]

logger = logging.getLogger(__name__)

SCOPE_OWNERS = "read:owneraccounts"
SCOPE_LOCKS = "read:core:entities"
SCOPE_GRANTS = "read:grants"
SCOPE_LOGS = "read:logs"
_ROUTES = ("token", "owners", "locks", *ACCESS_ROUTES)
_SCOPES: dict[str, str] = {
    "owners": SCOPE_OWNERS,
    "locks": SCOPE_LOCKS,
    "contacts": SCOPE_LOCKS,
    "cards": SCOPE_LOCKS,
    "grants": SCOPE_GRANTS,
    "logs": SCOPE_LOGS,
}
_EXPANDABLE = {"healthstatuses", "supportedfeatures", "membershipstatistics"}
# The query options the access routes take; $select is ignored (clients ignore extra fields).
_ACCESS_OPTIONS = frozenset({"$top", "$skip", "$filter", "$select"})


@dataclass(frozen=True)
class _Token:
    expires_at: float
    scopes: frozenset[str]


def _non_negative(params: Mapping[str, str], name: str) -> int | None:
    """An OData integer option; ValueError unless it is a non-negative decimal integer."""
    value = params.get(name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


class Sandbox:
    """A fake Tapkey (token endpoint, owners, bound locks, access data) on a loopback port.

    Each owner gets `contacts_per_owner` contacts, `cards_per_owner` bound cards,
    `grants_per_owner` grants and `log_entries_per_owner` log entries (0: none). The client is
    allowed `granted_scopes`; a token request naming no scope gets all of them.
    `received_at_filter=False` answers 400 to a LogEntries ``$filter`` on receivedAt, like a
    server that cannot filter on it (also settable later as an attribute).
    `refuse_top` answers a list request whose ``$top`` exceeds it with OData's MaxTop 400 (the
    limit stated in the message unless `refuse_top_states_limit` is False), on the routes in
    `refuse_top_routes` only if that is set (e.g. ``{"logs"}``). `latency` (seconds)
    delays every answer, as a server across the internet does; requests still run concurrently.

    All state sits behind one lock; requests are served concurrently, one daemon thread per
    connection, with HTTP/1.1 keep-alive. Use it as a context manager or call start()/stop().
    With `tls` (a server-side `ssl.SSLContext`) it serves https instead of http.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        owners: int = 3,
        locks_per_owner: int = 5,
        contacts_per_owner: int = 4,
        cards_per_owner: int = 2,
        grants_per_owner: int = 6,
        log_entries_per_owner: int = 12,
        received_at_filter: bool = True,
        client_id: str = "sandbox-client",
        client_secret: str = "sandbox-secret",
        token_lifetime: float = 3600.0,
        max_top: int | None = None,
        refuse_top: int | None = None,
        latency: float = 0.0,
        granted_scopes: str = f"{SCOPE_OWNERS} {SCOPE_LOCKS} {SCOPE_GRANTS} {SCOPE_LOGS}",
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if token_lifetime <= 0:
            raise ValueError("token_lifetime must be positive")
        if max_top is not None and max_top < 1:
            raise ValueError("max_top must be at least 1")
        if refuse_top is not None and refuse_top < 1:
            raise ValueError("refuse_top must be at least 1")
        if latency < 0:
            raise ValueError("latency must not be negative")
        self._lock = threading.RLock()
        self._data = SandboxInventory(seed=seed, owners=owners, locks_per_owner=locks_per_owner)
        self._access = AccessData(
            self._data,
            contacts_per_owner=contacts_per_owner,
            cards_per_owner=cards_per_owner,
            grants_per_owner=grants_per_owner,
            log_entries_per_owner=log_entries_per_owner,
        )
        self._denied: set[tuple[str, str]] = set()  # (owner id, route) answered 403
        self.received_at_filter = received_at_filter  # False: 400 to $filter on receivedAt
        self._client_id = client_id
        self._client_secret = client_secret
        self._token_lifetime = token_lifetime
        self._granted = tuple(dict.fromkeys(granted_scopes.split()))
        self._host = host
        self._port = port
        self._clock = clock
        self._tls = tls  # a server context: serve https instead of http
        self._tokens: dict[str, _Token] = {}
        self._issued: list[str] = []  # every token ever issued, for leak checks in tests
        self._faults: list[ActiveFault] = []
        self._request_count = 0
        self._requests: collections.Counter[str] = collections.Counter()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.max_top = max_top  # server-side page cap, applied silently
        self.refuse_top = refuse_top  # a larger $top gets OData's 400
        self.refuse_top_states_limit = True  # the 400 names the limit, as ASP.NET OData does
        self.refuse_top_routes: frozenset[str] | None = None  # refuse_top's routes (None: all)
        self.latency = latency  # seconds before every answer
        self.ignore_skip = False  # when True, both list routes ignore $skip
        self.hooks: list[Callable[[Request], None]] = []

    def __repr__(self) -> str:  # no secrets
        state = self.base_url if self._server is not None else "stopped"
        return f"<Sandbox {state} seed={self._data.seed} generation={self.generation}>"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Bind the port, warm the JSON caches and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("the sandbox is already running")
        with self._lock:  # encode every lock now so the first crawl costs what later ones do
            for lock in self._data.locks.values():
                self._data.lock_json(lock)
        server_class = Server6 if ":" in self._host else Server
        self._server = server_class((self._host, self._port), Handler)
        self._server.sandbox = self
        if self._tls is not None:
            # The handshake runs in the connection's thread (Handler.setup), not in accept().
            self._server.socket = self._tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"tapkey-sandbox:{self._server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        logger.info("Tapkey sandbox serving on %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections (idempotent)."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:  # wakes threads waiting on idle keep-alive connections
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._server = self._thread = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://host:port`` (``https://`` with `tls`) of the running server."""
        if self._server is None:
            raise RuntimeError("the sandbox is not running: call start() first")
        host, port = self._server.server_address[:2]
        text = host if isinstance(host, str) else host.decode()
        scheme = "http" if self._tls is None else "https"
        return f"{scheme}://[{text}]:{port}" if ":" in text else f"{scheme}://{text}:{port}"

    @property
    def token_url(self) -> str:
        """The token endpoint's URL."""
        return f"{self.base_url}/connect/token"

    # -- data ------------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """How many times advance() has run."""
        return self._data.generation

    def advance(self, changes: int = 5, *, access: int = 0) -> list[SandboxChange]:
        """Start the next generation: `changes` random lock and owner changes, then `access`
        changes of access data (kinds in ACCESS_CHANGE_KINDS), all seed-deterministic.

        The two kinds draw from separate random streams: `access` changes nothing about which
        lock and owner changes a seed gives.
        """
        with self._lock:
            applied = self._data.advance(changes)
            return applied + self._access.advance(access)

    def owners_payload(self) -> list[dict[str, Any]]:
        """The owner list the API returns now (a fresh copy)."""
        with self._lock:
            data = self._data.owners_json()
        return cast(list[dict[str, Any]], json.loads(data))

    def locks_payload(self, owner_id: str) -> list[dict[str, Any]]:
        """An owner's bound locks as the API returns them (also for a hidden owner; a copy)."""
        with self._lock:
            data = self._data.locks_json(self._data.owner(owner_id).id)
        return cast(list[dict[str, Any]], json.loads(data))

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """``{owner_id: locks_payload(owner_id)}`` for every visible owner, in /Owners order."""
        with self._lock:
            pages = {o.id: self._data.locks_json(o.id) for o in self._data.visible_owners()}
        return {owner_id: json.loads(page) for owner_id, page in pages.items()}

    def unbind(self, lock_id: str) -> None:
        """Unbind a lock: it leaves its owner's list and later locks move up."""
        with self._lock:
            self._data.unbind(lock_id)

    def bind_new(self, owner_id: str) -> str:
        """Bind a new lock at the end of the owner's list; returns its bound lock id."""
        with self._lock:
            return self._data.bind_new(owner_id).id

    def rename(self, lock_id: str, title: str) -> None:
        """Change a lock's title."""
        with self._lock:
            self._data.rename(lock_id, title)

    def move(self, lock_id: str, owner_id: str) -> None:
        """Move a bound lock (same id) to the end of another owner's list."""
        with self._lock:
            self._data.move(lock_id, owner_id)

    def list_also(self, lock_id: str, owner_id: str) -> None:
        """Also list a bound lock under `owner_id`, a move caught half-way; `move` completes it."""
        with self._lock:
            self._data.list_also(lock_id, owner_id)

    def update_lock(self, lock_id: str, **fields: Any) -> None:
        """Set lock fields by API name, e.g. ``update_lock(id, description="x", rclSerialNo=4)``."""
        with self._lock:
            self._data.update_lock(lock_id, fields)

    def rebind(self, lock: str | Mapping[str, Any], owner_id: str) -> str:
        """Bind a lock to `owner_id`; returns the bound lock id now listed there.

        With a bound lock id: Tapkey's rebind, the old binding ends and a NEW bound lock id with
        the same physicalLockId is appended to the owner's list. With a lock payload (a dict from
        locks_payload, say of a lock unbound since): that very lock, same id, is bound again.
        """
        with self._lock:
            if isinstance(lock, str):
                return self._data.rebind(lock, owner_id).id
            return self._data.bind_payload(lock, owner_id).id

    def update_owner(
        self, owner_id: str, *, name: str | None = None, active: bool | None = None
    ) -> None:
        """Rename an owner and/or set its active flag."""
        with self._lock:
            self._data.update_owner(owner_id, name=name, active=active)

    def hide_owner(self, owner_id: str) -> None:
        """Hide an owner: gone from /Owners, 403 on its locks (co-admin rights lost)."""
        with self._lock:
            self._data.set_owner_visible(owner_id, False)

    def show_owner(self, owner_id: str) -> None:
        """Make a hidden owner visible again, with its current locks."""
        with self._lock:
            self._data.set_owner_visible(owner_id, True)

    def deny(self, owner_id: str, route: Route) -> None:
        """Answer 403 ``forbidden`` on one route of one owner (a limited admin role, say)."""
        if route not in _SCOPES or route == "owners":
            raise ValueError(f"route must be one of locks, {', '.join(ACCESS_ROUTES)}")
        with self._lock:
            self._data.owner(owner_id)
            self._denied.add((owner_id, route))

    def allow(self, owner_id: str, route: Route) -> None:
        """Undo `deny`."""
        with self._lock:
            self._denied.discard((owner_id, route))

    # -- access data (see exporter.sandbox.access) -------------------------------------------------

    def contacts_payload(self, owner_id: str) -> list[dict[str, Any]]:
        """An owner's contacts as the API lists them (also for a hidden owner; a copy)."""
        return self._access_payload("contacts", owner_id)

    def cards_payload(self, owner_id: str) -> list[dict[str, Any]]:
        """An owner's bound cards as the API lists them (a copy)."""
        return self._access_payload("cards", owner_id)

    def grants_payload(self, owner_id: str) -> list[dict[str, Any]]:
        """An owner's grants, revoked ones included, as the API lists them (a copy)."""
        return self._access_payload("grants", owner_id)

    def log_entries_payload(self, owner_id: str) -> list[dict[str, Any]]:
        """An owner's log entries as the API lists them: by receivedAt, then id (a copy)."""
        return self._access_payload("logs", owner_id)

    def _access_payload(self, route: AccessRoute, owner_id: str) -> list[dict[str, Any]]:
        with self._lock:
            data = self._access.page_json(route, self._data.owner(owner_id).id)
        return cast(list[dict[str, Any]], json.loads(data))

    def add_contact(
        self,
        owner_id: str,
        *,
        title: str | None = None,
        identifier: str | None = None,
        ip_id: str = "tapkey",
        legacy_email: bool = False,
    ) -> str:
        """Append a contact (seeded name and email unless given); returns its id.

        `legacy_email` sends it as an older payload: ``email`` instead of ``identifier``.
        """
        with self._lock:
            return self._access.add_contact(
                owner_id, title=title, identifier=identifier, ip_id=ip_id, legacy_email=legacy_email
            ).id

    def update_contact(
        self, contact_id: str, *, title: str | None = None, identifier: str | None = None
    ) -> None:
        """Rename a contact and/or change its identifier (``email`` in an older payload)."""
        with self._lock:
            self._access.update_contact(contact_id, title=title, identifier=identifier)

    def remove_contact(self, contact_id: str) -> None:
        """Remove a contact; later ones move up (grants and log entries naming it stay)."""
        with self._lock:
            self._access.remove_contact(contact_id)

    def bind_card(self, owner_id: str, *, title: str | None = None) -> str:
        """Bind a new card at the end of the owner's BoundCards; returns its id."""
        with self._lock:
            return self._access.bind_card(owner_id, title=title).id

    def unbind_card(self, card_id: str) -> None:
        """Unbind a card: it leaves BoundCards, as on Tapkey (grants naming it stay)."""
        with self._lock:
            self._access.unbind_card(card_id)

    def add_grant(
        self,
        owner_id: str,
        *,
        lock_id: str | None = None,
        contact_id: str | None = None,
        card_id: str | None = None,
        valid_from: str | None = None,
        valid_before: str | None = None,
        time_restriction_ical: str | None = None,
    ) -> str:
        """Append an Ok grant; returns its id.

        Without `lock_id` one of the owner's locks is drawn (seeded), without `contact_id` and
        `card_id` one of its contacts or cards; the validity fields are as given (ISO texts).
        """
        with self._lock:
            return self._access.add_grant(
                owner_id,
                lock_id=lock_id,
                contact_id=contact_id,
                card_id=card_id,
                valid_from=valid_from,
                valid_before=valid_before,
                time_restriction_ical=time_restriction_ical,
            ).id

    def revoke_grant(self, grant_id: str) -> None:
        """Revoke a grant: state Revoked, active false; it stays listed."""
        with self._lock:
            self._access.revoke_grant(grant_id)

    def remove_grant(self, grant_id: str) -> None:
        """Remove a grant from the list; later ones move up."""
        with self._lock:
            self._access.remove_grant(grant_id)

    def append_log_entries(
        self, owner_id: str, count: int = 1, *, late: bool = False, received_at: str | None = None
    ) -> list[str]:
        """Receive `count` log entries of the owner's locks now; returns their ids.

        Tapkey's receive clock moves forward, so they are listed last. `late`: one lock's
        backlog, lockTimestamp hours or days before receivedAt. `received_at` (ISO-8601, e.g.
        ``2025-01-01T05:00:00.000Z``) receives them all at that instant instead: ties with
        entries already listed, or entries slotted in before them.
        """
        at = None if received_at is None else epoch_ms(received_at)
        with self._lock:
            entries = self._access.append_log_entries(owner_id, count, late=late, received_at=at)
        return [entry.id for entry in entries]

    # -- faults, tokens, counters ----------------------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        """Queue a fault; the sandbox keeps its own copy and counts `times`/`after` on it."""
        if fault.route not in _ROUTES or fault.kind not in FAULT_KINDS:
            raise ValueError(f"bad fault route/kind: {fault.route!r}/{fault.kind!r}")
        if fault.delay < 0 or fault.after < 0 or not 100 <= fault.status <= 999:
            raise ValueError("fault delay and after must be >= 0 and status a 3-digit code")
        if fault.owner_id is not None and fault.route in ("token", "owners"):
            raise ValueError("owner_id only narrows faults on the routes of one owner")
        if fault.times is not None and fault.times < 1:
            return  # a fault that never hits
        copy = dataclasses.replace(fault, headers=dict(fault.headers))
        with self._lock:
            self._faults.append(ActiveFault(copy))

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    @property
    def issued_tokens(self) -> tuple[str, ...]:
        """Every access token issued so far, revoked and expired ones included (for leak tests)."""
        with self._lock:
            return tuple(self._issued)

    def revoke_tokens(self) -> None:
        """Invalidate every issued token (the next API request with one gets 401)."""
        with self._lock:
            self._tokens.clear()

    @property
    def request_count(self) -> int:
        """Total HTTP requests served (all routes, errors included)."""
        with self._lock:
            return self._request_count

    @property
    def requests(self) -> collections.Counter[str]:
        """Requests by route ("token", "owners", "locks", "contacts", "cards", ...): a copy."""
        with self._lock:
            return collections.Counter(self._requests)

    def reset_counters(self) -> None:
        """Set request_count, requests and Request.number back to zero."""
        with self._lock:
            self._request_count = 0
            self._requests.clear()

    # -- request handling (called from the handler threads) ----------------------------------------

    def _count(self) -> None:
        with self._lock:
            self._request_count += 1

    def _begin(self, route: Route, owner_id: str | None, params: dict[str, str]) -> Request:
        """Count a routed request and describe it for hooks (bad $top/$skip show as None)."""
        with self._lock:
            self._requests[route] += 1
            number = self._requests[route]
        top = skip = None
        with contextlib.suppress(ValueError):
            top = _non_negative(params, "$top")
        with contextlib.suppress(ValueError):
            skip = _non_negative(params, "$skip")
        return Request(route, owner_id, top, skip, params, number)

    def _take_fault(self, request: Request) -> Fault | None:
        """The fault to apply: the first matching one past its `after`; each match counts."""
        chosen: ActiveFault | None = None
        with self._lock:
            for active in self._faults:
                fault = active.fault
                if fault.route != request.route:
                    continue
                if fault.owner_id is not None and fault.owner_id != request.owner_id:
                    continue
                if active.passed < fault.after:
                    active.passed += 1
                elif chosen is None:
                    chosen = active
            if chosen is None:
                return None
            if chosen.fault.times is not None:
                chosen.fault.times -= 1
                if chosen.fault.times <= 0:
                    self._faults.remove(chosen)
            return chosen.fault

    def _token_response(self, form: dict[str, str], authorization: str | None) -> Response:
        """RFC 6749 client-credentials grant with client_secret_basic or client_secret_post."""
        client_id, secret = form.get("client_id"), form.get("client_secret")
        challenge: dict[str, str] = {}
        if authorization and authorization[:6].lower() == "basic ":
            challenge = {"WWW-Authenticate": 'Basic realm="tapkey-sandbox"'}
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
                basic_id, _, basic_secret = decoded.partition(":")
            except ValueError:
                return error_response(
                    401, "invalid_client", "malformed Basic credentials", challenge
                )
            if client_id is not None and unquote_plus(basic_id) != client_id:
                return error_response(401, "invalid_client", "two different client ids", challenge)
            # RFC 6749 form-encodes both before Base64; many clients do not: accept both.
            if (basic_id, basic_secret) != (self._client_id, self._client_secret):
                basic_id, basic_secret = unquote_plus(basic_id), unquote_plus(basic_secret)
            client_id, secret = basic_id, basic_secret
        if client_id != self._client_id or secret != self._client_secret:
            return error_response(
                401, "invalid_client", "unknown client or wrong secret", challenge
            )
        if form.get("grant_type") != "client_credentials":
            return error_response(
                400, "unsupported_grant_type", "only client_credentials is supported"
            )
        requested = tuple(dict.fromkeys(form.get("scope", "").split())) or self._granted
        refused = [scope for scope in requested if scope not in self._granted]
        if refused:
            return error_response(400, "invalid_scope", f"scope not allowed: {' '.join(refused)}")
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = self._clock()
            self._tokens = {t: v for t, v in self._tokens.items() if v.expires_at > now}
            self._tokens[token] = _Token(now + self._token_lifetime, frozenset(requested))
            self._issued.append(token)
        payload = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(self._token_lifetime),
            "scope": " ".join(requested),
        }
        no_store = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        return Response(200, json.dumps(payload, separators=(",", ":")).encode(), no_store)

    def _check_bearer(self, authorization: str | None, scope: str) -> Response | None:
        """None if the bearer token is valid and has `scope`, else the 401/403 to send."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return unauthorized("a bearer token is required")
        with self._lock:
            token = self._tokens.get(authorization[7:].strip())
            now = self._clock()
        if token is None:
            return unauthorized("unknown or revoked token")
        if now >= token.expires_at:
            return unauthorized("the token has expired")
        if scope not in token.scopes:
            challenge = {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'}
            return error_response(403, "insufficient_scope", f"the token lacks {scope}", challenge)
        return None

    def _list_response(self, request: Request, authorization: str | None) -> Response:
        """A list route after authentication, with OData paging."""
        locks = request.route == "locks"
        denied = self._check_bearer(authorization, _SCOPES[request.route])
        if denied is not None:
            return denied
        params = request.params
        try:
            top = _non_negative(params, "$top")
            skip = _non_negative(params, "$skip") or 0
        except ValueError as exc:
            return error_response(400, "invalid_request", str(exc))
        expand = {
            name.strip().lower()
            for name in (params.get("expand") or params.get("$expand") or "").split(",")
            if name.strip()
        }
        if (expand and not locks) or not expand <= _EXPANDABLE:
            return error_response(400, "invalid_request", "unsupported expand")
        refuse = self.refuse_top
        routes = self.refuse_top_routes
        if (
            refuse is not None
            and top is not None
            and top > refuse
            and (routes is None or request.route in routes)
        ):
            limit = f"The limit of '{refuse}' for Top query has been exceeded. "
            message = (
                "The query specified in the URI is not valid. "
                f"{limit if self.refuse_top_states_limit else ''}"
                f"The value from the incoming request is '{top}'."
            )
            return odata_error(message, "$top")
        with self._lock:
            if self.ignore_skip:
                skip = 0
            if self.max_top is not None:
                top = self.max_top if top is None else min(top, self.max_top)
            if request.route == "owners":
                return Response(200, self._data.owners_json(skip, top))
            owner = self._data.owners.get(request.owner_id or "")
            if owner is None or not owner.visible:
                return error_response(
                    403, "forbidden", "not a co-administrator of this owner account"
                )
            if (owner.id, request.route) in self._denied:
                return error_response(
                    403, "forbidden", "the service account's role may not read this"
                )
            if not locks:
                route = cast(AccessRoute, request.route)
                return self._access_response(route, owner.id, skip, top, params)
            health = "healthstatuses" in expand
            return Response(200, self._data.locks_json(owner.id, skip, top, health=health))

    def _access_response(
        self,
        route: AccessRoute,
        owner_id: str,
        skip: int,
        top: int | None,
        params: Mapping[str, str],
    ) -> Response:
        """An access route's page, after its own query options (call with the lock held)."""
        unsupported = sorted(k for k in params if k.startswith("$") and k not in _ACCESS_OPTIONS)
        if unsupported:
            message = f"The query option {unsupported[0][:20]} is not supported by the sandbox."
            return odata_error(message, unsupported[0][:20])
        parsed = None
        if "$filter" in params:
            try:
                parsed = self._access.parse_filter(
                    route, params["$filter"], received_at=self.received_at_filter
                )
            except FilterError as exc:
                message = f"The query specified in the URI is not valid. {exc}"
                return odata_error(message, "$filter")
        return Response(200, self._access.page_json(route, owner_id, skip, top, parsed))


def serve_forever(sandbox: Sandbox) -> None:
    """Run `sandbox` (starting it if needed) until KeyboardInterrupt, then stop it."""
    if sandbox._server is None:
        sandbox.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
