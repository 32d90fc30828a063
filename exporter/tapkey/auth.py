"""Client-credentials access tokens for the Tapkey Management API.

Token flow: the first `TokenProvider.token()` call POSTs `grant_type=client_credentials` to the
token endpoint (through requests-oauthlib's `BackendApplicationClient`). The token is reused until
it is within `refresh_margin` seconds of its expiry, computed from the moment the request was
*sent* (so network latency can only make us renew early, never late). When the API answers 401,
the caller hands the rejected token to `invalidate()` and the next `token()` fetches a new one.
Renewal happens under a lock, so N worker threads that all need a new token trigger one fetch.

Secrets never leave this module: the client secret and access tokens are kept out of exceptions,
log records and reprs, and requests-oauthlib's DEBUG logging (which prints request bodies and
tokens) is silenced below. The token request follows no redirect: a 3xx is an error naming its
Location, so the secret is only ever posted to `token_url` (and through the configured proxy).
"""

from __future__ import annotations

import contextvars
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import requests
from oauthlib.oauth2 import BackendApplicationClient, OAuth2Error
from requests_oauthlib import OAuth2Session
from requests_oauthlib import oauth2_session as _oauth2_session

from exporter.config.urls import display_url, http_url_problem, is_loopback_url
from exporter.errors import AuthError, ConfigError
from exporter.tapkey.options import Connection
from exporter.tapkey.retry import Retries, RetryPolicy, retry_after_seconds, retry_log_level

if TYPE_CHECKING:  # proxies imports this module
    from exporter.config.proxies import Proxy

__all__ = ["TokenProvider", "require_secure_url"]

log = logging.getLogger(__name__)

#: A renewal margin never exceeds this fraction of the token's lifetime (short-lived tokens).
MAX_MARGIN_FRACTION = 0.25

# requests-oauthlib logs the token request body (holding the client secret), the response body and
# the token dict at DEBUG. Raising the level keeps those records from ever being created; the filter
# on the module logger also drops them if an application later lowers the level of the
# "requests_oauthlib" tree (logger filters are not inherited, so it sits on the logger that logs).
logging.getLogger("requests_oauthlib").setLevel(logging.WARNING)
logging.getLogger("oauthlib").setLevel(logging.WARNING)


def _at_least_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


_oauth_logger = logging.getLogger("requests_oauthlib.oauth2_session")
if _at_least_warning not in _oauth_logger.filters:
    _oauth_logger.addFilter(_at_least_warning)


def redirect_location(response: requests.Response) -> str | None:
    """The absolute URL a redirect points to; None when its Location cannot be read."""
    try:
        location = urljoin(response.url, response.headers.get("Location", ""))
        return location if urlsplit(location).hostname else None
    except ValueError:
        return None


def shown_location(response: requests.Response) -> str:
    """A redirect's target for a message (untrusted: shown without query, printable only)."""
    location = redirect_location(response)
    return display_url(location) if location else "an unreadable Location"


def network_hint(exc: Exception, proxy: Proxy | None) -> str:
    """What to check after a connection failure: the proxy if that leg failed, else the network."""
    if proxy is not None and isinstance(exc, requests.exceptions.ProxyError):
        return f"the proxy {proxy}"
    return "the network"


_TUNNEL_REFUSED = re.compile(r"Tunnel connection failed: (4\d\d)\b")


def proxy_refusal(exc: Exception, proxy: Proxy | None) -> str | None:
    """Why the proxy refused the CONNECT tunnel with a 4xx (not worth retrying), else None."""
    if proxy is None or not isinstance(exc, requests.exceptions.ProxyError):
        return None
    match = _TUNNEL_REFUSED.search(str(exc))
    if match is None:
        return None
    fix = (
        f"check the user and password in {proxy.source}"
        if match[1] == "407"
        else f"ask the proxy's administrators to allow it, or check {proxy.source}"
    )
    return f"the proxy {proxy} refused the connection (HTTP {match[1]}); {fix}"


def require_secure_url(url: str, key: str) -> None:
    """Raise ConfigError unless `url` is https, or plain http to a loopback host."""
    problem = http_url_problem(url)
    if problem is not None:
        raise ConfigError(f"{key}: {problem}")


# oauthlib can only relax its https requirement process-wide (OAUTHLIB_INSECURE_TRANSPORT, which
# would also let every other OAuth request in the process go out in clear text). requests-oauthlib
# checks transport through the `is_secure_transport` name it imports into `oauth2_session`, so we
# rebind just that name to a check that also accepts plain http to a loopback host: traffic that
# never leaves the machine (the sandbox). Everything else still needs https. The original check is
# consulted first so other users of requests-oauthlib in the process see no change; our own
# `require_secure_url` runs first in TokenProvider, so even that switch cannot make us send the
# client secret over plain http to a remote host.
_original_is_secure_transport: Callable[[str], bool] = _oauth2_session.is_secure_transport


def _secure_or_loopback(uri: str) -> bool:
    if _original_is_secure_transport(uri):
        return True
    return uri.lower().startswith("http://") and is_loopback_url(uri)


if not getattr(_oauth2_session.is_secure_transport, "_exporter_loopback", False):
    _secure_or_loopback._exporter_loopback = True  # type: ignore[attr-defined]
    _oauth2_session.is_secure_transport = _secure_or_loopback


class _Retryable(Exception):
    """A token request that may succeed if repeated (5xx, 429, network)."""

    def __init__(
        self, reason: str, retry_after: float | None = None, hint: str = "the network"
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.hint = hint


_KNOWN_REJECTIONS = frozenset(
    {"invalid_client", "invalid_scope", "unauthorized_client", "unsupported_grant_type"}
)
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def _error_code(response: requests.Response) -> str | None:
    """The OAuth `error` code of an error response if it looks like one (never free text)."""
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("error") if isinstance(body, dict) else None
    if isinstance(code, str) and _ERROR_CODE.match(code):
        return code
    return None


def _no_redirects(
    url: str, headers: dict[str, str], request_kwargs: dict[str, Any]
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """requests-oauthlib compliance hook: send the token request with redirects off.

    requests would re-post the form (client secret included) on a 307/308, to any URL.
    """
    return url, headers, {**request_kwargs, "allow_redirects": False}


class TokenProvider:
    """Hands out a valid access token for the configured OAuth client; thread-safe."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        token_url: str,
        scopes: Sequence[str],
        connection: Connection | None = None,
        retry: RetryPolicy | None = None,
        refresh_margin: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`connection`: timeouts, TLS verification and the proxy for `token_url`; `retry`: the
        same policy as the API's requests ([tapkey] max_retries and the other retry limits)."""
        connection = connection or Connection()
        require_secure_url(token_url, "[tapkey] token_url")
        if not client_id:
            raise ConfigError("[tapkey] client_id is empty; set it to the OAuth client's id")
        if isinstance(scopes, str):
            scopes = scopes.split()
        self._client_id = client_id
        self._client_secret = client_secret
        self._token_url = token_url
        self._scopes = list(scopes)
        self._timeout = connection.timeouts.for_requests
        self._verify = connection.verify
        self._proxy = connection.proxy
        self._retry = retry or RetryPolicy()
        self._clock = clock
        self._refresh_margin = max(0.0, refresh_margin)
        self._sleep = sleep
        self._random = random.Random()
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self._early_failure: Exception | None = None
        self.granted_scopes: frozenset[str] | None = None
        self.fetch_count = 0

    def __repr__(self) -> str:
        url = display_url(self._token_url)
        return f"TokenProvider(client_id={self._client_id!r}, token_url={url!r})"

    def token(self) -> str:
        """A valid access token: fetched on first use and renewed shortly before it expires."""
        with self._lock:
            failure, self._early_failure = self._early_failure, None
            if failure is not None:
                raise failure  # the background fetch's: its retries are spent, don't repeat them
            if self._needs_fetch():
                self._fetch()
            assert self._token is not None
            return self._token

    def fetch_in_background(self) -> threading.Thread:
        """Start fetching the first token in a daemon thread and return at once.

        The request is on its way while the caller prepares (run-once opens the database); the
        first `token()` waits for it. A failure is kept and raised by that `token()` call, once,
        where a failed fetch of its own would have been raised. The thread logs in the caller's
        context (its run id, once bound).
        """
        thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._fetch_early,),
            name="token-request",
            daemon=True,  # the caller may end (a database error, say) while it waits to retry
        )
        thread.start()
        return thread

    def _fetch_early(self) -> None:
        with self._lock:
            if not self._needs_fetch():
                return
            try:
                self._fetch()
            except Exception as exc:
                self._early_failure = exc

    def _needs_fetch(self) -> bool:
        return self._token is None or self._clock() >= self._renew_at

    def invalidate(self, token: str) -> None:
        """Forget `token` after the API rejected it (401); no-op if it was already replaced."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _fetch(self) -> None:
        """Fetch a new token (caller holds the lock), retrying transient failures (RetryPolicy)."""
        safe_url = display_url(self._token_url)
        retries = Retries(
            self._retry, clock=self._clock, sleep=self._sleep, jitter=self._random.random
        )
        while True:
            sent_at = self._clock()
            try:
                token = self._request_token()
            except _Retryable as exc:
                attempt = retries.count + 1
                wait = retries.next_wait(exc.retry_after)
                if wait is None:
                    raise AuthError(
                        f"token endpoint {safe_url} failed after {attempt} attempts "
                        f"({exc.reason}); check [tapkey] token_url and {exc.hint}, or try again "
                        "later"
                    ) from None
                log.log(
                    retry_log_level(attempt),
                    "token endpoint %s: %s; retrying in %.2f s (attempt %d of %d)",
                    safe_url,
                    exc.reason,
                    wait,
                    attempt,
                    self._retry.max_retries + 1,
                )
                retries.wait(wait)
                continue
            self._store(token, sent_at)
            return

    def _store(self, token: dict[str, Any], sent_at: float) -> None:
        access_token = token.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise AuthError(
                f"token endpoint {display_url(self._token_url)} returned no access_token; "
                "check [tapkey] token_url"
            )
        scope = token.get("scope")
        if isinstance(scope, str):
            scope = scope.split()
        self.granted_scopes = frozenset(scope) if isinstance(scope, list | tuple) else None
        expires_in = token.get("expires_in")
        numeric = isinstance(expires_in, int | float) and not isinstance(expires_in, bool)
        lifetime = float(expires_in) if numeric and isinstance(expires_in, int | float) else 0.0
        if 0 < lifetime < float("inf"):
            margin = min(self._refresh_margin, lifetime * MAX_MARGIN_FRACTION)
            self._renew_at = sent_at + lifetime - margin
            stated = f"lifetime {lifetime:g} s"
        else:
            # A guessed lifetime would renew either needlessly or too late, and taking 0 or a
            # negative one at its word would fetch a token before every request; the API's 401
            # says exactly when the token is no longer good, and costs one repeated request.
            self._renew_at = float("inf")
            missing = f"expires_in {expires_in} is no lifetime" if numeric else "no expires_in"
            stated = (
                f"{missing} in the response, so no lifetime is assumed: the token is used "
                "until the API rejects it (401), then a new one is fetched and the request repeated"
            )
        self._token = access_token
        self.fetch_count += 1
        log.info(
            "fetched an access token (%s; scopes: %s)",
            stated,
            " ".join(sorted(self.granted_scopes))
            if self.granted_scopes is not None
            else "not stated",
        )

    def _request_token(self) -> dict[str, Any]:
        """One POST to the token endpoint; returns the parsed token or raises."""
        safe_url = display_url(self._token_url)
        # A fresh OAuth2Session per fetch: no stale token state, and its add_token /
        # TokenExpiredError path is never involved. It is not given the scopes (they go in the
        # request body instead): otherwise oauthlib raises a Warning carrying the token when the
        # server grants other scopes than requested.
        session = OAuth2Session(client=BackendApplicationClient(client_id=self._client_id))
        # No netrc or CA bundle from the environment; the proxy comes in as a setting.
        session.trust_env = False
        session.register_compliance_hook("access_token_request", _no_redirects)
        session.register_compliance_hook("access_token_response", self._check_response)
        try:
            token: dict[str, Any] = session.fetch_token(
                self._token_url,
                client_secret=self._client_secret,
                include_client_id=True,
                scope=self._scopes,
                timeout=self._timeout,
                verify=self._verify,
                proxies=self._proxy.for_requests if self._proxy is not None else None,
            )
        except requests.exceptions.SSLError:
            # Not transient: retrying a certificate problem only delays the message.
            raise AuthError(
                f"TLS verification of the token endpoint {safe_url} failed; check [tapkey] "
                "token_url and ca_bundle"
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            refusal = proxy_refusal(exc, self._proxy)
            if refusal is not None:
                raise AuthError(f"token request to {safe_url}: {refusal}") from None
            hint = network_hint(exc, self._proxy)
            raise _Retryable(f"network error: {type(exc).__name__}", hint=hint) from None
        except requests.RequestException as exc:
            raise AuthError(
                f"token request to {safe_url} failed ({type(exc).__name__}); "
                "check [tapkey] token_url"
            ) from None
        except OAuth2Error as exc:
            # Only reached for a 2xx response whose body still says "error" or holds no token.
            code = exc.error if isinstance(exc.error, str) else None
            if code in _KNOWN_REJECTIONS:
                raise AuthError(self._rejection_message(code, None)) from None
            raise AuthError(
                f"token endpoint {safe_url} returned no usable access token "
                f"({code or 'unreadable'}); check [tapkey] token_url"
            ) from None
        except Warning:
            raise AuthError(
                f"token endpoint {safe_url} returned an unexpected scope change; "
                "check [tapkey] scopes"
            ) from None
        except ValueError:
            # oauthlib refuses an expires_in that is not a number (it would be our only guess).
            raise AuthError(
                f"token endpoint {safe_url} returned a token whose expires_in is not a number; "
                "check [tapkey] token_url"
            ) from None
        finally:
            session.close()
        return token

    def _check_response(self, response: requests.Response) -> requests.Response:
        """requests-oauthlib compliance hook: decide what a token-endpoint status means."""
        status = response.status_code
        if response.is_redirect:
            raise AuthError(
                f"token endpoint {display_url(self._token_url)} answered with a redirect (HTTP "
                f"{status}) to {shown_location(response)}; the token request carries the client "
                "secret and follows no redirect: set [tapkey] token_url to the endpoint itself"
            )
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}", retry_after_seconds(response.headers))
        if 200 <= status < 300:
            return response
        raise AuthError(self._rejection_message(_error_code(response), status))

    def _rejection_message(self, code: str | None, status: int | None) -> str:
        safe_url = display_url(self._token_url)
        if code == "invalid_client" or (status == 401 and code is None):
            return (
                "token endpoint rejected the client credentials (invalid_client); check [tapkey] "
                "client_id and client_secret / client_secret_file"
            )
        if code == "invalid_scope":
            return (
                f"token endpoint rejected the requested scopes (invalid_scope: "
                f"{' '.join(self._scopes)}); check [tapkey] scopes (this exporter needs "
                "read:owneraccounts read:core:entities) and the scopes allowed for the OAuth client"
            )
        if code in ("unauthorized_client", "unsupported_grant_type"):
            return (
                f"token endpoint refused the client-credentials grant ({code}); [tapkey] client_id "
                "must name a client-credentials (service account) OAuth client"
            )
        detail = ", ".join(x for x in (f"HTTP {status}" if status else "", code or "") if x)
        return (
            f"token endpoint {safe_url} refused the token request ({detail or 'no reason given'}); "
            "check [tapkey] token_url, client_id and scopes"
        )
