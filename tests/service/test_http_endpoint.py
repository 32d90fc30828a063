"""The daemon's HTTP endpoint over real sockets: methods, clients that stall, reset or flood it."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from exporter.db.engine import make_engine
from exporter.service import http
from exporter.service.metrics import Metrics


@contextlib.contextmanager
def _endpoint(tmp_path: Path, **options: Any) -> Iterator[tuple[str, int]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'e.db'}")
    metrics = Metrics()
    endpoint = http.HttpEndpoint(
        http.make_app(engine, metrics, max_age=60), "127.0.0.1", 0, **options
    )
    endpoint.start()
    try:
        yield endpoint.address
    finally:
        endpoint.stop()
        engine.dispose()


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes `sock` (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_only_get_and_head_are_served(tmp_path: Path) -> None:
    with _endpoint(tmp_path) as (host, port):
        base = f"http://{host}:{port}"
        for path in ("/livez", "/healthz", "/metrics"):
            refused = requests.post(base + path, data=b"x", timeout=5)
            assert (refused.status_code, refused.headers["Allow"]) == (405, "GET, HEAD"), path
            got = requests.get(base + path, timeout=5)
            head = requests.head(base + path, timeout=5)
            assert (head.status_code, head.content) == (got.status_code, b""), path
            assert head.headers["Content-Type"] == got.headers["Content-Type"]
        assert requests.put(base + "/nowhere", timeout=5).status_code == 405


def test_a_connection_that_sends_no_whole_request_is_closed(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # A port scan, a peer that vanished without closing, a slow client: each held a thread of
    # the daemon for good.
    with _endpoint(tmp_path, idle_timeout=0.5) as address:
        with (
            socket.create_connection(address) as silent,
            socket.create_connection(address) as half,
            socket.create_connection(address) as headers,
        ):
            half.sendall(b"GET /liv")
            headers.sendall(b"GET /healthz HTTP/1.1\r\n")
            for sock in (silent, half, headers):
                assert _closed_by_server(sock, within=5)
        assert requests.get("http://{}:{}/livez".format(*address), timeout=5).status_code == 200
    assert capfd.readouterr().err == ""


def test_clients_that_reset_write_no_traceback(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # socketserver printed a 17-line traceback on stderr for each, past the JSON log lines.
    with _endpoint(tmp_path) as address:
        for sent in (b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"):
            sock = socket.create_connection(address)
            sock.sendall(sent)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            time.sleep(0.1)  # the server is reading the request when the reset comes
            sock.close()  # with linger 0: a reset, not a close
        time.sleep(0.2)
        assert requests.get("http://{}:{}/livez".format(*address), timeout=5).status_code == 200
    assert capfd.readouterr().err == ""


def test_connections_beyond_the_limit_are_closed_at_once(tmp_path: Path) -> None:
    with _endpoint(tmp_path, idle_timeout=30, max_connections=3) as address:
        held = [socket.create_connection(address) for _ in range(3)]
        try:
            with socket.create_connection(address) as extra:
                assert _closed_by_server(extra, within=5)
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 5
        while True:  # the held connections' threads end as their sockets close
            try:
                answer = requests.get("http://{}:{}/livez".format(*address), timeout=5)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert answer.status_code == 200


def test_an_error_while_answering_is_logged_not_printed(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # wsgiref printed the traceback on stderr, past the log's format (JSON lines).
    def broken(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("collector failed")

    endpoint = http.HttpEndpoint(broken, "127.0.0.1", 0)
    endpoint.start()
    try:
        answer = requests.get("http://{}:{}/metrics".format(*endpoint.address), timeout=5)
    finally:
        endpoint.stop()
    assert answer.status_code == 500
    assert capfd.readouterr().err == ""
    [record] = [r for r in caplog.records if r.name == "exporter.service.http"]
    assert (
        record.levelname == "ERROR"
        and record.getMessage() == "http: error while answering /metrics"
    )
    assert record.exc_info is not None and str(record.exc_info[1]) == "collector failed"
