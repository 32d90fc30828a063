"""Id lists sliced for IN clauses."""

from __future__ import annotations

import pytest

from exporter.db.inlists import IN_LIST_SIZE, chunks


@pytest.mark.parametrize(
    ("count", "size", "lengths"),
    [
        pytest.param(0, 3, [], id="empty"),
        pytest.param(2, 3, [2], id="short"),
        pytest.param(3, 3, [3], id="exact"),
        pytest.param(7, 3, [3, 3, 1], id="remainder"),
        pytest.param(IN_LIST_SIZE + 1, IN_LIST_SIZE, [IN_LIST_SIZE, 1], id="default-size"),
    ],
)
def test_chunks(count: int, size: int, lengths: list[int]) -> None:
    items = [str(i) for i in range(count)]
    parts = list(chunks(items, size))
    assert [len(p) for p in parts] == lengths
    assert [item for part in parts for item in part] == items


def test_chunks_default_is_an_in_list_size() -> None:
    assert [len(p) for p in chunks(list(range(IN_LIST_SIZE * 2)))] == [IN_LIST_SIZE] * 2


def test_chunks_refuses_a_size_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(chunks([1], 0))
