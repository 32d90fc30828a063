"""One-line error text shared by every layer."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from exporter.errors import first_line


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        pytest.param(ValueError("bad\nmore"), "bad", id="first-line"),
        pytest.param(ValueError("  \n padded \n"), "padded", id="stripped"),
        pytest.param(ValueError(""), "ValueError", id="empty-is-type-name"),
        pytest.param(
            OperationalError("SELECT 1", {}, RuntimeError("server closed\ndetail")),
            "server closed",
            id="driver-error-not-the-wrapper",
        ),
        pytest.param(
            OperationalError("SELECT 1", {}, RuntimeError("")),
            "OperationalError",
            id="empty-driver-error-is-named-by-the-wrapper",
        ),
    ],
)
def test_first_line(exc: BaseException, line: str) -> None:
    assert first_line(exc) == line
