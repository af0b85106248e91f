"""Every error recsvc raises on purpose; outside errors are translated at the edge."""


class RecsvcError(Exception):
    """Base of all recsvc errors; the CLI prints these without a traceback."""


class DataError(RecsvcError):
    """Input data (event logs, item vectors, images) that cannot be used."""


class BundleError(RecsvcError):
    """An artifact bundle that is missing, corrupted or inconsistent."""


class ConfigError(RecsvcError):
    """Settings or flags that are unknown, invalid or inconsistent."""
