"""The one retry policy of the token provider and the API client, without a server."""

from __future__ import annotations

import logging

import pytest

from exporter.tapkey.retry import Retries, RetryPolicy, retry_after_seconds, retry_log_level

DATE = "Sun, 06 Dec 2026 08:00:00 GMT"
POLICY = RetryPolicy(
    max_retries=5, backoff_factor=0.5, max_backoff=6.0, max_retry_after=20.0, max_retry_time=60.0
)


@pytest.mark.parametrize(
    ("retries", "jitter", "expected"),
    [
        pytest.param(0, 1.0, 0.5, id="first retry: the factor"),
        pytest.param(0, 0.0, 0.25, id="jitter takes it down to half"),
        pytest.param(1, 1.0, 1.0, id="doubles"),
        pytest.param(3, 0.5, 3.0, id="jitter in between: three quarters"),
        pytest.param(4, 1.0, 6.0, id="8 s capped at max_backoff"),
        pytest.param(10, 0.0, 6.0, id="far out: still the cap"),
    ],
)
def test_backoff_doubles_with_jitter_up_to_its_cap(
    retries: int, jitter: float, expected: float
) -> None:
    assert POLICY.delay(retries, None, jitter) == expected


@pytest.mark.parametrize(
    ("retries", "retry_after", "expected"),
    [
        pytest.param(0, 5.0, 5.0, id="a longer Retry-After raises the wait"),
        pytest.param(3, 1.0, 4.0, id="a shorter one never lowers it"),
        pytest.param(0, 0.0, 0.5, id="Retry-After 0 still backs off (no hot loop)"),
        pytest.param(0, 86400.0, 20.0, id="a day is capped at max_retry_after"),
        pytest.param(4, 15.0, 15.0, id="above the backoff cap, within its own"),
    ],
)
def test_retry_after_raises_the_wait_up_to_its_cap(
    retries: int, retry_after: float, expected: float
) -> None:
    assert POLICY.delay(retries, retry_after, jitter=1.0) == expected


@pytest.mark.parametrize(
    ("retries", "spent", "wait", "gives_up"),
    [
        pytest.param(0, 0.0, 0.5, False, id="first failure"),
        pytest.param(4, 10.0, 4.0, False, id="last retry left"),
        pytest.param(5, 0.0, 0.5, True, id="retries used up"),
        pytest.param(2, 58.0, 2.0, False, id="ends exactly at the budget"),
        pytest.param(2, 58.0, 2.5, True, id="the wait would overrun the budget"),
        pytest.param(0, 61.0, 0.0, True, id="budget already spent"),
    ],
)
def test_a_request_gives_up_on_count_or_time(
    retries: int, spent: float, wait: float, gives_up: bool
) -> None:
    assert POLICY.gives_up(retries, spent, wait) is gives_up


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_retries_sleep_count_and_stop_at_the_budget() -> None:
    clock, slept = Clock(), list[float]()
    policy = RetryPolicy(max_retries=10, backoff_factor=1.0, max_backoff=100.0, max_retry_time=10.0)
    retries = Retries(policy, clock=clock, sleep=slept.append, jitter=lambda: 1.0)
    waits = []
    while (wait := retries.next_wait(None)) is not None:
        waits.append(wait)
        retries.wait(wait)
    # 1 + 2 + 4 = 7 s slept; the next 8 s would end at 15 s, past the 10 s budget.
    assert waits == slept == [1.0, 2.0, 4.0]
    assert retries.count == 3


def test_time_spent_in_requests_counts_against_the_budget() -> None:
    clock = Clock()
    policy = RetryPolicy(max_retries=10, backoff_factor=1.0, max_retry_time=10.0)
    retries = Retries(policy, clock=clock, sleep=lambda _: None, jitter=lambda: 1.0)
    clock.now += 9.5  # a slow first attempt (a read timeout)
    assert retries.next_wait(None) is None


def test_retries_end_after_max_retries() -> None:
    policy = RetryPolicy(max_retries=2, backoff_factor=0.0)
    retries = Retries(policy, clock=Clock(), sleep=lambda _: None, jitter=lambda: 0.5)
    for _ in range(2):
        wait = retries.next_wait(3.0)
        assert wait == 3.0
        retries.wait(wait)
    assert retries.next_wait(3.0) is None


@pytest.mark.parametrize(
    "invalid",
    [
        pytest.param({"max_retries": -1}, id="negative retries"),
        pytest.param({"backoff_factor": -0.5}, id="negative backoff"),
        pytest.param({"max_retry_time": 0.0}, id="no time at all"),
    ],
)
def test_a_policy_refuses_impossible_limits(invalid: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="retry policy"):
        RetryPolicy(**invalid)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, None, id="none"),
        pytest.param({"Retry-After": " 7 "}, 7.0, id="delta-seconds"),
        pytest.param({"Retry-After": "1.5"}, 1.5, id="fractional"),
        pytest.param({"Retry-After": "-3"}, 0.0, id="negative: no wait of its own"),
        pytest.param(
            {"Retry-After": "Sun, 06 Dec 2026 08:01:30 GMT", "Date": DATE},
            90.0,
            id="HTTP date, against the server's Date",
        ),
        pytest.param({"Retry-After": "Sun, 06 Dec 2026 08:01:30 GMT"}, None, id="date, no Date"),
        pytest.param({"Retry-After": "soon"}, None, id="unreadable"),
    ],
)
def test_retry_after_header(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers) == expected


@pytest.mark.parametrize(
    ("failed", "level"),
    [(1, logging.INFO), (2, logging.INFO), (3, logging.WARNING), (4, logging.INFO)],
)
def test_only_the_third_failure_of_a_request_warns(failed: int, level: int) -> None:
    assert retry_log_level(failed) == level
