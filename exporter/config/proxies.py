"""Which proxy, if any, a request to Tapkey goes through.

`[tapkey] proxy` wins when it is set. Otherwise the standard variables apply, as curl and requests
read them: `https_proxy` / `HTTPS_PROXY`, else `all_proxy` / `ALL_PROXY` (lower case first), minus
the hosts `no_proxy` / `NO_PROXY` lists. `HTTP_PROXY` is not read: plain http is only ever sent to
a loopback host, and a loopback host (the sandbox) is never proxied, so nothing unencrypted passes
a proxy. Only these variables are taken from the environment (no netrc, no `REQUESTS_CA_BUNDLE`);
`exporter.config.loader` picks them out, so nothing here reads `os.environ`.

A proxy URL may hold credentials (`http://user:password@proxy:3128`): it is shown only through
`display_proxy`, which masks them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from exporter.config.urls import display_url, is_loopback_url
from exporter.errors import ConfigError

__all__ = ["PROXY_VARIABLES", "Proxy", "check_proxy_url", "display_proxy", "proxy_for"]

#: The environment variables read for proxies, in order of precedence (`no_proxy` aside).
PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY")
_SETTING = "[tapkey] proxy"


@dataclass(frozen=True, slots=True)
class Proxy:
    """The proxy for one endpoint: its URL (may hold credentials) and where it was configured."""

    url: str = field(repr=False)
    source: str  # "[tapkey] proxy" or the variable's name

    def __str__(self) -> str:
        return f"{display_proxy(self.url)} (from {self.source})"

    def __repr__(self) -> str:
        return f"Proxy({display_proxy(self.url)!r}, source={self.source!r})"

    @property
    def for_requests(self) -> dict[str, str]:
        """The `proxies=` argument of requests."""
        return {"https": self.url, "http": self.url}


def display_proxy(url: str) -> str:
    """The proxy URL with any credentials replaced by *** (safe for messages and logs)."""
    shown = display_url(url).rstrip("/")
    scheme, _, rest = shown.partition("://")
    if "@" in url.partition("://")[2].partition("/")[0]:
        return f"{scheme}://***@{rest}"  # the user name may be the secret (token-style proxies)
    if "@" not in rest:
        return shown
    # An "@" after the host: a mistyped "http:/user:pw@proxy" reads as host "http", path
    # "/user:pw@proxy"; what is before the "@" may be credentials.
    host, slash, _ = rest.rpartition("@")[0].partition("/")
    return f"{scheme}://{host}{slash}***@{rest.rpartition('@')[2]}"


def check_proxy_url(value: str) -> str:
    """The proxy URL with a scheme (`proxy:3128` means http://proxy:3128); ValueError if unusable.

    The message never contains the URL's password.
    """
    text = value.strip()
    if "://" not in text:
        text = f"http://{text}"
    try:
        parts = urlsplit(text)
        _ = parts.port  # ValueError for a port that is not a number
    except ValueError:
        raise ValueError(
            f"is not a proxy URL (got {display_proxy(text)!r}); use http://host:port"
        ) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(
            f"{parts.scheme}:// proxies are not supported (got {display_proxy(text)!r}); use an "
            "http:// proxy (requests to Tapkey are tunnelled through it with CONNECT)"
        )
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"must be http://host:port with nothing after the port (got {display_proxy(text)!r})"
        )
    return text


def proxy_for(url: str, *, configured: str | None, env: Mapping[str, str]) -> Proxy | None:
    """The proxy for requests to `url`: `configured` ([tapkey] proxy), else the standard variables.

    Loopback hosts (the sandbox) are always reached directly. ConfigError for a proxy variable
    that cannot be used.
    """
    if is_loopback_url(url):
        return None
    if configured:
        return Proxy(configured, _SETTING)
    for name in PROXY_VARIABLES[:4]:
        value = env.get(name, "").strip()
        if value:
            break
    else:
        return None
    if _bypassed(url, env.get("no_proxy") or env.get("NO_PROXY") or ""):
        return None
    try:
        return Proxy(check_proxy_url(value), name)
    except ValueError as exc:
        raise ConfigError(
            f"environment variable {name}: {exc}; fix it, or list the Tapkey hosts in NO_PROXY"
        ) from None


def _bypassed(url: str, no_proxy: str) -> bool:
    """True when `no_proxy` (curl's rules: *, host, .domain, host:port, IP, CIDR) names `url`."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for entry in no_proxy.replace(" ", ",").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, entry_port = entry, None
        if entry.startswith("["):  # [v6] or [v6]:port
            name, _, rest = entry[1:].partition("]")
            entry_port = rest[1:] if rest.startswith(":") else None
        elif entry.count(":") == 1:
            name, entry_port = entry.split(":")
        if entry_port is not None and entry_port != str(port):
            continue
        if _host_matches(host, name.rstrip(".")):
            return True
    return False


def _host_matches(host: str, name: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        try:
            return address in ipaddress.ip_network(name, strict=False)
        except ValueError:
            return False
    name = name.lstrip("*").lstrip(".")
    return bool(name) and (host == name or host.endswith(f".{name}"))
