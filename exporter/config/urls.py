"""URLs in messages and loopback hosts: `display_url` shows a URL without secrets, `is_loopback_url`
tells the sandbox (plain http allowed, never proxied) from the real API.

Shared by the settings checks, the proxy choice and the Tapkey client, so it sits below all of them.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["display_url", "is_loopback_url"]


def is_loopback_url(url: str) -> bool:
    """True when the URL's host is a loopback address (127.0.0.0/8, ::1) or `localhost`."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    if not host:
        return False
    host = host.rstrip(".").lower()
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
