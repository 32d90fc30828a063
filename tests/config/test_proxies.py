"""Proxies: `[tapkey] proxy` and the standard variables, through a real CONNECT proxy.

The Tapkey stand-in is the sandbox over https, addressed as `tapkey.test`: a name that resolves
nowhere, so a request that reaches it went through the proxy (which dials every name on loopback).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.http_servers import ForwardProxy, Tls

from exporter.config.loader import load_settings
from exporter.config.proxies import Proxy, check_proxy_url, display_proxy, proxy_for
from exporter.config.settings import Settings
from exporter.errors import ApiError, AuthError, ConfigError, TapkeyError
from exporter.sandbox.server import Sandbox
from exporter.service import job
from exporter.service.check import run_checks

SECRET = "proxy-test-client-secret"
PROXY_PASSWORD = "pr0xy-pa55"
API = "https://my.tapkey.com"


@pytest.fixture
def tapkey(tls: Tls) -> Iterator[Sandbox]:
    with Sandbox(seed=9, owners=2, locks_per_owner=3, client_secret=SECRET, tls=tls.server) as s:
        yield s


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as server:
        yield server


@pytest.fixture
def locked_proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy(credentials=f"exporter:{PROXY_PASSWORD}") as server:
        yield server


def settings(
    tapkey: Sandbox, tls: Tls, tmp_path: Path, env: dict[str, str], **tapkey_keys: Any
) -> Settings:
    """Settings for `tapkey` under the name tapkey.test, loaded with `env` as the environment."""
    base = tapkey.base_url.replace("127.0.0.1", "tapkey.test")
    overrides = {
        "tapkey.client_id": "sandbox-client",
        "tapkey.client_secret": SECRET,
        "tapkey.token_url": f"{base}/connect/token",
        "tapkey.api_base_url": base,
        "tapkey.ca_bundle": str(tls.ca_file),
        "tapkey.max_retries": 1,
        "tapkey.backoff_factor": 0.0,
        "database.url": f"sqlite:///{tmp_path / 'proxy.db'}",
    }
    overrides.update({f"tapkey.{key}": value for key, value in tapkey_keys.items()})
    return load_settings(None, env=env, cwd=tmp_path, overrides=overrides)


def read_everything(config: Settings) -> int:
    """Fetch a token, the owner list and every owner's locks; the number of locks."""
    with job.make_client(config) as client:
        return sum(len(client.list_bound_locks(o.id).records) for o in client.list_owners())


# -- which proxy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, None, id="none"),
        pytest.param({"HTTPS_PROXY": "http://p:1"}, ("http://p:1", "HTTPS_PROXY"), id="upper"),
        pytest.param(
            {"https_proxy": "http://a:1", "HTTPS_PROXY": "http://b:1"},
            ("http://a:1", "https_proxy"),
            id="lower-case-first",
        ),
        pytest.param({"ALL_PROXY": "http://p:1"}, ("http://p:1", "ALL_PROXY"), id="all"),
        pytest.param(
            {"ALL_PROXY": "http://a:1", "HTTPS_PROXY": "http://b:1"},
            ("http://b:1", "HTTPS_PROXY"),
            id="https-before-all",
        ),
        pytest.param({"HTTP_PROXY": "http://p:1"}, None, id="http-proxy-is-for-http-only"),
        pytest.param({"HTTPS_PROXY": "p:3128"}, ("http://p:3128", "HTTPS_PROXY"), id="no-scheme"),
        pytest.param({"HTTPS_PROXY": "  "}, None, id="blank"),
        pytest.param({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, None, id="no-proxy-star"),
        pytest.param(
            {"HTTPS_PROXY": "http://p:1", "no_proxy": "tapkey.com"}, None, id="no-proxy-domain"
        ),
        pytest.param(
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.org, .tapkey.com"},
            None,
            id="no-proxy-dot-domain",
        ),
        pytest.param(
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "my.tapkey.com:443"}, None, id="no-proxy-port"
        ),
        pytest.param(
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "my.tapkey.com:8443"},
            ("http://p:1", "HTTPS_PROXY"),
            id="no-proxy-other-port",
        ),
        pytest.param(
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "key.com,y.tapkey.com"},
            ("http://p:1", "HTTPS_PROXY"),
            id="no-proxy-suffix-is-not-a-domain",
        ),
    ],
)
def test_proxy_from_the_standard_variables(
    env: dict[str, str], expected: tuple[str, str] | None
) -> None:
    found = proxy_for(API, configured=None, env=env)
    assert found == (Proxy(*expected) if expected else None)


def test_no_proxy_takes_addresses_and_networks() -> None:
    env = {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8,[2001:db8::1]"}
    assert proxy_for("https://10.1.2.3/api", configured=None, env=env) is None
    assert proxy_for("https://[2001:db8::1]:8443/", configured=None, env=env) is None
    assert proxy_for("https://11.1.2.3/api", configured=None, env=env) is not None


def test_the_proxy_setting_wins_over_the_variables_and_no_proxy() -> None:
    env = {"HTTPS_PROXY": "http://env:1", "NO_PROXY": "*"}
    found = proxy_for(API, configured="http://conf:2", env=env)
    assert found == Proxy("http://conf:2", "[tapkey] proxy")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "https://localhost:9", "http://[::1]:1"])
def test_loopback_hosts_are_never_proxied(url: str) -> None:
    env = {"HTTPS_PROXY": "http://p:1", "ALL_PROXY": "http://p:1"}
    assert proxy_for(url, configured="http://conf:2", env=env) is None


@pytest.mark.parametrize("typo", ["http:/", "http//"])
def test_a_proxy_with_a_mistyped_scheme_is_refused_without_its_password(typo: str) -> None:
    with pytest.raises(ValueError, match="http://host:port") as caught:
        check_proxy_url(f"{typo}user:{PROXY_PASSWORD}@proxy:3128")
    assert PROXY_PASSWORD not in str(caught.value)


def test_an_unusable_proxy_variable_is_a_config_error_without_its_password() -> None:
    env = {"ALL_PROXY": f"socks5://user:{PROXY_PASSWORD}@p:1080"}
    with pytest.raises(ConfigError, match=r"^environment variable ALL_PROXY: socks5:// ") as caught:
        proxy_for(API, configured=None, env=env)
    assert PROXY_PASSWORD not in str(caught.value) and "user" not in str(caught.value)
    # Only a proxy that would be used is checked.
    assert proxy_for(API, configured=None, env={**env, "NO_PROXY": "*"}) is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://proxy:3128", "http://proxy:3128"),
        (f"http://user:{PROXY_PASSWORD}@proxy:3128", "http://***@proxy:3128"),
        ("http://token-as-user@proxy:3128/", "http://***@proxy:3128"),
        # A mistyped scheme: the credentials end up in the path (host "http").
        (f"http://http/user:{PROXY_PASSWORD}@proxy:3128", "http://http/***@proxy:3128"),
        (f"http://http//user:{PROXY_PASSWORD}@proxy:3128", "http://http/***@proxy:3128"),
    ],
)
def test_proxy_credentials_are_masked(url: str, shown: str) -> None:
    assert display_proxy(url) == shown
    assert str(Proxy(url, "HTTPS_PROXY")) == f"{shown} (from HTTPS_PROXY)"
    assert shown in repr(Proxy(url, "HTTPS_PROXY"))


# -- settings --------------------------------------------------------------------------------


def test_the_proxy_key_is_checked_and_masked(tmp_path: Path) -> None:
    url = f"http://exporter:{PROXY_PASSWORD}@proxy.example.com:3128"
    env = {"EXPORTER_TAPKEY__PROXY": url, "HTTPS_PROXY": url, "NO_PROXY": "intranet"}
    loaded = load_settings(None, env=env, cwd=tmp_path)
    assert loaded.tapkey.proxy == url
    assert PROXY_PASSWORD not in repr(loaded) and PROXY_PASSWORD not in repr(loaded.tapkey)
    assert "http://***@proxy.example.com:3128" in repr(loaded.tapkey)
    bad = {"EXPORTER_TAPKEY__PROXY": f"socks5h://exporter:{PROXY_PASSWORD}@proxy:1080"}
    with pytest.raises(ConfigError, match=r"\[tapkey\] proxy: socks5h:// proxies are not") as err:
        load_settings(None, env=bad, cwd=tmp_path)
    assert PROXY_PASSWORD not in str(err.value)
    with pytest.raises(ConfigError, match=r"\[tapkey\] proxy: must be http://host:port"):
        load_settings(None, env={"EXPORTER_TAPKEY__PROXY": "http://proxy/path"}, cwd=tmp_path)


def test_only_the_proxy_variables_are_taken_from_the_environment(tmp_path: Path) -> None:
    env = {
        "HTTPS_PROXY": "http://p:1",
        "NO_PROXY": "x",
        "HTTP_PROXY": "http://h:1",
        "REQUESTS_CA_BUNDLE": "/tmp/evil.pem",
        "NETRC": "/tmp/netrc",
    }
    loaded = load_settings(None, env=env, cwd=tmp_path)
    assert loaded.proxy_env == {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "x"}


# -- through a real proxy --------------------------------------------------------------------


def test_token_and_api_requests_go_through_https_proxy(
    tapkey: Sandbox, tls: Tls, proxy: ForwardProxy, tmp_path: Path
) -> None:
    config = settings(tapkey, tls, tmp_path, {"HTTPS_PROXY": proxy.url()})
    assert read_everything(config) == 6
    port = tapkey.base_url.rpartition(":")[2]
    assert proxy.tunnels and set(proxy.tunnels) == {f"tapkey.test:{port}"}
    assert tapkey.requests["token"] == 1 and tapkey.requests["locks"] >= 2


def test_the_proxy_key_with_credentials(
    tapkey: Sandbox,
    tls: Tls,
    locked_proxy: ForwardProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = locked_proxy.url(f"exporter:{PROXY_PASSWORD}")
    env = {"HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "tapkey.test"}  # both overridden
    config = settings(tapkey, tls, tmp_path, env, proxy=url)
    assert read_everything(config) == 6
    assert len(locked_proxy.tunnels) >= 2 and not locked_proxy.refused
    results = run_checks(config)
    assert results[0].ok
    assert f"through proxy http://***@127.0.0.1:{locked_proxy.port} (from [tapkey] proxy)" in (
        results[0].detail
    )
    shown = caplog.text + "".join(r.detail for r in results)
    assert PROXY_PASSWORD not in shown and SECRET not in shown


def test_wrong_proxy_credentials_fail_clearly_without_showing_them(
    tapkey: Sandbox, tls: Tls, locked_proxy: ForwardProxy, tmp_path: Path
) -> None:
    url = locked_proxy.url("exporter:wrong-password")
    config = settings(tapkey, tls, tmp_path, {"HTTPS_PROXY": url})
    with pytest.raises(AuthError) as caught:
        read_everything(config)
    message = str(caught.value)
    assert message.endswith(
        f"the proxy http://***@127.0.0.1:{locked_proxy.port} (from HTTPS_PROXY) refused the "
        "connection (HTTP 407); check the user and password in HTTPS_PROXY"
    )
    assert "wrong-password" not in message
    assert len(locked_proxy.refused) == 1 and tapkey.request_count == 0  # not retried


def test_a_proxy_refusing_the_api_host_is_not_retried(
    tapkey: Sandbox, tls: Tls, locked_proxy: ForwardProxy, tmp_path: Path
) -> None:
    # The token comes straight from loopback; only the API host goes through the proxy.
    url = locked_proxy.url("exporter:wrong-password")
    config = settings(tapkey, tls, tmp_path, {}, proxy=url, token_url=tapkey.token_url)
    with pytest.raises(ApiError, match=r"^GET /api/v1/Owners: the proxy .* \(HTTP 407\)"):
        read_everything(config)
    assert len(locked_proxy.refused) == 1 and tapkey.requests["token"] == 1


def test_an_unreachable_proxy_is_named(tapkey: Sandbox, tls: Tls, tmp_path: Path) -> None:
    with ForwardProxy() as stopped:
        url = stopped.url()
    config = settings(tapkey, tls, tmp_path, {"HTTPS_PROXY": url})
    with pytest.raises(TapkeyError, match=rf"the proxy {url} \(from HTTPS_PROXY\)"):
        read_everything(config)


def test_the_loopback_sandbox_is_reached_directly(
    sandbox: Sandbox, proxy: ForwardProxy, tmp_path: Path
) -> None:
    env = {"HTTPS_PROXY": proxy.url(), "ALL_PROXY": proxy.url(), "HTTP_PROXY": proxy.url()}
    config = load_settings(
        None,
        env=env,
        cwd=tmp_path,
        overrides={
            "tapkey.client_id": "sandbox-client",
            "tapkey.client_secret": "sandbox-secret",
            "tapkey.token_url": sandbox.token_url,
            "tapkey.api_base_url": sandbox.base_url,
        },
    )
    assert read_everything(config) == 15
    assert not proxy.tunnels and not proxy.refused
