"""TapkeyClient's paging over real HTTP against the sandbox.

Exact lists, lists changing mid-crawl, an ignored `$skip`, a capped or refused `$top`, the learned
page size and the end confirmed once per run.
"""

from __future__ import annotations

import pytest
from support.tapkey_client import (
    PAGE,
    Factory,
    assert_exact,
    lock_text,
    on_request,
    only_owner,
    serve_elements,
    served_text,
)

from exporter.errors import PagingError
from exporter.sandbox.server import Sandbox, SandboxRequest
from exporter.tapkey.paging import PageSizes, PagingCheck

# -- paging ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "requests"),
    [
        pytest.param(0, 1, id="empty"),
        pytest.param(1, 2, id="one"),
        pytest.param(PAGE - 1, 2, id="page-1"),
        pytest.param(PAGE, 2, id="page"),
        pytest.param(PAGE + 1, 2, id="page+1"),
        pytest.param(3 * PAGE, 4, id="3pages"),
    ],
)
def test_paging_reads_exactly_the_list(
    make_fake: Factory, make_client: Factory, size: int, requests: int
) -> None:
    fake = make_fake(locks_per_owner=size)
    client = make_client(fake)
    result = client.list_bound_locks(only_owner(fake))
    assert_exact(result, fake)
    assert result.requests == requests == fake.requests["locks"]


@pytest.mark.parametrize("cap", [2, 3, PAGE - 1])
def test_server_side_top_cap_loses_nothing(
    make_fake: Factory, make_client: Factory, cap: int
) -> None:
    fake = make_fake(locks_per_owner=5 * PAGE + 1, max_top=cap)
    result = make_client(fake, page_size=10).list_bound_locks(only_owner(fake))
    assert_exact(result, fake)


def test_page_size_one_still_pages(fake: Sandbox, make_client: Factory) -> None:
    assert_exact(make_client(fake, page_size=1).list_bound_locks(only_owner(fake)), fake)


def test_owners_are_paged_too(make_fake: Factory, make_client: Factory) -> None:
    fake = make_fake(owners=2 * PAGE + 1, locks_per_owner=0)
    owners = make_client(fake).list_owners()
    expected = fake.owners_payload()
    assert [o.id for o in owners] == [o["id"] for o in expected]
    assert [o.raw for o in owners] == [served_text(o) for o in expected]
    assert owners[0].name == expected[0]["name"] and owners[0].active is expected[0]["active"]


def test_ignored_skip_fails_fast(fake: Sandbox, make_client: Factory) -> None:
    fake.ignore_skip = True
    with pytest.raises(PagingError, match=r"ignored \$skip"):
        make_client(fake).list_bound_locks(only_owner(fake))
    assert fake.requests["locks"] == 2


def test_ignored_skip_on_owner_list(make_fake: Factory, make_client: Factory) -> None:
    fake = make_fake(owners=PAGE + 2, locks_per_owner=0)
    fake.ignore_skip = True
    with pytest.raises(PagingError, match="ignored"):
        make_client(fake).list_owners()


def test_single_row_pages_are_not_mistaken_for_the_end(
    make_fake: Factory, make_client: Factory
) -> None:
    fake = make_fake(locks_per_owner=3, max_top=1)  # overlapping pages cannot advance
    with pytest.raises(PagingError):
        make_client(fake, max_restarts=1).list_bound_locks(only_owner(fake))


def test_unbind_before_the_position_is_detected_and_reread(
    fake: Sandbox, make_client: Factory
) -> None:
    owner = only_owner(fake)
    first = fake.locks_payload(owner)[0]["id"]
    on_request(fake, 2, lambda: fake.unbind(first))
    result = make_client(fake).list_bound_locks(owner)
    assert_exact(result, fake)
    assert first not in {r.id for r in result.records}
    assert result.requests > 5  # the list was read again


def test_unbind_of_the_overlap_row_is_detected(fake: Sandbox, make_client: Factory) -> None:
    owner = only_owner(fake)
    overlap = fake.locks_payload(owner)[PAGE - 1]["id"]
    on_request(fake, 2, lambda: fake.unbind(overlap))
    assert_exact(make_client(fake).list_bound_locks(owner), fake)


def test_unbind_after_the_position_needs_no_reread(fake: Sandbox, make_client: Factory) -> None:
    owner = only_owner(fake)
    last = fake.locks_payload(owner)[-1]["id"]
    on_request(fake, 2, lambda: fake.unbind(last))
    result = make_client(fake).list_bound_locks(owner)
    assert_exact(result, fake)
    assert result.requests == 4


def test_bind_mid_crawl_is_included(fake: Sandbox, make_client: Factory) -> None:
    owner = only_owner(fake)
    added: list[str] = []
    on_request(fake, 2, lambda: added.append(fake.bind_new(owner)))
    result = make_client(fake).list_bound_locks(owner)
    assert_exact(result, fake)
    assert result.records[-1].id == added[0]


def test_list_emptied_mid_crawl(fake: Sandbox, make_client: Factory) -> None:
    owner = only_owner(fake)

    def unbind_all() -> None:
        for lock in fake.locks_payload(owner):
            fake.unbind(lock["id"])

    on_request(fake, 2, unbind_all)
    result = make_client(fake).list_bound_locks(owner)
    assert result.records == [] and result.requests == 3


def test_insertion_before_the_position_is_detected(fake: Sandbox, make_client: Factory) -> None:
    elements = [lock_text(f"lock-{i}") for i in range(10)]
    on_request(fake, 2, lambda: elements.insert(0, lock_text("new-first")))
    serve_elements(fake, elements)
    result = make_client(fake).list_bound_locks(only_owner(fake))
    assert [r.id for r in result.records] == ["new-first"] + [f"lock-{i}" for i in range(10)]
    assert result.requests == 2 + 4  # first pass stopped at page 2, second pass read 4 pages


def test_list_that_keeps_shifting_fails(make_fake: Factory, make_client: Factory) -> None:
    fake = make_fake(locks_per_owner=40)
    owner = only_owner(fake)

    def unbind_first(request: SandboxRequest) -> None:
        if request.route == "locks" and request.skip:
            fake.unbind(fake.locks_payload(owner)[0]["id"])

    fake.hooks.append(unbind_first)
    with pytest.raises(PagingError, match="kept changing"):
        make_client(fake, max_restarts=2).list_bound_locks(owner)
    assert fake.requests["locks"] == 3 * 2


def test_ignored_skip_with_matching_first_and_last_row(fake: Sandbox, make_client: Factory) -> None:
    # The overlap row "matches" on every repeated page; the repeat must still be caught.
    elements = [lock_text("a"), lock_text("b"), lock_text("c"), lock_text("a")]
    serve_elements(fake, elements, ignore_skip=True)
    with pytest.raises(PagingError, match="ignored"):
        make_client(fake).list_bound_locks(only_owner(fake))


# -- the known page size, MaxTop and the end confirmed once per run -------------------------------


def test_a_learned_page_size_ends_short_lists_in_one_request(
    make_fake: Factory, make_client: Factory
) -> None:
    fake = make_fake(owners=3, locks_per_owner=PAGE - 1)
    client = make_client(fake)
    client.paging.learn(PageSizes(honoured=PAGE))
    owners = client.list_owners()
    results = [client.list_bound_locks(o.id) for o in owners]
    for result in results:
        assert_exact(result, fake)
    assert fake.requests["owners"] == 1 and fake.requests["locks"] == 3
    assert client.confirm_paging() == PagingCheck()  # the longest list's end holds
    assert fake.requests["locks"] + fake.requests["owners"] == 5


def test_maxtop_400_steps_the_page_size_down(make_fake: Factory, make_client: Factory) -> None:
    fake = make_fake(locks_per_owner=13, refuse_top=3)
    client = make_client(fake, page_size=10)
    assert_exact(client.list_bound_locks(only_owner(fake)), fake)
    assert client.paging.sizes == PageSizes(honoured=3, max_top=3) and client.paging.changed
    before = fake.requests["locks"]
    assert_exact(client.list_bound_locks(only_owner(fake)), fake)
    assert before == 1 + 7 and fake.requests["locks"] - before == 7  # pages of 3: no 400 again


def test_maxtop_400_without_a_stated_limit_halves(make_fake: Factory, make_client: Factory) -> None:
    fake = make_fake(locks_per_owner=13, refuse_top=3)
    fake.refuse_top_states_limit = False
    client = make_client(fake, page_size=10)
    assert_exact(client.list_bound_locks(only_owner(fake)), fake)
    assert client.paging.sizes.max_top == 2


def test_a_cap_below_the_learned_size_is_caught_by_the_confirmation(
    make_fake: Factory, make_client: Factory
) -> None:
    fake = make_fake(owners=2, locks_per_owner=3 * PAGE, max_top=PAGE - 1)
    client = make_client(fake)
    client.paging.learn(PageSizes(honoured=PAGE))  # learned before the server began to cap
    owners = client.list_owners()
    cut = [client.list_bound_locks(o.id) for o in owners]
    assert [len(r.records) for r in cut] == [PAGE - 1, PAGE - 1]  # looks like the end

    check = client.confirm_paging()

    assert check.unproven == {o.id for o in owners}
    assert check.message is not None and f"cuts pages at {PAGE - 1} rows" in check.message
    # Forgotten, and pages of the cut asked for: a full page of 3 shows that more follow.
    assert client.paging.sizes == PageSizes(max_top=PAGE - 1)
    assert_exact(client.list_bound_locks(owners[0].id), fake)


def test_a_list_that_grew_after_it_was_read_keeps_the_learned_size(
    make_fake: Factory, make_client: Factory
) -> None:
    fake = make_fake(locks_per_owner=PAGE - 2)
    client = make_client(fake)
    client.paging.learn(PageSizes(honoured=PAGE))
    owner = only_owner(fake)
    client.list_bound_locks(owner)
    fake.bind_new(owner)  # appended after the list was read: a lock moved in looks the same
    assert client.confirm_paging() == PagingCheck(frozenset({owner}))  # its removals wait
    assert client.paging.sizes == PageSizes(honoured=PAGE)
