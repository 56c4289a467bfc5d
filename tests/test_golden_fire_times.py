"""Golden fire-time lists: what the triggers computed when the lists were last checked.

croniter is our wall-clock calendar engine, pinned exactly; if an upgrade (or a change of
ours) moves any fire time, this fails and shows which case. The lists live in
``tests/golden/fire_times.json``; regenerating them is deliberate:

    python tests/test_golden_fire_times.py --regenerate

and the new lists must be checked (by hand, or against cronsim and the brute-force walk
in ``test_triggers_dst.py``) before they are committed. The values in the file were
checked that way: every list agrees with a second-by-second walk of real time under the
contract's DST rules, and with cronsim 2.8 except where cronsim's own DST handling
differs on purpose (see ``test_cronsim_property.py``).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from supervisor.timing.cron_expr import parse_cron
from supervisor.timing.triggers import CronTrigger

GOLDEN = Path(__file__).parent / "golden" / "fire_times.json"

# id: (expression, zone, start instant, how many fire times)
CASES: dict[str, tuple[str, str, str, int]] = {
    # syntax
    "every-5-minutes": ("*/5 * * * *", "UTC", "2025-01-01T00:00:00+00:00", 14),
    "step-from-value-59/15": ("59/15 * * * *", "UTC", "2025-01-01T00:00:00+00:00", 12),
    "step-from-value-5/15": ("5/15 * * * *", "UTC", "2025-12-31T23:00:00+00:00", 12),
    "range-step-and-names": ("0 9-17/2 * * mon-FRI", "Europe/Berlin",
                             "2026-01-02T12:00:00+01:00", 15),
    "month-names-list": ("30 6 1 jan,APR,Jul-sep *", "America/New_York",
                         "2025-01-01T00:00:00-05:00", 12),
    "or-rule-dom-or-friday": ("30 4 1,15 * 5", "UTC", "2025-01-01T00:00:00+00:00", 16),
    "star-dom-is-and": ("0 0 */2 * MON", "UTC", "2025-01-01T00:00:00+00:00", 12),
    "first-sunday-of-month": ("0 10 1-7 * */7", "Europe/Berlin",
                              "2025-01-01T00:00:00+01:00", 12),
    "sunday-as-7": ("0 0 * * 7", "UTC", "2025-01-01T00:00:00+00:00", 8),
    "only-31st": ("0 0 31 * *", "UTC", "2025-01-01T00:00:00+00:00", 14),
    "feb-29": ("0 12 29 2 *", "UTC", "2025-01-01T00:00:00+00:00", 6),
    "feb-29-across-2100": ("0 12 29 2 *", "UTC", "2090-01-01T00:00:00+00:00", 4),
    "feb-29-or-mondays-in-feb": ("0 0 29 2 1", "UTC", "2027-01-01T00:00:00+00:00", 12),
    "seconds-every-20": ("*/20 * * * * *", "UTC", "2025-06-30T23:59:00+00:00", 12),
    "seconds-in-list": ("5,35 0 12 * * SAT", "Asia/Kolkata",
                        "2026-01-01T00:00:00+05:30", 12),
    "macro-yearly": ("@yearly", "America/New_York", "2025-06-01T00:00:00-04:00", 12),
    "macro-monthly": ("@monthly", "Australia/Sydney", "2025-01-15T00:00:00+11:00", 14),
    "macro-weekly-santiago-gap": ("@weekly", "America/Santiago",
                                  "2025-08-20T00:00:00-04:00", 12),
    "macro-daily-lord-howe": ("@daily", "Australia/Lord_Howe",
                              "2026-03-30T00:00:00+11:00", 12),
    # DST: fixed hours
    "ny-spring-fixed-in-gap": ("0 2 * * *", "America/New_York",
                               "2026-03-05T00:00:00-05:00", 12),
    "ny-fall-fixed-in-repeat": ("30 1 * * *", "America/New_York",
                                "2026-10-29T00:00:00-04:00", 12),
    "berlin-spring-two-in-gap": ("0,30 2 * * *", "Europe/Berlin",
                                 "2026-03-27T00:00:00+01:00", 14),
    "berlin-fall-fixed-in-repeat": ("30 2 * * *", "Europe/Berlin",
                                    "2026-10-22T00:00:00+02:00", 12),
    "lord-howe-spring-fixed-in-gap": ("0 2 * * *", "Australia/Lord_Howe",
                                      "2026-10-01T00:00:00+10:30", 12),
    "lord-howe-fall-fixed-in-repeat": ("45 1 * * *", "Australia/Lord_Howe",
                                       "2026-04-02T00:00:00+11:00", 12),
    "sydney-spring-fixed-in-gap": ("30 2 * * *", "Australia/Sydney",
                                   "2027-09-30T00:00:00+10:00", 12),
    "santiago-fall-fixed-in-repeat": ("30 23 * * *", "America/Santiago",
                                      "2025-04-02T00:00:00-03:00", 12),
    "chatham-spring-45-minute-shift": ("0 3 * * *", "Pacific/Chatham",
                                       "2026-09-24T00:00:00+12:45", 12),
    "ny-seconds-fixed-hour-in-gap": ("15 30 2 * * *", "America/New_York",
                                     "2025-03-07T00:00:00-05:00", 12),
    # DST: wildcard hours
    "berlin-fall-hourly": ("0 * * * *", "Europe/Berlin", "2026-10-24T22:30:00+02:00", 12),
    "ny-spring-hourly": ("@hourly", "America/New_York", "2025-03-08T22:30:00-05:00", 12),
    "ny-spring-minutely": ("* * * * *", "America/New_York", "2025-03-09T01:45:00-05:00", 30),
    "ny-fall-every-20-minutes": ("*/20 * * * *", "America/New_York",
                                 "2025-11-02T00:30:00-04:00", 14),
    "lord-howe-spring-half-hourly": ("*/30 * * * *", "Australia/Lord_Howe",
                                     "2026-10-03T23:45:00+10:30", 12),
    "lord-howe-fall-half-hourly": ("*/30 * * * *", "Australia/Lord_Howe",
                                   "2026-04-04T23:45:00+11:00", 12),
    "sydney-fall-every-2-hours": ("15 */2 * * *", "Australia/Sydney",
                                  "2027-04-03T20:00:00+11:00", 12),
    "santiago-spring-every-3-hours": ("0 */3 * * *", "America/Santiago",
                                      "2025-09-06T17:00:00-04:00", 12),
    "berlin-spring-seconds": ("*/20 * * * * *", "Europe/Berlin",
                              "2026-03-29T01:59:00+01:00", 12),
}


def compute(expr: str, zone: str, start: str, count: int) -> list[str]:
    tz = ZoneInfo(zone)
    trigger = CronTrigger(parse_cron(expr), tz)
    out = []
    instant: datetime | None = datetime.fromisoformat(start)
    for _ in range(count):
        instant = trigger.next_after(instant)
        assert instant is not None
        out.append(instant.astimezone(tz).isoformat())
    return out


def load() -> dict:
    return json.loads(GOLDEN.read_text())


def test_golden_file_covers_exactly_the_cases():
    golden = load()
    assert set(golden) == set(CASES), "regenerate: python tests/test_golden_fire_times.py"
    for case_id, (expr, zone, start, count) in CASES.items():
        entry = golden[case_id]
        assert (entry["expr"], entry["zone"], entry["after"]) == (expr, zone, start)
        assert len(entry["fire_times"]) == count


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_fire_times_match_golden(case_id):
    expected = load()[case_id]
    got = compute(expected["expr"], expected["zone"], expected["after"],
                  len(expected["fire_times"]))
    assert got == expected["fire_times"]


def regenerate() -> None:
    data = {
        case_id: {"expr": expr, "zone": zone, "after": start,
                  "fire_times": compute(expr, zone, start, count)}
        for case_id, (expr, zone, start, count) in CASES.items()
    }
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {len(data)} cases to {GOLDEN}; check them before committing")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python tests/test_golden_fire_times.py --regenerate")
    regenerate()
