"""The SQL of docs/schema.md, read from the page itself so that tests run the documented text."""

from __future__ import annotations

import re
from pathlib import Path

SCHEMA_DOC = Path(__file__).resolve().parents[2] / "docs" / "schema.md"


def statements(section: str | None = None) -> list[str]:
    """Every statement of the page's sql blocks (of one section if named), comments removed."""
    markdown = SCHEMA_DOC.read_text(encoding="utf-8")
    if section is not None:
        heading = re.search(rf"^(#+) {re.escape(section)}$", markdown, flags=re.MULTILINE)
        assert heading, f"docs/schema.md has no heading {section!r}"
        level = len(heading.group(1))
        rest = markdown[heading.end() :]
        end = re.search(rf"^#{{1,{level}}} ", rest, flags=re.MULTILINE)
        markdown = rest[: end.start()] if end else rest
    found = []
    for block in re.findall(r"^```sql\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE):
        for statement in re.sub(r"--[^\n]*", "", block).split(";"):
            if statement.strip():
                found.append(" ".join(statement.split()))
    return found


def queries(section: str | None = None) -> list[str]:
    """The SELECT statements (the role and grant statements are not queries)."""
    return [s for s in statements(section) if s.upper().startswith("SELECT")]


def dialect(statement: str) -> str | None:
    """The one database a statement is written for, by its time literal; None for all three."""
    if "TIMESTAMPTZ '" in statement:
        return "postgresql"
    if re.search(r"'\d{4}-\d\d-\d\dT[\d:.]+Z'", statement):
        return "sqlite"
    if re.search(r"'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d'", statement):
        return "mariadb"
    return None
