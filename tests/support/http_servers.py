"""Small real servers for transport tests: TLS material from trustme and a CONNECT proxy."""

from __future__ import annotations

import base64
import selectors
import socket
import socketserver
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import trustme

#: Names the test certificate is valid for. `tapkey.test` resolves nowhere: only a proxy (which
#: dials every name on 127.0.0.1) can reach it, so a request that gets through went through it.
TLS_HOSTS = ("127.0.0.1", "localhost", "tapkey.test")


@dataclass(frozen=True)
class Tls:
    """A server context with a certificate for `TLS_HOSTS`, and the CA file clients verify with."""

    server: ssl.SSLContext
    ca_file: Path


def make_tls(folder: Path) -> Tls:
    """A fresh CA and server certificate; the CA's PEM is written into `folder`."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*TLS_HOSTS).configure_cert(context)
    ca_file = folder / "test-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Tls(context, ca_file)


class ForwardProxy:
    """An HTTP forward proxy on 127.0.0.1 that tunnels CONNECT requests, in threads.

    Every host name is dialled on 127.0.0.1. With `credentials` ("user:password") a CONNECT without
    the matching Basic Proxy-Authorization gets 407. Other methods get 405. `tunnels` lists the
    authorities (host:port) tunnelled to, `refused` the request lines answered with an error.
    """

    def __init__(self, *, credentials: str | None = None) -> None:
        self.credentials = credentials
        self.tunnels: list[str] = []
        self.refused: list[str] = []
        self.stopping = threading.Event()
        self._server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,))

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()  # joins the handler threads
        self._thread.join()

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    def url(self, credentials: str | None = None) -> str:
        """The proxy URL, with `credentials` in it if given."""
        userinfo = f"{credentials}@" if credentials else ""
        return f"http://{userinfo}127.0.0.1:{self.port}"


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = False  # server_close() waits for the tunnels to end
    allow_reuse_address = True
    proxy: ForwardProxy


class _ProxyHandler(socketserver.StreamRequestHandler):
    server: _ProxyServer

    def handle(self) -> None:
        proxy = self.server.proxy
        request_line = self.rfile.readline(65537).decode("latin-1").strip()
        headers: dict[str, str] = {}
        while (line := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        method, _, rest = request_line.partition(" ")
        authority = rest.partition(" ")[0]
        expected = None
        if proxy.credentials is not None:
            expected = "Basic " + base64.b64encode(proxy.credentials.encode()).decode()
        if method != "CONNECT":
            self._refuse(request_line, "405 Method Not Allowed")
        elif expected is not None and headers.get("proxy-authorization") != expected:
            self._refuse(request_line, "407 Proxy Authentication Required")
        else:
            self._tunnel(authority)

    def _refuse(self, request_line: str, status: str) -> None:
        self.server.proxy.refused.append(request_line)
        self.wfile.write(
            f'HTTP/1.1 {status}\r\nProxy-Authenticate: Basic realm="test"\r\n'
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )

    def _tunnel(self, authority: str) -> None:
        port = int(authority.rpartition(":")[2])
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            self._refuse(f"CONNECT {authority}", "502 Bad Gateway")
            return
        self.server.proxy.tunnels.append(authority)
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        with upstream, selectors.DefaultSelector() as selector:
            selector.register(self.connection, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, self.connection)
            while not self.server.proxy.stopping.is_set():
                for key, _ in selector.select(timeout=0.05):
                    source = key.fileobj
                    assert isinstance(source, socket.socket)
                    try:
                        data = source.recv(65536)
                        if data:
                            key.data.sendall(data)
                    except OSError:
                        data = b""
                    if not data:
                        return
