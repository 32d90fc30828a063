"""The CLI's consoles: rich Consoles that show API text's control characters escaped.

Imported only when something is printed through one (`exporter.cli.shared.out` and `err` are built
at first use), so commands that print nothing with rich never import it.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

from exporter.cli.shared import output_closed
from exporter.terminal import visible


class SafeConsole(Console):
    """A rich Console that shows control and format characters in strings as escapes.

    Rich turns every string it prints into Text through `render_str`: console.print, table
    cells, titles and rules alike; measuring a column does too, so widths count the escapes.
    Text objects built by the caller bypass it: build them from `visible()` text.
    """

    def render_str(self, text: str, **kwargs: Any) -> Text:
        """The string as Text, its control characters escaped."""
        return super().render_str(visible(text), **kwargs)


class CliConsole(SafeConsole):
    """`out` and `err`: a reader that went away ends the process quietly."""

    def on_broken_pipe(self) -> None:
        """Rich's own handling exits 1."""
        output_closed()
