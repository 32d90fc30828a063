"""The README documents every command and the files its commands rely on exist."""

from __future__ import annotations

import os
import re
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


def _options(command: object) -> set[str]:
    params = getattr(command, "params", [])
    return {opt for p in params for opt in getattr(p, "opts", []) if opt.startswith("--")}


def test_every_option_is_in_the_command_line_reference() -> None:
    start = README.index("## Command-line reference")
    reference = README[start : README.index("\n## ", start + 1)]
    root = typer.main.get_command(app)
    missing = []
    for path in _command_paths(root):
        command: object = root
        for name in path.split()[1:]:
            command = getattr(command, "commands", {})[name]
        for option in sorted(_options(command) - {"--help"}):
            if not re.search(rf"`{re.escape(option)}(?![\w-])", reference):
                missing.append(f"{path} {option}")
    assert not missing, f"the README's command-line reference lacks {missing}"
