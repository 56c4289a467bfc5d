"""Looking ahead: every fire time of many jobs in a window, and the clock changes a cron
schedule runs into.

Pure (no clock): the caller passes the instants. Two uses:

- ``upcoming(jobs, after, until, limit)`` for ``taskd next --all``: the fire times in
  ``(after, until]`` of every job, in time order. A cron job's fire times are enumerated
  from its fields (the days the day fields allow, times the product of the hour, minute
  and second lists) and mapped to instants by the DST rule of ``triggers.py``, rather
  than asking ``next_after`` (a croniter question, some 70 us) once per fire time; nor
  is croniter asked which days match: a new croniter iterator costs about a millisecond
  per expression. The tests hold the result equal to iterating ``next_after``.
- ``dst_notices(trigger, start)`` for ``taskd validate``: whether the schedule meets a
  wall time skipped (DST gap) or repeated (DST repeat) by its zone within a year, and
  what taskd then does (asked of the trigger itself, so the words cannot drift from it).
"""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo

from supervisor.timing.cron_expr import CronExpr
from supervisor.timing.triggers import (
    CronTrigger,
    OneTimeTrigger,
    StartTrigger,
    Trigger,
    gap_end,
    wall_offsets,
)
from supervisor.timing.zones import UTC
from workers.params import show

_SECOND = timedelta(seconds=1)
_TINY = timedelta(microseconds=1)
_DAY = timedelta(days=1)
_DAY_SECONDS = 86_400
# Wider than any clock change (2 h at most in tzdata): wall times this far either side of
# the window are looked at, since a wall time and its instant differ by the offset.
_WALL_MARGIN = timedelta(hours=3)
# Clock changes are looked for by sampling the offset this often, then bisecting: two
# changes closer together than this (none in tzdata) would be missed.
_SAMPLE_STEP = timedelta(hours=6)
# A naive UTC time made aware by arithmetic: ``replace(tzinfo=...)`` costs ten times more,
# and a per-second job over a day makes 86,400 of them.
_NAIVE_EPOCH = datetime(1970, 1, 1)
_UTC_EPOCH = _NAIVE_EPOCH.replace(tzinfo=UTC)
# Instants looked at stay this far inside datetime's range, so that the margins and any
# zone's offset never overflow it (nobody schedules for the last days of year 9999).
_EARLIEST = datetime.min.replace(tzinfo=UTC) + timedelta(days=2)
_LATEST = datetime.max.replace(tzinfo=UTC) - timedelta(days=2)
YEAR = timedelta(days=366)
#: Past ``limit``, fire times are counted up to this many more, then "more than".
MORE_COUNT_CAP = 100_000


class ScheduledJob(Protocol):
    """What ``upcoming`` needs of a job (``JobSpec`` has it)."""

    @property
    def job_id(self) -> str: ...

    @property
    def file(self) -> str: ...

    @property
    def trigger(self) -> Trigger: ...


# -- fire times in a window --------------------------------------------------------------


def fire_times(trigger: Trigger, after: datetime, until: datetime) -> Iterator[datetime]:
    """The fire instants of ``trigger`` in ``(after, until]``, in order, in UTC: what
    iterating ``trigger.next_after`` from ``after`` would give, computed without it
    (within 0001-01-03 to 9999-12-29: the window is cut to that)."""
    after, until = max(after, _EARLIEST), min(until, _LATEST)
    if after >= until:
        return
    if isinstance(trigger, CronTrigger):
        yield from _cron_fire_times(trigger, after, until)
    elif isinstance(trigger, OneTimeTrigger):
        if after < trigger.at <= until:
            yield trigger.at
    elif not isinstance(trigger, StartTrigger):  # another kind: ask it one by one
        instant = trigger.next_after(after)
        while instant is not None and instant <= until:
            yield instant
            instant = trigger.next_after(instant)


def _cron_fire_times(trigger: CronTrigger, after: datetime, until: datetime) -> Iterator[datetime]:
    zone, expr = trigger.zone, trigger.expr
    low = _shifted_wall(after, zone, -_WALL_MARGIN)
    high = _shifted_wall(until, zone, _WALL_MARGIN)
    walls = matching_walls(expr, low, high)
    offsets = _WallOffsets(zone, after, until)
    instants = _real_time(walls, offsets) if expr.hour_star else _wall_time(walls, offsets)
    for instant in instants:
        if instant > until:
            return
        if instant > after:
            yield instant


def _shifted_wall(instant: datetime, zone: ZoneInfo, shift: timedelta) -> datetime:
    """The naive local wall time of ``instant``, moved by ``shift``."""
    return instant.astimezone(zone).replace(tzinfo=None) + shift


class _WallOffsets:
    """``triggers.wall_offsets`` for rising wall times around a window, sped up: between
    the wall times a clock change skips or repeats, the offset is the one the last change
    left (a per-second job over a day asks 86,400 times). Near a change, it asks
    ``wall_offsets`` itself."""

    __slots__ = ("_changes", "_current", "_next", "zone")

    def __init__(self, zone: ZoneInfo, after: datetime, until: datetime) -> None:
        self.zone = zone
        start, end = after - 2 * _WALL_MARGIN, until + 2 * _WALL_MARGIN
        # (first wall time skipped or repeated, first one after them, offset from then on)
        self._changes = [(*change.walls, change.after)
                         for change in clock_changes(zone, start, end)]
        self._current = start.astimezone(zone).utcoffset()
        self._next = 0  # the first change whose wall times are not all behind us

    def __call__(self, wall: datetime) -> tuple[timedelta, timedelta]:
        changes = self._changes
        while self._next < len(changes) and wall >= changes[self._next][1]:
            self._current = changes[self._next][2]
            self._next += 1
        if self._next < len(changes) and wall >= changes[self._next][0]:
            return wall_offsets(wall, self.zone)
        return self._current, self._current


def _wall_time(walls: Iterable[datetime], offsets: _WallOffsets) -> Iterator[datetime]:
    """Fixed-hour jobs: each wall time once, a repeated one on its first pass, skipped ones
    at the end of their gap (several of them once). Non-decreasing in the wall time."""
    last: datetime | None = None
    gap: tuple[datetime, datetime] | None = None  # (wall time the gap ends at, its instant)
    for wall in walls:
        before, after = offsets(wall)
        if before >= after:
            instant = _UTC_EPOCH + (wall - before - _NAIVE_EPOCH)
        elif gap is not None and wall < gap[0]:
            instant = gap[1]
        else:
            end = gap_end(wall, offsets.zone)
            gap = ((end + after).replace(tzinfo=None), end)
            instant = end
        if instant != last:
            yield instant
            last = instant


def _real_time(walls: Iterable[datetime], offsets: _WallOffsets) -> Iterator[datetime]:
    """``*``-hour jobs: every instant whose wall time matches, in order. First passes rise
    with the wall time; second passes of repeated ones wait in ``later`` until due."""
    later: deque[datetime] = deque()
    for wall in walls:
        before, after = offsets(wall)
        if before < after:  # inside a gap: this wall time never happens
            continue
        first = _UTC_EPOCH + (wall - before - _NAIVE_EPOCH)
        while later and later[0] < first:
            yield later.popleft()
        yield first
        if before > after:
            later.append(_UTC_EPOCH + (wall - after - _NAIVE_EPOCH))
    yield from later


def matching_walls(expr: CronExpr, low: datetime, high: datetime) -> Iterator[datetime]:
    """The naive wall times ``w`` that match, ``low <= w < high``, in order (whole seconds):
    on each day the day fields allow, the product of the hour, minute and second lists."""
    start = low.replace(microsecond=0) + (_SECOND if low.microsecond else timedelta(0))
    day, lower = start.date(), _second_of_day(start)
    while (midnight := _midnight(day)) < high:
        try:
            next_day = day + _DAY
        except OverflowError:  # the last day datetime has
            next_day = None
        if day_matches(expr, day):
            ends_today = next_day is not None and high < _midnight(next_day)
            upper = _second_of_day(high, ceil=True) if ends_today else _DAY_SECONDS
            for second in times_of_day(expr, lower, upper):
                yield midnight + timedelta(seconds=second)
        if next_day is None:
            return
        day, lower = next_day, 0


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day)


def day_matches(expr: CronExpr, day: date) -> bool:
    """Whether the month, day-of-month and day-of-week fields allow ``day``, with cron's
    OR rule when both day fields are restricted (as croniter reads them for triggers)."""
    if day.month not in expr.months:
        return False
    on_day = day.day in expr.days
    on_weekday = day.isoweekday() % 7 in expr.weekdays  # cron: 0 is Sunday
    return on_day or on_weekday if expr.day_or else on_day and on_weekday


def _second_of_day(wall: datetime, *, ceil: bool = False) -> int:
    seconds = wall.hour * 3600 + wall.minute * 60 + wall.second
    return seconds + 1 if ceil and wall.microsecond else seconds


def times_of_day(expr: CronExpr, low: int, high: int) -> Iterator[int]:
    """The times of day (seconds after midnight) ``t`` with ``low <= t < high`` that the
    hour, minute and second fields allow, in order."""
    for hour in expr.hours[bisect_left(expr.hours, low // 3600):]:
        for minute in expr.minutes:
            base = hour * 3600 + minute * 60
            if base + 59 < low:
                continue
            for second in expr.seconds[bisect_left(expr.seconds, low - base):]:
                if base + second >= high:
                    return
                yield base + second


# -- many jobs ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lookahead:
    """What ``upcoming`` found: ``fires`` in time order (ties by job_id, then file), the
    jobs that run at daemon start only, and how many fire times ``limit`` left out
    (counted up to ``MORE_COUNT_CAP``; ``more_capped``: there were more than that)."""

    fires: list[tuple[datetime, ScheduledJob]]
    at_start: list[ScheduledJob]
    more: int = 0
    more_capped: bool = False


def upcoming(jobs: Iterable[ScheduledJob], after: datetime, until: datetime,
             limit: int) -> Lookahead:
    """Every fire time of ``jobs`` in ``(after, until]``, the first ``limit`` of them.

    Jobs sharing a trigger (the same expression in the same zone) share its fire times.
    """
    groups: dict[Trigger, list[ScheduledJob]] = {}
    at_start: list[ScheduledJob] = []
    for job in jobs:
        if isinstance(job.trigger, StartTrigger):
            at_start.append(job)
        else:
            groups.setdefault(job.trigger, []).append(job)
    members = [sorted(group, key=_job_order) for group in groups.values()]
    streams = [zip(fire_times(trigger, after, until), itertools.repeat(index))
               for index, trigger in enumerate(groups)]
    fires: list[tuple[datetime, ScheduledJob]] = []
    by_instant = itertools.groupby(heapq.merge(*streams), key=lambda pair: pair[0])
    for instant, same in by_instant:
        due = [job for _, index in same for job in members[index]]
        if len(due) > 1:
            due.sort(key=_job_order)
        room = limit - len(fires)
        fires.extend((instant, job) for job in due[:room])
        if len(due) >= room:
            more = len(due) - room
            break
    else:
        return Lookahead(fires, sorted(at_start, key=_job_order))
    for _, same in by_instant:  # past the limit: only count, and only so far
        more += sum(len(members[index]) for _, index in same)
        if more > MORE_COUNT_CAP:
            return Lookahead(fires, sorted(at_start, key=_job_order), MORE_COUNT_CAP, True)
    return Lookahead(fires, sorted(at_start, key=_job_order), more)


def _job_order(job: ScheduledJob) -> tuple[str, str]:
    return job.job_id, job.file


# -- clock changes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClockChange:
    """The zone's offset changes from ``before`` to ``after`` at ``at`` (UTC)."""

    at: datetime
    before: timedelta
    after: timedelta

    @property
    def kind(self) -> str:
        return "gap" if self.after > self.before else "repeat"

    @property
    def walls(self) -> tuple[datetime, datetime]:
        """The naive wall times ``[low, high)`` the change skips (gap) or repeats."""
        at = self.at.replace(tzinfo=None)
        return at + min(self.before, self.after), at + max(self.before, self.after)


@lru_cache(maxsize=256)
def clock_changes(zone: ZoneInfo, start: datetime, end: datetime) -> tuple[ClockChange, ...]:
    """The offset changes of ``zone`` in ``(start, end]``, to the second, in order."""
    changes = []
    low = int(start.timestamp())
    offset = _offset(low, zone)
    step = int(_SAMPLE_STEP.total_seconds())
    last = int(end.timestamp())
    while low < last:
        high = min(low + step, last)
        if _offset(high, zone) != offset:
            while high - low > 1:  # bisect to the first second with the new offset
                middle = (low + high) // 2
                if _offset(middle, zone) == offset:
                    low = middle
                else:
                    high = middle
            new = _offset(high, zone)
            changes.append(ClockChange(datetime.fromtimestamp(high, UTC), offset, new))
            offset = new
        low = high
    return tuple(changes)


def _offset(epoch: int, zone: ZoneInfo) -> timedelta:
    return datetime.fromtimestamp(epoch, zone).utcoffset()


# -- schedules that meet a clock change ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class DstNotice:
    """A cron schedule meets a clock change: its matching wall times ``first``..``last``
    (``count`` of them) are skipped (``kind`` "gap") or repeated ("repeat"); ``runs``
    is what taskd does for ``first`` (UTC instants: the run that stands in for it, or
    the next one; the passes it runs on); ``more``: further changes of the same kind
    that the schedule meets within the horizon."""

    kind: str
    change: ClockChange
    first: datetime
    last: datetime
    count: int
    runs: tuple[datetime, ...]
    real_time: bool  # the hour field is "*": the job keeps its real-time rhythm
    zone: ZoneInfo
    more: int = 0


def dst_notices(trigger: CronTrigger, start: datetime,
                horizon: timedelta = YEAR) -> list[DstNotice]:
    """At most one notice per kind (gap, repeat): the first change of that kind after
    ``start`` and within ``horizon`` whose skipped or repeated wall times the schedule
    matches, with the count of later ones."""
    expr, zone = trigger.expr, trigger.zone
    start = max(start.astimezone(UTC), _EARLIEST)
    end = start + horizon if _LATEST - start > horizon else _LATEST
    notices: dict[str, DstNotice] = {}  # by kind: the first change of that kind it meets
    for change in clock_changes(zone, start, end):
        first = last = None
        count = 0
        for wall in matching_walls(expr, *change.walls):
            if first is None:
                first = wall
            last = wall
            count += 1
        if first is None or last is None:
            continue
        if change.kind in notices:
            notices[change.kind] = replace(notices[change.kind],
                                           more=notices[change.kind].more + 1)
        else:
            notices[change.kind] = DstNotice(change.kind, change, first, last, count,
                                             _what_runs(trigger, change), expr.hour_star, zone)
    return sorted(notices.values(), key=lambda notice: notice.change.at)


def _what_runs(trigger: CronTrigger, change: ClockChange) -> tuple[datetime, ...]:
    """What the trigger does about the first matching wall time of the change: for a gap,
    the run after it (the stand-in, or the job's next run); for a repeat, the first pass's
    run and, if the trigger also runs the second pass, that run."""
    if change.kind == "gap":
        following = trigger.next_after(change.at - _TINY)
        return (following,) if following is not None else ()
    shift = change.before - change.after
    first = trigger.next_after(change.at - shift - _TINY)
    second = trigger.next_after(change.at - _TINY)
    if first is None:
        return ()
    if second is not None and second == first + shift:
        return first, second  # the same wall time again, on the second pass
    return (first,)


def describe_notice(notice: DstNotice, schedule: str) -> str:
    """One line: ``schedule "30 2 * * *" in Europe/Berlin: 2027-03-28 02:30 does not
    exist (DST gap); runs at 03:00 +02:00 instead``."""
    day = notice.first.date()
    several = notice.count > 1
    when = f"{day.isoformat()} {_clock_text(notice.first)}"
    if several:
        when += f" to {_wall_text(notice.last, day)} ({notice.count:,} times)"
    runs = [run.astimezone(notice.zone) for run in notice.runs]
    if notice.kind == "gap":
        what = f"{when} {'do' if several else 'does'} not exist (DST gap)"
        if notice.real_time:
            what += f" and {'are' if several else 'is'} not run: the job keeps its real-time rhythm"
            what += f" (next run {_instant_text(runs[0], day)})" if runs else ""
        elif runs:
            what += f"; runs {'once ' if several else ''}at {_instant_text(runs[0], day)} instead"
    else:
        what = f"{when} {'occur' if several else 'occurs'} twice (DST repeat)"
        if several:  # the passes by their offsets: the wall times are the range above
            passes = " and ".join(_offset_text(run) for run in runs)
        else:
            passes = " and ".join(_instant_text(run, day) for run in runs)
        each = "each " if several else ""
        if len(runs) == 2:
            what += f"; {each}runs on both passes ({passes}): the job keeps its real-time rhythm"
        elif runs:
            what += f"; {each}runs once, on the first pass ({passes})"
    if notice.more:
        plural = "s" if notice.more > 1 else ""
        what += f"; the same at {notice.more} more DST {notice.kind}{plural} after that"
    return f"schedule {show(schedule)} in {notice.zone.key}: {what}"  # one line, escaped


def _clock_text(wall: datetime) -> str:
    return wall.strftime("%H:%M:%S" if wall.second else "%H:%M")


def _wall_text(wall: datetime, day: date) -> str:
    text = _clock_text(wall)
    return text if wall.date() == day else f"{wall.date().isoformat()} {text}"


def _instant_text(local: datetime, day: date) -> str:
    return f"{_wall_text(local.replace(tzinfo=None), day)} {_offset_text(local)}"


def _offset_text(local: datetime) -> str:
    offset = local.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
