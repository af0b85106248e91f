"""Structured logs: one JSON object per line (or plain text for people at a terminal).

Both formatters hide ``scheme://user:password@`` credentials in what they write
(:func:`~recsvc.redact.scrub_credentials`), so no log line, ours or a library's, shows one.
"""

from __future__ import annotations

import json
import logging
import sys

from recsvc.redact import scrub_credentials

#: ``LogRecord`` attributes that are not user fields passed with ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub_credentials(record.getMessage()),
        }
        entry.update(
            {
                k: scrub_credentials(v) if isinstance(v, str) else v
                for k, v in vars(record).items()
                if k not in _STANDARD
            }
        )
        if record.exc_info:
            entry["exc"] = scrub_credentials(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message> key=value ...`` (the fields passed with
    ``extra=``, as the JSON lines have them), credentials hidden."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{k}={json.dumps(v, default=str) if not isinstance(v, int | float) else v}"
            for k, v in vars(record).items()
            if k not in _STANDARD
        )
        line = super().formatMessage(record)
        return f"{line} {fields}" if fields else line

    def format(self, record: logging.LogRecord) -> str:
        return scrub_credentials(super().format(record))


def configure(level: str = "info", fmt: str = "json") -> None:
    """Send all logs to stderr in ``fmt`` ("json" or "text") at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("kafka").setLevel(max(root.level, logging.WARNING))
