"""Retry policies, passed into the loops that need them rather than written into each.

:class:`Backoff` spaces out attempts against a dependency that is down (ingest);
:class:`CircuitBreaker` stops a request path from waiting on a dependency that just failed
(the server's session reads), so an outage costs one timeout per cool-down, not one per call.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Exponential backoff with full jitter: attempt n waits U(0, min(cap, base * 2**n)).

    ``reset()`` after a success; ``next_delay()`` before each retry.
    """

    base_s: float = 0.1
    cap_s: float = 10.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2**self.attempt)
        self.attempt += 1
        return self.rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class CircuitBreaker:
    """Opens after ``threshold`` failures in a row, for ``cooldown_s``; then one call may try
    again (half-open), and if it fails too the breaker opens again at once.

    A threshold above one keeps a single slow call on a busy machine from switching the
    dependency off for everyone; a real outage still opens it within a few calls.
    """

    cooldown_s: float = 1.0
    threshold: int = 3
    clock: Callable[[], float] = time.monotonic
    _open_until: float = 0.0
    _failures: int = 0

    def allow(self) -> bool:
        """Whether a call may go to the dependency now."""
        now = self.clock()
        if now < self._open_until:
            return False
        if self._open_until:
            # Half-open: let this call probe, hold the others back until it reports.
            self._open_until = now + self.cooldown_s
        return True

    def success(self) -> None:
        self._open_until = 0.0
        self._failures = 0

    def failure(self) -> None:
        self._failures += 1
        if self._open_until or self._failures >= self.threshold:
            self._open_until = self.clock() + self.cooldown_s
