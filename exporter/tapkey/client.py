"""Tapkey Management API client: paging, retries, and what each HTTP status means.

One `requests.Session` (one connection pool sized for the worker threads) serves every call. A call
adds a bearer token from the `TokenProvider`, retries 429/5xx/network failures with capped
exponential backoff, re-fetches the token once after a 401, and turns everything else into one
typed error from `exporter.errors`. Redirects are followed only within the origin of
`api_base_url` (same scheme, host and port), so the bearer token never goes to another host or
over plain http; at most `MAX_REDIRECTS` in a row. Pages are read with overlapping `$skip`
windows so that a list changing while it is paged is detected and re-read instead of silently
losing rows.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeVar, cast
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter

from exporter.config.urls import display_url
from exporter.errors import (
    ApiError,
    AuthError,
    Interrupted,
    PagingError,
    PayloadError,
    PermissionDeniedError,
)
from exporter.tapkey.access import (
    AccessRecord,
    FieldSpec,
    OwnerEntities,
    Privacy,
    parse_element,
)
from exporter.tapkey.auth import (
    TokenProvider,
    network_hint,
    proxy_refusal,
    redirect_location,
    require_secure_url,
    retry_log_level,
    shown_location,
)
from exporter.tapkey.paging import (
    ListEnd,
    ListRead,
    PagingCheck,
    PagingFacts,
    TopRejected,
    confirms_end,
    read_list,
)
from exporter.tapkey.records import (
    BadValue,
    KnownTexts,
    LockRecord,
    OwnerLocks,
    OwnerRecord,
    element_id,
    parse_lock,
    parse_owner,
    split_array,
)

if TYPE_CHECKING:
    from exporter.config.proxies import Proxy

__all__ = ["TapkeyClient"]

log = logging.getLogger(__name__)

OWNERS_SCOPE: Final = "read:owneraccounts"
LOCKS_SCOPE: Final = "read:core:entities"
LOGS_SCOPE: Final = "read:logs"
#: Statuses worth repeating a GET for.
RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
MAX_BODY_BYTES: Final = 64 * 1024 * 1024
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

T = TypeVar("T")


# -- HTTP ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    """What is being fetched: the path for URLs and messages, the owner and scope for 403
    advice (the scope defaults to the owner list's or the bound locks')."""

    path: str
    owner_id: str | None = None
    scope: str | None = None  # the route's scope, when it is not the lock list's


class _BodyInterrupted(Exception):
    """The connection broke while the body was being read (retried like a network error)."""


def _retry_after(headers: Any) -> float | None:
    """Seconds from a Retry-After header: delta-seconds, or an HTTP date relative to `Date`."""
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # an HTTP date: measured against the server's own Date header, not our clock
        until = parsedate_to_datetime(value)
        now = parsedate_to_datetime(headers.get("Date") or "")
    except (TypeError, ValueError):
        return None
    return max(0.0, (until - now).total_seconds())


Outcome = Literal["ok", "retry", "reauth", "forbidden", "fail"]


def _status_outcome(status: int) -> Outcome:
    """The one place that decides what an API status means."""
    if 200 <= status < 300:
        return "ok"
    if status in RETRY_STATUSES:
        return "retry"
    if status == 401:
        return "reauth"
    if status == 403:
        return "forbidden"
    return "fail"


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


def _text(item: LockRecord | AccessRecord | str) -> str:
    return item if isinstance(item, str) else item.raw


R = TypeVar("R", LockRecord, AccessRecord)


@dataclass(slots=True)
class _Settled(Generic[R]):
    """A list's rows sorted out: records, unchanged ids and what was skipped."""

    records: list[R]
    unchanged: list[str]
    skipped: int
    skipped_ids: frozenset[str]
    unidentified: int


def _settle(
    rows: Sequence[tuple[str | None, R | str | None]], problems: dict[str, str]
) -> _Settled[R]:
    """Keep one copy of each id; an id listed twice with different contents, or unreadable, is
    skipped entirely (left as stored), and so is an element without a readable id."""
    first: dict[str, R | str | None] = {}
    copies: dict[str, int] = {}
    conflicting: set[str] = set()
    unidentified = 0
    for item_id, item in rows:
        if item_id is None:
            unidentified += 1
        elif item_id not in first:
            first[item_id], copies[item_id] = item, 1
        else:
            copies[item_id] += 1
            kept = first[item_id]
            if item is None or kept is None or _text(item) != _text(kept):
                conflicting.add(item_id)
    records: list[R] = []
    unchanged: list[str] = []
    skipped_ids: set[str] = set()
    skipped = unidentified
    for item_id, kept in first.items():
        if kept is None or item_id in conflicting:
            skipped += copies[item_id]
            skipped_ids.add(item_id)
            problems.setdefault(item_id, "listed more than once with different contents")
            continue
        skipped += copies[item_id] - 1
        if isinstance(kept, str):
            unchanged.append(item_id)
        else:
            records.append(kept)
    return _Settled(records, unchanged, skipped, frozenset(skipped_ids), unidentified)


def _log_skips(owner_id: str, settled: _Settled[Any], problems: dict[str, str], what: str) -> None:
    if not settled.skipped:
        return
    details = "; ".join(f"{k}: {v}" for k, v in list(problems.items())[:5])
    log.warning(
        "owner %s: skipped %d unreadable or duplicate %s elements (%d without a readable id)%s",
        owner_id,
        settled.skipped,
        what,
        settled.unidentified,
        f"; {details}" if details else "",
    )


class TapkeyClient:
    """Reads owners and bound locks from the Tapkey Management API; shareable between threads."""

    def __init__(
        self,
        *,
        base_url: str,
        tokens: TokenProvider,
        page_size: int = 1000,
        workers: int = 4,
        timeout: tuple[float, float] = (10.0, 60.0),
        max_retries: int = 5,
        backoff_factor: float = 0.5,
        max_retry_after: float = 60.0,
        max_retry_time: float = 300.0,
        verify: bool | str = True,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_restarts: int = 3,
        clock: Callable[[], float] = time.monotonic,
        max_body_bytes: int = MAX_BODY_BYTES,
        stop: threading.Event | None = None,
        proxy: Proxy | None = None,
    ) -> None:
        require_secure_url(base_url, "[tapkey] api_base_url")
        self._base_url = base_url.rstrip("/")
        self._origin = _origin(self._base_url)
        self._proxy = proxy
        self._answered = False  # some request got a 2xx: the base URL and routes are right
        self._tokens = tokens
        # What the server's paging is known to do (tapkey.paging); the sync loads and keeps it.
        self.paging = PagingFacts(page_size)
        self._timeout = timeout
        self._max_retries = max(0, max_retries)
        self._backoff_factor = max(0.0, backoff_factor)
        self._max_retry_after = max(0.0, max_retry_after)
        self._max_retry_time = max_retry_time
        self._verify = verify
        self._sleep = sleep
        self._clock = clock
        self._max_restarts = max(0, max_restarts)
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
            adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(1, workers), max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self._session = session

    # -- public API ------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """The API base URL as it may be shown and stored (no user info or query)."""
        return display_url(self._base_url)

    @property
    def request_count(self) -> int:
        """HTTP requests sent by this client so far, retries included."""
        with self._counter_lock:
            return self._requests

    @property
    def granted_scopes(self) -> frozenset[str] | None:
        """The scopes the token endpoint granted (None until a token is fetched, or if it did
        not say)."""
        return self._tokens.granted_scopes

    @property
    def retry_count(self) -> int:
        """Requests repeated after a 429, a 5xx or a network failure."""
        with self._counter_lock:
            return self._retries

    def close(self) -> None:
        """Close the connection pool (only if this client created the session)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> TapkeyClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def list_owners(self, *, stored: Collection[str] | None = None) -> list[OwnerRecord]:
        """Every owner account the OAuth client can see (PayloadError if any cannot be read).

        `stored`: the ids of the owners stored as present, if known (saves a request when the
        list holds them all; see exporter.tapkey.paging, rule 3).
        """
        target = _Target("/api/v1/Owners")
        listed = tuple(stored) if stored is not None else None  # in no particular order
        rows, _ = self._read_list(target, {}, parse_owner, KnownTexts({}), listed, in_order=False)
        owners: list[OwnerRecord] = []
        seen: set[str] = set()
        for _, owner in rows:
            assert owner is not None  # parse_owner raises otherwise
            owner_id = owner.id  # also the id of an owner whose id is too long to store
            if owner_id in seen:
                raise PayloadError(f"GET {target.path} listed owner {owner_id} twice")
            seen.add(owner_id)
            owners.append(owner)
        return owners

    def list_bound_locks(
        self,
        owner_id: str,
        *,
        expand: Sequence[str] = (),
        known: Mapping[str, str] | None = None,
    ) -> OwnerLocks:
        """All locks bound to one owner account, with the elements that could not be read.

        `known` maps lock ids to the payload text already stored for this owner: an element whose
        text equals it is listed in `unchanged_ids` without becoming a record (it parsed when it
        was stored, and the text is all a record derives from), which is most locks on most runs.
        A compact page made only of such elements is recognised as a whole (`KnownTexts.page`).
        """
        target = _Target(f"/api/v1/Owners/{quote(owner_id, safe='')}/BoundLocks", owner_id)
        params = {"expand": ",".join(expand)} if expand else {}
        known = known or {}
        problems: dict[str, str] = {}

        # Each page is parsed as it arrives, so its JSON objects are freed at once.
        def parse(value: Any, lock_id: str | None, raw: str) -> LockRecord | str | None:
            if lock_id is None:
                return None
            if known.get(lock_id) == raw:
                return raw  # unchanged: its text stands for it
            try:
                return parse_lock(value, lock_id, owner_id, raw)
            except BadValue as exc:
                problems[lock_id] = str(exc)
                return None

        # mypy joins the union's members to `object` when it solves T.
        rows, requests_sent = cast(
            tuple[list[tuple[str | None, LockRecord | str | None]], int],
            self._read_list(target, params, parse, KnownTexts(known), tuple(known)),
        )
        settled = _settle(rows, problems)
        _log_skips(owner_id, settled, problems, "lock")
        return OwnerLocks(
            owner_id=owner_id,
            records=settled.records,
            skipped=settled.skipped,
            skipped_ids=settled.skipped_ids,
            unidentified_skips=settled.unidentified > 0,
            requests=requests_sent,
            unchanged_ids=settled.unchanged,
        )

    def list_owner_entities(
        self,
        owner_id: str,
        *,
        path: str,
        scope: str,
        fields: tuple[FieldSpec, ...],
        privacy: Privacy,
        personal: bool,
        known: Mapping[str, str] | None = None,
        what: str = "element",
    ) -> OwnerEntities:
        """One owner's complete list on an access route (`path`: Contacts, BoundCards, Grants).

        The same contract as `list_bound_locks`: an element whose stored text (the text, or its
        keyed digest for `personal` data under [privacy] hash/drop) equals `known`'s is listed
        in `unchanged_ids` without becoming a record. `scope` names the route's scope in a 403.
        """
        target = _Target(f"/api/v1/Owners/{quote(owner_id, safe='')}/{path}", owner_id, scope)
        known = known or {}
        problems: dict[str, str] = {}
        keeps_texts = not personal or privacy.keeps_texts

        def parse(value: Any, item_id: str | None, raw: str) -> AccessRecord | str | None:
            if item_id is None:
                return None
            stored = raw if keeps_texts else privacy.stored_text(raw, personal=True)
            if known.get(item_id) == stored:
                return stored  # unchanged: its text stands for it
            try:
                return parse_element(value, item_id, owner_id, raw, stored, fields, privacy)
            except BadValue as exc:
                problems[item_id] = str(exc)
                return None

        # Digests are not the page's text: only plain texts can recognise whole pages.
        pages = KnownTexts(known) if keeps_texts else KnownTexts({})
        rows, requests_sent = cast(
            tuple[list[tuple[str | None, AccessRecord | str | None]], int],
            self._read_list(target, {}, parse, pages, tuple(known)),
        )
        settled = _settle(rows, problems)
        _log_skips(owner_id, settled, problems, what)
        return OwnerEntities(
            owner_id=owner_id,
            records=settled.records,
            skipped=settled.skipped,
            skipped_ids=settled.skipped_ids,
            unidentified_skips=settled.unidentified > 0,
            requests=requests_sent,
            unchanged_ids=settled.unchanged,
        )

    @property
    def page_size(self) -> int:
        """The `$top` list requests ask for now (what is known of the server's MaxTop applied)."""
        return self.paging.top()

    def log_entries_page(self, owner_id: str, params: Mapping[str, str]) -> str:
        """One page of an owner's log entries, the body as sent (see exporter.sync.log_entries).

        `params` are the OData options (`$top`, `$skip`, `$filter`). A 400 is TopRejected (with
        the maximum `$top` its message states, if any): the log reader tells a refused `$top`
        from a refused `$filter`. A 403 is a PermissionDeniedError naming scope read:logs.
        """
        path = f"/api/v1/Owners/{quote(owner_id, safe='')}/LogEntries"
        return self._get_text(_Target(path, owner_id, LOGS_SCOPE), dict(params), [0])

    def page_size_refused(self, refused: int, top: int) -> None:
        """`$top=refused` got a 400 and `$top=top` an answer (the log reader stepped down):
        every later list asks for at most `top`, and the database keeps it."""
        self.paging.stepped_down(refused, top)

    # -- paging ----------------------------------------------------------------------------------

    def _read_list(
        self,
        target: _Target,
        params: dict[str, str],
        parse: Callable[[Any, str | None, str], T | None],
        known: KnownTexts,
        stored: Sequence[str] | None = None,
        *,
        in_order: bool = True,
    ) -> tuple[list[tuple[str | None, T | None]], int]:
        """Read a whole list (exporter.tapkey.paging decides; this only transports the pages)."""
        counter = [0]

        def restart(attempt: int) -> None:
            log.info(
                "GET %s: the list changed while it was being paged; re-reading it (%d of %d)",
                target.path,
                attempt + 1,
                self._max_restarts,
            )
            self._sleep(self._backoff(attempt, None))  # let a burst of changes settle

        read = read_list(
            self._page_getter(target, params, counter, known),
            self.paging,
            parse,
            where=f"GET {target.path}",
            max_restarts=self._max_restarts,
            on_restart=restart,
            stored=stored,
            stored_in_order=in_order,
        )
        if read.end is not None:
            self.paging.ended(target.owner_id, read.end, (target, params))
        return read.rows, counter[0]

    def _page_getter(
        self,
        target: _Target,
        params: dict[str, str],
        counter: list[int],
        known: KnownTexts,
    ) -> Callable[[int, int], tuple[list[str | None], list[tuple[Any, str]]]]:
        def get_page(skip: int, top: int) -> tuple[list[str | None], list[tuple[Any, str]]]:
            query = {**params, "$top": str(top), "$skip": str(skip)}
            text = self._get_text(target, query, counter)
            page = known.page(text, skip, top) if known else None
            if page is not None:
                return page
            elements = split_array(text, f"GET {target.path}")
            return [element_id(value) for value, _ in elements], elements

        return get_page

    def confirm_paging(self) -> PagingCheck:
        """Confirm the list ends that need it once all lists are read, before removals are
        decided: the one with the longest last page (one check per run), and those ended
        provisionally that no page proves now (exporter.tapkey.paging, rule 4).

        If the server has started to cut pages short below the size it honoured before, that list
        is the first it cut: its end turns out to be no end (the list is read again, trusting
        nothing, to tell a cap from a list that merely grew), the page size is forgotten, and
        every list that ended on a page at least as long as the cap is `unproven`.
        """
        try:
            return self._confirm_paging()
        finally:
            self.paging.forget_ends()  # the next run's ends are its own

    def _confirm_paging(self) -> PagingCheck:
        unproven: set[str | None] = set()
        messages: list[str] = []
        for key, end, request in self.paging.to_confirm():
            if key in unproven:
                continue
            check = self._confirm_end(key, end, cast(tuple[_Target, dict[str, str]], request))
            unproven |= check.unproven
            messages += [check.message] if check.message else []
        return PagingCheck(frozenset(unproven), "; ".join(messages) or None)

    def _confirm_end(
        self, key: str | None, end: ListEnd, request: tuple[_Target, dict[str, str]]
    ) -> PagingCheck:
        target, params = request
        counter = [0]
        get_page = self._page_getter(target, params, counter, KnownTexts({}))
        try:
            if confirms_end(get_page(end.skip, end.top), end):
                return PagingCheck()
            read: ListRead[None] = read_list(
                get_page,
                self.paging,
                lambda value, lock_id, raw: None,
                where=f"GET {target.path}",
                max_restarts=self._max_restarts,
                trust=False,
            )
        except (ApiError, PagingError, PayloadError) as exc:
            return self._unconfirmed(key, end, f"its confirming request failed ({exc})")
        if read.capped_at is None:
            # It changed since it was read: its removals wait (a lock moved in since may be
            # among them); the known page size stands.
            log.info(
                "GET %s: the list changed after it was read; its removals wait for the next run",
                target.path,
            )
            return PagingCheck(frozenset({key}))
        return self._unconfirmed(
            key,
            end,
            f"the API now cuts pages at {read.capped_at} rows although it returned "
            f"{self.paging.sizes.honoured} before",
            cap=read.capped_at,
        )

    def _unconfirmed(
        self, key: str | None, end: ListEnd, why: str, *, cap: int | None = None
    ) -> PagingCheck:
        """The lists ended on a page as long as `cap` (else `end.rows`) stay unproven."""
        if cap is not None:
            self.paging.capped(cap)
        unproven = frozenset(self.paging.ended_at_least(cap or end.rows) | {key})
        locks = len(unproven - {None})
        parts = ["the owner list"] if None in unproven else []
        parts += [f"{locks} owners' lock lists"] if locks else []
        message = (
            f"the end of {' and '.join(parts)} was not proven ({why}); their removals wait for "
            "the next run, which confirms every list's end"
        )
        log.warning("%s", message)
        return PagingCheck(unproven, message)

    # -- one request -----------------------------------------------------------------------------

    def _count(self, counter: list[int], *, retry: bool = False) -> None:
        with self._counter_lock:
            self._requests += 1
            self._retries += retry
        counter[0] += 1

    def _backoff(self, retries: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter; Retry-After raises it (capped), never lowers it."""
        wait = self._backoff_factor * 2.0**retries * (0.5 + 0.5 * self._random.random())
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, self._max_retry_after)

    def _get_text(self, target: _Target, params: dict[str, str], counter: list[int]) -> str:
        """GET one page and return its body, retrying what is worth retrying."""
        url = self._base_url + target.path
        query: dict[str, str] | None = params
        started = self._clock()
        waited = 0.0
        retries = 0
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
                        outcome = _status_outcome(status)
                        if outcome == "ok":
                            self._answered = True
                            return self._read_body(response, target)
                        if status == 400 and "$top" in params:
                            # Maybe OData's MaxTop: exporter.tapkey.paging tries a smaller $top.
                            raise TopRejected(
                                self._status_error(target, status), self._stated_limit(response)
                            )
                        retry_after = _retry_after(response.headers)
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
            wait = self._backoff(retries, retry_after)
            spent = max(self._clock() - started, waited)
            if retries >= self._max_retries or spent + wait > self._max_retry_time:
                raise self._exhausted(target, status, failure, cause, retries + 1, truncated, hint)
            log.log(
                retry_log_level(retries + 1),
                "GET %s: %s%s; retrying in %.2f s (retry %d of %d)",
                target.path,
                failure,
                f" ({cause})" if cause else "",
                wait,
                retries + 1,
                self._max_retries,
            )
            self._sleep(wait)
            waited += wait
            retries += 1
            is_retry = True

    def _stated_limit(self, response: requests.Response) -> int | None:
        """The maximum $top a 400's body states, if any (only its start is read)."""
        try:
            body = next(response.iter_content(chunk_size=MAX_ERROR_BODY), b"")
        except requests.RequestException:
            return None
        return top_limit(body.decode("utf-8", "replace"))

    def _redirect_target(self, target: _Target, response: requests.Response) -> str:
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

    def _read_body(self, response: requests.Response, target: _Target) -> str:
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

    def _exhausted(
        self,
        target: _Target,
        status: int | None,
        failure: str,
        cause: str,
        attempts: int,
        truncated: bool,
        hint: str,
    ) -> Exception:
        """The error once retries are used up (count or time)."""
        where = f"GET {target.path}"
        if truncated:
            return PayloadError(
                f"{where}: the response body was cut off {attempts} times ({cause}); the "
                "connection or a proxy drops large responses: lower [tapkey] page_size or try "
                "again later"
            )
        if status == 429:
            return ApiError(
                f"{where}: still rate-limited (HTTP 429) after {attempts} attempts; lower "
                "[tapkey] workers or raise the retry limits",
                status=status,
            )
        if status is not None:
            return ApiError(
                f"{where}: HTTP {status} after {attempts} attempts; the Tapkey API is failing, "
                "try again later",
                status=status,
            )
        return ApiError(
            f"{where}: {failure} after {attempts} attempts ({cause}); check [tapkey] "
            f"api_base_url, {hint} and [tapkey] read_timeout",
        )

    def _status_error(self, target: _Target, status: int) -> ApiError:
        """The error for a status that is not retried (403 and other 4xx)."""
        where = f"GET {target.path}"
        if status == 404 and target.owner_id is not None and self._answered:
            # The base URL and routes answered before (the owner list came from them).
            return ApiError(
                f"{where}: HTTP 404: owner account {target.owner_id} is gone although the API "
                "answered this run's other requests: the owner account was probably removed, or "
                "the OAuth client lost access to it, during the run; the next run no longer "
                "lists it",
                status=status,
            )
        if status != 403:
            hint = {
                400: "the API rejected the query; check [tapkey] page_size",
                404: "not found; check [tapkey] api_base_url",
            }.get(status, "check [tapkey] api_base_url")
            return ApiError(f"{where}: HTTP {status}: {hint}", status=status)
        granted = self._tokens.granted_scopes
        needed = target.scope or (LOCKS_SCOPE if target.owner_id is not None else OWNERS_SCOPE)
        if granted is not None and needed not in granted:
            message = (
                f"{where} was refused (403): the token lacks scope {needed} (granted: "
                f"{' '.join(sorted(granted)) or 'none'}); add it to [tapkey] scopes and allow it "
                "for the OAuth client"
            )
        elif target.owner_id is not None and target.scope == LOGS_SCOPE:
            message = (
                f"{where} was refused (403): the OAuth client's service account may not read "
                f"the logs of owner {target.owner_id} (not co-admin, or an account role limited "
                "to less than logs); make it co-admin with a role that may read logs in the "
                "Tapkey portal" + ("" if granted is not None else f" (and check scope {needed})")
            )
        elif target.scope is not None and target.owner_id is not None:
            message = (
                f"{where} was refused (403) although the token has scope {needed}: the OAuth "
                f"client's service account lacks the co-admin right to read this list of owner "
                f"{target.owner_id} (not co-admin, or a role limited to other data); make it "
                "co-admin with a role that may read it in the Tapkey portal"
            )
        elif target.owner_id is not None:
            message = (
                f"{where} was refused (403): the OAuth client's service account is probably not "
                f"co-admin of owner {target.owner_id}; make it co-admin in the Tapkey portal"
                + ("" if granted is not None else f" (and check it has scope {needed})")
            )
        elif granted is None:
            message = (
                f"{where} was refused (403): the OAuth client probably lacks scope {needed}; "
                "check [tapkey] scopes and the scopes allowed for the client"
            )
        else:
            message = (
                f"{where} was refused (403) although the token has scope {needed}; check the "
                "OAuth client's permissions in the Tapkey portal"
            )
        return PermissionDeniedError(message, status=403)
