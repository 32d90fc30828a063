"""Tapkey Management API client: the owner list, each owner's lists, and their paging.

Reading a list is `exporter.tapkey.paging`'s state machine fed pages by `Transport` (one GET:
token, retries, redirects, status -> error, see exporter.tapkey.transport), whose rows
`exporter.tapkey.settle` sorts out. Pages are read with overlapping `$skip` windows so that a
list changing while it is paged is detected and re-read instead of silently losing rows.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, cast
from urllib.parse import quote

import requests

from exporter.config.urls import display_url
from exporter.errors import ApiError, PagingError, PayloadError
from exporter.tapkey.access import (
    AccessRecord,
    EntityRoute,
    OwnerEntities,
    Privacy,
    parse_element,
)
from exporter.tapkey.auth import TokenProvider, require_secure_url
from exporter.tapkey.fields import BadValue, element_id
from exporter.tapkey.options import Connection, PageLimits
from exporter.tapkey.page_text import KnownTexts, split_array
from exporter.tapkey.paging import (
    ListEnd,
    ListRead,
    PagingCheck,
    PagingFacts,
    confirms_end,
    read_list,
)
from exporter.tapkey.records import LockRecord, OwnerLocks, OwnerRecord, parse_lock, parse_owner
from exporter.tapkey.retry import RetryPolicy
from exporter.tapkey.settle import log_skips, settle
from exporter.tapkey.statuses import LOGS_SCOPE, Target
from exporter.tapkey.transport import Transport

__all__ = ["TapkeyClient"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_R = TypeVar("_R", LockRecord, AccessRecord)


class TapkeyClient:
    """Reads owners and bound locks from the Tapkey Management API; shareable between threads."""

    def __init__(
        self,
        *,
        base_url: str,
        tokens: TokenProvider,
        connection: Connection | None = None,
        retry: RetryPolicy | None = None,
        pages: PageLimits | None = None,
        workers: int = 4,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        stop: threading.Event | None = None,
    ) -> None:
        """`workers`: page requests in flight at once (threads sharing the client may be twice
        as many: see `_page_getter`; the connection pool holds that many); `session`,
        `sleep` and `clock` are for tests; once `stop` is set no request is sent. Options left
        out take their defaults (those of `[tapkey]`)."""
        pages = pages or PageLimits()
        require_secure_url(base_url, "[tapkey] api_base_url")
        self._transport = Transport(
            base_url=base_url,
            tokens=tokens,
            connection=connection or Connection(),
            retry=retry or RetryPolicy(),
            workers=workers,
            max_body_bytes=pages.max_body_bytes,
            session=session,
            sleep=sleep,
            clock=clock,
            stop=stop,
        )
        self._tokens = tokens
        # What the server's paging is known to do (tapkey.paging); the sync loads and keeps it.
        self.paging = PagingFacts(pages.page_size)
        self._sleep = sleep
        self._max_restarts = max(0, pages.max_restarts)
        # Page requests in flight, at most `workers`. A list's confirming request (the one after
        # its short page, which holds the overlap row only, unless the server caps pages) takes
        # no slot, so a crawl on 2 x workers threads sends it while `workers` pages are in
        # flight: a first load's confirmations cost no time of their own (exporter.sync.crawl).
        self._slots = threading.BoundedSemaphore(max(1, workers))

    # -- public API ------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """The API base URL as it may be shown and stored (no user info or query)."""
        return display_url(self._transport.base_url)

    @property
    def request_count(self) -> int:
        """HTTP requests sent by this client so far, retries included."""
        return self._transport.request_count

    @property
    def granted_scopes(self) -> frozenset[str] | None:
        """The scopes the token endpoint granted (None until a token is fetched, or if it did
        not say)."""
        return self._tokens.granted_scopes

    @property
    def retry_count(self) -> int:
        """Requests repeated after a 429, a 5xx or a network failure."""
        return self._transport.retry_count

    def close(self) -> None:
        """Close the connection pool (only if this client created the session)."""
        self._transport.close()

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
        target = Target("/api/v1/Owners")
        listed = tuple(stored) if stored is not None else None  # in no particular order
        rows, _ = self._read_list(target, {}, parse_owner, _no_texts, listed, in_order=False)
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
        known: Mapping[str, str] | Callable[[], Mapping[str, str] | None] | None = None,
    ) -> OwnerLocks:
        """All locks bound to one owner account, with the elements that could not be read.

        `known` maps lock ids to the payload text already stored for this owner: an element whose
        text equals it is listed in `unchanged_ids` without becoming a record (it parsed when it
        was stored, and the text is all a record derives from), which is most locks on most runs.
        A compact page made only of such elements is recognised as a whole (`KnownTexts.page`).
        Given as a callable, it is called once the first page is in: a read from the database
        runs while the first request is in flight instead of before it.
        """
        target = Target(f"/api/v1/Owners/{quote(owner_id, safe='')}/BoundLocks", owner_id)
        params = {"expand": ",".join(expand)} if expand else {}
        later = known if callable(known) else lambda: known
        texts = functools.cache(lambda: later() or {})
        problems: dict[str, str] = {}

        # Each page is parsed as it arrives, so its JSON objects are freed at once.
        def parse(value: Any, lock_id: str | None, raw: str) -> LockRecord | str | None:
            if lock_id is None:
                return None
            if texts().get(lock_id) == raw:
                return raw  # unchanged: its text stands for it
            try:
                return parse_lock(value, lock_id, owner_id, raw)
            except BadValue as exc:
                problems[lock_id] = str(exc)
                return None

        # mypy joins the union's members to `object` when it solves T.
        rows, requests_sent = cast(
            tuple[list[tuple[str | None, LockRecord | str | None]], int],
            self._read_list(
                target,
                params,
                parse,
                functools.cache(lambda: KnownTexts(texts())),
                lambda: tuple(texts()),
            ),
        )
        return _owner_list(OwnerLocks, owner_id, rows, requests_sent, problems, "lock")

    def list_owner_entities(
        self, owner_id: str, route: EntityRoute, privacy: Privacy, known: Mapping[str, str]
    ) -> OwnerEntities:
        """One owner's complete list on an access route.

        The same contract as `list_bound_locks`: an element whose stored text (the text, or its
        keyed digest for `route.personal` data under [privacy] hash/drop) equals `known`'s is
        listed in `unchanged_ids` without becoming a record.
        """
        path = f"/api/v1/Owners/{quote(owner_id, safe='')}/{route.path}"
        target = Target(path, owner_id, route.scope)
        fields, personal = route.fields, route.personal
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
            self._read_list(
                target, {}, parse, lambda: pages, tuple(known), end_key=route.end_key(owner_id)
            ),
        )
        return _owner_list(OwnerEntities, owner_id, rows, requests_sent, problems, route.noun)

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
        return self._transport.get_text(Target(path, owner_id, LOGS_SCOPE), dict(params), [0])

    def page_size_refused(self, refused: int, top: int) -> None:
        """`$top=refused` got a 400 and `$top=top` an answer (the log reader stepped down):
        every later list asks for at most `top`, and the database keeps it."""
        self.paging.stepped_down(refused, top)

    # -- paging ----------------------------------------------------------------------------------

    def _read_list(
        self,
        target: Target,
        params: dict[str, str],
        parse: Callable[[Any, str | None, str], T | None],
        known: Callable[[], KnownTexts],
        stored: Sequence[str] | Callable[[], Sequence[str] | None] | None = None,
        *,
        in_order: bool = True,
        end_key: str | None = None,
    ) -> tuple[list[tuple[str | None, T | None]], int]:
        """Read a whole list (exporter.tapkey.paging decides; this only transports the pages).

        `known()` is first called once the first page is in (see `list_bound_locks`). An end
        to confirm is kept under `end_key`, by default the owner id (None: the owner list)."""
        counter = [0]

        def restart(attempt: int) -> None:
            log.info(
                "GET %s: the list changed while it was being paged; re-reading it (%d of %d)",
                target.path,
                attempt + 1,
                self._max_restarts,
            )
            self._sleep(self._transport.backoff(attempt))  # let a burst of changes settle

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
            key = target.owner_id if end_key is None else end_key
            self.paging.ended(key, read.end, (target, params))
        return read.rows, counter[0]

    def _page_getter(
        self,
        target: Target,
        params: dict[str, str],
        counter: list[int],
        known: Callable[[], KnownTexts],
    ) -> Callable[[int, int], tuple[list[str | None], list[tuple[Any, str]]]]:
        # Whether the next request confirms a short page, and whether this list had one already:
        # only the first takes no slot, so a server that caps pages gets `workers` at a time.
        confirming = [False, False]

        def get_page(skip: int, top: int) -> tuple[list[str | None], list[tuple[Any, str]]]:
            query = {**params, "$top": str(top), "$skip": str(skip)}
            if confirming[0]:
                confirming[1] = True
                text = self._transport.get_text(target, query, counter)
            else:
                with self._slots:
                    text = self._transport.get_text(target, query, counter)
            texts = known()  # may wait for a database read: not holding a slot
            page = texts.page(text, skip, top) if texts else None
            if page is None:
                elements = split_array(text, f"GET {target.path}")
                page = [element_id(value) for value, _ in elements], elements
            confirming[0] = len(page[1]) < top and not confirming[1]
            return page

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
            check = self._confirm_end(key, end, cast(tuple[Target, dict[str, str]], request))
            unproven |= check.unproven
            messages += [check.message] if check.message else []
        return PagingCheck(frozenset(unproven), "; ".join(messages) or None)

    def _confirm_end(
        self, key: str | None, end: ListEnd, request: tuple[Target, dict[str, str]]
    ) -> PagingCheck:
        target, params = request
        counter = [0]
        get_page = self._page_getter(target, params, counter, _no_texts)
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
        lists = len(unproven - {None})
        parts = ["the owner list"] if None in unproven else []
        parts += [f"{lists} list(s) of owner accounts"] if lists else []
        message = (
            f"the end of {' and '.join(parts)} was not proven ({why}); their removals wait for "
            "the next run, which confirms every list's end"
        )
        log.warning("%s", message)
        return PagingCheck(unproven, message)


def _no_texts() -> KnownTexts:
    return KnownTexts({})


def _owner_list(
    make: Callable[..., T],
    owner_id: str,
    rows: Sequence[tuple[str | None, _R | str | None]],
    requests: int,
    problems: dict[str, str],
    what: str,
) -> T:
    """One owner's whole list settled (see `settle`), its skips logged, as `make` (OwnerLocks,
    OwnerEntities) holds it."""
    settled = settle(rows, problems)
    log_skips(owner_id, settled, problems, what)
    return make(
        owner_id=owner_id,
        records=settled.records,
        skipped=settled.skipped,
        skipped_ids=settled.skipped_ids,
        unidentified_skips=settled.unidentified > 0,
        requests=requests,
        unchanged_ids=settled.unchanged,
    )
