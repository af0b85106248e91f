"""Every error recsvc raises on purpose; outside errors are translated at the edge."""


class RecsvcError(Exception):
    """Base of all recsvc errors; the CLI prints these without a traceback."""


class DataError(RecsvcError):
    """Input data (event logs, item vectors, images) that cannot be used."""


class BundleError(RecsvcError):
    """An artifact bundle that is missing, corrupted or inconsistent."""


class ConfigError(RecsvcError):
    """Settings or flags that are unknown, invalid or inconsistent."""


class InvalidRequest(RecsvcError):
    """A request argument that cannot be served; the message says which."""


class ItemNotFound(RecsvcError):
    """The requested item is not in the bundle's catalogue."""


class LiveUnavailable(RecsvcError):
    """An item the bundle does not know was asked for while the live co-visits, the only
    other place that could know it, could not be read (a retry may succeed)."""


class InvalidEvent(RecsvcError):
    """A stream event that breaks the Event contract; ``reason`` is a fixed label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SessionStoreError(RecsvcError):
    """The session store could not be reached or answered badly."""
