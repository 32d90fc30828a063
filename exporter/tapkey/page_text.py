"""A page body's elements with their exact texts, and pages made only of stored texts.

`split_array` splits a JSON array into (value, source text) pairs without re-serializing;
`KnownTexts` recognises a page made only of texts already stored, without parsing it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from exporter.errors import PayloadError
from exporter.tapkey.fields import element_id

__all__ = ["KnownTexts", "split_array"]

_DECODER = json.JSONDecoder()
# The C scanner behind JSONDecoder.raw_decode, called without raw_decode's Python wrapper.
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
_WHITESPACE = frozenset(" \t\n\r")
# What may follow an element: optional whitespace, then "," (and whitespace) or the closing "]".
_SEPARATOR = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*").match


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


def split_array(text: str, where: str) -> list[tuple[Any, str]]:
    """The elements of a JSON array with each element's exact source text (never re-serialized)."""
    pos = _skip_ws(text, 1 if text.startswith("\ufeff") else 0)
    if not text.startswith("[", pos):
        try:
            value = json.loads(text)
        except ValueError:
            raise PayloadError(f"{where} returned a body that is not JSON") from None
        kind = "a JSON object" if isinstance(value, dict) else f"JSON {type(value).__name__}"
        raise PayloadError(f"{where} returned {kind} where a JSON list was expected")
    elements: list[tuple[Any, str]] = []
    pos = _skip_ws(text, pos + 1)
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                value, end = _SCAN(text, pos)
            except (StopIteration, ValueError):  # StopIteration: no value at `pos`
                raise PayloadError(
                    f"{where} returned invalid or truncated JSON (element {len(elements) + 1})"
                ) from None
            elements.append((value, text[pos:end]))
            # Fast path for compact JSON: a "," right before the next element.
            if text.startswith(",", end) and text[end + 1 : end + 2] not in _WHITESPACE:
                pos = end + 1
                continue
            separator = _SEPARATOR(text, end)
            if separator is None:
                raise PayloadError(f"{where} returned invalid or truncated JSON (unclosed list)")
            pos = separator.end()
            if separator[1] == "]":
                break
    if _skip_ws(text, pos) != len(text):
        raise PayloadError(f"{where} returned invalid JSON (data after the list)")
    return elements


class KnownTexts:
    """An owner's stored payload texts by lock id, and the pages made only of them.

    Most pages of most runs are stored texts joined by commas, and are recognised without JSON
    parsing: first as the stored texts from `$skip` on in the order the database returned them
    (usually the order they were stored in, which is the API's order for every lock bound since:
    one string comparison), else by walking the page from stored text to stored text, each found
    by its first characters (any order: a lock bound or unbound earlier in the list, a database
    that returns rows in key order). Either way the page is proved to be exactly those texts, and
    each stored text is one non-empty JSON value whose id is its key, so the page holds exactly
    those values. Pages that are not (changed or indented elements) go to the element scan.
    """

    # Lengths tried for the prefix that tells stored texts apart (see `_prefixes`).
    _PREFIX_LENGTHS: Final = (48, 96, 192, 384)

    def __init__(self, by_id: Mapping[str, str]) -> None:
        self.by_id = by_id
        usable = all(by_id.values())  # an empty text (raw was NULL) stands for nothing
        self._ids = list(by_id) if usable else []
        self._texts = list(by_id.values()) if usable else []
        self._by_prefix: dict[str, tuple[str, str]] | None = None
        self._prefix_length = 0

    def __bool__(self) -> bool:
        return bool(self.by_id)

    def page(
        self, text: str, skip: int, top: int
    ) -> tuple[list[str | None], list[tuple[Any, str]]] | None:
        """The ids and (value, text) elements of a page made only of stored texts, else None.

        The value of an element recognised without parsing is None: only its text is needed, as
        an element equal to its stored text is not parsed again.
        """
        end = min(skip + top, len(self._texts))
        if skip < end and text == f"[{','.join(self._texts[skip:end])}]":
            return list(self._ids[skip:end]), [(None, t) for t in self._texts[skip:end]]
        # Where the walk can run, it finds every page `_page_in_any_order` would, unparsed.
        return self._walk(text) if self._prefixes() else self._page_in_any_order(text)

    def _walk(self, text: str) -> tuple[list[str | None], list[tuple[Any, str]]] | None:
        """The page as stored texts in any order, found without parsing; None if it is not."""
        by_prefix = self._prefixes()
        if not (text.startswith("[") and text.endswith("]")):
            return None
        ids: list[str | None] = []
        elements: list[tuple[Any, str]] = []
        pos, last = 1, len(text) - 1
        length = self._prefix_length
        while pos < last:  # at the start of an element
            found = by_prefix.get(text[pos : pos + length])
            if found is None or not text.startswith(found[1], pos):
                return None
            ids.append(found[0])
            elements.append((None, found[1]))
            pos += len(found[1])
            if pos == last:
                return ids, elements
            if text[pos] != ",":
                return None
            pos += 1
        return ([], []) if text == "[]" else None

    def _prefixes(self) -> dict[str, tuple[str, str]]:
        """(id, text) of the stored texts by their first characters, as many as the shortest
        tried length that tells them all apart. Empty when none does, or when a text is shorter
        than that: then pages are not walked."""
        if self._by_prefix is None:
            self._by_prefix = {}
            shortest = min(map(len, self._texts), default=0)
            for length in self._PREFIX_LENGTHS:
                if length > shortest:
                    break
                by_prefix = {
                    t[:length]: (i, t) for i, t in zip(self._ids, self._texts, strict=True)
                }
                if len(by_prefix) == len(self._texts):
                    self._by_prefix, self._prefix_length = by_prefix, length
                    break
        return self._by_prefix

    def _page_in_any_order(
        self, text: str
    ) -> tuple[list[str | None], list[tuple[Any, str]]] | None:
        # Stored texts in another order (locks bound later, a reordered list): one `json.loads`
        # for the ids and one string comparison instead of a scan per element.
        try:
            values = json.loads(text)
        except ValueError:
            return None
        if not isinstance(values, list):
            return None
        ids: list[str | None] = []
        texts: list[str] = []
        for value in values:
            lock_id = element_id(value)
            stored = self.by_id.get(lock_id) if lock_id is not None else None
            if stored is None:
                return None
            ids.append(lock_id)
            texts.append(stored)
        if text != f"[{','.join(texts)}]":
            return None
        return ids, list(zip(values, texts, strict=True))
