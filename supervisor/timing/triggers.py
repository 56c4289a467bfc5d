"""Triggers: pure functions from an instant to the next fire instant.

A trigger never reads the clock: ``next_after(instant)`` is the first fire instant strictly
after ``instant`` (an aware datetime), returned in UTC, or None when there is none left.

DST follows cronie:
- A job whose hour field starts with ``*`` keeps its real-time rhythm: it fires at every
  instant whose local wall time matches, so an hourly job runs every 3600 s through both
  changes (local times inside a spring-forward gap do not exist and so never match).
- Any other job runs once per matching local wall time: a wall time skipped by
  spring-forward fires at the first instant after the gap, a wall time repeated by
  fall-back fires once, on its first pass. Several skipped wall times fire once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from supervisor.timing.cron_calendar import WallCalendar
from supervisor.timing.cron_expr import CronExpr, parse_cron
from supervisor.timing.zones import UTC, zone_named

_SECOND = timedelta(seconds=1)
_TINY = timedelta(microseconds=1)


class Trigger(ABC):
    @abstractmethod
    def next_after(self, instant: datetime) -> datetime | None:
        """The first fire instant strictly after ``instant`` (aware), in UTC; None if none."""

    @abstractmethod
    def describe(self) -> str:
        """The schedule as the job file gave it, for status and errors."""


class OneTimeTrigger(Trigger):
    __slots__ = ("at",)

    def __init__(self, at: datetime) -> None:
        self.at = at.astimezone(UTC)

    def next_after(self, instant: datetime) -> datetime | None:
        return self.at if self.at > instant else None

    def describe(self) -> str:
        return self.at.isoformat()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OneTimeTrigger) and other.at == self.at

    def __hash__(self) -> int:
        return hash(self.at)


class StartTrigger(Trigger):
    """``@reboot`` / ``@start``: once each time the daemon starts, never by the clock.

    ``next_after`` is always None; the coordinator runs these jobs as its first load ends
    (see ``Schedule.at_start``)."""

    __slots__ = ("text",)

    def __init__(self, text: str = "@reboot") -> None:
        self.text = text

    def next_after(self, instant: datetime) -> datetime | None:
        return None

    def describe(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StartTrigger)

    def __hash__(self) -> int:
        return hash(StartTrigger)


START_MACROS = ("@reboot", "@start")


class CronTrigger(Trigger):
    """A cron expression in one time zone. Shared between jobs with the same pair."""

    __slots__ = ("_calendar", "_memo_after", "_memo_next", "expr", "zone")

    def __init__(self, expr: CronExpr, zone: ZoneInfo) -> None:
        self.expr = expr
        self.zone = zone
        self._calendar = WallCalendar(expr)
        # Many jobs share one trigger and ask about the same instant (all of them at
        # start-up, every second for a seconds schedule): remember the last answer.
        self._memo_after: datetime | None = None
        self._memo_next: datetime | None = None

    def describe(self) -> str:
        return self.expr.text

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, CronTrigger) and other.expr == self.expr
                and other.zone.key == self.zone.key)

    def __hash__(self) -> int:
        return hash((self.expr.text, self.zone.key))

    def next_after(self, instant: datetime) -> datetime | None:
        if instant == self._memo_after:
            return self._memo_next
        if self.expr.hour_star:
            result = self._next_real_time(instant)
        else:
            result = self._next_wall_time(instant)
        self._memo_after, self._memo_next = instant, result
        return result

    # -- fixed-hour jobs: once per matching local wall time ---------------------------

    def _next_wall_time(self, instant: datetime) -> datetime | None:
        local = instant.astimezone(self.zone)
        wall = local.replace(tzinfo=None)
        first_pass = wall.replace(tzinfo=self.zone, fold=0)
        if local.fold == 1 and first_pass.utcoffset() != local.utcoffset():
            # In the second pass of a repeated hour: every repeated wall time has fired on
            # its first pass already, so resume from the end of the repeated range (the
            # wall time the first pass ended at). Not from ``wall + shift``: that would
            # skip the wall times between the end of the range and ``wall + shift``.
            end = transition(wall, self.zone) + first_pass.utcoffset()
            wall = end.replace(tzinfo=None) - _SECOND
        candidate = self._calendar.next_after(wall)
        if candidate is None:
            return None
        return local_wall_to_utc(candidate, self.zone)

    # -- "*"-hour jobs: every instant whose wall time matches --------------------------

    def _next_real_time(self, instant: datetime) -> datetime | None:
        instant_utc = instant.astimezone(UTC)
        local = instant.astimezone(self.zone)
        wall = local.replace(tzinfo=None)
        candidates = []
        first_pass = wall.replace(tzinfo=self.zone, fold=0)
        second_pass = wall.replace(tzinfo=self.zone, fold=1)
        shift = first_pass.utcoffset() - second_pass.utcoffset()
        if shift > timedelta(0) and local.fold == 0:
            # We are in the first pass of a repeated hour: wall times earlier than ours
            # come round again in the second pass. Search from the start of the repeated
            # range, not from ``wall - shift``: a match between the two would hide the
            # repeated ones (30-minute folds such as Lord Howe's, or a range at midnight).
            start = transition(wall, self.zone) + second_pass.utcoffset()
            again = self._calendar.next_after(start.replace(tzinfo=None) - _SECOND)
            if again is not None:
                before, after = wall_offsets(again, self.zone)
                if before > after:
                    candidates.append((again - after).replace(tzinfo=UTC))
        candidate = self._calendar.next_after(wall)
        while candidate is not None:
            before, after = wall_offsets(candidate, self.zone)
            if before < after:  # inside a spring-forward gap: skip past it
                end = gap_end(candidate, self.zone)
                candidate = self._calendar.next_after(
                    end.astimezone(self.zone).replace(tzinfo=None) - _TINY
                )
                continue
            first = (candidate - before).replace(tzinfo=UTC)
            second = (candidate - after).replace(tzinfo=UTC)
            candidates.append(first if first > instant_utc else second)
            break
        return min(candidates) if candidates else None


def wall_offsets(wall: datetime, zone: ZoneInfo) -> tuple[timedelta, timedelta]:
    """UTC offsets of a naive wall time read on its first and second pass.

    Equal: exists once. First larger: repeated by fall-back. First smaller: skipped.
    """
    return (
        wall.replace(tzinfo=zone, fold=0).utcoffset(),
        wall.replace(tzinfo=zone, fold=1).utcoffset(),
    )


def gap_end(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant after the spring-forward gap that ``wall`` falls in (UTC)."""
    return transition(wall, zone)


def transition(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant (UTC) of the offset change that skips or repeats ``wall``."""
    before, after = wall_offsets(wall, zone)
    # It lies between wall - after and wall - before (a gap: in (wall - after,
    # wall - before]; a fold: in (wall - before, wall - after]); bisect it to the second.
    ends = sorted([wall - after, wall - before])
    low, high = (int(end.replace(tzinfo=UTC).timestamp()) for end in ends)
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == after:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def local_wall_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """A naive local time as the instant cronie would run it (UTC).

    Exists once: that instant. Repeated by fall-back: its first pass. Skipped by
    spring-forward: the first instant after the gap.
    """
    before, after = wall_offsets(wall, zone)
    if before >= after:
        return (wall - before).replace(tzinfo=UTC)
    return gap_end(wall, zone)


@lru_cache(maxsize=4096)
def cron_trigger(expression: str, zone_name: str) -> CronTrigger:
    """The shared trigger for an expression in a zone (one per distinct pair)."""
    return CronTrigger(parse_cron(expression), zone_named(zone_name))
