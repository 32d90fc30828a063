"""The README and docs/ document every command and option, and their links resolve."""

from __future__ import annotations

import os
import re
from pathlib import Path

import typer

from exporter.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
CLI_DOC = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _command_paths(group: object, prefix: str = "exporter") -> list[str]:
    commands = getattr(group, "commands", {})
    paths: list[str] = []
    for name, command in commands.items():
        path = f"{prefix} {name}"
        paths.append(path)
        paths.extend(_command_paths(command, path))
    return paths


def test_every_command_is_in_the_command_line_reference() -> None:
    paths = _command_paths(typer.main.get_command(app))

    assert len(paths) >= 10
    missing = [path for path in paths if f"`{path}" not in CLI_DOC]
    assert not missing, f"docs/cli.md lacks {missing}"


def test_the_readme_commands_point_at_real_files() -> None:
    assert "./scripts/test" in README and os.access(ROOT / "scripts" / "test", os.X_OK)
    assert (
        "python3 -m venv .venv && .venv/bin/pip install -q . && .venv/bin/exporter demo" in README
    )
    for path in ("config.example.toml", "deploy/crontab", "deploy/kubernetes.yaml", "Dockerfile"):
        assert (ROOT / path).is_file(), path


def _options(command: object) -> set[str]:
    params = getattr(command, "params", [])
    return {opt for p in params for opt in getattr(p, "opts", []) if opt.startswith("--")}


def test_every_option_is_in_the_command_line_reference() -> None:
    root = typer.main.get_command(app)
    missing = []
    for path in _command_paths(root):
        command: object = root
        for name in path.split()[1:]:
            command = getattr(command, "commands", {})[name]
        for option in sorted(_options(command) - {"--help"}):
            if not re.search(rf"`{re.escape(option)}(?![\w-])", CLI_DOC):
                missing.append(f"{path} {option}")
    assert not missing, f"docs/cli.md lacks {missing}"


def _prose(markdown: str) -> str:
    """The text outside fenced code blocks and inline code spans (links live there)."""
    outside = re.sub(r"^```.*?^```", "", markdown, flags=re.DOTALL | re.MULTILINE)
    return re.sub(r"`[^`\n]*`", "", outside)


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces -> '-'."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _without_code(markdown), flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _without_code(markdown: str) -> str:
    return re.sub(r"^```.*?^```", "", markdown, flags=re.DOTALL | re.MULTILINE)


def test_every_relative_link_points_at_a_file_and_heading_that_exist() -> None:
    broken = []
    checked = 0
    for page in DOCS:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(text)):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto: ...
            checked += 1
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and anchor not in _anchors(linked.read_text(encoding="utf-8")):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert checked >= 20
    assert not broken, "\n".join(broken)


def test_the_anchor_rule_matches_github() -> None:
    assert _anchors("# Running as a service: `exporter serve`\n## `/healthz` and `/metrics`\n") == {
        "running-as-a-service-exporter-serve",
        "healthz-and-metrics",
    }
    assert _anchors("## What happens when...\n## Tables\n### Tables\n") == {
        "what-happens-when",
        "tables",
        "tables-1",
    }


def test_the_architecture_page_names_every_package_and_module() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = ROOT / "exporter"
    missing = [
        str(path.relative_to(ROOT))
        for path in sorted(package.rglob("*.py"))
        if path.name != "__init__.py"
        and "migrations" not in path.parts
        and not re.search(rf"(?<![\w/.]){re.escape(path.name)}[ :]", page)
    ]
    missing += [
        f"exporter/{path.name}/"
        for path in sorted(package.iterdir())
        if (path / "__init__.py").is_file() and f"  {path.name}/ " not in page
    ]
    assert not missing, f"docs/architecture.md's map lacks {missing}"
