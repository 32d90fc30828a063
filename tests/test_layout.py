"""The package's layout: names a reader can trust."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

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
