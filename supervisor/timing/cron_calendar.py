"""Naive wall-clock calendar search over a parsed cron expression, using croniter.

croniter is asked only one question: the first naive (zone-less) wall time strictly after
a given one that matches the fields. It never sees a time zone, so its own DST handling
(which changed between releases) cannot affect us; DST is ``triggers.py``'s business.
It only sees explicit numeric lists from ``cron_expr``, so its reading of shorthand
cannot either. The golden fire-time lists in the tests pin what it computes.
"""

from __future__ import annotations

from datetime import datetime

from croniter import croniter
from croniter.croniter import CroniterBadDateError

from supervisor.timing.cron_expr import CronExpr

# Farthest a valid expression can be from its next match: Feb 29 on a given weekday
# recurs within 28 years (plus a skipped century leap day).
_MAX_YEARS_BETWEEN_MATCHES = 50


class WallCalendar:
    """``next_after(wall)``: the first matching naive wall time strictly after ``wall``."""

    __slots__ = ("_iter",)

    def __init__(self, expr: CronExpr) -> None:
        def listed(values: tuple[int, ...]) -> str:
            return ",".join(map(str, values))

        # croniter's six-field form has seconds last.
        canonical = " ".join(
            listed(v)
            for v in (expr.minutes, expr.hours, expr.days, expr.months, expr.weekdays,
                      expr.seconds)
        )
        self._iter = croniter(
            canonical,
            datetime(2000, 1, 1),
            ret_type=datetime,
            day_or=expr.day_or,
            max_years_between_matches=_MAX_YEARS_BETWEEN_MATCHES,
        )

    def next_after(self, wall: datetime) -> datetime | None:
        self._iter.set_current(wall, force=True)
        try:
            return self._iter.get_next(datetime)
        except CroniterBadDateError:
            return None
