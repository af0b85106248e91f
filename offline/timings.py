"""Seconds and peak memory of each stage of an offline run, as the manifest records them."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from offline.peak_memory import PeakMemory

logger = logging.getLogger(__name__)


@dataclass
class Timings:
    """Wall-clock seconds and peak resident memory (MiB, sampled) per stage, in order.

    ``resumed`` names the stages an earlier run made and this one loaded from a checkpoint
    (:mod:`offline.checkpoint`): ``{"saved_at": ...}`` for a stage loaded whole,
    ``{"in_part": [stages]}`` for one that loaded some of its own stages; their seconds and
    peaks are those of the run that made them, and ``loaded_s`` sums those seconds.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    peak_mib: dict[str, float] = field(default_factory=dict)
    resumed: dict[str, dict[str, Any]] = field(default_factory=dict)
    loaded_s: float = 0.0

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        logger.info("stage %s ...", name)
        started = time.perf_counter()
        with PeakMemory() as peak:
            yield
        self.seconds[name] = round(time.perf_counter() - started, 2)
        self.peak_mib[name] = peak.mib
        logger.info("stage %s done in %.1fs, peak %.0f MiB", name, self.seconds[name], peak.mib)

    def restore(self, name: str, seconds: float, peak_mib: float, saved_at: str) -> None:
        """Record a stage loaded from a checkpoint, with the figures of the run that made it."""
        self.seconds[name] = seconds
        self.peak_mib[name] = peak_mib
        self.resumed[name] = {"saved_at": saved_at}
        self.loaded_s += seconds
        print(f"stage {name}: loaded from the checkpoint (it ran {seconds:.0f}s, saved {saved_at})")

    def forget(self, name: str) -> None:
        """Undo :meth:`restore` of ``name`` (its saved results turned out not to fit)."""
        if self.resumed.pop(name, None) is not None:
            self.loaded_s -= self.seconds[name]
        self.seconds.pop(name, None)
        self.peak_mib.pop(name, None)

    def absorb(self, name: str, inner: Timings) -> None:
        """Add to stage ``name`` the stages its own build (``inner``) loaded from a
        checkpoint, so that ``name`` counts all of its work."""
        if not inner.resumed:
            return
        self.seconds[name] = round(self.seconds[name] + inner.loaded_s, 2)
        peaks = [inner.peak_mib[stage] for stage in inner.resumed]
        self.peak_mib[name] = max([self.peak_mib[name], *peaks])
        self.resumed[name] = {"in_part": list(inner.resumed)}
        self.loaded_s += inner.loaded_s
