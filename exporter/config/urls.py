"""URLs in messages, loopback hosts and SQLite files: `display_url` shows a URL without secrets,
`is_loopback_host`/`is_loopback_url` tell the sandbox (plain http allowed, never proxied) from the
real API, `sqlite_file` tells an on-disk SQLite database from an in-memory one or a server.

Shared by the settings checks, the proxy choice and the Tapkey client, so it sits below all of them.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from sqlalchemy.engine import URL, make_url

__all__ = ["display_url", "is_loopback_host", "is_loopback_url", "sqlite_file"]


def is_loopback_url(url: str) -> bool:
    """True when the URL's host is a loopback host (see `is_loopback_host`)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return is_loopback_host(host or "")


def is_loopback_host(host: str) -> bool:
    """True for `localhost`, `*.localhost`, 127.0.0.0/8, ::1 and IPv4-mapped ::ffff:127.x.y.z.

    RFC 6761 reserves `*.localhost` for loopback; a mapped address reaches the IPv4 loopback.
    """
    host = host.strip("[]").rstrip(".").lower()
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def display_url(url: str) -> str:
    """The URL without user info, query or fragment: safe to put in a message."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable url>"
    if ":" in host:
        host = f"[{host}]"
    shown = f"{parts.scheme}://{host}{port}{parts.path}"
    # Also used for URLs a server sent (a redirect's Location): no control characters, bounded.
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    return shown if len(shown) <= 200 else shown[:197] + "..."


def sqlite_file(url: str | URL) -> str | None:
    """The database file of an on-disk SQLite URL, else None (another database, `:memory:`, or a
    `file:` URI, whose path SQLite itself resolves)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database
