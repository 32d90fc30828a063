"""`[schedule] cron`: crontab(5) expressions, evaluated as Debian's cron does, for APScheduler.

APScheduler 3's `CronTrigger.from_crontab` is not crontab(5): its weekdays count from Monday = 0
(`1-5` would be Tuesday to Saturday, `7` is refused) and it ANDs day-of-month with day-of-week.
The times here come from cronsim, which follows Debian's cron (Vixie cron): 0 and 7 are Sunday;
day-of-month and day-of-week are ORed when both are restricted (neither starts with `*`), ANDed
otherwise; and at daylight-saving changes a fixed-time job (neither minute nor hour starts with
`*`) due in a skipped hour runs at the end of the gap and one due in a repeated hour runs once,
while other jobs follow the wall clock (they run in both passes of a repeated hour).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from cronsim import CronSim, CronSimError

#: The `@` shorthands of crontab(5), as five fields (`@reboot` means nothing to a daemon).
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
# One field of crontab(5): a list of `*`, numbers, names or ranges, each with an optional step.
# cronsim also reads Quartz-style `L`, `LW` and `#`, which crontab(5) does not have.
_ITEM = r"(?:\*|[0-9]+|[A-Za-z]{3})(?:-(?:[0-9]+|[A-Za-z]{3}))?(?:/[0-9]+)?"
_FIELD_RE = re.compile(rf"{_ITEM}(?:,{_ITEM})*")
_EXAMPLE = "e.g. '30 2 * * 1-5' (minute hour day-of-month month day-of-week) or '@daily'"


def parse(text: str) -> str:
    """The five crontab(5) fields `text` stands for (macros expanded); ValueError if invalid."""
    words = text.split()
    if len(words) == 1 and words[0].startswith("@"):
        expanded = MACROS.get(words[0].lower())
        if expanded is None:
            names = ", ".join(sorted(MACROS))
            raise ValueError(f"unknown shorthand {words[0]!r}: use one of {names}, or 5 fields")
        return expanded
    if len(words) != 5:
        raise ValueError(f"has {len(words)} fields, crontab(5) has 5: {_EXAMPLE}")
    for name, word in zip(_FIELDS, words, strict=True):
        if not _FIELD_RE.fullmatch(word):
            raise ValueError(f"bad {name} field {word!r}: {_EXAMPLE}")
    expression = " ".join(words)
    try:
        # Never firing is an error too (e.g. '0 0 30 2 *'): cronsim looks 50 years ahead.
        next(CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC)))
    except CronSimError as exc:
        field = str(exc).removeprefix("Bad ")
        raise ValueError(
            f"bad {field} field (out of range or never matching): {_EXAMPLE}"
        ) from None
    except StopIteration:
        raise ValueError("never fires (no such date)") from None
    return expression


class CrontabTrigger(BaseTrigger):  # type: ignore[misc]  # apscheduler has no type hints
    """Fires when Debian's cron would run `expression` in `timezone` (see the module docstring)."""

    __slots__ = ("expression", "jitter", "timezone")

    def __init__(self, expression: str, timezone: ZoneInfo, *, jitter: float | None = None) -> None:
        self.expression = parse(expression)
        self.timezone = timezone
        self.jitter = jitter

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        """The first fire time after the previous one, or at/after `now` for the first."""
        # cronsim yields times strictly after its start (to the second): one microsecond back
        # makes `now` itself a candidate, as with APScheduler's own triggers.
        start = previous_fire_time or now - timedelta(microseconds=1)
        try:
            fire = next(CronSim(self.expression, start.astimezone(self.timezone)))
        except StopIteration:
            return None
        return self._apply_jitter(fire, self.jitter, now)  # type: ignore[no-any-return]

    def __str__(self) -> str:
        return f"crontab[{self.expression}, {self.timezone}]"

    def __repr__(self) -> str:
        return f"<CrontabTrigger ({self.expression!r}, timezone={str(self.timezone)!r})>"
