"""The README documents every command and the files its commands rely on exist."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from exporter.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _command_paths(group: object, prefix: str = "exporter") -> list[str]:
    commands = getattr(group, "commands", {})
    paths: list[str] = []
    for name, command in commands.items():
        path = f"{prefix} {name}"
        paths.append(path)
        paths.extend(_command_paths(command, path))
    return paths


def test_every_command_is_in_the_readme() -> None:
    paths = _command_paths(typer.main.get_command(app))

    assert len(paths) >= 10
    missing = [path for path in paths if f"`{path}" not in README]
    assert not missing, f"README lacks {missing}"


def test_the_readme_commands_point_at_real_files() -> None:
    assert "./scripts/test" in README and os.access(ROOT / "scripts" / "test", os.X_OK)
    assert ".venv/bin/exporter demo" in README
    for path in ("config.example.toml", "deploy/crontab", "deploy/kubernetes.yaml", "Dockerfile"):
        assert (ROOT / path).is_file(), path
