"""Diagnostics lines: the same bytes python-json-logger's formatter wrote, without logging."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pythonjsonlogger.json import JsonFormatter

from supervisor.control import diagnostics
from supervisor.control.diagnostics import _ENCODER, Diagnostics, _now_text, json_object
from supervisor.control.json_line import one_line
from tests.test_task_params import JSON_VALUES

_TIME = re.compile(r'"time": "[^"]*"')


class _ReferenceFormatter(JsonFormatter):
    """The formatter diagnostics.py used before it wrote lines itself."""

    def add_fields(self, log_record, record, message_dict) -> None:
        log_record.update(record.msg if isinstance(record.msg, dict) else {})

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


def reference_line(line: dict) -> str:
    formatter = _ReferenceFormatter(json_ensure_ascii=False)
    record = logging.LogRecord("taskd.diagnostics", logging.INFO, __file__, 1, line, None, None)
    return formatter.format(record) + "\n"


EVENTS = [
    {"event": "job_added", "level": "info", "file": "/jobs/a.json", "job_id": "a"},
    {"level": "error", "event": "job_invalid", "file": "/jobs/é\u2028x.json", "job_id": None,
     "error": 'schedule "61 * * * *": minute 61 is out of range 0-59'},
    {"event": "ready", "jobs": 3, "worker_pids": [1, 2], "nested": {"k": [1.5, True, None]}},
    {"event": "odd values", "level": "warning", "when": datetime(2026, 1, 2, tzinfo=UTC),
     "path": Path("/x"), "raw": b"\xff", "text": "tab\tand \"quotes\" and \x85"},
    {"no_event_key": 1},
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: str(e.get("event")))
def test_lines_are_what_python_json_logger_wrote(event):
    stream = io.StringIO()
    Diagnostics(stream).emit(event)
    written = stream.getvalue()
    assert written.endswith("\n") and written.count("\n") == 1
    assert len(written.splitlines()) == 1  # U+2028 and NEL escaped: one line for everyone
    decoded = json.loads(written)
    assert list(decoded)[:3] == ["event", "level", "time"]
    assert datetime.fromisoformat(decoded["time"]).tzinfo is not None
    line = {"event": event.get("event", "unknown"), "level": event.get("level", "info"),
            "time": decoded["time"],
            **{k: v for k, v in event.items() if k not in ("event", "level")}}
    assert _TIME.sub("T", written) == _TIME.sub("T", reference_line(line))


@given(st.dictionaries(st.text(), JSON_VALUES, max_size=6))
def test_a_line_joined_value_by_value_is_the_encoders_text(line):
    assert json_object(line) == _ENCODER.encode(line)


@pytest.mark.parametrize("ns", [1_764_892_799_999_999_999, 1_764_892_800_000_000_000,
                                1_764_892_799_000_001_000, 1_764_892_800_999_999_000, 0])
def test_the_time_of_a_line_is_its_instant_in_isoformat(ns, monkeypatch):
    _now_text()  # some other second cached first
    monkeypatch.setattr(diagnostics.time, "time_ns", lambda: ns)
    expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)
    assert _now_text() == expected.isoformat(timespec="microseconds")


def test_the_time_of_a_line_is_the_clocks():
    for _ in range(200):
        before = datetime.now(UTC)
        text = _now_text()
        after = datetime.now(UTC)
        moment = datetime.fromisoformat(text)
        assert text == moment.isoformat(timespec="microseconds")
        assert before <= moment <= after


def test_events_are_counted_by_name():
    diagnostics = Diagnostics(io.StringIO())
    for event in ("job_added", "job_added", "ready"):
        diagnostics.emit({"event": event, "level": "info"})
    assert diagnostics.counts == {"job_added": 2, "ready": 1}


class _GoneStream(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_stderr_that_is_gone_does_not_stop_the_daemon():
    diagnostics = Diagnostics(_GoneStream())
    diagnostics.emit({"event": "job_added", "level": "info", "file": "/jobs/a.json"})
    closed = io.StringIO()
    closed.close()
    Diagnostics(closed).emit({"event": "stopped", "level": "info"})
    assert diagnostics.counts == {"job_added": 1}


class _CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_batched_lines_are_the_same_lines_in_fewer_writes():
    one_by_one, batched = _CountingStream(), _CountingStream()
    events = [{"event": "job_added", "level": "info", "file": f"/jobs/{i}.json",
               "job_id": str(i)} for i in range(3000)]
    for event in events:
        Diagnostics(one_by_one).emit(event)
    diagnostics = Diagnostics(batched)
    with diagnostics.batched():
        for event in events[:10]:
            diagnostics.emit(event)
        assert batched.getvalue() == ""  # held back until the chunk fills or the block ends
        with diagnostics.batched():  # nested: the outermost block decides
            for event in events[10:]:
                diagnostics.emit(event)
    assert 1 < batched.writes < len(events) / 50
    assert _TIME.sub("T", batched.getvalue()) == _TIME.sub("T", one_by_one.getvalue())
    diagnostics.emit({"event": "ready"})  # after the block: written at once
    assert json.loads(batched.getvalue().splitlines()[-1])["event"] == "ready"


def test_a_batch_is_written_out_when_its_block_raises():
    stream = io.StringIO()
    diagnostics = Diagnostics(stream)
    with pytest.raises(OSError), diagnostics.batched():
        diagnostics.emit({"event": "job_added", "level": "info", "file": "/jobs/a.json"})
        raise OSError("jobs dir gone")
    assert json.loads(stream.getvalue())["file"] == "/jobs/a.json"
