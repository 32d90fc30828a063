"""Selects over the BI views with result types, for the read-side tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, column, select, table

from exporter.db.views import VIEW_COMMENTS


def _typed_view(name: str, **types: Any) -> Any:
    """A select over a view with result types, so every backend returns Python values."""
    columns = {c: types.get(c, String()) for c in _view_columns(name)}
    return select(table(name, *(column(c, t) for c, t in columns.items())))


def _view_columns(name: str) -> list[str]:
    return list(VIEW_COMMENTS[name][1])
