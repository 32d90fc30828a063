"""The daemon's HTTP endpoint: `/healthz`, `/livez` (JSON) and `/metrics` (Prometheus text).

`/healthz` reads the database rather than this process's memory, so a replica that keeps losing
the writer lock to its peers is still healthy while the database is kept fresh.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from prometheus_client import make_wsgi_app
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from exporter.errors import ConfigError, first_line
from exporter.service.metrics import Metrics, last_success

log = logging.getLogger(__name__)


def health(
    engine: Engine, *, max_age: float, now: Callable[[], datetime]
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body): 200 while the newest succeeded run is younger than `max_age`."""
    try:
        with engine.connect() as conn:
            last = last_success(conn)
    except SQLAlchemyError as exc:
        log.warning("healthz: cannot read the database: %s", first_line(exc))
        return 503, {"status": "unavailable", "reason": "cannot read the database"}
    body: dict[str, Any] = {"max_age_seconds": max_age}
    if last is None:
        return 503, {"status": "stale", "reason": "no succeeded run yet", **body}
    age = (now() - last).total_seconds()
    body.update(last_success=last.isoformat().replace("+00:00", "Z"), age_seconds=round(age, 3))
    if age > max_age:
        reason = f"the last succeeded run finished {age:.0f} s ago (limit {max_age:g} s)"
        return 503, {"status": "stale", "reason": reason, **body}
    return 200, {"status": "ok", **body}


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def make_app(
    engine: Engine,
    metrics: Metrics,
    *,
    max_age: float,
    live: Callable[[], bool] = lambda: True,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> WsgiApp:
    """The WSGI app: `/healthz` and `/livez` (JSON), `/metrics` (Prometheus text), else 404.

    `/livez` asks only whether the process serves (`live()`: false once it is shutting down), never
    Tapkey or the database: a liveness probe on it does not restart pods during an outage.
    """
    metrics_app = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            error = {"error": f"{method} is not allowed here: use GET or HEAD"}
            return _json(start_response, "405 Method Not Allowed", error, ("Allow", "GET, HEAD"))
        if method == "HEAD":  # the GET's status and headers, no body (wsgiref would send it)
            _ = list(app({**environ, "REQUEST_METHOD": "GET"}, start_response))
            return []
        if path == "/metrics":
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            status, body = health(engine, max_age=max_age, now=now)
        elif path == "/livez":
            status, body = (200, {"status": "ok"}) if live() else (503, {"status": "stopping"})
        else:
            error = {"error": "try /healthz, /livez or /metrics"}
            return _json(start_response, "404 Not Found", error)
        phrase = "OK" if status == 200 else "Service Unavailable"
        return _json(start_response, f"{status} {phrase}", body)

    return app


def _json(
    start_response: Callable[..., Any],
    status: str,
    body: dict[str, Any],
    *extra: tuple[str, str],
) -> list[bytes]:
    data = json.dumps(body).encode() + b"\n"
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(data))),
        ("Cache-Control", "no-store"),
        *extra,
    ]
    start_response(status, headers)
    return [data]


# A probe or scrape sends its request at once. A connection that sends nothing for this long (a
# port scan, a peer that vanished without closing, a slow client) is closed, so that it does not
# hold a thread for the life of the daemon.
IDLE_TIMEOUT = 10.0
# Connections served at once; more are closed as they arrive (each holds a thread).
MAX_CONNECTIONS = 32


class _ServerHandler(ServerHandler):
    def log_exception(self, exc_info: Any) -> None:
        # wsgiref prints these on stderr, past the log's format (JSON lines).
        if isinstance(exc_info[1], (ConnectionError, TimeoutError)):  # a client that stalled
            log.debug("http: connection closed while answering: %s", exc_info[1])
        else:
            path = self.environ.get("PATH_INFO", "")  # type: ignore[attr-defined]
            log.error("http: error while answering %s", path, exc_info=exc_info)


class _Handler(WSGIRequestHandler):
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_timeout)

    def handle(self) -> None:
        try:
            self._handle()
        except (ConnectionError, TimeoutError) as exc:
            # A client that resets or stalls: one debug line, not a traceback on stderr.
            log.debug("http %s: connection closed: %s", self.address_string(), exc)

    def _handle(self) -> None:
        # WSGIRequestHandler.handle with our ServerHandler, whose errors go to the log.
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():  # it sent the error response
            return
        handler = _ServerHandler(
            self.rfile,
            self.wfile,  # type: ignore[arg-type]
            self.get_stderr(),
            self.get_environ(),
            multithread=False,
        )
        handler.request_handler = self  # type: ignore[attr-defined]  # wsgiref logs through it
        handler.run(self.server.get_app())  # type: ignore[arg-type]

    def log_message(self, format: str, *args: Any) -> None:
        # Probes arrive every few seconds: keep access lines out of the log unless debugging.
        log.debug("http %s " + format, self.address_string(), *args)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args: Any, idle_timeout: float, max_connections: int) -> None:
        self.idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._full = False
        super().__init__(*args)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            if not self._full:
                log.warning(
                    "http: %d connections open at once; closing new ones until some end",
                    self._max_connections,
                )
            self._full = True
            self.shutdown_request(request)
            return
        self._full = False
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints these to stderr itself, past the log's format (JSON lines).
        log.exception("http %s: unexpected error while serving a request", client_address[0])


class _Server6(_Server):
    address_family = socket.AF_INET6


class HttpEndpoint:
    """Serves a WSGI app on `host:port` from a daemon thread."""

    def __init__(
        self,
        app: WsgiApp,
        host: str,
        port: int,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            server_class = _Server6 if family == socket.AF_INET6 else _Server
            self._server = server_class(
                (host, port), _Handler, idle_timeout=idle_timeout, max_connections=max_connections
            )
            self._server.set_app(app)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on [http] listen {host}:{port}: {exc.strerror or exc}; "
                "pick a free port or an address of this host"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="http-endpoint",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the real one when 0 was asked for."""
        host, port = self._server.server_address[:2]
        return (host if isinstance(host, str) else host.decode()), int(port)

    def start(self) -> None:
        """Start serving in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
