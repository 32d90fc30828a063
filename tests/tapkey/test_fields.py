"""The typed field readers every payload parser uses: a value of the wrong type is never guessed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exporter.tapkey.fields import (
    BadValue,
    FieldReader,
    bool_field,
    element_id,
    int_field,
    str_field,
    unstorable_text,
)


@pytest.mark.parametrize(
    ("reader", "value"),
    [
        pytest.param(str_field, "Front door", id="str"),
        pytest.param(str_field, "", id="empty-str"),
        pytest.param(int_field, 7, id="int"),
        pytest.param(int_field, 0, id="zero"),
        pytest.param(bool_field, True, id="true"),
        pytest.param(bool_field, False, id="false"),
    ],
)
def test_a_value_of_the_right_type_is_returned_as_it_is(
    reader: FieldReader[Any], value: Any
) -> None:
    assert reader({"key": value}, "key") == value


@pytest.mark.parametrize("reader", [str_field, int_field, bool_field])
def test_an_absent_or_null_field_is_none(reader: FieldReader[Any]) -> None:
    assert reader({}, "key") is None
    assert reader({"key": None}, "key") is None


@pytest.mark.parametrize(
    ("reader", "value", "message"),
    [
        pytest.param(str_field, 5, "rclDate is not a string", id="int-as-str"),
        pytest.param(int_field, "5", "rclDate is not an integer", id="str-as-int"),
        # JSON true is a Python bool, and bool is a subclass of int: still not an integer.
        pytest.param(int_field, True, "rclDate is not an integer", id="bool-as-int"),
        pytest.param(int_field, 1.5, "rclDate is not an integer", id="float-as-int"),
        pytest.param(bool_field, 1, "rclDate is not true/false", id="int-as-bool"),
        pytest.param(bool_field, "true", "rclDate is not true/false", id="str-as-bool"),
    ],
)
def test_a_value_of_another_type_is_a_bad_value_naming_the_field(
    reader: FieldReader[Any], value: Any, message: str
) -> None:
    with pytest.raises(BadValue, match=f"^{message}$"):
        reader({"rclDate": value}, "rclDate")


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        pytest.param('{"title": "T\\u00fcr"}', None, id="escaped-letter"),
        pytest.param('{"title": "\\ud83d\\ude00"}', None, id="escaped-pair"),
        pytest.param('{"title": "a \\\\ud800 b"}', None, id="escaped-backslash"),
        pytest.param('{"title": "\\ud800"}', "title", id="lone-high"),
        pytest.param('{"title": "x\\udfff"}', "title", id="lone-low"),
        pytest.param('{"lockType": {"modelName": "\\ude00\\ud83d"}}', "modelName", id="reversed"),
        pytest.param('{"tags": ["ok", "\\udc00"]}', "tags", id="in-a-list"),
        pytest.param('{"\\udc00": 1}', "the element", id="a-key"),
    ],
)
def test_a_lone_surrogate_is_named_by_its_field(raw: str, named: str | None) -> None:
    # No database can store one (UTF-8 cannot encode it); a pair is one character once parsed.
    problem = unstorable_text(json.loads(raw), raw)
    assert (
        (problem is None)
        if named is None
        else problem == (f"{named} holds a lone UTF-16 surrogate, which no database stores")
    )


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        pytest.param('{"title": "a\\u0000b"}', "title", id="nul"),
        pytest.param('{"title": "\\\\u0000"}', None, id="escaped-backslash"),
        pytest.param('{"title": "\\u0001"}', None, id="other-control"),
    ],
)
def test_a_nul_character_is_named_by_its_field(raw: str, named: str | None) -> None:
    # PostgreSQL's text cannot hold NUL: stored on SQLite and MariaDB, it failed every run there.
    problem = unstorable_text(json.loads(raw), raw)
    expected = f"{named} holds a NUL character, which PostgreSQL cannot store"
    assert problem == (None if named is None else expected)


def test_an_id_with_a_lone_surrogate_or_a_nul_is_no_id() -> None:
    assert element_id(json.loads('{"id": "ab\\ud800"}')) is None
    assert element_id(json.loads('{"id": "ab\\u0000"}')) is None
    assert element_id(json.loads('{"id": "ab\\ud83d\\ude00"}')) == "ab\U0001f600"
