"""The typed field readers every payload parser uses: a value of the wrong type is never guessed."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.tapkey.fields import BadValue, FieldReader, bool_field, int_field, str_field


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
