"""Fixtures of the config tests: a working directory and a config folder apart from it."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    """A working directory distinct from the config file's folder."""
    path = tmp_path / "cwd"
    path.mkdir()
    return path


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    path = tmp_path / "etc"
    path.mkdir()
    return path
