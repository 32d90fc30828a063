"""`[schedule] cron` means what crontab(5) means: fire times against a table worked out by hand.

Every expected time below was written down from crontab(5) and cron(8) (Debian), not computed by
the code under test. Calendar facts used: 2025-06-06 and 2025-03-28 are Fridays, 2025-07-13 is a
Sunday; Vienna switches to summer time on Sunday 2025-03-30 (02:00 CET -> 03:00 CEST, 01:00 UTC)
and back on Sunday 2025-10-26 (03:00 CEST -> 02:00 CET, 01:00 UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.base import BaseTrigger

from exporter.config.loader import load_settings
from exporter.errors import ConfigError
from exporter.service import scheduler

VIENNA = ZoneInfo("Europe/Vienna")


def utc(text: str) -> datetime:
    """'2025-06-09 03:00' as an aware UTC time."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def trigger(expression: str, zone: str = "UTC", **schedule: object) -> BaseTrigger:
    """The trigger `exporter serve` schedules with for `[schedule] cron = expression`."""
    overrides = {"schedule.cron": expression, "schedule.timezone": zone}
    overrides.update({f"schedule.{key}": value for key, value in schedule.items()})
    settings = load_settings(None, env={}, cwd=Path.cwd(), overrides=overrides)
    return scheduler.build_trigger(settings.schedule)


def fire_times(expression: str, zone: str, after: datetime, count: int) -> list[datetime]:
    """The next `count` fire times, asked for the way APScheduler's scheduler asks."""
    daemon_trigger = trigger(expression, zone)
    times: list[datetime] = []
    previous, now = None, after
    for _ in range(count):
        fire = daemon_trigger.get_next_fire_time(previous, now)
        assert fire is not None
        times.append(fire.astimezone(UTC))
        previous = now = fire
    return times


FRIDAY_NOON = utc("2025-06-06 12:00:30")  # just after noon: noon itself is past


@pytest.mark.parametrize(
    ("expression", "zone", "after", "expected"),
    [
        # Weekdays count from Sunday = 0; 1-5 is Monday to Friday (APScheduler: Tuesday-Saturday).
        pytest.param(
            "0 3 * * 1-5",
            "UTC",
            FRIDAY_NOON,
            [
                "2025-06-09 03:00",
                "2025-06-10 03:00",
                "2025-06-11 03:00",
                "2025-06-12 03:00",
                "2025-06-13 03:00",
                "2025-06-16 03:00",
            ],
            id="weekdays-1-5",
        ),
        pytest.param(
            "0 12 * * 0",
            "UTC",
            FRIDAY_NOON,
            ["2025-06-08 12:00", "2025-06-15 12:00"],
            id="0-sunday",
        ),
        pytest.param(
            "0 12 * * 7",
            "UTC",
            FRIDAY_NOON,
            ["2025-06-08 12:00", "2025-06-15 12:00"],
            id="7-sunday",
        ),
        pytest.param(
            "0 12 * * 5-7",
            "UTC",
            FRIDAY_NOON,
            ["2025-06-07 12:00", "2025-06-08 12:00", "2025-06-13 12:00"],
            id="range-to-7",
        ),
        pytest.param(
            "30 8 * * mon,wed,FRI",
            "UTC",
            FRIDAY_NOON,
            ["2025-06-09 08:30", "2025-06-11 08:30", "2025-06-13 08:30", "2025-06-16 08:30"],
            id="day-names",
        ),
        pytest.param(
            "0 0 1 jan,Jul *",
            "UTC",
            FRIDAY_NOON,
            ["2025-07-01 00:00", "2026-01-01 00:00", "2026-07-01 00:00"],
            id="month-names",
        ),
        # Both day fields restricted: the 13th OR any Friday (APScheduler: only Friday the 13th).
        pytest.param(
            "0 0 13 * 5",
            "UTC",
            FRIDAY_NOON,
            [
                "2025-06-13 00:00",
                "2025-06-20 00:00",
                "2025-06-27 00:00",
                "2025-07-04 00:00",
                "2025-07-11 00:00",
                "2025-07-13 00:00",
                "2025-07-18 00:00",
            ],
            id="dom-or-dow",
        ),
        # A day field starting with * is not "restricted": odd days AND Mondays.
        pytest.param(
            "0 0 */2 * 1",
            "UTC",
            FRIDAY_NOON,
            ["2025-06-09 00:00", "2025-06-23 00:00", "2025-07-07 00:00", "2025-07-21 00:00"],
            id="star-step-and-dow",
        ),
        pytest.param(
            "*/20 9-17/4 * * *",
            "UTC",
            FRIDAY_NOON,
            [
                "2025-06-06 13:00",
                "2025-06-06 13:20",
                "2025-06-06 13:40",
                "2025-06-06 17:00",
                "2025-06-06 17:20",
                "2025-06-06 17:40",
                "2025-06-07 09:00",
            ],
            id="steps-and-ranges",
        ),
        pytest.param(
            "@weekly", "UTC", FRIDAY_NOON, ["2025-06-08 00:00", "2025-06-15 00:00"], id="weekly"
        ),
        pytest.param(
            "@monthly", "UTC", FRIDAY_NOON, ["2025-07-01 00:00", "2025-08-01 00:00"], id="monthly"
        ),
        pytest.param(
            "@yearly", "UTC", FRIDAY_NOON, ["2026-01-01 00:00", "2027-01-01 00:00"], id="yearly"
        ),
        pytest.param(
            "@hourly", "UTC", FRIDAY_NOON, ["2025-06-06 13:00", "2025-06-06 14:00"], id="hourly"
        ),
        # Vienna: summer time is UTC+2, winter time UTC+1.
        pytest.param(
            "@daily",
            "Europe/Vienna",
            FRIDAY_NOON,
            ["2025-06-06 22:00", "2025-06-07 22:00"],
            id="daily-vienna",
        ),
        pytest.param(
            "0 3 * * 1-5",
            "Europe/Vienna",
            datetime(2025, 3, 28, 12, 0, tzinfo=VIENNA),
            ["2025-03-31 01:00", "2025-04-01 01:00"],
            id="weekdays-over-dst-start",
        ),
        # 02:30 does not exist on 2025-03-30: a fixed-time job runs when the gap ends (03:00 CEST).
        pytest.param(
            "30 2 * * *",
            "Europe/Vienna",
            datetime(2025, 3, 29, 12, 0, tzinfo=VIENNA),
            ["2025-03-30 01:00", "2025-03-31 00:30"],
            id="fixed-time-in-skipped-hour",
        ),
        # A wildcard job follows the wall clock: 01:30 CET, then 03:00 and 03:30 CEST.
        pytest.param(
            "*/30 * * * *",
            "Europe/Vienna",
            datetime(2025, 3, 30, 1, 10, tzinfo=VIENNA),
            ["2025-03-30 00:30", "2025-03-30 01:00", "2025-03-30 01:30"],
            id="wildcard-over-skipped-hour",
        ),
        # 02:30 happens twice on 2025-10-26: a fixed-time job runs once (the first, CEST).
        pytest.param(
            "30 2 * * *",
            "Europe/Vienna",
            datetime(2025, 10, 25, 12, 0, tzinfo=VIENNA),
            ["2025-10-26 00:30", "2025-10-27 01:30"],
            id="fixed-time-in-repeated-hour",
        ),
        # An hourly job runs at both 02:00s (CEST and CET), then at 03:00 CET.
        pytest.param(
            "0 * * * *",
            "Europe/Vienna",
            datetime(2025, 10, 26, 1, 30, tzinfo=VIENNA),
            ["2025-10-26 00:00", "2025-10-26 01:00", "2025-10-26 02:00"],
            id="wildcard-over-repeated-hour",
        ),
    ],
)
def test_fire_times_follow_crontab(
    expression: str, zone: str, after: datetime, expected: list[str]
) -> None:
    assert fire_times(expression, zone, after, len(expected)) == [utc(t) for t in expected]


def test_the_first_fire_time_may_be_now() -> None:
    noon = utc("2025-06-06 12:00")
    assert trigger("0 12 * * *").get_next_fire_time(None, noon) == noon
    later = noon + timedelta(microseconds=1)
    assert trigger("0 12 * * *").get_next_fire_time(None, later) == utc("2025-06-07 12:00")


def test_jitter_delays_a_fire_time_by_at_most_its_value() -> None:
    fire = trigger("0 3 * * 1-5", "Europe/Vienna", jitter=30).get_next_fire_time(None, FRIDAY_NOON)
    assert utc("2025-06-09 01:00") <= fire <= utc("2025-06-09 01:00:30")


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        pytest.param("0 3 * * 8", "bad day-of-week field", id="weekday-8"),
        pytest.param("60 * * * *", "bad minute field", id="minute-60"),
        pytest.param("0 24 * * *", "bad hour field", id="hour-24"),
        pytest.param("0 0 0 * *", "bad day-of-month field", id="day-0"),
        pytest.param("0 0 1 13 *", "bad month field", id="month-13"),
        pytest.param("0 0 30 2 *", "never matching", id="february-30"),
        pytest.param("* * * *", "has 4 fields, crontab(5) has 5", id="four-fields"),
        pytest.param("0 * * * * *", "has 6 fields, crontab(5) has 5", id="seconds-field"),
        pytest.param("0 0 L * *", "bad day-of-month field 'L'", id="quartz-L"),
        pytest.param("0 0 * * MON#1", "bad day-of-week field 'MON#1'", id="quartz-hash"),
        pytest.param("0 0 * * monday", "bad day-of-week field 'monday'", id="long-name"),
        pytest.param("@reboot", "unknown shorthand '@reboot'", id="reboot"),
    ],
)
def test_what_crontab_rejects_is_a_config_error(
    tmp_path: Path, expression: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={"EXPORTER_SCHEDULE__CRON": expression}, cwd=tmp_path)
    message = str(info.value)
    assert message.startswith(
        f"EXPORTER_SCHEDULE__CRON: [schedule] cron: invalid crontab expression {expression!r}: "
    )
    assert problem in message
