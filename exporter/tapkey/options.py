"""How requests to Tapkey go out, as small frozen values built once from `[tapkey]`
(exporter.service.job): the token provider and the API client take these instead of a dozen
keyword arguments each. The retry policy is exporter.tapkey.retry.RetryPolicy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from exporter.config.proxies import Proxy

__all__ = ["MAX_BODY_BYTES", "Connection", "PageLimits", "Timeouts"]

#: The largest response body read (a larger one fails that request: lower [tapkey] page_size).
MAX_BODY_BYTES: Final = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to connect and to wait for each read (`[tapkey] connect_timeout`,
    `read_timeout`); requests has no default timeout, so every request passes these."""

    connect: float = 10.0
    read: float = 60.0

    @property
    def for_requests(self) -> tuple[float, float]:
        """The (connect, read) tuple requests takes as `timeout=`."""
        return self.connect, self.read


@dataclass(frozen=True, slots=True)
class Connection:
    """How requests to one endpoint go out: timeouts, TLS verification (True, or a CA bundle
    file) and the proxy chosen for that endpoint's URL (None: direct)."""

    timeouts: Timeouts = field(default_factory=Timeouts)
    verify: bool | str = True
    proxy: Proxy | None = None


@dataclass(frozen=True, slots=True)
class PageLimits:
    """How lists are read: `$top` asked for (`[tapkey] page_size`), re-reads of a list that
    changed while it was paged, and the largest page body accepted."""

    page_size: int = 1000
    max_restarts: int = 3
    max_body_bytes: int = MAX_BODY_BYTES
