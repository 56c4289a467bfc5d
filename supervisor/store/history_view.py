"""``taskd history`` for a person: reading ``--since``, and the table of runs.

Pure functions (no clock, no environment): the command passes ``now`` and the zone.

The table fits ``width`` terminal columns (80): every cell is cut to its column, ending
in "…" when cut, with control characters shown as "?" (an error may hold a newline).
Widths are counted conservatively, a wide (East Asian) character as 2 and every other
character as 1, so a line is never wider on screen, nor longer in characters, than
``width``. Times are UTC, as in the records (``2026-12-03 17:57:31Z``): a time copied
from the table is a valid ``--since``.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any

WIDTH = 80
SINCE_HELP = ("an ISO 8601 instant (2026-12-03T17:00:00Z; without an offset, the host's "
              "local time) or a duration meaning that long ago (90s, 15m, 2h, 7d, 1h30m)")

_DURATION = re.compile(r"(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?"
                       r"(?:([0-9]+)s)?")
_UNIT_SECONDS = (604_800, 86_400, 3_600, 60, 1)
_GAP = "  "
# (header, width, right-aligned): the fixed columns; JOB and NOTES share what is left.
_STARTED = ("STARTED", 20, False)
_STATUS = ("STATUS", 7, False)
_TOOK = ("TOOK", 6, True)  # 12ms, 3.4s, 5m02s, 2h03m, 3d04h
_EXIT = ("EXIT", 4, True)
_JOB_MAX_SHARE = 0.5  # of the free columns, when the notes need more than is left


# -- --since -----------------------------------------------------------------------------


def parse_since(text: str, now: float, zone: tzinfo = UTC) -> float:
    """Epoch seconds for ``--since``: a duration back from ``now`` (epoch), or an ISO 8601
    instant (read in ``zone`` when it has no offset). ValueError with a clear message."""
    stripped = text.strip()
    match = _DURATION.fullmatch(stripped)
    if stripped and match:
        seconds = sum(int(part) * unit for part, unit in zip(match.groups(), _UNIT_SECONDS,
                                                             strict=True) if part)
        try:
            return now - float(seconds)
        except OverflowError:
            raise ValueError(f"{_quoted(text)}: that duration is too long") from None
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        if stripped.isdigit():
            hint = f"; a duration needs a unit, e.g. {stripped[:20]}s or {stripped[:20]}m"
        else:
            hint = ""
        raise ValueError(f"{_quoted(text)}: expected {SINCE_HELP}{hint}") from None
    try:
        if moment.tzinfo is None:
            moment = _local_to_utc(moment, zone)
        return moment.timestamp()
    except (OverflowError, ValueError, OSError):
        raise ValueError(f"{_quoted(text)}: that instant is out of range") from None


def _quoted(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit - 1] + "…")


def _local_to_utc(wall: datetime, zone: tzinfo) -> datetime:
    """A naive wall time as cronie and ``taskd next --after`` read it: once, that instant;
    repeated by fall-back, its first pass; skipped by spring-forward, the end of the gap."""
    before = wall.replace(tzinfo=zone, fold=0).utcoffset()
    after = wall.replace(tzinfo=zone, fold=1).utcoffset()
    if before is None or after is None or before >= after:
        return wall.replace(tzinfo=zone, fold=0)
    from zoneinfo import ZoneInfo

    from supervisor.timing.triggers import gap_end  # rare: spares every run the import

    if isinstance(zone, ZoneInfo):
        return gap_end(wall, zone)
    return wall.replace(tzinfo=zone, fold=1)


# -- the table ---------------------------------------------------------------------------


def format_table(records: Iterable[Mapping[str, Any]], width: int = WIDTH) -> list[str]:
    """A header and one line per record (in the order given), each at most ``width``."""
    rows = [_cells(record) for record in records]
    fixed = _STARTED[1] + _STATUS[1] + _TOOK[1] + _EXIT[1] + 5 * len(_GAP)
    free = max(0, width - fixed)
    job_need = max([columns("JOB"), *(columns(row["job"]) for row in rows)])
    notes_need = max([columns("NOTES"), *(columns(row["notes"]) for row in rows)])
    job_width = min(job_need, max(free - notes_need, int(free * _JOB_MAX_SHARE), 3))
    notes_width = max(0, free - job_width)
    layout = [(_STARTED, "started"), (("JOB", job_width, False), "job"), (_STATUS, "status"),
              (_TOOK, "took"), (_EXIT, "exit"),
              (("NOTES", notes_width, False), "notes")]
    header = {key: title for (title, _, _), key in layout}
    lines = []
    for row in [header, *rows]:
        line = _GAP.join(cell(row[key], size, right=right)
                         for (_, size, right), key in layout)
        lines.append(fit(line.rstrip(), width))  # fit: a width too small for the columns
    return lines


def _cells(record: Mapping[str, Any]) -> dict[str, str]:
    return {"started": started_text(record.get("timestamp")),
            "job": _text(record.get("job_id")),
            "status": _text(record.get("status")),
            "took": duration_text(record.get("duration_ms")),
            "exit": _text(record.get("exit_code")),
            "notes": notes_text(record)}


def started_text(timestamp: Any) -> str:
    """``2026-12-03 17:57:31Z`` (UTC); what is there, when it is not an ISO timestamp."""
    if not isinstance(timestamp, str):
        return _text(timestamp)
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return timestamp
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(UTC)
        except (OverflowError, ValueError):
            return timestamp
        return moment.strftime("%Y-%m-%d %H:%M:%S") + "Z"
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def duration_text(duration_ms: Any) -> str:
    """12ms, 3.4s, 42s, 5m02s, 2h03m, 3d04h; "-" when unknown."""
    if isinstance(duration_ms, bool) or not isinstance(duration_ms, int | float):
        return "-"
    if not math.isfinite(duration_ms) or duration_ms < 0:
        return "-"
    if duration_ms < 1:
        return "<1ms"
    if duration_ms < 999.5:
        return f"{duration_ms:.0f}ms"
    seconds = duration_ms / 1000
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def notes_text(record: Mapping[str, Any]) -> str:
    """What sets the run apart ("[manual]", "[catch-up]", a hook, a retry), then its error."""
    marks = []
    if record.get("manual"):
        marks.append("manual")
    if record.get("catch_up"):
        marks.append("catch-up")
    if record.get("hook"):
        marks.append(_text(record["hook"]))  # on_failure, on_success, ...: says it all
    attempt = record.get("attempt")
    if isinstance(attempt, int) and not isinstance(attempt, bool) and attempt > 1:
        marks.append(f"attempt {attempt}")
    parts = [f"[{', '.join(marks)}]"] if marks else []
    if record.get("error"):
        parts.append(_text(record["error"]))
    return " ".join(parts)


# -- columns -----------------------------------------------------------------------------


def columns(text: str) -> int:
    """Terminal columns ``text`` may take: wide characters 2, any other 1 (combining marks
    too: never less than they take, and never less than ``len``)."""
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def printable(text: str) -> str:
    """One line with no control characters: whitespace controls become a space, any other
    control, format, private-use, unassigned or surrogate character a "?"."""
    if text.isascii() and text.isprintable():
        return text
    out = []
    for char in text:
        if unicodedata.category(char)[0] in "CZ" and char != " ":
            out.append(" " if char.isspace() else "?")
        else:
            out.append(char)
    return "".join(out)


def fit(text: str, width: int) -> str:
    """``text`` made printable and cut to ``width`` columns, ending in "…" when cut."""
    text = printable(text)
    if columns(text) <= width:
        return text
    if width <= 0:
        return ""
    out, used = [], 0
    for char in text:
        size = columns(char)
        if used + size > width - 1:
            break
        out.append(char)
        used += size
    return "".join(out) + "…"


def cell(text: str, width: int, *, right: bool = False) -> str:
    """``text`` fitted and padded to exactly ``width`` columns."""
    text = fit(text, width)
    padding = " " * (width - columns(text))
    return padding + text if right else text + padding


def _text(value: Any) -> str:
    return "-" if value is None else str(value)
