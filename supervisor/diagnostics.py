"""Diagnostics: one JSON line per event on stderr.

Every line has at least ``event``, ``level`` and ``time``; events about a job file carry
``file``. Execution records are not diagnostics: the logger process writes those.

A line is serialized and written here, not through ``logging``: a first load of 100,000
files emits 100,000 ``job_added`` lines, and a ``LogRecord`` and a formatter per line
cost five times the JSON itself. The lines are the ones python-json-logger's formatter
wrote (its encoder, so values JSON has no type for are shown the same way).
"""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

from pythonjsonlogger.json import JsonEncoder

from supervisor.json_line import one_line

_ENCODER = JsonEncoder(ensure_ascii=False)


class Diagnostics:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._lock = threading.Lock()  # one line at a time, as logging's handler had
        self.counts: dict[str, int] = {}

    def emit(self, event: dict[str, Any]) -> None:
        name = event.get("event", "unknown")
        line = {"event": name, "level": event.get("level", "info"),
                "time": datetime.now(UTC).isoformat(timespec="microseconds")}
        line.update((k, v) for k, v in event.items() if k not in ("event", "level"))
        self.counts[name] = self.counts.get(name, 0) + 1
        text = one_line(_ENCODER.encode(line)) + "\n"
        with self._lock:
            try:
                self._stream.write(text)
                self._stream.flush()
            except (OSError, ValueError):
                # stderr closed or gone (EPIPE): the daemon goes on without its
                # diagnostics, as it did when logging's handler swallowed the error.
                pass
