"""Logging: JSON lines for machines (the default when stderr is not a terminal), readable text for people."""

from __future__ import annotations

import logging
import sys
import time

import orjson

__all__ = ["configure"]

#: Attributes every LogRecord has; anything else on a record came from `extra=` and belongs in the JSON.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((key, value) for key, value in vars(record).items() if key not in _STANDARD)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(level: str, style: str = "auto") -> None:
    """`style`: json, text, or auto (json unless stderr is a terminal)."""
    handler = logging.StreamHandler(sys.stderr)
    use_json = style == "json" or (style == "auto" and not sys.stderr.isatty())
    handler.setFormatter(
        JsonFormatter() if use_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
