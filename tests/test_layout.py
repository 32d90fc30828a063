"""The package's layout: names a reader can trust."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"


def class_names(package: Path) -> dict[str, list[str]]:
    """Each class name defined at the top of a module in `package`, with the modules defining it."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                found[node.name].append(str(path.relative_to(package.parent)))
    return found


def test_no_two_classes_share_a_name() -> None:
    # The sandbox stands in for Tapkey: a `Request` there and one in the sync read alike in a
    # traceback or an import, and one is easily taken for the other.
    twice = {name: where for name, where in class_names(PACKAGE).items() if len(where) > 1}
    assert not twice, f"classes defined more than once: {twice}"


MAX_LINES = 450
# Where the limit holds: the package, its tests and the benchmarks. Not migrations/ (one script a
# revision, never edited again) nor data tables, which are not code: they live in JSON, CSV or TOML
# files (not counted), or, should one ever have to be Python, are named here.
CHECKED = ("exporter", "tests", "benchmarks")
DATA_TABLES: frozenset[str] = frozenset()


@pytest.mark.parametrize("folder", CHECKED)
def test_no_module_is_over_450_lines(folder: str) -> None:
    # A module past ~450 lines is doing two jobs (docs/architecture.md): split it by job.
    root = PACKAGE.parent
    long = {
        name: lines
        for path in sorted((root / folder).rglob("*.py"))
        if (name := str(path.relative_to(root))) not in DATA_TABLES
        and (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
