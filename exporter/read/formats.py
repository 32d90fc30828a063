"""Output formats for scripts and the values in them: JSON and CSV written while a list is read
(a million locks in constant memory), and how one value looks in CSV, a table cell or a sentence.

JSON keeps native types (numbers, true/false, null) and writes times as ISO-8601 UTC; CSV writes
the same values as text (times ISO-8601, booleans `true`/`false`, NULL as an empty field), so
`json.loads` and `csv.DictReader` read back exactly what the report functions returned, except
that a CSV text cell a spreadsheet would run as a formula gets a leading `'` (unless `raw`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from itertools import islice
from typing import IO, Any

FORMATS = ("table", "csv", "json")


# -- values ---------------------------------------------------------------------------------------

# OWASP's list (CSV injection): a spreadsheet takes a cell that starts with one of these for a
# formula, and a formula can run commands or send the sheet's contents away.
FORMULA_STARTS = frozenset("=+-@\t\r")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def csv_value(value: Any, *, raw: bool = False) -> str:
    """A value as a CSV field: NULL is empty, booleans are true/false, times ISO-8601.

    Text starting with a formula character gets a leading `'` unless `raw` (numbers and times
    are never touched).
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str):
        return "'" + value if not raw and value[:1] in FORMULA_STARTS else value
    return str(value)


def cell(value: Any) -> str:
    """A value for a table cell: short UTC times, yes/no."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def shown(value: Any) -> str:
    """A value inside a sentence (old -> new)."""
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return repr(value)
    return cell(value)


def write_json(data: Any, out: IO[str]) -> None:
    """`data` as indented JSON; a list given as an iterator is written while it is consumed.

    The text is what `json.dumps(data, indent=2)` gives (times ISO-8601): ASCII, every other
    character written as an escape (`\\u00e4`, `\\u202e`), so that no control or bidi character
    of the data reaches a terminal raw. Parsed, it is exactly the data.
    """
    _write_json(data, out, 0)
    out.write("\n")


def _write_json(value: Any, out: IO[str], depth: int) -> None:
    if isinstance(value, Iterator):
        pad = "\n" + "  " * (depth + 1)
        started = False
        for batch in _batches(value):
            out.write(("," if started else "[") + pad + _dump_items(batch, depth + 1))
            started = True
        out.write("\n" + "  " * depth + "]" if started else "[]")
    elif isinstance(value, Mapping) and any(isinstance(v, Iterator) for v in value.values()):
        pad = "\n" + "  " * (depth + 1)
        for n, (key, item) in enumerate(value.items()):
            out.write(("," if n else "{") + pad + _dump(str(key), 0) + ": ")
            _write_json(item, out, depth + 1)
        out.write("\n" + "  " * depth + "}")
    else:
        out.write(_dump(value, depth))


def _batches(items: Iterable[Any], size: int = 1000) -> Iterator[list[Any]]:
    it = iter(items)
    return iter(lambda: list(islice(it, size)), [])


_CONTAINERS = frozenset({dict, list, tuple})


def _flat(value: Any) -> bool:
    return type(value) is dict and bool(value) and _CONTAINERS.isdisjoint(map(type, value.values()))


def _dump_items(items: list[Any], depth: int) -> str:
    """List items at nesting `depth`, as json.dumps(indent=2) lays them out, joined."""
    if not all(map(_flat, items)):
        return ("," + "\n" + "  " * depth).join(_dump(item, depth) for item in items)
    # Flat objects (locks, runs) in one call of the C encoder, with the indentation as its item
    # separator (with `indent`, json.dumps uses its pure-Python encoder: 5x slower). Outside
    # strings "},\n" can only be where one object ends and the next begins (a newline inside a
    # string is written as \n).
    inner = "\n" + "  " * (depth + 1)
    text = json.dumps(items, default=_json_default, separators=("," + inner, ": "))
    opening, closing = "{" + inner, "\n" + "  " * depth + "}"
    text = text[2:-2].replace("}," + inner + "{", closing + ",\n" + "  " * depth + opening)
    return opening + text + closing


def _dump(value: Any, depth: int) -> str:
    """`value` as json.dumps(indent=2) writes it at nesting `depth`."""
    text = json.dumps(value, indent=2, default=_json_default)
    return text.replace("\n", "\n" + "  " * depth) if depth else text


def write_csv(
    rows: Iterable[Mapping[str, Any]], columns: Sequence[str], out: IO[str], *, raw: bool = False
) -> None:
    """Rows (mappings) as CSV with a header line; see `csv_value`."""
    write_csv_tuples(([row.get(c) for c in columns] for row in rows), columns, out, raw=raw)


def write_csv_tuples(
    rows: Iterable[Sequence[Any]], columns: Sequence[str], out: IO[str], *, raw: bool = False
) -> None:
    """Rows (values in `columns` order) as CSV with a header line; see `write_csv_columns`."""
    batches = (list(zip(*batch, strict=True)) for batch in _batches(rows))
    write_csv_columns(batches, columns, out, raw=raw)


def write_csv_columns(
    batches: Iterable[Sequence[Sequence[Any]]],
    columns: Sequence[str],
    out: IO[str],
    *,
    raw: bool = False,
) -> None:
    """Batches of rows, each given as its columns (in `columns` order), as CSV with a header
    line; see `csv_value`.

    Fields are quoted as the csv module quotes them (a comma, a quote or a newline in them),
    and also for a carriage return, which a reader would take for the end of the row.
    """
    out.write(",".join(_quoted(list(columns))) + "\n")
    for batch in batches:
        if len(batch) != len(columns):
            raise ValueError(f"{len(batch)} columns in a batch, not {len(columns)}")
        fields = [_csv_fields(column, raw) for column in batch]
        out.write("\n".join(map(",".join, zip(*fields, strict=True))) + "\n")


_BOOL_TEXT = {True: "true", False: "false"}


def _csv_fields(column: Sequence[Any], raw: bool) -> Sequence[str]:
    """One column of a batch of rows as CSV fields: each cell as `csv_value` writes it, quoted
    as `_quoted` quotes it.

    Column by column, so that most columns cost no Python call per cell; the lines are then
    joined with str.join (csv.writer took 3.4 us a lock, the joins 0.2 us).
    """
    first = column[0] if column else None
    if type(first) is str and first == column[-1] and column.count(first) == len(column):
        # The same text on every row (an owner's id and name): its field once.
        return [*_text_fields([first], raw)] * len(column)
    try:
        # str.join takes only text: it tells a column of texts (most) more cheaply than the
        # set of the cells' types, and the checks need the joined text anyway.
        joined = _SEPARATOR + _SEPARATOR.join(column)
    except TypeError:
        return _other_fields(column, raw)
    return _text_fields(column, raw, joined)


def _other_fields(column: Sequence[Any], raw: bool) -> Sequence[str]:
    """`_csv_fields` of a column not all text. Times, numbers and booleans never hold a
    character that needs quoting."""
    kinds = set(map(type, column))
    empty = type(None) in kinds
    kinds.discard(type(None))
    if kinds == {str}:
        return _text_fields([v or "" for v in column], raw)
    if not kinds:
        return [""] * len(column)
    if empty:
        return _quoted([csv_value(v, raw=raw) for v in column])
    if kinds == {bool}:
        return list(map(_BOOL_TEXT.__getitem__, column))
    if kinds == {datetime}:
        return list(map(datetime.isoformat, column))
    if kinds <= {int, float}:
        return list(map(str, column))
    return _quoted([csv_value(v, raw=raw) for v in column])


# A column's texts are checked joined, with a separator no formula start or quoting character
# is: a formula character after it (or at the very start) may begin a cell. A cell holding the
# separator itself only gives a false alarm, which the exact check per cell then clears.
_SEPARATOR = "\x00"
# One pass of a regex: six `in` tests (one per formula character) took five times as long.
_formula_after_separator_pattern = re.compile(
    re.escape(_SEPARATOR) + "[" + "".join(map(re.escape, sorted(FORMULA_STARTS))) + "]"
)
_formula_after_separator = _formula_after_separator_pattern.search


def _text_fields(texts: Sequence[str], raw: bool, joined: str | None = None) -> Sequence[str]:
    """Text cells as CSV fields: the formula guard (unless `raw`), then quoting. `joined` is
    the texts joined as here, if the caller has it."""
    if joined is None:
        joined = _SEPARATOR + _SEPARATOR.join(texts)
    if not raw and _formula_after_separator(joined):
        texts = _guarded(texts, joined)
    # The guard's leading ' needs no quotes: the joined texts still tell which cells do.
    return _quoted(texts, joined)


def _guarded(texts: Sequence[str], joined: str) -> Sequence[str]:
    """`texts` with the formula guard: a leading `'` on each cell that starts with a formula
    character. `joined` is the texts each after a separator, as `_text_fields` joins them.

    Few cells start so (a base64 physical lock id one in 64): the cells the separator's matches
    point at are changed alone, a cell's index being the separators before its match (counted
    in C), instead of a test a cell (0.1 us). With a separator inside a cell, or many matches,
    each cell is tested.
    """
    if joined.count(_SEPARATOR) == len(texts):
        guarded = list(texts)
        cell = start = 0
        most = len(texts) // 16
        for found, match in enumerate(_formula_after_separator_pattern.finditer(joined)):
            if found > most:
                break
            cell += joined.count(_SEPARATOR, start, match.start())
            start = match.start()
            guarded[cell] = "'" + guarded[cell]
        else:
            return guarded
    return [("'" + v if v[:1] in FORMULA_STARTS else v) for v in texts]


_NEEDS_QUOTES = (",", '"', "\n", "\r")
_needs_quotes = re.compile('[,"\n\r]').search
_QUOTED = '"{}"'


def _quoted(column: Sequence[str], text: str | None = None) -> Sequence[str]:
    """The fields of `column`, those with a comma, quote, newline or CR quoted (RFC 4180);
    `text`, if given, holds all of them (joined), for the check whether any needs quotes."""
    if text is None:
        text = "".join(column)
    present = [char for char in _NEEDS_QUOTES if char in text]
    if not present:
        return column
    if present == [","]:
        # Commas only (a description in words): a test for one character a cell took a
        # quarter of the time of the regular expression's search.
        return [f'"{v}"' if "," in v else v for v in column]
    return [_QUOTED.format(v.replace('"', '""')) if _needs_quotes(v) else v for v in column]
