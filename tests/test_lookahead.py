"""Looking ahead (``supervisor.timing.lookahead``): fire times in a window against the
triggers' own ``next_after``, many jobs merged in time order with a limit, the zone's
clock changes, and the DST notices ``taskd validate`` prints (what taskd does, asked of
the trigger)."""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import supervisor.timing.lookahead
from supervisor.timing.cron_expr import CronSyntaxError, parse_cron
from supervisor.timing.lookahead import (
    MORE_COUNT_CAP,
    clock_changes,
    day_matches,
    describe_notice,
    dst_notices,
    fire_times,
    times_of_day,
    upcoming,
)
from supervisor.timing.triggers import CronTrigger, OneTimeTrigger, StartTrigger, Trigger
from supervisor.timing.zones import UTC
from tests.property_settings import examples
from tests.test_triggers_dst import TRANSITIONS, dst_cases, values


def iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def trigger(expr: str, zone: str) -> CronTrigger:
    return CronTrigger(parse_cron(expr), ZoneInfo(zone))  # unshared: no memo reuse


def stepped(trig: Trigger, after: datetime, until: datetime) -> list[datetime]:
    """The oracle: ``next_after`` asked once per fire time."""
    out = []
    instant = trig.next_after(after)
    while instant is not None and instant <= until:
        out.append(instant)
        instant = trig.next_after(instant)
    return out


def local(instants, zone: str) -> list[str]:
    return [instant.astimezone(ZoneInfo(zone)).isoformat() for instant in instants]


# -- fire times in a window --------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "zone", "after", "until", "expected"),
    [
        # Fixed hour, spring forward: 02:30 does not exist, runs at 03:00 +02:00.
        ("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", "2026-03-30T12:00:00Z",
         ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]),
        # Fixed hour, several skipped wall times run once.
        ("*/20 2 * * *", "Europe/Berlin", "2026-03-29T00:00:00Z", "2026-03-29T12:00:00Z",
         ["2026-03-29T03:00:00+02:00"]),
        # Fixed hour, fall back: 01:30 twice in New York, runs on the first pass.
        ("30 1 * * *", "America/New_York", "2026-11-01T00:00:00Z", "2026-11-02T12:00:00Z",
         ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
        # "*" hour keeps real-time rhythm: both passes of 01:00 (and no 02:00 twice).
        ("0 * * * *", "America/New_York", "2026-11-01T04:30:00Z", "2026-11-01T07:30:00Z",
         ["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00",
          "2026-11-01T02:00:00-05:00"]),
        # Lord Howe: 30-minute shift; 02:00-02:29 skipped on 2026-10-04.
        ("*/15 * * * *", "Australia/Lord_Howe", "2026-10-03T15:10:00Z",
         "2026-10-03T15:50:00Z",
         ["2026-10-04T01:45:00+10:30", "2026-10-04T02:30:00+11:00",
          "2026-10-04T02:45:00+11:00"]),
        # Window bounds: (after, until]: not the first instant, the last one included.
        ("0 * * * *", "UTC", "2026-01-01T00:00:00Z", "2026-01-01T02:00:00Z",
         ["2026-01-01T01:00:00+00:00", "2026-01-01T02:00:00+00:00"]),
        # Sparse days: Feb 29 once in a year's window.
        ("0 12 29 2 *", "UTC", "2027-03-01T00:00:00Z", "2028-03-01T00:00:00Z",
         ["2028-02-29T12:00:00+00:00"]),
        # The OR rule: the 13th or any Friday.
        ("0 0 13 * FRI", "UTC", "2026-11-10T00:00:00Z", "2026-11-21T00:00:00Z",
         ["2026-11-13T00:00:00+00:00", "2026-11-20T00:00:00+00:00"]),
        # A "*"-started day field is not restricted: both must match (every 2nd day, Mondays).
        ("0 0 */2 * MON", "UTC", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z",
         ["2026-11-09T00:00:00+00:00", "2026-11-23T00:00:00+00:00"]),
        # An instant with microseconds as the window's start.
        ("* * * * * *", "UTC", "2026-01-01T00:00:00.5+00:00", "2026-01-01T00:00:02Z",
         ["2026-01-01T00:00:01+00:00", "2026-01-01T00:00:02+00:00"]),
    ],
)
def test_fire_time_tables(expr, zone, after, until, expected):
    trig = trigger(expr, zone)
    got = list(fire_times(trig, iso(after.replace("Z", "+00:00")),
                          iso(until.replace("Z", "+00:00"))))
    assert local(got, zone) == expected
    assert got == stepped(trig, iso(after.replace("Z", "+00:00")),
                          iso(until.replace("Z", "+00:00")))


@settings(max_examples=examples(100), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(dst_cases(), st.integers(1, 6 * 3600))
def test_fire_times_are_next_after_iterated(case, window_s):
    expr, zone, start = case
    if expr.has_seconds:  # the oracle asks once per fire time: keep their number down
        assume(len(expr.seconds) * len(expr.minutes) <= 600)
        window_s = min(window_s, 20 * 60)
    trig = CronTrigger(expr, ZoneInfo(zone))
    until = start + timedelta(seconds=window_s)
    assert list(fire_times(trig, start, until)) == stepped(trig, start, until), expr.text


@st.composite
def sparse_day_schedules(draw):
    """One time of day, day fields of every kind: the days matched over weeks."""
    fields = [str(draw(st.integers(0, 59))), str(draw(st.integers(0, 23))),
              draw(st.just("*") | values(1, 31)), draw(st.just("*") | values(1, 12)),
              draw(st.just("*") | values(0, 7))]
    try:
        return parse_cron(" ".join(fields))
    except CronSyntaxError:  # a day-of-month that never occurs in the months drawn
        return parse_cron(" ".join([*fields[:2], "*", *fields[3:]]))


@settings(max_examples=examples(100), deadline=None)
@given(sparse_day_schedules(), st.sampled_from(["UTC", "Europe/Berlin", "America/Santiago"]),
       st.datetimes(datetime(2025, 1, 1), datetime(2029, 1, 1), timezones=st.just(UTC)),
       st.integers(1, 90))
def test_days_over_weeks_are_next_after_iterated(expr, zone, start, days):
    trig = CronTrigger(expr, ZoneInfo(zone))
    until = start + timedelta(days=days)
    assert list(fire_times(trig, start, until)) == stepped(trig, start, until), expr.text


@pytest.mark.parametrize(
    ("expr", "day", "expected"),
    [
        ("0 0 * * *", "2026-02-28", True),
        ("0 0 * 3 *", "2026-02-28", False),
        ("0 0 13 * 5", "2026-11-20", True),   # a Friday, not the 13th: OR
        ("0 0 13 * 5", "2026-11-19", False),
        ("0 0 */2 * 1", "2026-11-02", False),  # Monday, even day: "*/2" makes it AND
        ("0 0 * * 7", "2026-11-22", True),    # 7 is Sunday
        ("0 0 * * 0", "2026-11-22", True),
    ],
)
def test_day_matches(expr, day, expected):
    assert day_matches(parse_cron(expr), datetime.fromisoformat(day).date()) is expected


@pytest.mark.parametrize(
    ("expr", "low", "high", "expected"),
    [
        ("0 2 * * *", 0, 86_400, [7200]),
        ("*/30 1-2 * * *", 5400, 9000, [5400, 7200]),
        ("*/20 * * * * *", 59, 101, [60, 80, 100]),
        ("0 2 * * *", 7201, 86_400, []),
    ],
)
def test_times_of_day(expr, low, high, expected):
    assert list(times_of_day(parse_cron(expr), low, high)) == expected


def test_one_time_and_start_triggers():
    at = iso("2026-06-01T12:00:00+00:00")
    one = OneTimeTrigger(at)
    assert list(fire_times(one, at - timedelta(hours=1), at)) == [at]
    assert list(fire_times(one, at, at + timedelta(hours=1))) == []  # strictly after
    assert list(fire_times(one, at - timedelta(hours=2), at - timedelta(hours=1))) == []
    assert list(fire_times(StartTrigger(), at, at + timedelta(days=1))) == []


def test_the_end_of_datetime_is_cut_not_overflowed():
    trig = trigger("0 0 * * *", "Pacific/Kiritimati")
    end = datetime.max.replace(tzinfo=UTC)
    got = list(fire_times(trig, iso("9999-12-25T00:00:00+00:00"), end))
    assert got and all(instant < end - timedelta(days=1) for instant in got)


# -- many jobs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    job_id: str
    file: str
    trigger: Trigger


AFTER = iso("2026-06-01T00:00:00+00:00")


def test_upcoming_merges_in_time_order_ties_by_job_id():
    hourly = trigger("0 * * * *", "UTC")
    jobs = [Job("b", "b.json", hourly), Job("a", "a.json", hourly),
            Job("c", "c.json", trigger("30 * * * *", "UTC")),
            Job("once", "o.json", OneTimeTrigger(AFTER + timedelta(minutes=45))),
            Job("late", "l.json", OneTimeTrigger(AFTER + timedelta(days=2))),
            Job("boot", "r.json", StartTrigger("@reboot"))]
    found = upcoming(jobs, AFTER, AFTER + timedelta(hours=2), limit=100)
    assert [(instant.strftime("%H:%M"), job.job_id) for instant, job in found.fires] == [
        ("00:30", "c"), ("00:45", "once"), ("01:00", "a"), ("01:00", "b"),
        ("01:30", "c"), ("02:00", "a"), ("02:00", "b")]
    assert [job.job_id for job in found.at_start] == ["boot"]
    assert (found.more, found.more_capped) == (0, False)


def test_upcoming_limit_counts_the_rest():
    jobs = [Job(f"j{n}", f"j{n}.json", trigger("* * * * *", "UTC")) for n in range(3)]
    found = upcoming(jobs, AFTER, AFTER + timedelta(hours=1), limit=5)
    assert [(instant.minute, job.job_id) for instant, job in found.fires] == [
        (1, "j0"), (1, "j1"), (1, "j2"), (2, "j0"), (2, "j1")]
    assert (found.more, found.more_capped) == (3 * 60 - 5, False)
    exact = upcoming(jobs, AFTER, AFTER + timedelta(hours=1), limit=180)
    assert (len(exact.fires), exact.more) == (180, 0)


def test_upcoming_stops_counting_at_the_cap(monkeypatch):
    monkeypatch.setattr(supervisor.timing.lookahead, "MORE_COUNT_CAP", 1000)
    jobs = [Job("fast", "f.json", trigger("* * * * * *", "UTC"))]
    found = upcoming(jobs, AFTER, AFTER + timedelta(days=2), limit=10)
    assert len(found.fires) == 10
    assert (found.more, found.more_capped) == (1000, True)
    below = upcoming(jobs, AFTER, AFTER + timedelta(seconds=1010), limit=10)
    assert (below.more, below.more_capped) == (1000, False)
    assert MORE_COUNT_CAP == 100_000  # what the command line counts to


def test_jobs_sharing_a_trigger_share_its_fire_times():
    shared = trigger("*/5 * * * *", "Europe/Berlin")
    jobs = [Job(f"j{n:04d}", f"j{n}.json", shared) for n in range(1000)]
    found = upcoming(jobs, AFTER, AFTER + timedelta(hours=1), limit=100_000)
    assert len(found.fires) == 12 * 1000
    assert [job.job_id for _, job in found.fires[:1000]] == [j.job_id for j in jobs]


# -- clock changes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "start", "expected"),
    [
        ("Europe/Berlin", "2026-01-01T00:00:00+00:00",
         [("2026-03-29T01:00:00+00:00", 60, 120), ("2026-10-25T01:00:00+00:00", 120, 60)]),
        ("America/New_York", "2026-01-01T00:00:00+00:00",
         [("2026-03-08T07:00:00+00:00", -300, -240), ("2026-11-01T06:00:00+00:00", -240, -300)]),
        ("Australia/Lord_Howe", "2026-01-01T00:00:00+00:00",
         [("2026-04-04T15:00:00+00:00", 660, 630), ("2026-10-03T15:30:00+00:00", 630, 660)]),
        ("UTC", "2026-01-01T00:00:00+00:00", []),
        ("Asia/Tokyo", "2026-01-01T00:00:00+00:00", []),
    ],
)
def test_clock_changes_in_a_year(zone, start, expected):
    begin = iso(start)
    changes = clock_changes(ZoneInfo(zone), begin, begin + timedelta(days=365))
    assert [(c.at.isoformat(), c.before / timedelta(minutes=1), c.after / timedelta(minutes=1))
            for c in changes] == expected


def test_clock_changes_agree_with_the_trigger_tests_transitions():
    for zone, transitions in TRANSITIONS.items():
        begin = iso("2025-01-01T00:00:00+00:00")
        found = clock_changes(ZoneInfo(zone), begin, iso("2028-01-01T00:00:00+00:00"))
        assert [change.at for change in found] == transitions, zone


# -- DST notices --------------------------------------------------------------------------

START = iso("2026-06-01T00:00:00+00:00")


@pytest.mark.parametrize(
    ("expr", "zone", "expected"),
    [
        ("30 2 * * *", "Europe/Berlin", [
            "2026-10-25 02:30 occurs twice (DST repeat); runs once, on the first pass "
            "(02:30 +02:00)",
            "2027-03-28 02:30 does not exist (DST gap); runs at 03:00 +02:00 instead"]),
        ("*/15 2 * * *", "Europe/Berlin", [
            "2026-10-25 02:00 to 02:45 (4 times) occur twice (DST repeat); each runs once, "
            "on the first pass (+02:00)",
            "2027-03-28 02:00 to 02:45 (4 times) do not exist (DST gap); runs once at "
            "03:00 +02:00 instead"]),
        ("0 * * * *", "Europe/Berlin", [
            "2026-10-25 02:00 occurs twice (DST repeat); runs on both passes (02:00 +02:00 "
            "and 02:00 +01:00): the job keeps its real-time rhythm",
            "2027-03-28 02:00 does not exist (DST gap) and is not run: the job keeps its "
            "real-time rhythm (next run 03:00 +02:00)"]),
        ("*/30 * * * * *", "America/New_York", [
            "2026-11-01 01:00 to 01:59:30 (120 times) occur twice (DST repeat); each runs "
            "on both passes (-04:00 and -05:00): the job keeps its real-time rhythm",
            "2027-03-14 02:00 to 02:59:30 (120 times) do not exist (DST gap) and are not "
            "run: the job keeps its real-time rhythm (next run 03:00 -04:00)"]),
        ("30 1 * * *", "America/New_York", [
            "2026-11-01 01:30 occurs twice (DST repeat); runs once, on the first pass "
            "(01:30 -04:00)"]),
        # Lord Howe moves by 30 minutes: 02:00-02:29 skipped, 01:30-01:59 repeated.
        ("0 2 * * *", "Australia/Lord_Howe", [
            "2026-10-04 02:00 does not exist (DST gap); runs at 02:30 +11:00 instead"]),
        ("45 1 * * *", "Australia/Lord_Howe", [
            "2027-04-04 01:45 occurs twice (DST repeat); runs once, on the first pass "
            "(01:45 +11:00)"]),
        ("15 1 * * *", "Australia/Lord_Howe", []),
        ("30 2 * * *", "Australia/Lord_Howe", []),
        # The day fields decide too: 2027-03-28 is a Sunday, not a Monday.
        ("30 2 * * MON", "Europe/Berlin", []),
        ("30 2 * * SUN", "Europe/Berlin", [
            "2026-10-25 02:30 occurs twice (DST repeat); runs once, on the first pass "
            "(02:30 +02:00)",
            "2027-03-28 02:30 does not exist (DST gap); runs at 03:00 +02:00 instead"]),
        ("30 2 * * *", "UTC", []),
        ("* * * * * *", "UTC", []),
        ("0 4 * * *", "Europe/Berlin", []),
        # Santiago changes at midnight: the gap is 00:00-00:59 of 2026-09-06.
        ("0 0 * * *", "America/Santiago", [
            "2026-09-06 00:00 does not exist (DST gap); runs at 01:00 -03:00 instead"]),
    ],
)
def test_dst_notice_tables(expr, zone, expected):
    notices = dst_notices(trigger(expr, zone), START)
    prefix = f'schedule "{expr}" in {zone}: '
    assert [describe_notice(notice, expr) for notice in notices] == [
        prefix + line for line in expected]


def test_one_notice_per_kind_with_a_count_of_the_rest():
    notices = dst_notices(trigger("30 2 * * *", "Europe/Berlin"), START,
                          horizon=timedelta(days=3 * 365))
    assert [(notice.kind, notice.more) for notice in notices] == [("repeat", 2), ("gap", 2)]
    assert describe_notice(notices[1], "30 2 * * *").endswith(
        "runs at 03:00 +02:00 instead; the same at 2 more DST gaps after that")


def test_the_start_instant_is_a_parameter():
    late = iso("2026-11-01T00:00:00+00:00")  # after Berlin's 2026 fall-back
    notices = dst_notices(trigger("30 2 * * *", "Europe/Berlin"), late)
    assert [(notice.kind, notice.first.isoformat()) for notice in notices] == [
        ("gap", "2027-03-28T02:30:00"), ("repeat", "2027-10-31T02:30:00")]


@settings(max_examples=examples(60), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(dst_cases())
def test_notices_say_what_the_trigger_does(case):
    expr, zone, start = case
    assume(not expr.has_seconds or len(expr.seconds) * len(expr.minutes) <= 60)
    trig = CronTrigger(expr, ZoneInfo(zone))
    for notice in dst_notices(trig, start - timedelta(days=1), horizon=timedelta(days=2)):
        change = notice.change
        if notice.kind == "repeat":
            # the first repeated wall time runs once, or on both passes ("*" hour)
            shift = change.before - change.after
            fires = stepped(trig, change.at - shift - timedelta(seconds=1), change.at + shift)
            walls = [fire.astimezone(ZoneInfo(zone)).replace(tzinfo=None) for fire in fires]
            assert walls.count(notice.first) == (2 if notice.real_time else 1)
            assert notice.runs == tuple(fire for fire, wall in zip(fires, walls, strict=True)
                                        if wall == notice.first)
        elif notice.real_time:
            # nothing runs from the change until the "next run", which is after the gap
            fires = stepped(trig, change.at - timedelta(seconds=1), notice.runs[0])
            assert [fire for fire in fires if fire >= change.at] == [notice.runs[0]]
            assert notice.runs[0].astimezone(ZoneInfo(zone)).replace(tzinfo=None) >= (
                change.walls[1])
        else:
            # the skipped wall times run once, at the first instant after the gap
            assert notice.runs == (change.at,)
            assert stepped(trig, change.at - timedelta(seconds=1), change.at) == [change.at]


def test_lookahead_does_not_call_the_clock():
    clocks = {"now", "utcnow", "today", "time", "time_ns", "monotonic", "localtime"}
    source = inspect.getsource(supervisor.timing.lookahead)
    calls = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
    }
    assert not calls & clocks
