"""One diagnostic per streak of skipped occurrences, never a flood.

A per-second job whose run hangs for an hour would otherwise log 3,600 ``skipped``
lines. The first skip of a streak is reported at once; the rest are counted and
reported as one line when the streak ends (the job's run finished, or at shutdown).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class _Streak:
    first: dict[str, Any]
    more: int = 0
    second: str | None = None  # scheduled_for of the first one counted silently
    last: str | None = None


class SkipStreaks:
    def __init__(self) -> None:
        self._open: dict[str, _Streak] = {}

    def note(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The event to emit now for a ``skipped`` event, or None (counted)."""
        streak = self._open.get(event["job_id"])
        if streak is None:
            self._open[event["job_id"]] = _Streak(event)
            return event
        streak.more += 1
        streak.second = streak.second or event["scheduled_for"]
        streak.last = event.get("last", event["scheduled_for"])
        return None

    def close(self, job_id: str) -> dict[str, Any] | None:
        """The streak's closing line, if more occurrences were skipped than reported."""
        streak = self._open.pop(job_id, None)
        if streak is None or not streak.more:
            return None
        first = streak.first
        return {"event": "skipped", "level": "warning", "job_id": job_id,
                "file": first.get("file"), "scheduled_for": streak.second,
                "last": streak.last, "count": streak.more,
                "reason": f"{first.get('reason')}: {streak.more} more occurrences after "
                          f"the one reported at {first['scheduled_for']}"}

    def close_all(self) -> list[dict[str, Any]]:
        return [event for job_id in list(self._open) if (event := self.close(job_id))]
