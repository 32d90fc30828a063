"""The deletion guard's confirmations: which owner ids `--allow-mass-removal-owner` names."""

from __future__ import annotations

import pytest

from exporter.errors import UsageError
from exporter.sync.guard import resolve_owner_ids

KNOWN = {"2f1c-aa01", "2f1c-bb02", "9e00-cc03", "Ab-1"}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(["2f1c-aa01"], {"2f1c-aa01"}, id="exact"),
        pytest.param(["2f1c-a"], {"2f1c-aa01"}, id="unique-start"),
        pytest.param(["9E00"], {"9e00-cc03"}, id="start-in-another-case"),
        pytest.param(["Ab"], {"Ab-1"}, id="start-as-typed"),
        pytest.param(["9e", "2f1c-b"], {"9e00-cc03", "2f1c-bb02"}, id="several"),
    ],
)
def test_owner_ids_and_their_starts_name_owners(given: list[str], expected: set[str]) -> None:
    assert resolve_owner_ids(given, KNOWN) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        pytest.param(
            "nope",
            "--allow-mass-removal-owner 'nope' names no owner account in the database",
            id="no-match",
        ),
        pytest.param("", "--allow-mass-removal-owner '' names no owner account", id="empty"),
        pytest.param(
            "2f1c",
            "--allow-mass-removal-owner '2f1c' is the start of 2 owner account ids "
            "(2f1c-aa01, 2f1c-bb02); give more of it",
            id="ambiguous",
        ),
    ],
)
def test_an_owner_id_that_names_no_owner_or_several_is_a_usage_error(
    given: str, message: str
) -> None:
    with pytest.raises(UsageError) as info:
        resolve_owner_ids(["9e00-cc03", given], KNOWN)
    assert str(info.value).startswith(message)
    assert info.value.exit_code == 2
