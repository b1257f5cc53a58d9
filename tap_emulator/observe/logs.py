"""Observe: how the emulator logs: text or one JSON object per line, and warnings that can
repeat per message held to one line per reason per period."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class ThrottledLog:
    """Warnings about things that can repeat per message (refused input), at most one line
    per reason per `period_seconds`, with the number left unsaid since the last line."""

    def __init__(self, logger: logging.Logger, period_seconds: float = 10.0) -> None:
        self._logger = logger
        self._period = period_seconds
        self._last: dict[str, float] = {}
        self._unsaid: dict[str, int] = {}

    def warning(self, reason: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self._period:
            self._unsaid[reason] = self._unsaid.get(reason, 0) + 1
            return
        self._last[reason] = now
        unsaid = self._unsaid.pop(reason, 0)
        suffix = f" ({unsaid} more like this not logged)" if unsaid else ""
        self._logger.warning(message + suffix, *args)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; attacker-controlled text is escaped by the encoding."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)


def configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
