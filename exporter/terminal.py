"""Text from the API on a terminal: control and invisible format characters shown escaped.

Titles, names, descriptions and error texts come from Tapkey and are untrusted. Printed raw, an
ESC sequence could recolour or clear the screen, retitle the window or plant an OSC 8 link; a
bidi override could make a line read differently from what it holds; a newline in a log message
could forge a log line. Every console of the CLI is a `SafeConsole` (`exporter.cli.console`)
and the text log format uses `visible()`, so that whatever reaches a person shows such characters
as `\\x1b`, `\\u202e`, ... This module imports no rich, so logging can use it without loading it.
The database keeps the text unchanged; CSV and JSON output stay exact (JSON is written as ASCII,
with every other character escaped, see `read.formats.write_json`).
"""

from __future__ import annotations

import re

# Every character of the Unicode categories Cc (C0, DEL, C1 controls), Cf (format: bidi
# embeddings, overrides and isolates, zero-width space, BOM, tags, ...), Cs (lone surrogates), Zl
# and Zp (line and paragraph separators), except the zero-width (non-)joiner, which scripts and
# emoji sequences need. Ranges from Unicode 14 (Python 3.11) plus the format characters later
# versions added; tests/read/test_terminal.py checks them against the running Python's unicodedata.
_C0 = "\x00-\x1f"
_OTHERS = (
    "\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b"
    "\u200e-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f"
)
_UNSAFE = re.compile(f"[{_C0}{_OTHERS}]")
# On a console a newline or a tab inside a table cell or a message is harmless and often meant.
_UNSAFE_ON_CONSOLE = re.compile(f"[\x00-\x08\x0b-\x1f{_OTHERS}]")


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _SHORT:
        return _SHORT[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: str, *, keep_layout: bool = True) -> str:
    """`text` with every control and invisible format character written as an escape (`\\x1b`).

    `keep_layout` leaves newlines and tabs alone (tables, multi-line messages); a log line
    escapes them too, so one record is one line.
    """
    if text.isprintable():  # the common case, checked in C
        return text
    pattern = _UNSAFE_ON_CONSOLE if keep_layout else _UNSAFE
    return pattern.sub(_escape, text)


_JSON_UNSAFE = re.compile(f"[{_OTHERS}]")


def _json_escape(match: re.Match[str]) -> str:
    units = match.group().encode("utf-16-be", "surrogatepass")
    return "".join(
        f"\\u{int.from_bytes(units[i : i + 2], 'big'):04x}" for i in range(0, len(units), 2)
    )


def json_visible(text: str) -> str:
    """JSON text (as `json.dumps(..., ensure_ascii=False)` writes it) with no raw C1 or format
    characters: each is written as its `\\u` escape, so the JSON value is unchanged.

    JSON always escapes C0 controls, but not C1 controls (CSI is U+009B) or bidi overrides, and a
    JSON log line is read on terminals (`tail -f`, `journalctl`) as often as by machines.
    """
    return text if text.isascii() else _JSON_UNSAFE.sub(_json_escape, text)
