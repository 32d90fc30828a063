"""TapkeyClient given the texts a sync stored: known locks listed as unchanged without parsing.

Whole pages recognised as stored texts, also while the list changes mid-crawl.
"""

from __future__ import annotations

import json
import random

import pytest
from support.tapkey_client import (
    PAGE,
    Factory,
    lock_text,
    on_request,
    only_owner,
    serve_elements,
    served_text,
)

from exporter.errors import PagingError
from exporter.sandbox.server import Sandbox
from exporter.tapkey.fields import element_id
from exporter.tapkey.page_text import KnownTexts, split_array
from exporter.tapkey.records import OwnerLocks

# -- known texts -----------------------------------------------------------------------------------


def test_known_texts_are_listed_as_unchanged_without_parsing(
    fake: Sandbox, make_client: Factory
) -> None:
    elements = [lock_text("same"), lock_text("edited"), lock_text("new"), lock_text("dup")]
    elements.append(elements[-1])  # an identical second copy
    serve_elements(fake, elements)
    known = {
        "same": elements[0],
        "edited": lock_text("edited", title="before"),
        "dup": elements[3],
        "gone": lock_text("gone"),
    }
    result = make_client(fake).list_bound_locks(only_owner(fake), known=known)
    assert result.unchanged_ids == ["same", "dup"]
    assert [(r.id, r.title) for r in result.records] == [
        ("edited", "Entrance Door"),
        ("new", "Entrance Door"),
    ]
    assert (result.skipped, result.skipped_ids) == (1, frozenset())


@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "pretty"])
def test_pages_of_known_texts_are_unchanged_in_any_layout(
    fake: Sandbox, make_client: Factory, pretty: bool
) -> None:
    # Compact pages equal to the stored texts take the whole-page check; pretty ones the scan.
    elements = [lock_text(f"lock-{n}") for n in range(7)]
    elements.insert(3, elements[2])  # an identical second copy, inside a page
    serve_elements(fake, elements, pretty=pretty)
    known = {f"lock-{n}": lock_text(f"lock-{n}") for n in range(7)}
    result = make_client(fake, page_size=3).list_bound_locks(only_owner(fake), known=known)
    assert result.unchanged_ids == [f"lock-{n}" for n in range(7)]
    assert (result.records, result.skipped, result.skipped_ids) == ([], 1, frozenset())


def test_a_known_lock_whose_text_differs_only_in_spacing_is_reparsed(
    fake: Sandbox, make_client: Factory
) -> None:
    # `raw` is the text as received: a server that changes its spacing changes every `raw`.
    respaced = json.dumps(json.loads(lock_text("lock-2")), separators=(",", ":"))
    assert respaced != lock_text("lock-2")
    serve_elements(fake, [lock_text("lock-1"), respaced])
    known = {"lock-1": lock_text("lock-1"), "lock-2": lock_text("lock-2")}
    result = make_client(fake).list_bound_locks(only_owner(fake), known=known)
    assert result.unchanged_ids == ["lock-1"]
    assert [(r.id, r.raw) for r in result.records] == [("lock-2", respaced)]


def test_known_text_does_not_hide_a_conflicting_copy(fake: Sandbox, make_client: Factory) -> None:
    # One copy equals the stored text, another differs: neither can be trusted.
    serve_elements(fake, [lock_text("lock-1"), lock_text("lock-1", title="other")])
    result = make_client(fake).list_bound_locks(
        only_owner(fake), known={"lock-1": lock_text("lock-1")}
    )
    assert (result.records, result.unchanged_ids) == ([], [])
    assert result.skipped_ids == frozenset({"lock-1"}) and result.skipped == 2


# -- pages recognised as stored texts ----------------------------------------------------------


def stored_texts(server: Sandbox, owner: str) -> dict[str, str]:
    """What a sync stored for the owner's current list: texts by lock id, in the API's order."""
    return {lock["id"]: served_text(lock) for lock in server.locks_payload(owner)}


def assert_listed(result: OwnerLocks, server: Sandbox, known: dict[str, str]) -> None:
    """Each lock the server lists now is in the result once: unchanged if the text it has now
    is the stored one, else a record with that text."""
    now = stored_texts(server, result.owner_id)
    unchanged = {lock_id: known[lock_id] for lock_id in result.unchanged_ids}
    records = {r.id: r.raw for r in result.records}
    assert len(unchanged) + len(records) == len(result.unchanged_ids) + len(result.records)
    assert {**unchanged, **records} == now
    assert not any(known.get(lock_id) == raw for lock_id, raw in records.items())
    assert result.skipped == 0 and not result.unidentified_skips


def test_pages_of_stored_texts_are_matched_without_parsing() -> None:
    # Texts that differ early (as real payloads do) are told apart by their first characters.
    texts = {
        f"lock-{n}": lock_text(f"lock-{n}", bindDate=f"2018-12-1{n}T12:00:00Z") for n in range(5)
    }
    stored = list(texts.values())
    known = KnownTexts(texts)

    def unparsed(*ids: str) -> tuple[list[str], list[tuple[None, str]]]:
        return list(ids), [(None, texts[i]) for i in ids]

    assert known.page(f"[{','.join(stored[2:4])}]", 2, 2) == unparsed("lock-2", "lock-3")
    # Shifted (a lock unbound before the page), reordered, capped: walked, still unparsed.
    assert known.page(f"[{','.join(stored[3:5])}]", 2, 2) == unparsed("lock-3", "lock-4")
    assert known.page(f"[{stored[4]},{stored[0]}]", 0, 2) == unparsed("lock-4", "lock-0")
    assert known.page(f"[{stored[2]}]", 2, 2) == unparsed("lock-2")
    assert known.page(f"[{stored[1]},{stored[1]}]", 0, 2) == unparsed("lock-1", "lock-1")
    assert known.page("[]", 5, 2) == ([], [])
    # Anything else is left to the element scan.
    changed = lock_text("lock-3", bindDate="2018-12-13T12:00:00Z", title="new")
    for page in (
        f"[{stored[2]},{changed}]",
        f"[{stored[2]}, {stored[3]}]",
        f"[{stored[2]},{stored[3]}] ",
        f"[{stored[2]}{stored[3]}]",
        f"[{stored[2]},]",
    ):
        assert known.page(page, 2, 2) is None, page


@pytest.mark.parametrize("alike", [False, True], ids=["walked", "by-ids"])
def test_a_recognised_page_is_always_what_the_element_scan_reads(alike: bool) -> None:
    # Pages of stored texts, shuffled, repeated, cut and corrupted: every page of stored texts is
    # recognised, and whatever `page` recognises the full scan reads as exactly those elements.
    rng = random.Random(5)
    texts = {
        f"lock-{n}": lock_text(f"lock-{n}", **({} if alike else {"bindDate": f"2018-12-1{n}"}))
        for n in range(8)
    }
    known = KnownTexts(texts)
    assert bool(known._prefixes()) is not alike  # the pages are walked, or found by their ids
    stored = list(texts.values())
    recognised = 0
    for _ in range(3000):
        whole = "[" + ",".join(rng.choices(stored, k=rng.randint(0, 5))) + "]"
        page = whole
        if rng.random() < 0.3:
            cut = rng.randrange(len(page))
            page = page[:cut] + rng.choice(["", " ", ",", "]", "[", "x", '"']) + page[cut + 1 :]
        elif rng.random() < 0.3:  # a bad separator between two elements
            page = page.replace("},{", "}" + rng.choice(["", " ", "x", ",,", ", "]) + "{", 1)
        found = known.page(page, rng.randint(0, 8), rng.randint(1, 5))
        if found is None:
            assert page != whole, page
            continue
        recognised += 1
        elements = split_array(page, "GET test")
        assert found[0] == [element_id(value) for value, _ in elements], page
        assert [t for _, t in found[1]] == [t for _, t in elements], page
    assert recognised > 1000


def test_stored_texts_alike_at_the_start_are_matched_by_their_ids() -> None:
    # Texts alike but for their ends cannot be walked: one json.loads finds them by their ids.
    texts = {f"lock-{n}": lock_text(f"lock-{n}") for n in range(3)}
    assert len({t[:-20] for t in texts.values()}) == 1
    page = f"[{texts['lock-2']},{texts['lock-0']}]"
    assert KnownTexts(texts).page(page, 0, 2) == (
        ["lock-2", "lock-0"],
        [
            (json.loads(texts["lock-2"]), texts["lock-2"]),
            (json.loads(texts["lock-0"]), texts["lock-0"]),
        ],
    )
    assert KnownTexts(texts).page(f"[{texts['lock-2']}, {texts['lock-0']}]", 0, 2) is None


def test_empty_stored_texts_stand_for_nothing() -> None:
    # raw NULL is read back as "": joined, such texts would make invalid JSON look known.
    assert KnownTexts({"a": "", "b": ""}).page("[,]", 0, 2) is None


@pytest.mark.parametrize("order", ["stored", "reversed"])
def test_an_unchanged_list_is_unchanged_in_any_stored_order(
    make_fake: Factory, make_client: Factory, order: str
) -> None:
    fake = make_fake(locks_per_owner=3 * PAGE + 1)
    owner = only_owner(fake)
    known = stored_texts(fake, owner)
    if order == "reversed":
        known = dict(reversed(known.items()))
    result = make_client(fake).list_bound_locks(owner, known=known)
    assert result.unchanged_ids == [lock["id"] for lock in fake.locks_payload(owner)]
    assert result.records == [] and result.requests == fake.requests["locks"] == 5


@pytest.mark.parametrize("where", ["first", "overlap", "last"])
def test_unbind_mid_crawl_with_stored_texts(
    fake: Sandbox, make_client: Factory, where: str
) -> None:
    owner = only_owner(fake)
    known = stored_texts(fake, owner)
    index = {"first": 0, "overlap": PAGE - 1, "last": -1}[where]
    gone = fake.locks_payload(owner)[index]["id"]
    on_request(fake, 2, lambda: fake.unbind(gone))
    result = make_client(fake).list_bound_locks(owner, known=known)
    assert_listed(result, fake, known)
    assert gone not in result.unchanged_ids


def test_changes_mid_crawl_with_stored_texts(fake: Sandbox, make_client: Factory) -> None:
    owner = only_owner(fake)
    known = stored_texts(fake, owner)
    locks = fake.locks_payload(owner)
    added: list[str] = []

    def change() -> None:
        added.append(fake.bind_new(owner))
        fake.rename(locks[-1]["id"], "Renamed")  # after the position: read as it is now

    on_request(fake, 2, change)
    result = make_client(fake).list_bound_locks(owner, known=known)
    assert_listed(result, fake, known)
    assert {r.id for r in result.records} == {added[0], locks[-1]["id"]}


def test_insertion_before_the_position_with_stored_texts(
    fake: Sandbox, make_client: Factory
) -> None:
    elements = [lock_text(f"lock-{i}") for i in range(10)]
    known = {f"lock-{i}": text for i, text in enumerate(elements)}
    on_request(fake, 2, lambda: elements.insert(0, lock_text("new-first")))
    serve_elements(fake, elements)
    result = make_client(fake).list_bound_locks(only_owner(fake), known=known)
    assert result.unchanged_ids == list(known) and [r.id for r in result.records] == ["new-first"]
    assert result.requests == 2 + 4  # the shift was caught on page 2 and the list read again


def test_ignored_skip_with_stored_texts_fails_fast(fake: Sandbox, make_client: Factory) -> None:
    owner = only_owner(fake)
    known = stored_texts(fake, owner)
    fake.ignore_skip = True
    with pytest.raises(PagingError, match=r"ignored \$skip"):
        make_client(fake).list_bound_locks(owner, known=known)


@pytest.mark.parametrize("cap", [2, PAGE - 1])
def test_top_cap_with_stored_texts_loses_nothing(
    make_fake: Factory, make_client: Factory, cap: int
) -> None:
    fake = make_fake(locks_per_owner=3 * PAGE + 1, max_top=cap)
    owner = only_owner(fake)
    known = stored_texts(fake, owner)
    result = make_client(fake).list_bound_locks(owner, known=known)
    assert result.unchanged_ids == list(known) and result.records == []
