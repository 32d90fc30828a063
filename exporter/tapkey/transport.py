"""One GET to the Tapkey Management API: token, retries, redirects, and what a status means.

`Transport` owns the `requests.Session` (one connection pool sized for the worker threads) that
serves every call. A call adds a bearer token from the `TokenProvider`, retries 429/5xx/network
failures with capped exponential backoff, re-fetches the token once after a 401, and turns
everything else into one typed error from `exporter.errors`. Redirects are followed only within
the origin of `api_base_url` (same scheme, host and port), so the bearer token never goes to
another host or over plain http; at most `MAX_REDIRECTS` in a row.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from exporter.config.urls import display_url
from exporter.errors import (
    ApiError,
    AuthError,
    Interrupted,
    PayloadError,
)
from exporter.tapkey.auth import (
    TokenProvider,
    network_hint,
    proxy_refusal,
    redirect_location,
    shown_location,
)
from exporter.tapkey.options import Connection
from exporter.tapkey.paging import TopRejected
from exporter.tapkey.retry import Retries, RetryPolicy, retry_after_seconds, retry_log_level
from exporter.tapkey.statuses import (
    Outcome,
    Target,
    exhausted_error,
    status_error,
    status_outcome,
)

__all__ = ["MAX_REDIRECTS", "Transport", "top_limit"]

log = logging.getLogger(__name__)

#: Redirects followed in a row for one request (a loop ends with an ApiError).
MAX_REDIRECTS: Final = 5
#: How much of a 400's body is read to find a stated maximum $top.
MAX_ERROR_BODY: Final = 16 * 1024
# OData's MaxTop refusal ("The limit of '100' for Top query has been exceeded. ..."), and the
# looser wordings other servers use ("MaxTop is 500", "maximum $top: 500").
_TOP_LIMIT = re.compile(
    r"limit of \W{0,2}(\d{1,7})\W{0,2} for \$?top"
    r"|max(?:imum)?\s*\$?top\W{0,6}(?:is\s*)?(\d{1,7})",
    re.IGNORECASE,
)


class _BodyInterrupted(Exception):
    """The connection broke while the body was being read (retried like a network error)."""


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL without user info; None for anything else."""
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), (parts.hostname or "").rstrip(".")
        port = parts.port or {"https": 443, "http": 80}.get(scheme)
    except ValueError:
        return None
    if not host or port is None or parts.username is not None or parts.password is not None:
        return None
    return scheme, host, port


def top_limit(body: str) -> int | None:
    """The maximum `$top` a 400's body states (OData's MaxTop wording), if it states one."""
    match = _TOP_LIMIT.search(body)
    if match is None:
        return None
    return int(match[1] or match[2])


class Transport:
    """Sends GETs to the API base URL and returns their bodies; shareable between threads."""

    def __init__(
        self,
        *,
        base_url: str,
        tokens: TokenProvider,
        connection: Connection,
        retry: RetryPolicy,
        workers: int,
        max_body_bytes: int,
        session: requests.Session | None,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
        stop: threading.Event | None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._origin = _origin(self._base_url)
        self._proxy = connection.proxy
        self._answered = False  # some request got a 2xx: the base URL and routes are right
        self._tokens = tokens
        self._timeout = connection.timeouts.for_requests
        self._verify = connection.verify
        self._retry = retry
        self._sleep = sleep
        self._clock = clock
        self._max_body_bytes = max_body_bytes
        self._stop = stop  # once set, no request is sent (a stopped run leaves fetches behind)
        self._random = random.Random()
        self._counter_lock = threading.Lock()
        self._requests = 0
        self._retries = 0
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # No netrc or CA bundle from the environment; the proxy comes in as a setting.
            session.trust_env = False
            # Pages, and as many requests confirming lists' ends (TapkeyClient's page slots).
            connections = 2 * max(1, workers)
            adapter = HTTPAdapter(pool_connections=2, pool_maxsize=connections, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self._session = session

    @property
    def base_url(self) -> str:
        """The API base URL without a trailing slash (may hold user info: not for display)."""
        return self._base_url

    @property
    def request_count(self) -> int:
        """HTTP requests sent so far, retries included."""
        with self._counter_lock:
            return self._requests

    @property
    def retry_count(self) -> int:
        """Requests repeated after a 429, a 5xx or a network failure."""
        with self._counter_lock:
            return self._retries

    def close(self) -> None:
        """Close the connection pool (only if this transport created the session)."""
        if self._owns_session:
            self._session.close()

    def _count(self, counter: list[int], *, retry: bool = False) -> None:
        with self._counter_lock:
            self._requests += 1
            self._retries += retry
        counter[0] += 1

    def backoff(self, retries: int) -> float:
        """The policy's wait after `retries` retries, with jitter (a re-read list settles)."""
        return self._retry.delay(retries, None, self._random.random())

    def get_text(self, target: Target, params: dict[str, str], counter: list[int]) -> str:
        """GET one page and return its body, retrying what is worth retrying."""
        url = self._base_url + target.path
        query: dict[str, str] | None = params
        retries = Retries(
            self._retry, clock=self._clock, sleep=self._sleep, jitter=self._random.random
        )
        redirects = 0
        reauthenticated = False
        is_retry = False
        while True:
            if self._stop is not None and self._stop.is_set():
                raise Interrupted
            token = self._tokens.token()
            self._count(counter, retry=is_retry)
            is_retry = False
            status: int | None = None
            outcome: Outcome = "fail"
            retry_after: float | None = None
            truncated = False
            location: str | None = None
            hint = "the network"
            try:
                with self._session.get(
                    url,
                    params=query,
                    headers={"Accept": "application/json", "Authorization": f"Bearer {token}"},
                    timeout=self._timeout,
                    verify=self._verify,
                    stream=True,
                    allow_redirects=False,  # followed below, only within the configured origin
                    proxies=self._proxy.for_requests if self._proxy is not None else None,
                ) as response:
                    status = response.status_code
                    if response.is_redirect:
                        location = self._redirect_target(target, response)
                    else:
                        outcome = status_outcome(status)
                        if outcome == "ok":
                            self._answered = True
                            return self._read_body(response, target)
                        if status == 400 and "$top" in params:
                            # Maybe OData's MaxTop: exporter.tapkey.paging tries a smaller $top.
                            raise TopRejected(
                                self._status_error(target, status), self._stated_limit(response)
                            )
                        retry_after = retry_after_seconds(response.headers)
                failure, cause = f"HTTP {status}", ""
            except _BodyInterrupted as exc:
                status, truncated, failure, cause = None, True, "body cut off", str(exc)
            except requests.exceptions.SSLError:
                raise ApiError(
                    f"GET {target.path}: TLS verification failed; check [tapkey] api_base_url "
                    "and ca_bundle"
                ) from None
            except requests.Timeout as exc:
                failure, cause = "timed out", type(exc).__name__
            except requests.ConnectionError as exc:
                refusal = proxy_refusal(exc, self._proxy)
                if refusal is not None:
                    raise ApiError(f"GET {target.path}: {refusal}") from None
                failure, cause = "connection failed", type(exc).__name__
                hint = network_hint(exc, self._proxy)
            except requests.RequestException as exc:
                raise ApiError(
                    f"GET {target.path} failed ({type(exc).__name__}); check [tapkey] api_base_url"
                ) from None
            if location is not None:
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise ApiError(
                        f"GET {target.path}: more than {MAX_REDIRECTS} redirects in a row (a "
                        "redirect loop); check [tapkey] api_base_url",
                        status=status,
                    )
                log.debug("GET %s: redirected to %s", target.path, display_url(location))
                url, query = location, None
                continue
            if status is not None:
                if outcome == "reauth":
                    if reauthenticated:
                        raise AuthError(
                            f"GET {target.path} was refused (401) even with a freshly fetched "
                            "token: the token was revoked or the OAuth client lost access; check "
                            "the client in the Tapkey portal"
                        )
                    reauthenticated = True
                    self._tokens.invalidate(token)
                    continue
                if outcome != "retry":
                    raise self._status_error(target, status)
            wait = retries.next_wait(retry_after)
            if wait is None:
                attempts = retries.count + 1
                raise exhausted_error(target, status, failure, cause, attempts, truncated, hint)
            log.log(
                retry_log_level(retries.count + 1),
                "GET %s: %s%s; retrying in %.2f s (retry %d of %d)",
                target.path,
                failure,
                f" ({cause})" if cause else "",
                wait,
                retries.count + 1,
                self._retry.max_retries,
            )
            retries.wait(wait)
            is_retry = True

    def _stated_limit(self, response: requests.Response) -> int | None:
        """The maximum $top a 400's body states, if any (only its start is read)."""
        try:
            body = next(response.iter_content(chunk_size=MAX_ERROR_BODY), b"")
        except requests.RequestException:
            return None
        return top_limit(body.decode("utf-8", "replace"))

    def _redirect_target(self, target: Target, response: requests.Response) -> str:
        """Where a redirect leads if it stays within the configured origin; ApiError otherwise."""
        location = redirect_location(response)
        if location is not None and _origin(location) == self._origin:
            return location
        raise ApiError(
            f"GET {target.path}: the API redirected (HTTP {response.status_code}) to "
            f"{shown_location(response)}, away from {display_url(self._base_url)}; redirects "
            "are followed only within it, so the token never leaves it: check [tapkey] "
            "api_base_url",
            status=response.status_code,
        )

    def _read_body(self, response: requests.Response, target: Target) -> str:
        limit = self._max_body_bytes
        size_text = f"{limit / 2**20:g} MiB" if limit >= 2**20 else f"{limit} bytes"
        too_big = PayloadError(
            f"GET {target.path} returned more than {size_text}; lower [tapkey] page_size"
        )
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(chunk_size=1 << 20):
                size += len(chunk)
                if size > limit:
                    raise too_big
                chunks.append(chunk)
        except requests.exceptions.ContentDecodingError:
            raise PayloadError(f"GET {target.path} returned an undecodable body") from None
        except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError) as exc:
            raise _BodyInterrupted(type(exc).__name__) from None
        try:
            return b"".join(chunks).decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError(f"GET {target.path} returned a body that is not UTF-8") from None

    def _status_error(self, target: Target, status: int) -> ApiError:
        """The error for a status that is not retried (see exporter.tapkey.statuses)."""
        return status_error(
            target, status, answered=self._answered, granted=self._tokens.granted_scopes
        )
