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

This module serves (lifecycle, faults, counters, the list routes' replies); `controls` holds the
data and the calls that change it, `tokens` the token endpoint, `handler` puts replies on the
wire and `protocol` holds what they share (routes, `Fault`, `SandboxRequest`, replies).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import cast

from exporter.sandbox.access_changes import ACCESS_CHANGE_KINDS
from exporter.sandbox.access_routes import ACCESS_ROUTES, AccessRoute
from exporter.sandbox.controls import SandboxControls
from exporter.sandbox.data import CHANGE_KINDS, SandboxChange
from exporter.sandbox.handler import Handler, Server, Server6
from exporter.sandbox.locks import LOCK_TYPES
from exporter.sandbox.odata import FilterError
from exporter.sandbox.protocol import (
    FAULT_KINDS,
    ActiveFault,
    Fault,
    Response,
    Route,
    SandboxRequest,
    error_response,
    odata_error,
)
from exporter.sandbox.tokens import TokenIssuer

__all__ = [
    "ACCESS_CHANGE_KINDS",
    "ACCESS_ROUTES",
    "CHANGE_KINDS",
    "LOCK_TYPES",
    "Fault",
    "Sandbox",
    "SandboxChange",
    "SandboxRequest",
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


def _non_negative(params: Mapping[str, str], name: str) -> int | None:
    """An OData integer option; ValueError unless it is a non-negative decimal integer."""
    value = params.get(name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


class Sandbox(SandboxControls):
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
        super().__init__(
            seed=seed,
            owners=owners,
            locks_per_owner=locks_per_owner,
            contacts_per_owner=contacts_per_owner,
            cards_per_owner=cards_per_owner,
            grants_per_owner=grants_per_owner,
            log_entries_per_owner=log_entries_per_owner,
            received_at_filter=received_at_filter,
        )
        self.tokens = TokenIssuer(
            client_id=client_id,
            client_secret=client_secret,
            lifetime=token_lifetime,
            granted=tuple(dict.fromkeys(granted_scopes.split())),
            clock=clock,
        )
        self._host = host
        self._port = port
        self._tls = tls  # a server context: serve https instead of http
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
        self.hooks: list[Callable[[SandboxRequest], None]] = []

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
        return self.tokens.issued

    def revoke_tokens(self) -> None:
        """Invalidate every issued token (the next API request with one gets 401)."""
        self.tokens.revoke_all()

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
        """Set request_count, requests and SandboxRequest.number back to zero."""
        with self._lock:
            self._request_count = 0
            self._requests.clear()

    # -- request handling (called from the handler threads) ----------------------------------------

    def track_connection(self, connection: socket.socket) -> None:
        """Remember an open connection (`stop` shuts the idle keep-alive ones down)."""
        with self._lock:
            self._connections.add(connection)

    def forget_connection(self, connection: socket.socket) -> None:
        """A connection closed."""
        with self._lock:
            self._connections.discard(connection)

    def count_request(self) -> None:
        """Count one request (routed or not)."""
        with self._lock:
            self._request_count += 1

    def begin_request(
        self, route: Route, owner_id: str | None, params: dict[str, str]
    ) -> SandboxRequest:
        """Count a routed request and describe it for hooks (bad $top/$skip show as None)."""
        with self._lock:
            self._requests[route] += 1
            number = self._requests[route]
        top = skip = None
        with contextlib.suppress(ValueError):
            top = _non_negative(params, "$top")
        with contextlib.suppress(ValueError):
            skip = _non_negative(params, "$skip")
        return SandboxRequest(route, owner_id, top, skip, params, number)

    def take_fault(self, request: SandboxRequest) -> Fault | None:
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

    def list_response(self, request: SandboxRequest, authorization: str | None) -> Response:
        """A list route after authentication, with OData paging."""
        locks = request.route == "locks"
        denied = self.tokens.check_bearer(authorization, _SCOPES[request.route])
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
