"""Config files written for a test, loaded as the command line would, and the one-line ConfigError.

The folders they go in (`cwd`, `conf_dir`) are fixtures in tests/config/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.config.loader import load_settings
from exporter.config.settings import Settings
from exporter.errors import ConfigError

SECRET = "s3cr3t-Value-9f2c"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load(cwd: Path, text: str | None = None, **env: str) -> Settings:
    path = write(cwd / "config.toml", text) if text is not None else None
    return load_settings(path, env=env, cwd=cwd)


def config_error(cwd: Path, text: str | None = None, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(cwd, text, **env)
    message = str(info.value)
    assert "\n" not in message
    return message
