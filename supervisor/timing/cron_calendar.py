"""Naive wall-clock calendar search over a parsed cron expression, using croniter.

croniter is asked only one question: the first naive (zone-less) wall time strictly after
a given one that matches the fields. It never sees a time zone, so its own DST handling
(which changed between releases) cannot affect us; DST is ``triggers.py``'s business.
It only sees explicit numeric lists from ``cron_expr`` (or ``*`` for a field's whole
range), so its reading of shorthand cannot either. The golden fire-time lists in the
tests pin what it computes.
"""

from __future__ import annotations

from datetime import datetime

from croniter import croniter
from croniter.croniter import CroniterBadDateError

from supervisor.timing.cron_expr import DAY_OF_MONTH, HOUR, MINUTE, MONTH, CronExpr

# Farthest a valid expression can be from its next match: Feb 29 on a given weekday
# recurs within 28 years (plus a skipped century leap day).
_MAX_YEARS_BETWEEN_MATCHES = 50
# Each field's whole range, as cron_expr lists it (seconds share the minutes' 0-59; a
# weekday 7 is read as Sunday, 0).
_SIXTY, _HOURS, _DAYS, _MONTHS = (tuple(range(f.low, f.high + 1))
                                  for f in (MINUTE, HOUR, DAY_OF_MONTH, MONTH))
_WEEKDAYS = tuple(range(7))


class WallCalendar:
    """``next_after(wall)``: the first matching naive wall time strictly after ``wall``."""

    __slots__ = ("_iter",)

    def __init__(self, expr: CronExpr) -> None:
        # A field's whole range goes as "*": croniter parses a list element by element
        # (the 53 of "1 0 * * *" spelt out took it 0.5 ms, once per distinct expression).
        # Not the day fields under the OR rule: croniter applies it only when neither is
        # "*", and "1-31" with a weekday means every day there.
        day_star = not expr.day_or

        def listed(values: tuple[int, ...], whole: tuple[int, ...], star: bool = True) -> str:
            return "*" if star and values == whole else ",".join(map(str, values))

        # croniter's six-field form has seconds last.
        canonical = " ".join((
            listed(expr.minutes, _SIXTY), listed(expr.hours, _HOURS),
            listed(expr.days, _DAYS, day_star), listed(expr.months, _MONTHS),
            listed(expr.weekdays, _WEEKDAYS, day_star), listed(expr.seconds, _SIXTY)))
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
