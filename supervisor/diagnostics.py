"""Diagnostics: one JSON line per event on stderr (python-json-logger).

Every line has at least ``event``, ``level`` and ``time``; events about a job file carry
``file``. Execution records are not diagnostics: the logger process writes those.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from supervisor.json_line import one_line

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class _EventFormatter(JsonFormatter):
    """Only the event's own fields, in the order given, after ``event`` and ``level``."""

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        log_record.update(record.msg if isinstance(record.msg, dict) else {})

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


class Diagnostics:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._logger = logging.Logger("taskd.diagnostics")
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(_EventFormatter(json_ensure_ascii=False))
        self._logger.addHandler(handler)
        self.counts: dict[str, int] = {}

    def emit(self, event: dict[str, Any]) -> None:
        name = event.get("event", "unknown")
        level = event.get("level", "info")
        line = {"event": name, "level": level,
                "time": datetime.now(UTC).isoformat(timespec="microseconds")}
        line.update((k, v) for k, v in event.items() if k not in ("event", "level"))
        self.counts[name] = self.counts.get(name, 0) + 1
        self._logger.log(_LEVELS.get(level, logging.INFO), line)
