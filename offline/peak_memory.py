"""Peak resident memory of this process (and its children) over a stretch of code.

``resource.getrusage`` only knows the peak of the whole process life, so a pipeline stage
that uses less than an earlier one would show the earlier peak. :class:`PeakMemory` samples
the resident set size (RSS, via psutil) in a background thread while a block runs and keeps
the largest value; child processes (parallel annoy partitions) are added in. Without psutil
it falls back to the lifetime peak.
"""

from __future__ import annotations

import resource
import threading
from types import TracebackType

try:
    import psutil
except ImportError:  # pragma: no cover - psutil is in requirements.txt
    psutil = None

MIB = 1 << 20


def rss_bytes(process: psutil.Process | None) -> int:
    """RSS of ``process`` plus its live children, in bytes (0 for those gone meanwhile).

    Without psutil: this process's lifetime peak RSS (``getrusage``)."""
    if process is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    total = 0
    for proc in (process, *process.children(recursive=True)):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


class PeakMemory:
    """Context manager: ``with PeakMemory() as peak: ...`` then ``peak.mib``.

    Parameters
    ----------
    interval : seconds between samples (short peaks between two samples are missed)
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._process = psutil.Process() if psutil is not None else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    @property
    def mib(self) -> float:
        """The largest RSS seen, in MiB."""
        return round(self.peak / MIB, 1)

    def sample(self) -> None:
        self.peak = max(self.peak, rss_bytes(self._process))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakMemory:
        self.sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
