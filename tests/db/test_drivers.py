"""A database URL whose driver is not installed: one line naming the extra to install."""

from __future__ import annotations

import sys

import pytest

from exporter.db.engine import make_engine
from exporter.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("postgresql+psycopg://exporter:s3cret@db.example.com/inventory", "psycopg", "postgres"),
        ("mariadb+pymysql://exporter:s3cret@db.example.com/inventory", "pymysql", "mysql"),
    ],
)
def test_a_missing_driver_names_the_extra_for_an_install_and_a_checkout(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(ConfigError) as caught:
        make_engine(url)
    message = str(caught.value)
    assert "\n" not in message and "not installed" in message
    assert f"pip install 'tapkey-inventory-exporter[{extra}]'" in message
    assert f"pip install '.[{extra}]'" in message
    assert "s3cret" not in message
