"""URLs in messages, loopback hosts and SQLite files: `display_url` shows a URL without secrets,
`masked_url`/`without_secrets` hide a database URL's credentials in logs and driver messages,
`is_loopback_host`/`is_loopback_url` tell the sandbox (plain http allowed, never proxied) from the
real API, `sqlite_file` tells an on-disk SQLite database from an in-memory one or a server.

Shared by the settings checks, the proxy choice and the Tapkey client, so it sits below all of them.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote, unquote_plus, urlsplit

from sqlalchemy.engine import URL, make_url

__all__ = [
    "LOOPBACK_HOSTS",
    "display_url",
    "http_url_problem",
    "is_loopback_host",
    "is_loopback_url",
    "masked_url",
    "sqlite_file",
    "url_secrets",
    "without_secrets",
]


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


#: The loopback hosts plain http may go to, as messages name them (see `is_loopback_host`).
LOOPBACK_HOSTS = "127.0.0.0/8, ::1, ::ffff:127.x.y.z, localhost, *.localhost"


def http_url_problem(url: str) -> str | None:
    """Why `url` may not be used to reach Tapkey, or None: it must be https, or plain http to a
    loopback host (the sandbox), so nothing travels unencrypted beyond this machine.

    The one check behind `[tapkey] token_url`/`api_base_url` and the token provider and API
    client; the message shows the URL without user info (it may hold a password).
    """
    try:
        parts = urlsplit(url.strip())
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return "is not a valid URL (a port must be a number); use https://host/path"
    shown = display_url(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return f"must be an http(s) URL such as https://my.tapkey.com (got {shown!r})"
    if parts.scheme.lower() == "http" and not is_loopback_host(parts.hostname):
        return (
            f"plain http is only allowed to a loopback host ({LOOPBACK_HOSTS}); use https:// "
            f"(got {shown!r})"
        )
    return None


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


# A query parameter of a database URL whose name says it holds a secret (libpq's password and
# sslpassword, PyMySQL's passwd, an ODBC PWD, a token or key of a driver or proxy, ...).
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_SECRET_QUERY_KEY = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)
_QUERY_VALUE = re.compile(r"(?<=[?&;])([^=&;#]+)=([^&;#]*)")


def masked_url(url: str | URL) -> str:
    """Return `url` with every credential it carries replaced by ***, for logs and messages.

    That is the password of its user info and any query parameter named like a secret
    (`?password=`, `sslpassword`, `api_key`, `token`, ...).
    """
    parsed: URL | None = url if isinstance(url, URL) else None
    if parsed is None:
        try:
            parsed = make_url(url)
        except Exception:
            parsed = None
    if parsed is not None and "@" not in (parsed.host or ""):
        text = parsed.render_as_string(hide_password=True)
    else:
        raw = url if isinstance(url, str) else url.render_as_string(hide_password=False)
        text = _masked_user_info(raw)
    return _QUERY_VALUE.sub(_mask_query_value, text)


def _masked_user_info(raw: str) -> str:
    """`raw`, a URL that cannot be parsed, with everything from its user's ":" to its last "@"
    as ***: an unescaped "@" in the password, or a mistyped scheme (`postgresql:/u:pw@h`,
    `postgresql//u:pw@h`, `u:pw@h/db`), which has no "://" to find the user by.

    The user's ":" is the first one that does not end a scheme (letters, then ":/").
    """
    at = raw.rfind("@")
    colons = [i for i, char in enumerate(raw[:at]) if char == ":"]
    if colons and _SCHEME.fullmatch(raw[: colons[0]]) and raw[colons[0] + 1 : colons[0] + 2] == "/":
        colons.pop(0)
    if at < 0 or not colons:
        return raw
    return f"{raw[: colons[0] + 1]}***{raw[at:]}"


def _mask_query_value(match: re.Match[str]) -> str:
    key = match.group(1)
    return f"{key}=***" if _SECRET_QUERY_KEY.search(unquote_plus(key)) else match.group()


def url_secrets(url: str | URL) -> list[str]:
    """The credentials `url` carries (its password, secret query values), as they may be quoted."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except Exception:
        return []
    found = [parsed.password] if parsed.password else []
    for key, value in parsed.query.items():
        if _SECRET_QUERY_KEY.search(key):
            found += [value] if isinstance(value, str) else list(value)
    # The raw URL may carry them percent-encoded; a driver message quotes them decoded. Shorter
    # ones would be replaced inside every word that happens to contain them.
    found += [quote(secret, safe="") for secret in found]
    return sorted({secret for secret in found if len(secret) >= 4}, key=len, reverse=True)


def without_secrets(text: str, url: str | URL) -> str:
    """`text` (a driver's error message, say) with any credential of `url` in it replaced by ***."""
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return text
