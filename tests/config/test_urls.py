"""The URL helpers every layer shares: loopback hosts and on-disk SQLite files."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from exporter.config.settings import TapkeySettings
from exporter.config.urls import http_url_problem, is_loopback_host, is_loopback_url, sqlite_file
from exporter.errors import ConfigError
from exporter.tapkey.auth import require_secure_url


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


def _settings_check(url: str) -> None:
    TapkeySettings(api_base_url=url)


def _client_check(url: str) -> None:
    require_secure_url(url, "[tapkey] api_base_url")


CALLERS = [
    pytest.param(_settings_check, ValidationError, id="settings"),
    pytest.param(_client_check, ConfigError, id="token-provider-and-client"),
]


@pytest.mark.parametrize(("check", "error"), CALLERS)
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        pytest.param("https://my.tapkey.com", None, id="https"),
        pytest.param("http://127.0.0.1:8000", None, id="ipv4-loopback"),
        pytest.param("http://[::1]:8000", None, id="ipv6-loopback"),
        pytest.param("http://sandbox.localhost:8000", None, id="dot-localhost (RFC 6761)"),
        pytest.param("http://[::ffff:127.0.0.1]:8000", None, id="ipv4-mapped-loopback"),
        pytest.param("http://my.tapkey.com", "plain http is only allowed", id="remote"),
        pytest.param("http://[::ffff:10.0.0.1]", "plain http is only allowed", id="mapped-private"),
        pytest.param("http://localhost.example.com", "plain http", id="localhost-lookalike"),
        pytest.param("ftp://my.tapkey.com", "must be an http(s) URL", id="scheme"),
        pytest.param("https://my.tapkey.com:port", "a port must be a number", id="port"),
    ],
)
def test_both_url_checks_apply_one_rule(
    check: Callable[[str], None], error: type[Exception], url: str, problem: str | None
) -> None:
    assert (http_url_problem(url) is None) is (problem is None)
    if problem is None:
        check(url)
    else:
        with pytest.raises(error, match=re.escape(problem)):
            check(url)


@pytest.mark.parametrize(("check", "error"), CALLERS)
@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://user:hunter2-pw@example.com/x", id="plain-http"),
        pytest.param("ftp://user:hunter2-pw@example.com/x", id="scheme"),
        pytest.param("https://user:hunter2-pw@example.com:x/", id="port"),
    ],
)
def test_a_refused_url_is_shown_without_its_password(
    check: Callable[[str], None], error: type[Exception], url: str
) -> None:
    with pytest.raises(error) as caught:
        check(url)
    assert "hunter2" not in (http_url_problem(url) or "")
    if isinstance(caught.value, ValidationError):  # pydantic's own text quotes the input
        messages = [e["msg"] for e in caught.value.errors()]
    else:
        messages = [str(caught.value)]
    assert messages and not any("hunter2" in m for m in messages)
