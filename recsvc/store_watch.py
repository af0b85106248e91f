"""Noticing a session store that looks freshly emptied, from the requests' own reads.

A Redis restarted without its data still answers every read, with empty sessions: nothing
fails, answers just stop being personalized. What shows it is the share of reads (of a
request with a user) that find a session, the *hit ratio*: it falls suddenly. The watch
compares the hit ratio of the last full window with the one before it; a fall below
``drop`` times its value, both windows holding at least ``min_reads`` reads, says
"emptied" until a window's ratio climbs back above half the ratio it fell from (sessions
come back as shoppers click, or at once with ``recsvc ingest --rebuild-sessions``).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class EmptiedStoreWatch:
    """Counts session reads per window and says when the store looks freshly emptied.

    ``on_change(emptied, ratio)`` is called when the verdict changes, ``on_window(ratio)``
    at the end of each window with enough reads; both run inside :meth:`record`.
    """

    def __init__(
        self,
        on_change: Callable[[bool, float], None],
        on_window: Callable[[float], None] | None = None,
        window_s: float = 60.0,
        min_reads: int = 100,
        drop: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not window_s > 0 or min_reads < 1 or not 0 < drop < 1:
            raise ValueError("window_s > 0, min_reads >= 1 and 0 < drop < 1")
        self.window_s = window_s
        self.min_reads = min_reads
        self.drop = drop
        self.emptied = False
        self._on_change = on_change
        self._on_window = on_window
        self._clock = clock
        self._start = clock()
        self._reads = 0
        self._hits = 0
        self._before: float | None = None  # the last full window's ratio
        self._fell_from = 0.0

    def record(self, hit: bool) -> None:
        """One read of a request with a user: did it find a session?"""
        now = self._clock()
        if now - self._start >= 2 * self.window_s:
            # Idle for a window or more: the one before is too old to compare with.
            self._start, self._reads, self._hits, self._before = now, 0, 0, None
        elif now - self._start >= self.window_s:
            self._close_window(now)
        self._reads += 1
        self._hits += hit

    def _close_window(self, now: float) -> None:
        reads, hits = self._reads, self._hits
        self._start, self._reads, self._hits = now, 0, 0
        if reads < self.min_reads:
            self._before = None  # too few reads to compare with
            return
        ratio = hits / reads
        if self._on_window is not None:
            self._on_window(ratio)
        before, self._before = self._before, ratio
        if not self.emptied and before is not None and before > 0 and ratio < self.drop * before:
            self.emptied, self._fell_from = True, before
            self._on_change(True, ratio)
        elif self.emptied and ratio >= 0.5 * self._fell_from:
            self.emptied = False
            self._on_change(False, ratio)
