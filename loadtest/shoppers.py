"""What the Locust shoppers need besides gRPC: who shops, what they look at, their events.

* ``Catalogue``: the bundle's items, drawn with probability proportional to their training
  popularity (clicks in the training days), so popular items are viewed more often, as on
  a real site.
* ``ShopperPool``: user ids ``<prefix><rank>`` drawn with a Zipf skew: the user of rank r
  comes back with weight ``1 / r**skew``, so a few users shop often and most rarely.
* ``EventProducer``: one Kafka producer per process that sends Event JSON to the events
  topic and reports every send (until the broker acknowledged it) to Locust's statistics.
* ``PersonalizationTracker``: how many Recommend replies were personalized, per time
  window, and why the others were not; workers send theirs to the master.
"""

from __future__ import annotations

import bisect
import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsvc.bundle import load_bundle
from recsvc.events import Event
from recsvc.exceptions import BundleError

log = logging.getLogger(__name__)


class Catalogue:
    """Item ids with their view probabilities.

    Parameters
    ----------
    item_ids : [n] ids
    popularity : [n] non-negative weights (counts); items with weight 0 are never drawn
    """

    def __init__(self, item_ids: np.ndarray, popularity: np.ndarray) -> None:
        weights = np.asarray(popularity, dtype=np.float64)
        if weights.shape != (len(item_ids),) or (weights < 0).any():
            raise ValueError("popularity must be one non-negative weight per item")
        drawable = weights > 0
        if not drawable.any():
            raise ValueError("no item has a positive popularity")
        self.item_ids: list[str] = np.asarray(item_ids).astype(str)[drawable].tolist()
        self.weights = weights[drawable]
        total = np.cumsum(self.weights)
        self._cumulative: list[float] = (total / total[-1]).tolist()

    @classmethod
    def from_bundle(cls, bundle: str | Path) -> Catalogue:
        """Items of a bundle weighted by ``item_popularity``.

        Raises
        ------
        BundleError
            No readable bundle at ``bundle``, or no item with a positive popularity.
        """
        loaded = load_bundle(bundle, verify=False)
        try:
            return cls(loaded["item_ids"], loaded["item_popularity"])
        except ValueError as exc:
            raise BundleError(f"{loaded.path}: {exc}") from None

    def __len__(self) -> int:
        return len(self.item_ids)

    def draw(self, rng: random.Random) -> str:
        index = bisect.bisect_left(self._cumulative, rng.random())
        return self.item_ids[min(index, len(self.item_ids) - 1)]


class ShopperPool:
    """``size`` user ids; the one of rank r (1-based) is drawn with weight ``1 / r**skew``."""

    def __init__(self, prefix: str, size: int, skew: float) -> None:
        if size < 1:
            raise ValueError(f"the shopper pool needs at least one user, got {size}")
        if skew < 0:
            raise ValueError(f"the user skew must be >= 0, got {skew}")
        self.prefix = prefix
        self.size = size
        weights = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** skew
        self.shares = weights / weights.sum()
        self._cumulative: list[float] = np.cumsum(self.shares).tolist()

    def draw(self, rng: random.Random) -> str:
        rank = min(bisect.bisect_left(self._cumulative, rng.random()), self.size - 1)
        return f"{self.prefix}{rank + 1}"


def pick_shown(shown: list[str], rng: random.Random) -> str:
    """The recommended item a shopper clicks: position r (0-based) with weight 1/(r+1)."""
    weights = [1.0 / (rank + 1) for rank in range(len(shown))]
    return rng.choices(shown, weights=weights)[0]


class EventProducer:
    """Sends shopper events to Kafka, one producer per process, reporting each send.

    The producer is made by ``connect`` (at the start of a test) or on first use, and
    reused by every user of the process. A send is timed until the broker acknowledged it
    (``acks="all"``) and fired as a request of type ``"kafka"`` named after the event type.

    Parameters
    ----------
    bootstrap : Kafka bootstrap servers, ``host:port[,...]``
    topic : the events topic
    request_event : ``environment.events.request``
    timeout_s : how long to wait for the acknowledgement
    """

    request_type = "kafka"

    def __init__(
        self, bootstrap: str, topic: str, request_event: Any, timeout_s: float = 10.0
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._event = request_event
        self.timeout_s = timeout_s
        self._producer: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._producer is None:
                from kafka import KafkaProducer

                self._producer = KafkaProducer(
                    bootstrap_servers=self.bootstrap.split(","), acks="all", linger_ms=0
                )
            return self._producer

    def connect(self) -> None:
        """Make the producer now, so its start-up is not timed as the first send.

        A failure is logged; the next send tries again and reports the error.
        """
        try:
            self._get()
        except Exception as exc:  # kafka errors
            log.warning("cannot reach Kafka at %s yet: %s", self.bootstrap, exc)

    def send(self, user_id: str, item_id: str, kind: str) -> Event:
        """Produce one event of ``kind`` (click, cart, fav, buy) now; failures are reported."""
        event = Event(uuid.uuid4().hex, user_id, item_id, kind, time.time())
        exception: Exception | None = None
        value = event.to_json()
        started = time.perf_counter()
        try:
            future = self._get().send(self.topic, key=user_id.encode(), value=value)
            future.get(timeout=self.timeout_s)
        except Exception as exc:  # kafka errors: reported as this request's failure
            exception = exc
        self._event.fire(
            request_type=self.request_type,
            name=kind,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=len(value),
            exception=exception,
            context={"user_id": user_id, "item_id": item_id},
            start_time=event.ts,
        )
        return event

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=self.timeout_s)
                self._producer = None


@dataclass
class PersonalizationTracker:
    """Recommend replies per time window: how many were personalized by the shopper's
    session events, and why the others were not.

    ``counts`` holds other named tallies of the scenario (visits, views, carts, ...).

    Windows are ``interval_s`` long from ``origin`` (set by ``start`` when the test
    starts, in every process), so the counts of worker processes add up on the master.
    """

    interval_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    origin: float | None = None
    windows: dict[int, list[int]] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)

    def count(self, name: str) -> None:
        self.counts[name] += 1

    def start(self) -> None:
        self.origin = self.clock()

    def record(self, personalized: bool, reason: str) -> None:
        if self.origin is None:
            self.start()
        window = int((self.clock() - self.origin) // self.interval_s)
        counts = self.windows.setdefault(window, [0, 0])
        counts[0] += 1
        counts[1] += int(personalized)
        if not personalized:
            self.reasons[reason] += 1

    def take(self) -> dict[str, Any]:
        """The counts so far as plain data (for a worker report), and forget them."""
        data = {
            "windows": {str(k): v for k, v in self.windows.items()},
            "reasons": dict(self.reasons),
            "counts": dict(self.counts),
        }
        self.windows = {}
        self.reasons = Counter()
        self.counts = Counter()
        return data

    def merge(self, data: dict[str, Any]) -> None:
        """Add the counts of ``take()`` from another process."""
        for key, (answered, personalized) in data.get("windows", {}).items():
            counts = self.windows.setdefault(int(key), [0, 0])
            counts[0] += answered
            counts[1] += personalized
        self.reasons.update(data.get("reasons", {}))
        self.counts.update(data.get("counts", {}))

    def summary(self) -> dict[str, Any]:
        """Totals, the personalized share overall and per window (seconds from the start)."""
        answered = sum(c[0] for c in self.windows.values())
        personalized = sum(c[1] for c in self.windows.values())
        return {
            "recommend_replies": answered,
            "personalized": personalized,
            "personalized_share": round(personalized / answered, 4) if answered else 0.0,
            "share_by_window": [
                {
                    "from_s": round(key * self.interval_s, 1),
                    "replies": counts[0],
                    "personalized_share": round(counts[1] / counts[0], 4),
                }
                for key, counts in sorted(self.windows.items())
            ],
            "fallback_reasons": dict(self.reasons.most_common()),
            **dict(sorted(self.counts.items())),
        }


def run_prefix() -> str:
    """A user id prefix of its own for each run, so every run starts with no sessions."""
    return f"locust-{uuid.uuid4().hex[:8]}-"


__all__ = [
    "Catalogue",
    "EventProducer",
    "PersonalizationTracker",
    "ShopperPool",
    "pick_shown",
    "run_prefix",
]
