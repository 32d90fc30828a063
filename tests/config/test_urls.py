"""The URL helpers every layer shares: loopback hosts and on-disk SQLite files."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from exporter.config.urls import is_loopback_host, is_loopback_url, sqlite_file


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        pytest.param("http://127.0.0.1:8080/x", True, id="ipv4"),
        pytest.param("http://127.3.4.5/x", True, id="ipv4-net"),
        pytest.param("http://[::1]:9/x", True, id="ipv6"),
        pytest.param("http://LOCALHOST/x", True, id="localhost"),
        pytest.param("http://localhost./x", True, id="localhost-fqdn"),
        pytest.param("http://sandbox.localhost:8000/x", True, id="dot-localhost"),
        pytest.param("http://[::ffff:127.0.0.1]:8000/x", True, id="ipv4-mapped-loopback"),
        pytest.param("http://[::ffff:10.0.0.1]/x", False, id="ipv4-mapped-private"),
        pytest.param("http://example.com/x", False, id="remote"),
        pytest.param("http://127.0.0.1.example.com/x", False, id="lookalike"),
        pytest.param("http://localhost.example.com/x", False, id="localhost-lookalike"),
        pytest.param("http://10.0.0.1/x", False, id="private"),
        pytest.param("http://[::]/x", False, id="unspecified"),
        pytest.param("nonsense", False, id="no-host"),
        pytest.param("http://[::1/x", False, id="unparseable"),
    ],
)
def test_loopback_url(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        pytest.param("127.0.0.1", True, id="ipv4"),
        pytest.param("::1", True, id="ipv6"),
        pytest.param("[::1]", True, id="ipv6-bracketed"),
        pytest.param("::ffff:127.0.0.1", True, id="ipv4-mapped"),
        pytest.param("a.b.localhost", True, id="dot-localhost"),
        pytest.param("", False, id="empty"),
        pytest.param("tapkey.com", False, id="remote"),
    ],
)
def test_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("url", "file"),
    [
        pytest.param("sqlite:///inventory.db", "inventory.db", id="relative"),
        pytest.param("sqlite:////var/lib/x.db", "/var/lib/x.db", id="absolute"),
        pytest.param("sqlite+pysqlite:///x.db", "x.db", id="driver"),
        pytest.param("sqlite://", None, id="memory-default"),
        pytest.param("sqlite:///:memory:", None, id="memory"),
        pytest.param("sqlite:///file:x.db?mode=ro&uri=true", None, id="uri"),
        pytest.param("postgresql://u@h/db", None, id="postgresql"),
        pytest.param("mysql+pymysql://u@h/db", None, id="mysql"),
    ],
)
def test_sqlite_file(url: str, file: str | None) -> None:
    assert sqlite_file(url) == file
    assert sqlite_file(make_url(url)) == file
