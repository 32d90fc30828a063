"""The sandbox on the wire: an HTTP/1.1 server whose handler routes each request, applies the
scripted faults and hooks, and writes the reply the `Sandbox` builds (see `server`)."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import socketserver
import ssl
import struct
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from exporter.sandbox.access_routes import AccessRoute
from exporter.sandbox.protocol import Response, Route, error_response, status_phrase

if TYPE_CHECKING:
    from exporter.sandbox.server import Sandbox

__all__ = ["Handler", "Server", "Server6"]

logger = logging.getLogger("exporter.sandbox.server")

_MAX_BODY = 1 << 20
# Paths match case-insensitively, as on Tapkey's ASP.NET servers.
_TOKEN_PATH = re.compile(r"/connect/token", re.IGNORECASE)
_OWNERS_PATH = re.compile(r"/api/v1/owners", re.IGNORECASE)
_LOCKS_PATH = re.compile(r"/api/v1/owners/([^/]+)/boundlocks", re.IGNORECASE)
_ACCESS_PATH = re.compile(r"/api/v1/owners/([^/]+)/(contacts|boundcards|grants|logentries)", re.I)
_ACCESS_PATHS: dict[str, AccessRoute] = {
    "contacts": "contacts",
    "boundcards": "cards",
    "grants": "grants",
    "logentries": "logs",
}


class Server(ThreadingHTTPServer):
    """The sandbox's IPv4 server: a thread per connection, no reverse DNS lookup."""

    daemon_threads = True
    request_queue_size = 128  # several clients connecting at once must not hit SYN retries
    sandbox: Sandbox

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup (getfqdn), which can take seconds."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up (timeouts, faults) are normal here; log anything else."""
        logger.debug("sandbox connection error from %s", client_address, exc_info=True)


class Server6(Server):
    """The same on IPv6."""

    address_family = socket.AF_INET6


class Handler(BaseHTTPRequestHandler):
    """One connection's requests: route, hooks, faults, then the sandbox's reply."""

    protocol_version = "HTTP/1.1"
    server_version = "tapkey-sandbox"
    timeout = 120  # idle keep-alive connections are closed after this many seconds

    @property
    def sandbox(self) -> Sandbox:
        return cast(Server, self.server).sandbox

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()  # a failed handshake ends this connection only
        super().setup()
        # Responses go out in one write; without this Nagle delays keep-alive replies.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sandbox.track_connection(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.sandbox.forget_connection(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("sandbox: " + format, *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors http.server detects itself (bad request line, ...) as small JSON bodies."""
        self.close_connection = True
        self._send(error_response(code, "invalid_request", message or status_phrase(code)))

    def _dispatch(self) -> None:
        sandbox = self.sandbox
        sandbox.count_request()
        body = self._read_body()
        if body is None:
            return
        if sandbox.latency:
            time.sleep(sandbox.latency)  # the round trip to a remote server
        url = urlsplit(self.path)
        owner_id: str | None = None
        route: Route
        if _TOKEN_PATH.fullmatch(url.path):
            route, method = "token", "POST"
        elif _OWNERS_PATH.fullmatch(url.path):
            route, method = "owners", "GET"
        elif match := _LOCKS_PATH.fullmatch(url.path):
            route, method, owner_id = "locks", "GET", unquote(match[1])
        elif match := _ACCESS_PATH.fullmatch(url.path):
            route, method, owner_id = _ACCESS_PATHS[match[2].lower()], "GET", unquote(match[1])
        else:
            self._send(error_response(404, "not_found", "no such resource"))
            return
        if self.command != method:
            self._send(
                error_response(405, "method_not_allowed", f"use {method}", {"Allow": method})
            )
            return

        form: dict[str, str] = {}
        if route == "token":
            content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if content_type != "application/x-www-form-urlencoded":
                self._send(error_response(400, "invalid_request", "send a form-encoded body"))
                return
            form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            # Hooks never see the secret.
            params = {k: v for k, v in form.items() if k in ("grant_type", "scope", "client_id")}
        else:
            params = dict(parse_qsl(url.query, keep_blank_values=True))
        request = sandbox.begin_request(route, owner_id, params)
        try:
            for hook in list(sandbox.hooks):
                hook(request)
        except Exception:
            logger.exception("sandbox hook failed")
            self._send(error_response(500, "hook_failed", "a sandbox hook raised an exception"))
            return

        fault = sandbox.take_fault(request)
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.delay)
        elif fault is not None and fault.kind == "reset":
            self._reset()
            return
        elif fault is not None and fault.kind == "status":
            if fault.body is None:
                response = error_response(
                    fault.status, "sandbox_fault", status_phrase(fault.status)
                )
            else:
                response = Response(fault.status, fault.body.encode())
            response.headers.update(fault.headers)
            self._send(response)
            return
        elif fault is not None and fault.kind == "body":
            self._send(Response(200, (fault.body or "").encode(), dict(fault.headers)))
            return

        authorization = self.headers.get("Authorization")
        if route == "token":
            response = sandbox.tokens.token_response(form, authorization)
        else:
            response = sandbox.list_response(request, authorization)
        self._send(response, truncate=fault is not None and fault.kind == "truncate")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def _read_body(self) -> bytes | None:
        """The request body (so keep-alive stays in step); None after replying with an error."""
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            self._send(error_response(411, "invalid_request", "send a Content-Length"))
            return None
        length = self.headers.get("Content-Length", "0").strip()
        if not (length.isascii() and length.isdigit()) or int(length) > _MAX_BODY:
            self.close_connection = True
            self._send(error_response(400, "invalid_request", "bad Content-Length"))
            return None
        return self.rfile.read(int(length)) if int(length) else b""

    def _send(self, response: Response, *, truncate: bool = False) -> None:
        """Write status line, headers and body in one go (always with Content-Length)."""
        status = response.status
        lines = [
            f"HTTP/1.1 {status} {status_phrase(status)}",
            f"Server: {self.server_version}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
        ]
        lines += [f"{name}: {value}" for name, value in response.headers.items()]
        body = b"" if self.command == "HEAD" else response.body
        if truncate:
            body = body[: len(body) // 2]
            self.close_connection = True
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)

    def _reset(self) -> None:
        """Drop the connection abruptly: with SO_LINGER 0 close() sends a TCP RST."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # the fd really closes once the handler drops its rfile
