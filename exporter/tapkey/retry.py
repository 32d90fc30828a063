"""One retry policy for every request to Tapkey: the token endpoint's and the API's.

An attempt worth repeating (429, 5xx, a network failure) is followed by a wait of
`backoff_factor * 2**retry`, scaled by a random jitter between half and all of it (workers and
processes that failed together do not retry together) and capped at `max_backoff`. A server's
Retry-After raises the wait, never lowers it, and is honoured up to `max_retry_after`. A request
gives up after `max_retries` retries, or when the next wait would take it past `max_retry_time`
since its first attempt. `RetryPolicy` decides (pure); `Retries` counts one request's retries,
keeps its time budget and sleeps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Final

__all__ = [
    "RETRY_WARNING_AFTER",
    "Retries",
    "RetryPolicy",
    "retry_after_seconds",
    "retry_log_level",
]

#: Retries are logged at INFO; the retry after this many failed attempts of one request is a
#: WARNING (the service is struggling, not just blinking). A request that finally fails raises.
RETRY_WARNING_AFTER: Final = 3


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long a failed request to Tapkey is repeated (`[tapkey] max_retries`,
    `backoff_factor`, `max_retry_after`, `max_retry_time`)."""

    max_retries: int = 5
    backoff_factor: float = 0.5
    max_backoff: float = 60.0
    max_retry_after: float = 60.0
    max_retry_time: float = 300.0

    def __post_init__(self) -> None:
        numbers = (self.max_retries, self.backoff_factor, self.max_backoff, self.max_retry_after)
        if min(numbers) < 0 or self.max_retry_time <= 0:
            raise ValueError(f"a retry policy needs limits >= 0 and a time > 0: {self}")

    def delay(self, retries: int, retry_after: float | None = None, jitter: float = 1.0) -> float:
        """Seconds to wait after `retries` earlier retries; `jitter` in [0, 1) picks the point
        between half and all of the backoff; a Retry-After (capped) raises the wait."""
        backoff = min(self.backoff_factor * 2.0**retries * (0.5 + 0.5 * jitter), self.max_backoff)
        if retry_after is None:
            return backoff
        return max(backoff, min(retry_after, self.max_retry_after))

    def gives_up(self, retries: int, spent: float, wait: float) -> bool:
        """True when no retry follows: `retries` used up, or `wait` would overrun the budget
        (`spent`: seconds since the first attempt)."""
        return retries >= self.max_retries or spent + wait > self.max_retry_time


class Retries:
    """One request's retries under a policy: the next wait, the count, the time budget."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        jitter: Callable[[], float],
    ) -> None:
        self.policy = policy
        self.count = 0  # retries sent so far
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._started = clock()
        self._waited = 0.0

    def next_wait(self, retry_after: float | None) -> float | None:
        """The wait before the next attempt, or None when the policy gives up."""
        wait = self.policy.delay(self.count, retry_after, self._jitter())
        # A clock that stands still (tests) still sees the time slept.
        spent = max(self._clock() - self._started, self._waited)
        return None if self.policy.gives_up(self.count, spent, wait) else wait

    def wait(self, seconds: float) -> None:
        """Sleep before the next attempt, which counts as a retry."""
        self._sleep(seconds)
        self._waited += seconds
        self.count += 1


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds from a Retry-After header: delta-seconds, or an HTTP date relative to `Date`."""
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # an HTTP date: measured against the server's own Date header, not our clock
        until = parsedate_to_datetime(value)
        now = parsedate_to_datetime(headers.get("Date") or "")
    except (TypeError, ValueError):
        return None
    return max(0.0, (until - now).total_seconds())


def retry_log_level(failed_attempts: int) -> int:
    """The level of the line announcing a retry after `failed_attempts` failures of one request."""
    return logging.WARNING if failed_attempts == RETRY_WARNING_AFTER else logging.INFO
