"""Serve the newest bundle: load at start, then swap in newer ones without failing requests.

A swap happens on ``SIGHUP``, on :meth:`BundleReloader.reload`, or when the watch sees the
bundle path resolve to another version (a new ``current`` link). The new bundle is loaded and
verified in a worker thread while the old one keeps serving; the swap itself is one reference
assignment, and requests that already hold the old :class:`Ranker` finish with it. A bundle
that fails to load, for whatever reason, is logged and counted once, and the old one stays
(the watch does not retry the same path; ``SIGHUP`` does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from recsvc.bundle import load_bundle, resolve
from recsvc.exceptions import RecsvcError
from recsvc.metrics import Metrics
from recsvc.ranking import Ranker
from recsvc.variants import DEFAULT

log = logging.getLogger(__name__)


def load_ranker(path: Path, model: str, second_stage: bool = True) -> Ranker:
    """Load, verify and index the bundle at ``path`` (blocking)."""
    return Ranker(load_bundle(path), model, second_stage=second_stage)


class BundleReloader:
    """Holds the current :class:`Ranker`; ``ranker`` is what a request should use.

    ``on_load`` is called with each ranker that is about to serve, the first and every
    swapped one (for checks that only warn)."""

    def __init__(
        self,
        path: Path,
        model: str,
        metrics: Metrics,
        second_stage: bool = True,
        on_load: Callable[[Ranker], None] | None = None,
        variant: str = DEFAULT,
    ) -> None:
        self.path = Path(path)
        self.variant = variant
        self.model = model
        self.second_stage = second_stage
        self.metrics = metrics
        self.on_load = on_load
        self.ranker = load_ranker(self.path, model, second_stage)
        self._checked(self.ranker)
        self._lock = asyncio.Lock()
        self._failed: Path | None = None
        metrics.set_bundle(self.ranker.version, variant)
        log.info(
            "bundle loaded",
            extra={"version": self.ranker.version, "path": str(path), "variant": variant},
        )

    async def reload(self, force: bool = False) -> bool:
        """Load the bundle the path now points to, if it is another one (or ``force``).

        Returns whether a new bundle is now served.
        """
        async with self._lock:
            try:
                target = await asyncio.to_thread(resolve, self.path)
                if not force and target in (self.ranker.bundle.path, self._failed):
                    return False
                self._failed = target  # until it loads: the watch does not retry it
                ranker = await asyncio.to_thread(load_ranker, target, self.model, self.second_stage)
            except Exception as exc:  # any bad bundle: keep serving the old one
                self.metrics.bundle_swaps.labels(result="failed", variant=self.variant).inc()
                log.error(
                    "bundle reload failed; still serving the old one",
                    exc_info=not isinstance(exc, RecsvcError),
                    extra={"error": str(exc), "version": self.ranker.version},
                )
                return False
            self._checked(ranker)
            old, self.ranker, self._failed = self.ranker, ranker, None
            self.metrics.set_bundle(ranker.version, self.variant)
            self.metrics.bundle_swaps.labels(result="swapped", variant=self.variant).inc()
            log.info(
                "bundle swapped",
                extra={"old": old.version, "version": ranker.version, "variant": self.variant},
            )
            return True

    def _checked(self, ranker: Ranker) -> None:
        """Run ``on_load``; a check that fails is logged and does not stop the bundle."""
        if self.on_load is None:
            return
        try:
            self.on_load(ranker)
        except Exception:
            log.exception("a check of the bundle failed", extra={"version": ranker.version})

    async def watch(self, interval_s: float) -> None:
        """Reload whenever the path resolves to a new bundle; runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            await self.reload()
