"""The cyclic garbage collector while a run runs: fewer collections of its pages' objects.

A fetch thread's page of 1,000 sandbox locks is 6,000 container objects (each element's dict,
its lock type and technologies, its (value, text) pair, its record and row), most of them freed
once the page is parsed. At CPython's default first threshold
(700 more allocations than deallocations) each page set off several collections of the youngest
generation, which carried the page's objects into the older ones and so set off collections of
the whole heap: in a first load of 100,000 locks the fetch threads spent 0.29-0.32 s of CPU
collecting (about 400 young, 35 middle and 3-4 full collections), a quarter of their time under
the GIL that the writer waits for. With a threshold of 20,000 the same first load collected 1-2
times on the fetch threads, as did one of 60 owners x 777 locks at 30 ms of latency (whose pages
are in flight together more; at 10,000 it collected 6-9 times, 0.05 s): a page's objects are
freed before a collection comes due. Cyclic garbage waits for at most that many more objects.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

__all__ = ["RUN_THRESHOLD", "fewer_collections"]

#: The first (youngest generation's) threshold while a run runs.
RUN_THRESHOLD: Final = 20_000


class _Raised:
    """The threshold raised while any run runs (runs may overlap in one process: tests, a demo)
    and restored when the last one ends, unless something else changed it meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs = 0
        self._saved: tuple[int, int, int] | None = None

    def enter(self) -> None:
        with self._lock:
            self._runs += 1
            if self._runs > 1:
                return
            first, second, third = gc.get_threshold()
            # 0 turns automatic collection off, and a higher threshold is someone's choice.
            if 0 < first < RUN_THRESHOLD:
                self._saved = (first, second, third)
                gc.set_threshold(RUN_THRESHOLD, second, third)

    def leave(self) -> None:
        with self._lock:
            self._runs -= 1
            if self._runs or self._saved is None:
                return
            saved, self._saved = self._saved, None
            if gc.get_threshold() == (RUN_THRESHOLD, *saved[1:]):
                gc.set_threshold(*saved)


_RAISED = _Raised()


@contextmanager
def fewer_collections() -> Iterator[None]:
    """The collector's first threshold at RUN_THRESHOLD (if it was lower) while the block runs."""
    _RAISED.enter()
    try:
        yield
    finally:
        _RAISED.leave()
