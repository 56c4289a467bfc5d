"""Triggers across real DST transitions (tzdata, 2025-2027), the trigger contract
(strictly after, UTC out, no clock), one-time triggers, and properties checked against a
brute-force oracle that walks real time second by second or minute by minute.

The DST rules are the contract's (``taskd next`` in CONTRACT.md), which follow cronie:

- a job whose hour field starts with ``*`` keeps its real-time rhythm: it fires at every
  instant whose local wall time matches (wall times inside a gap never exist);
- any other job fires once per matching wall time: a skipped one at the first instant
  after the gap (several skipped ones: once), a repeated one on its first pass only.

Where cronie itself does something else, the test says so next to the case.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from datetime import UTC as STDLIB_UTC
from datetime import date, datetime, timedelta, timezone
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import supervisor.timing.cron_calendar
import supervisor.timing.triggers
from supervisor.timing.cron_expr import CronExpr, CronSyntaxError, parse_cron
from supervisor.timing.triggers import CronTrigger, OneTimeTrigger, cron_trigger
from supervisor.timing.zones import UTC
from tests.property_settings import examples

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def fires(expr: str, zone: str, after: datetime, count: int) -> list[datetime]:
    trigger = CronTrigger(parse_cron(expr), ZoneInfo(zone))  # unshared: no memo reuse
    out: list[datetime] = []
    instant: datetime | None = after
    for _ in range(count):
        instant = trigger.next_after(instant)
        assert instant is not None
        out.append(instant)
    return out


def fires_between(expr: str, zone: str, low: datetime, high: datetime) -> list[datetime]:
    """Every fire instant in (low, high]."""
    trigger = CronTrigger(parse_cron(expr), ZoneInfo(zone))
    out: list[datetime] = []
    instant = trigger.next_after(low)
    while instant is not None and instant <= high:
        out.append(instant)
        instant = trigger.next_after(instant)
    return out


def local(instants: list[datetime], zone: str) -> list[str]:
    return [i.astimezone(ZoneInfo(zone)).isoformat() for i in instants]


def gaps(instants: list[datetime]) -> list[int]:
    return [int((b - a).total_seconds()) for a, b in pairwise(instants)]


def iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


# -- the transitions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Zone:
    name: str
    spring: str  # instant of the spring-forward change, UTC
    spring_walls: tuple[str, str]  # local wall clock just before and right after it
    fall: str  # instant of the fall-back change, UTC
    fall_walls: tuple[str, str]


ZONES = [
    Zone("America/New_York",
         "2025-03-09T07:00:00+00:00", ("2025-03-09T02:00", "2025-03-09T03:00"),
         "2025-11-02T06:00:00+00:00", ("2025-11-02T02:00", "2025-11-02T01:00")),
    Zone("Europe/Berlin",
         "2026-03-29T01:00:00+00:00", ("2026-03-29T02:00", "2026-03-29T03:00"),
         "2026-10-25T01:00:00+00:00", ("2026-10-25T03:00", "2026-10-25T02:00")),
    # 30-minute shift: +10:30 in winter, +11 in summer
    Zone("Australia/Lord_Howe",
         "2026-10-03T15:30:00+00:00", ("2026-10-04T02:00", "2026-10-04T02:30"),
         "2026-04-04T15:00:00+00:00", ("2026-04-05T02:00", "2026-04-05T01:30")),
    # southern hemisphere: spring-forward in October, fall-back in April
    Zone("Australia/Sydney",
         "2027-10-02T16:00:00+00:00", ("2027-10-03T02:00", "2027-10-03T03:00"),
         "2027-04-03T16:00:00+00:00", ("2027-04-04T03:00", "2027-04-04T02:00")),
    # southern hemisphere, and the changes happen at midnight: Sunday 00:00 does not
    # exist in September; Saturday 23:00-24:00 happens twice in April
    Zone("America/Santiago",
         "2025-09-07T04:00:00+00:00", ("2025-09-07T00:00", "2025-09-07T01:00"),
         "2025-04-06T03:00:00+00:00", ("2025-04-06T00:00", "2025-04-05T23:00")),
]
ZONE_IDS = [z.name for z in ZONES]


@pytest.mark.parametrize("zone", ZONES, ids=ZONE_IDS)
def test_the_table_matches_tzdata(zone):
    tz = ZoneInfo(zone.name)
    for change, (before, after) in ((zone.spring, zone.spring_walls),
                                    (zone.fall, zone.fall_walls)):
        instant = iso(change)
        just_before = (instant - timedelta(seconds=1)).astimezone(tz)
        assert (just_before + timedelta(seconds=1)).replace(tzinfo=None) == iso(before)
        assert instant.astimezone(tz).replace(tzinfo=None) == iso(after)
        assert just_before.utcoffset() != instant.astimezone(tz).utcoffset()


# Per zone: (expression, start, expected local fire times). Starts are a day before.
SKIPPED = {
    # a fixed time inside the gap fires once, at the first instant after the gap
    "America/New_York": ("15 2 * * *", "2025-03-08T00:00:00-05:00",
                         ["2025-03-08T02:15:00-05:00", "2025-03-09T03:00:00-04:00",
                          "2025-03-10T02:15:00-04:00"]),
    "Europe/Berlin": ("15 2 * * *", "2026-03-28T00:00:00+01:00",
                      ["2026-03-28T02:15:00+01:00", "2026-03-29T03:00:00+02:00",
                       "2026-03-30T02:15:00+02:00"]),
    "Australia/Lord_Howe": ("15 2 * * *", "2026-10-03T00:00:00+10:30",
                            ["2026-10-03T02:15:00+10:30", "2026-10-04T02:30:00+11:00",
                             "2026-10-05T02:15:00+11:00"]),
    "Australia/Sydney": ("15 2 * * *", "2027-10-02T00:00:00+10:00",
                         ["2027-10-02T02:15:00+10:00", "2027-10-03T03:00:00+11:00",
                          "2027-10-04T02:15:00+11:00"]),
    "America/Santiago": ("15 0 * * *", "2025-09-06T00:00:00-04:00",
                         ["2025-09-06T00:15:00-04:00", "2025-09-07T01:00:00-03:00",
                          "2025-09-08T00:15:00-03:00"]),
}

REPEATED = {
    # a fixed time inside the repeated range fires once, on its first pass
    "America/New_York": ("15 1 * * *", "2025-11-01T00:00:00-04:00",
                         ["2025-11-01T01:15:00-04:00", "2025-11-02T01:15:00-04:00",
                          "2025-11-03T01:15:00-05:00"]),
    "Europe/Berlin": ("15 2 * * *", "2026-10-24T00:00:00+02:00",
                      ["2026-10-24T02:15:00+02:00", "2026-10-25T02:15:00+02:00",
                       "2026-10-26T02:15:00+01:00"]),
    "Australia/Lord_Howe": ("45 1 * * *", "2026-04-04T00:00:00+11:00",
                            ["2026-04-04T01:45:00+11:00", "2026-04-05T01:45:00+11:00",
                             "2026-04-06T01:45:00+10:30"]),
    "Australia/Sydney": ("15 2 * * *", "2027-04-03T00:00:00+11:00",
                         ["2027-04-03T02:15:00+11:00", "2027-04-04T02:15:00+11:00",
                          "2027-04-05T02:15:00+10:00"]),
    "America/Santiago": ("15 23 * * *", "2025-04-04T00:00:00-03:00",
                         ["2025-04-04T23:15:00-03:00", "2025-04-05T23:15:00-03:00",
                          "2025-04-06T23:15:00-04:00"]),
}


@pytest.mark.parametrize("zone", ZONES, ids=ZONE_IDS)
def test_fixed_time_in_the_gap_fires_once_after_it(zone):
    expr, start, expected = SKIPPED[zone.name]
    got = fires(expr, zone.name, iso(start), 3)
    assert local(got, zone.name) == expected
    assert got[1] == iso(zone.spring)  # exactly the first instant after the gap


@pytest.mark.parametrize("zone", ZONES, ids=ZONE_IDS)
def test_fixed_time_in_the_repeated_range_fires_once_on_the_first_pass(zone):
    expr, start, expected = REPEATED[zone.name]
    got = fires(expr, zone.name, iso(start), 3)
    assert local(got, zone.name) == expected
    assert got[1] < iso(zone.fall)  # before the clocks went back


@pytest.mark.parametrize("zone", ZONES, ids=ZONE_IDS)
@pytest.mark.parametrize("which", ["spring", "fall"])
def test_hourly_keeps_real_time_rhythm(zone, which):
    change = iso(getattr(zone, which))
    got = fires_between("0 * * * *", zone.name, change - 4 * HOUR, change + 4 * HOUR)
    if zone.name == "Australia/Lord_Howe":
        # A 30-minute change: the hour after 01:00 has its minute 0 skipped (spring:
        # 02:00 does not exist) or not repeated (fall: only 01:30-01:59 repeats), so the
        # wildcard job has one 90-minute interval. cronie does the same: it runs wildcard
        # jobs only at the minutes the clock really shows (after the spring jump from
        # 01:59 to 02:30 just 02:30; after the fall-back 01:30-01:59 again), and no
        # minute 0 is among them.
        assert sorted(gaps(got)) == [3600] * (len(got) - 2) + [5400]
        assert len(got) == 7
    else:
        assert gaps(got) == [3600] * 7
    assert all(i.astimezone(ZoneInfo(zone.name)).minute == 0 for i in got)


def test_hourly_local_times_new_york():
    got = fires_between("0 * * * *", "America/New_York",
                        iso("2025-11-02T00:30:00-04:00"), iso("2025-11-02T03:30:00-05:00"))
    assert local(got, "America/New_York") == [
        "2025-11-02T01:00:00-04:00", "2025-11-02T01:00:00-05:00",
        "2025-11-02T02:00:00-05:00", "2025-11-02T03:00:00-05:00",
    ]
    got = fires_between("0 * * * *", "America/New_York",
                        iso("2025-03-09T00:30:00-05:00"), iso("2025-03-09T04:30:00-04:00"))
    assert local(got, "America/New_York") == [
        "2025-03-09T01:00:00-05:00", "2025-03-09T03:00:00-04:00", "2025-03-09T04:00:00-04:00",
    ]


def test_lord_howe_wildcard_jobs_local_times():
    zone = "Australia/Lord_Howe"
    # spring-forward 2026-10-04 02:00 -> 02:30
    got = fires_between("0 * * * *", zone, iso("2026-10-04T00:30:00+10:30"),
                        iso("2026-10-04T04:30:00+11:00"))
    assert local(got, zone) == ["2026-10-04T01:00:00+10:30", "2026-10-04T03:00:00+11:00",
                                "2026-10-04T04:00:00+11:00"]
    assert gaps(got) == [5400, 3600]
    got = fires_between("30 * * * *", zone, iso("2026-10-04T00:45:00+10:30"),
                        iso("2026-10-04T03:45:00+11:00"))
    assert local(got, zone) == ["2026-10-04T01:30:00+10:30", "2026-10-04T02:30:00+11:00",
                                "2026-10-04T03:30:00+11:00"]
    assert gaps(got) == [1800, 3600]
    # fall-back 2026-04-05 02:00 -> 01:30: 01:30-01:59 twice
    got = fires_between("0 * * * *", zone, iso("2026-04-05T00:30:00+11:00"),
                        iso("2026-04-05T03:30:00+10:30"))
    assert local(got, zone) == ["2026-04-05T01:00:00+11:00", "2026-04-05T02:00:00+10:30",
                                "2026-04-05T03:00:00+10:30"]
    assert gaps(got) == [5400, 3600]
    got = fires_between("30,45 * * * *", zone, iso("2026-04-05T01:00:00+11:00"),
                        iso("2026-04-05T02:50:00+10:30"))
    assert local(got, zone) == [
        "2026-04-05T01:30:00+11:00", "2026-04-05T01:45:00+11:00",
        "2026-04-05T01:30:00+10:30", "2026-04-05T01:45:00+10:30",
        "2026-04-05T02:30:00+10:30", "2026-04-05T02:45:00+10:30",
    ]


@pytest.mark.parametrize("zone", ZONES, ids=ZONE_IDS)
@pytest.mark.parametrize("which", ["spring", "fall"])
def test_minutely_counts_real_minutes(zone, which):
    change = iso(getattr(zone, which))
    got = fires_between("* * * * *", zone.name, change - HOUR, change + HOUR)
    assert len(got) == 120 == len(set(got))
    assert gaps(got) == [60] * 119
    assert got[0] == change - HOUR + MINUTE and got[-1] == change + HOUR


@pytest.mark.parametrize("zone", ZONES, ids=ZONE_IDS)
@pytest.mark.parametrize("which", ["spring", "fall"])
def test_seconds_job_across_a_change(zone, which):
    change = iso(getattr(zone, which))
    got = fires_between("*/15 * * * * *", zone.name, change - 2 * MINUTE, change + 2 * MINUTE)
    assert len(got) == 16
    assert gaps(got) == [15] * 15
    assert change in got


@pytest.mark.parametrize(
    ("expr", "zone", "start", "expected"),
    [
        # several skipped times fire once, at the end of the gap. (cronie runs such a
        # job once per skipped matching minute, in a burst right after the jump; a
        # trigger fires at most once per instant, and the contract says "once".)
        ("0,30 2 * * *", "Europe/Berlin", "2026-03-29T00:00:00+01:00",
         ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00",
          "2026-03-30T02:30:00+02:00"]),
        ("0,15,30,45 2 * * *", "America/New_York", "2025-03-09T00:00:00-05:00",
         ["2025-03-09T03:00:00-04:00", "2025-03-10T02:00:00-04:00"]),
        ("0,10,20 2 * * *", "Australia/Lord_Howe", "2026-10-04T00:00:00+10:30",
         ["2026-10-04T02:30:00+11:00", "2026-10-05T02:00:00+11:00"]),
        # a skipped time and a real one at the end of the gap: one firing at 02:30
        ("0,30 2 * * *", "Australia/Lord_Howe", "2026-10-04T00:00:00+10:30",
         ["2026-10-04T02:30:00+11:00", "2026-10-05T02:00:00+11:00"]),
        ("0 2,3 * * *", "America/New_York", "2025-03-09T00:00:00-05:00",
         ["2025-03-09T03:00:00-04:00", "2025-03-10T02:00:00-04:00"]),
        # a "*" minute with a fixed hour is a fixed-hour job under the contract: once at
        # the end of the gap. (cronie and cronsim treat a "*" minute as wildcard too and
        # skip it entirely on that day.)
        ("*/10 2 * * *", "America/New_York", "2025-03-09T00:00:00-05:00",
         ["2025-03-09T03:00:00-04:00", "2025-03-10T02:00:00-04:00"]),
        ("* 0 * * *", "America/Santiago", "2025-09-06T23:58:00-04:00",
         ["2025-09-07T01:00:00-03:00", "2025-09-08T00:00:00-03:00"]),
        # the wall hour right after a midnight gap is a real hour like any other: Havana
        # 2000-04-02 starts at 01:00 (-04); a job for 01:xx runs from its first second
        ("* * 1 2 * *", "America/Havana", "2000-04-01T23:59:58-05:00",
         ["2000-04-02T01:00:00-04:00", "2000-04-02T01:00:01-04:00"]),
        ("*/20 * * * *", "Asia/Tehran", "2008-03-20T23:50:00+03:30",
         ["2008-03-21T01:00:00+04:30", "2008-03-21T01:20:00+04:30"]),
        # ... and on its first pass only in a repeated hour (cronie: both passes)
        ("*/20 1 * * *", "America/New_York", "2025-11-02T00:00:00-04:00",
         ["2025-11-02T01:00:00-04:00", "2025-11-02T01:20:00-04:00",
          "2025-11-02T01:40:00-04:00", "2025-11-03T01:00:00-05:00"]),
        ("0,30 2 * * *", "Europe/Berlin", "2026-10-25T00:00:00+02:00",
         ["2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00",
          "2026-10-26T02:00:00+01:00"]),
        # a day with two fixed times, one skipped, one not
        ("30 1,2 * * *", "America/New_York", "2025-03-09T00:00:00-05:00",
         ["2025-03-09T01:30:00-05:00", "2025-03-09T03:00:00-04:00",
          "2025-03-10T01:30:00-04:00"]),
        # 6 fields, fixed hour: the first instant after the gap is 03:00:00, not 03:00:30
        ("30 15 2 * * *", "America/New_York", "2025-03-09T00:00:00-05:00",
         ["2025-03-09T03:00:00-04:00", "2025-03-10T02:15:30-04:00"]),
        ("*/20 59 1 * * *", "America/New_York", "2025-11-02T01:58:00-04:00",
         ["2025-11-02T01:59:00-04:00", "2025-11-02T01:59:20-04:00",
          "2025-11-02T01:59:40-04:00", "2025-11-03T01:59:00-05:00"]),
        # a 45-minute shift: Chatham goes 02:45 -> 03:45
        ("0 3 * * *", "Pacific/Chatham", "2026-09-27T00:00:00+12:45",
         ["2026-09-27T03:45:00+13:45", "2026-09-28T03:00:00+13:45"]),
        # weekly at midnight where Sunday midnight does not exist
        ("@weekly", "America/Santiago", "2025-09-01T00:00:00-04:00",
         ["2025-09-07T01:00:00-03:00", "2025-09-14T00:00:00-03:00"]),
    ],
)
def test_fixed_hour_tables(expr, zone, start, expected):
    assert local(fires(expr, zone, iso(start), len(expected)), zone) == expected


# -- starting inside a repeated range ---------------------------------------------------

NY = "America/New_York"
LH = "Australia/Lord_Howe"
SANTIAGO = "America/Santiago"


@pytest.mark.parametrize(
    ("expr", "zone", "start", "expected"),
    [
        # New York, 2025-11-02: 01:00-01:59 runs as EDT, then again as EST.
        # first pass, 01:30 EDT
        ("45 1 * * *", NY, "2025-11-02T01:30:00-04:00", "2025-11-02T01:45:00-04:00"),
        ("15 1 * * *", NY, "2025-11-02T01:30:00-04:00", "2025-11-03T01:15:00-05:00"),
        ("15 2 * * *", NY, "2025-11-02T01:30:00-04:00", "2025-11-02T02:15:00-05:00"),
        ("15 * * * *", NY, "2025-11-02T01:30:00-04:00", "2025-11-02T01:15:00-05:00"),
        ("45 * * * *", NY, "2025-11-02T01:30:00-04:00", "2025-11-02T01:45:00-04:00"),
        ("0 * * * *", NY, "2025-11-02T01:00:00-04:00", "2025-11-02T01:00:00-05:00"),
        # second pass, 01:30 EST: the repeated times already ran on the first pass
        ("45 1 * * *", NY, "2025-11-02T01:30:00-05:00", "2025-11-03T01:45:00-05:00"),
        ("15 1 * * *", NY, "2025-11-02T01:30:00-05:00", "2025-11-03T01:15:00-05:00"),
        ("15 2 * * *", NY, "2025-11-02T01:30:00-05:00", "2025-11-02T02:15:00-05:00"),
        ("0 2 * * *", NY, "2025-11-02T01:00:00-05:00", "2025-11-02T02:00:00-05:00"),
        ("59 1,2 * * *", NY, "2025-11-02T01:59:59-05:00", "2025-11-02T02:59:00-05:00"),
        ("15 * * * *", NY, "2025-11-02T01:30:00-05:00", "2025-11-02T02:15:00-05:00"),
        ("45 * * * *", NY, "2025-11-02T01:30:00-05:00", "2025-11-02T01:45:00-05:00"),
        # Lord Howe, 2026-04-05: 01:30-01:59 runs at +11, then again at +10:30
        ("25,40 * * * *", LH, "2026-04-05T01:50:00+11:00", "2026-04-05T01:40:00+10:30"),
        ("40 1 * * *", LH, "2026-04-05T01:50:00+11:00", "2026-04-06T01:40:00+10:30"),
        ("10 2 * * *", LH, "2026-04-05T01:50:00+11:00", "2026-04-05T02:10:00+10:30"),
        ("40 1 * * *", LH, "2026-04-05T01:35:00+10:30", "2026-04-06T01:40:00+10:30"),
        ("45 * * * *", LH, "2026-04-05T01:35:00+10:30", "2026-04-05T01:45:00+10:30"),
        ("20 2 * * *", LH, "2026-04-05T01:35:00+10:30", "2026-04-05T02:20:00+10:30"),
        # Santiago, 2025-04-05: 23:00-23:59 (Saturday) runs at -03, then at -04
        ("15 23 * * *", SANTIAGO, "2025-04-05T23:30:00-03:00", "2025-04-06T23:15:00-04:00"),
        ("15 * * * *", SANTIAGO, "2025-04-05T23:30:00-03:00", "2025-04-05T23:15:00-04:00"),
        ("45 23 * * 6", SANTIAGO, "2025-04-05T23:30:00-04:00", "2025-04-12T23:45:00-04:00"),
        ("15 0 * * 0", SANTIAGO, "2025-04-05T23:30:00-04:00", "2025-04-06T00:15:00-04:00"),
        ("15 * * * 6", SANTIAGO, "2025-04-05T23:30:00-03:00", "2025-04-05T23:15:00-04:00"),
    ],
)
def test_from_inside_a_repeated_range(expr, zone, start, expected):
    # fromisoformat gives a fixed offset; astimezone picks the right pass (fold).
    instant = iso(start)
    tz = ZoneInfo(zone)
    local_start = instant.astimezone(tz)
    assert local_start.fold == (1 if instant.utcoffset() == local_start.replace(
        fold=1).utcoffset() != local_start.replace(fold=0).utcoffset() else 0)
    assert local(fires(expr, zone, instant, 1), zone) == [expected]
    # The same instant given as a zone-aware local time with its fold gives the same.
    assert fires(expr, zone, local_start, 1) == fires(expr, zone, instant, 1)


# -- the trigger contract ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("0 * * * *", "2026-01-01T10:00:00+00:00", "2026-01-01T11:00:00+00:00"),
        ("0 * * * *", "2026-01-01T09:59:59.999999+00:00", "2026-01-01T10:00:00+00:00"),
        ("0 * * * *", "2026-01-01T10:00:00.000001+00:00", "2026-01-01T11:00:00+00:00"),
        ("*/2 * * * * *", "2026-01-01T10:00:00+00:00", "2026-01-01T10:00:02+00:00"),
        ("*/2 * * * * *", "2026-01-01T10:00:00.500000+00:00", "2026-01-01T10:00:02+00:00"),
        ("*/2 * * * * *", "2026-01-01T10:00:01.999999+00:00", "2026-01-01T10:00:02+00:00"),
        ("* * * * *", "2026-01-01T10:00:59.999999+00:00", "2026-01-01T10:01:00+00:00"),
        ("59 23 31 12 *", "2026-12-31T23:59:00+00:00", "2027-12-31T23:59:00+00:00"),
        ("0 0 29 2 *", "2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"),
        ("0 0 29 2 *", "2096-03-01T00:00:00+00:00", "2104-02-29T00:00:00+00:00"),  # 2100
    ],
)
def test_strictly_after(expr, after, expected):
    got = cron_trigger(expr, "UTC").next_after(iso(after))
    assert got == iso(expected) and got > iso(after)


@pytest.mark.parametrize(
    "after",
    [
        datetime(2026, 6, 1, 12, 0, tzinfo=UTC),
        datetime(2026, 6, 1, 12, 0, tzinfo=STDLIB_UTC),
        datetime(2026, 6, 1, 17, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 6, 1, 8, 0, tzinfo=ZoneInfo("America/New_York")),
        datetime(2026, 6, 1, 22, 0, tzinfo=ZoneInfo("Australia/Sydney")),
    ],
    ids=["zones.UTC", "STDLIB_UTC", "+05:30", "New_York", "Sydney"],
)
@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "Australia/Lord_Howe"])
@pytest.mark.parametrize("expr", ["15 * * * *", "15 14 * * *", "*/7 * * * * *"])
def test_returns_utc_whatever_the_input_zone(after, zone, expr):
    got = cron_trigger(expr, zone).next_after(after)
    assert got.tzinfo is UTC
    assert got == cron_trigger(expr, zone).next_after(after.astimezone(STDLIB_UTC))
    assert got > after


@pytest.mark.parametrize(
    ("expr", "zone", "after", "expected"),
    [
        # far from today in both directions: answers depend on the argument only
        ("0 12 * * *", "UTC", "1975-06-01T00:00:00+00:00", "1975-06-01T12:00:00+00:00"),
        ("0 12 * * *", "UTC", "2090-06-01T00:00:00+00:00", "2090-06-01T12:00:00+00:00"),
        ("0 2 * * *", "America/New_York", "1990-04-01T00:00:00-05:00",
         "1990-04-01T03:00:00-04:00"),  # 1990's spring-forward was April 1
        ("@yearly", "Europe/Berlin", "2000-06-01T00:00:00+02:00",
         "2001-01-01T00:00:00+01:00"),
    ],
)
def test_never_reads_the_clock(expr, zone, after, expected):
    got = cron_trigger(expr, zone).next_after(iso(after))
    assert got.astimezone(ZoneInfo(zone)).isoformat() == expected


@pytest.mark.parametrize("module", [supervisor.timing.triggers, supervisor.timing.cron_calendar])
def test_trigger_modules_do_not_call_the_clock(module):
    clocks = {"now", "utcnow", "today", "time", "time_ns", "monotonic", "localtime"}
    calls = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(ast.parse(inspect.getsource(module)))
        if isinstance(node, ast.Call)
    }
    assert not calls & clocks


def test_shared_trigger_memo_gives_the_same_answers():
    trigger = cron_trigger("*/5 * * * *", "Europe/Berlin")
    assert trigger is cron_trigger("*/5 * * * *", "Europe/Berlin")
    a = datetime(2026, 3, 29, 0, 58, tzinfo=UTC)
    b = datetime(2026, 3, 29, 0, 59, tzinfo=UTC)
    assert trigger.next_after(a) == trigger.next_after(b) == trigger.next_after(a)
    assert trigger.next_after(a) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (AT - timedelta(days=400), AT),
        (AT - timedelta(microseconds=1), AT),
        (AT, None),
        (AT + timedelta(microseconds=1), None),
        (AT + timedelta(days=1), None),
        (datetime(2026, 3, 1, 6, 59, tzinfo=ZoneInfo("America/New_York")), AT),
        (datetime(2026, 3, 1, 7, 0, tzinfo=ZoneInfo("America/New_York")), None),
    ],
)
def test_one_time_trigger(after, expected):
    trigger = OneTimeTrigger(datetime(2026, 3, 1, 13, 0, tzinfo=ZoneInfo("Europe/Berlin")))
    got = trigger.next_after(after)
    assert got == expected
    if got is not None:
        assert got.tzinfo is UTC
    assert trigger.at.tzinfo is UTC
    assert trigger.describe() == "2026-03-01T12:00:00+00:00"
    assert trigger == OneTimeTrigger(AT) and hash(trigger) == hash(OneTimeTrigger(AT))


# -- properties against a brute-force oracle ---------------------------------------------


def wall_matches(expr: CronExpr, wall: datetime) -> bool:
    if not (wall.second in expr.seconds and wall.minute in expr.minutes
            and wall.hour in expr.hours and wall.month in expr.months):
        return False
    dom = wall.day in expr.days
    dow = (wall.weekday() + 1) % 7 in expr.weekdays
    return (dom or dow) if expr.day_or else (dom and dow)


def oracle(expr: CronExpr, tz: ZoneInfo, low: datetime, high: datetime) -> list[datetime]:
    """Fire instants in (low, high] by walking real time one step at a time."""
    step = timedelta(seconds=1 if expr.has_seconds else 60)
    instant = (low.astimezone(UTC).replace(microsecond=0, second=0) + step)
    while instant <= low:
        instant += step
    out = []
    previous = (instant - step).astimezone(tz)
    while instant <= high:
        now = instant.astimezone(tz)
        wall = now.replace(tzinfo=None)
        second_pass = now.fold == 1 and now.replace(fold=0).utcoffset() != now.utcoffset()
        fire = wall_matches(expr, wall) and (expr.hour_star or not second_pass)
        if not expr.hour_star and now.utcoffset() > previous.utcoffset():
            # walked over a gap: the skipped wall times fire here if any matches
            skipped = previous.replace(tzinfo=None) + step
            while skipped < wall and not fire:
                fire = wall_matches(expr, skipped)
                skipped += step
        if fire:
            out.append(instant)
        previous = now
        instant += step
    return out


def is_gap_end_firing(expr: CronExpr, tz: ZoneInfo, instant: datetime) -> bool:
    before = (instant - timedelta(seconds=1)).astimezone(tz)
    now = instant.astimezone(tz)
    if now.utcoffset() <= before.utcoffset():
        return False
    skipped = before.replace(tzinfo=None) + timedelta(seconds=1)
    while skipped < now.replace(tzinfo=None):
        if wall_matches(expr, skipped):
            return True
        skipped += timedelta(seconds=1 if expr.has_seconds else 60)
    return False


SAMPLE_ZONES = ["America/New_York", "Europe/Berlin", "Australia/Lord_Howe",
                "Australia/Sydney", "America/Santiago", "Pacific/Chatham", "UTC"]


def _transitions(zone: str) -> list[datetime]:
    tz = ZoneInfo(zone)
    out = []
    day = datetime(2025, 1, 1, tzinfo=UTC)
    offset = day.astimezone(tz).utcoffset()
    while day.year < 2028:
        nxt = day + timedelta(hours=6)
        if nxt.astimezone(tz).utcoffset() != offset:
            low, high = int(day.timestamp()), int(nxt.timestamp())  # whole seconds
            while high - low > 1:
                middle = (low + high) // 2
                if datetime.fromtimestamp(middle, tz).utcoffset() == offset:
                    low = middle
                else:
                    high = middle
            out.append(datetime.fromtimestamp(high, UTC))
            offset = nxt.astimezone(tz).utcoffset()
        day = nxt
    return out


TRANSITIONS = {zone: _transitions(zone) for zone in SAMPLE_ZONES}


def test_transitions_found_are_exact():
    assert iso("2025-03-09T07:00:00+00:00") in TRANSITIONS["America/New_York"]
    assert iso("2026-10-03T15:30:00+00:00") in TRANSITIONS["Australia/Lord_Howe"]
    assert all(t.microsecond == 0 for ts in TRANSITIONS.values() for t in ts)


def values(low: int, high: int, near: tuple[int, ...] = ()) -> st.SearchStrategy[str]:
    """A valid field: "*", "*/S", "A/S", "A-B/S", a list (often near the DST hours)."""
    value = st.integers(low, high) | st.sampled_from(near or (low,))
    step = st.integers(1, max(1, (high - low) // 2))
    return st.one_of(
        st.just("*"),
        step.map(lambda s: f"*/{s}"),
        st.tuples(value, step).map(lambda t: f"{t[0]}/{t[1]}"),
        st.tuples(value, value, step).map(
            lambda t: f"{min(t[:2])}-{max(t[:2])}/{t[2]}"),
        st.lists(value, min_size=1, max_size=4).map(lambda v: ",".join(map(str, v))),
    )


@st.composite
def dst_cases(draw):
    """(expression, zone, start): start within a few hours of a real transition, often
    right after it (inside a repeated range), and fields biased towards the wall times
    around it."""
    zone = draw(st.sampled_from(SAMPLE_ZONES))
    if TRANSITIONS[zone]:
        change = draw(st.sampled_from(TRANSITIONS[zone]))
    else:
        change = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    tz = ZoneInfo(zone)
    walls = [(change + timedelta(minutes=m)).astimezone(tz) for m in (-61, -1, 0, 30, 60)]
    near_hours = tuple(sorted({w.hour for w in walls}))
    near_days = tuple(sorted({w.day for w in walls}))
    seconds = draw(st.booleans())
    fields = [
        draw(values(0, 59, (0, 30, 45))) if seconds else None,
        draw(values(0, 59, (0, 15, 29, 30, 44, 45, 59))),
        draw(values(0, 23, near_hours)),
        draw(st.just("*") | values(1, 31, near_days)),
        draw(st.just("*") | values(1, 12, (walls[0].month,))),
        draw(st.just("*") | values(0, 7, ((walls[0].weekday() + 1) % 7,))),
    ]
    try:
        expr = parse_cron(" ".join(f for f in fields if f is not None))
    except CronSyntaxError:  # a day-of-month that never occurs in the months drawn
        fields[3] = "*"
        expr = parse_cron(" ".join(f for f in fields if f is not None))
    offset = draw(st.integers(-3 * 3600, 2 * 3600) | st.integers(0, 3600))
    start = change + timedelta(seconds=offset)
    start += timedelta(microseconds=draw(st.sampled_from([0, 0, 1, 999_999])))
    return expr, zone, start


@settings(max_examples=examples(300), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(dst_cases())
def test_matches_brute_force_near_transitions(case):
    expr, zone, start = case
    tz = ZoneInfo(zone)
    # Very dense seconds schedules make the oracle's second-by-second walk slow.
    assume(not expr.has_seconds or len(expr.seconds) * len(expr.minutes) <= 600)
    window = timedelta(minutes=40) if expr.has_seconds else timedelta(hours=5)
    trigger = CronTrigger(expr, tz)
    got = []
    instant = trigger.next_after(start)
    while instant is not None and instant <= start + window:
        got.append(instant)
        instant = trigger.next_after(instant)
    assert got == oracle(expr, tz, start, start + window), expr.text


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dst_cases(), st.integers(1, 12))
def test_iterating_is_increasing_and_matches_fields(case, count):
    expr, zone, start = case
    tz = ZoneInfo(zone)
    trigger = cron_trigger(expr.text, zone)
    previous = start
    for _ in range(count):
        instant = trigger.next_after(previous)
        assert instant is not None and instant > previous
        assert instant.tzinfo is UTC and instant.microsecond == 0
        wall = instant.astimezone(tz).replace(tzinfo=None)
        if expr.hour_star:
            assert wall_matches(expr, wall)
        else:
            assert wall_matches(expr, wall) or is_gap_end_firing(expr, tz, instant)
            # a fixed-hour job never fires on the second pass of a repeated wall time
            if wall_matches(expr, wall):
                assert instant == wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
        previous = instant


@settings(max_examples=examples(60), deadline=None)
@given(
    st.sampled_from(["0 0 29 2 *", "0 0 29 2 */7", "0 0 31 * *", "59/15 * 31 12 *",
                     "0 12 1 1 1", "0 0 13 * 5", "0 0 29 2 1", "30 1 * * *", "0 0 * * *"]),
    st.sampled_from(SAMPLE_ZONES),
    st.datetimes(datetime(2000, 1, 1), datetime(2040, 12, 31), timezones=st.just(UTC)),
)
def test_rare_schedules_always_have_a_next_fire_time(text, zone, start):
    got = cron_trigger(text, zone).next_after(start)
    assert got is not None and got > start
    assert got - start < timedelta(days=366 * 41)  # Feb 29 on a Sunday: 28-40 years


def test_oracle_sanity():
    # The oracle itself, on cases worked out by hand above.
    expr = parse_cron("0,30 2 * * *")
    berlin = ZoneInfo("Europe/Berlin")
    got = oracle(expr, berlin, iso("2026-03-29T00:00:00+01:00"), iso("2026-03-30T03:00:00+02:00"))
    assert local(got, "Europe/Berlin") == ["2026-03-29T03:00:00+02:00",
                                           "2026-03-30T02:00:00+02:00",
                                           "2026-03-30T02:30:00+02:00"]
    expr = parse_cron("0 * * * *")
    got = oracle(expr, ZoneInfo(NY), iso("2025-11-02T00:30:00-04:00"),
                 iso("2025-11-02T02:30:00-05:00"))
    assert local(got, NY) == ["2025-11-02T01:00:00-04:00", "2025-11-02T01:00:00-05:00",
                              "2025-11-02T02:00:00-05:00"]
    assert date(2025, 11, 2).weekday() == 6  # Sunday, as cron's 0
