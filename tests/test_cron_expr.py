"""Cron syntax: every parsing rule of ``supervisor.timing.cron_expr`` as a table, every error
message exactly, and properties over arbitrary text (never anything but CronSyntaxError,
never slow) and over generated expressions (accepted exactly when some day can match)."""

from __future__ import annotations

import calendar
import time
from datetime import date, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.timing.cron_expr import MACROS, CronExpr, CronSyntaxError, parse_cron
from tests.property_settings import examples

ALL_SECONDS = tuple(range(60))
ALL_HOURS = tuple(range(24))
ALL_DAYS = tuple(range(1, 32))
ALL_MONTHS = tuple(range(1, 13))
ALL_WEEKDAYS = tuple(range(7))


def fields(expr: CronExpr) -> tuple[tuple[int, ...], ...]:
    return (expr.seconds, expr.minutes, expr.hours, expr.days, expr.months, expr.weekdays)


# -- accepted syntax -------------------------------------------------------------------

# (expression, seconds, minutes, hours, days, months, weekdays)
PARSED = [
    # 5 fields: seconds are 0
    ("* * * * *", (0,), ALL_SECONDS, ALL_HOURS, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("5 4 3 2 1", (0,), (5,), (4,), (3,), (2,), (1,)),
    ("*/15 9-17 * * MON-FRI", (0,), (0, 15, 30, 45), tuple(range(9, 18)), ALL_DAYS,
     ALL_MONTHS, (1, 2, 3, 4, 5)),
    # surrounding and repeated whitespace, tabs
    ("  0\t12   * *  *  ", (0,), (0,), (12,), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    # 6 fields: seconds first
    ("*/2 * * * * *", tuple(range(0, 60, 2)), ALL_SECONDS, ALL_HOURS, ALL_DAYS, ALL_MONTHS,
     ALL_WEEKDAYS),
    ("30 0 12 * * *", (30,), (0,), (12,), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("59 59 23 31 12 6", (59,), (59,), (23,), (31,), (12,), (6,)),
    # ranges, steps, lists
    ("1-5 * * * *", (0,), (1, 2, 3, 4, 5), ALL_HOURS, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("5-5 * * * *", (0,), (5,), ALL_HOURS, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("1-10/3 * * * *", (0,), (1, 4, 7, 10), ALL_HOURS, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("*/7 */5 */10 */4 */6", (0,), (0, 7, 14, 21, 28, 35, 42, 49, 56), (0, 5, 10, 15, 20),
     (1, 11, 21, 31), (1, 5, 9), (0, 6)),  # */6 on 0-7: 0 and 6
    ("0-59/60 * * * *", (0,), (0,), ALL_HOURS, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("1,2,3 * * * *", (0,), (1, 2, 3), ALL_HOURS, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("5,5,1 * * * *", (0,), (1, 5), ALL_HOURS, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("1-3,10-20/5,59 * * * *", (0,), (1, 2, 3, 10, 15, 20, 59), ALL_HOURS, ALL_DAYS,
     ALL_MONTHS, ALL_WEEKDAYS),
    ("0 0,12 1,15 * *", (0,), (0,), (0, 12), (1, 15), ALL_MONTHS, ALL_WEEKDAYS),
    # leading zeros are plain numbers
    ("05 007 01 01 00", (0,), (5,), (7,), (1,), (1,), (0,)),
    # A/S means A-max/S (cronie, cronsim); croniter 7.0 reads 59/15 differently
    ("59/15 * * * *", (0,), (59,), ALL_HOURS, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("5/15 * * * *", (0,), (5, 20, 35, 50), ALL_HOURS, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("0 22/5 * * *", (0,), (0,), (22,), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    ("0 0 25/3 * *", (0,), (0,), (0,), (25, 28, 31), ALL_MONTHS, ALL_WEEKDAYS),
    ("0 0 1 10/1 *", (0,), (0,), (0,), (1,), (10, 11, 12), ALL_WEEKDAYS),
    ("45/5 0 0 * * *", (45, 50, 55), (0,), (0,), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    # month names, any case, in ranges, lists and with steps
    ("0 0 1 jan *", (0,), (0,), (0,), (1,), (1,), ALL_WEEKDAYS),
    ("0 0 1 Jan *", (0,), (0,), (0,), (1,), (1,), ALL_WEEKDAYS),
    ("0 0 1 JAN *", (0,), (0,), (0,), (1,), (1,), ALL_WEEKDAYS),
    ("0 0 1 jAn *", (0,), (0,), (0,), (1,), (1,), ALL_WEEKDAYS),
    ("0 0 1 DEC *", (0,), (0,), (0,), (1,), (12,), ALL_WEEKDAYS),
    ("0 0 1 jan-MAR,jul,Oct-dec *", (0,), (0,), (0,), (1,), (1, 2, 3, 7, 10, 11, 12),
     ALL_WEEKDAYS),
    ("0 0 1 FEB/4 *", (0,), (0,), (0,), (1,), (2, 6, 10), ALL_WEEKDAYS),
    ("0 0 1 3-sep *", (0,), (0,), (0,), (1,), (3, 4, 5, 6, 7, 8, 9), ALL_WEEKDAYS),
    # day names, any case
    ("0 0 * * sun", (0,), (0,), (0,), ALL_DAYS, ALL_MONTHS, (0,)),
    ("0 0 * * Mon", (0,), (0,), (0,), ALL_DAYS, ALL_MONTHS, (1,)),
    ("0 0 * * TUE,wed,tHu", (0,), (0,), (0,), ALL_DAYS, ALL_MONTHS, (2, 3, 4)),
    ("0 0 * * fri-SAT", (0,), (0,), (0,), ALL_DAYS, ALL_MONTHS, (5, 6)),
    ("0 0 * * MON-FRI/2", (0,), (0,), (0,), ALL_DAYS, ALL_MONTHS, (1, 3, 5)),
    # 0 and 7 are both Sunday
    ("0 0 * * 0", (0,), (0,), (0,), ALL_DAYS, ALL_MONTHS, (0,)),
    ("0 0 * * 7", (0,), (0,), (0,), ALL_DAYS, ALL_MONTHS, (0,)),
    ("0 0 * * 0,7", (0,), (0,), (0,), ALL_DAYS, ALL_MONTHS, (0,)),
    ("0 0 * * 5-7", (0,), (0,), (0,), ALL_DAYS, ALL_MONTHS, (0, 5, 6)),
    ("0 0 * * SAT-7", (0,), (0,), (0,), ALL_DAYS, ALL_MONTHS, (0, 6)),
    ("0 0 * * 1/3", (0,), (0,), (0,), ALL_DAYS, ALL_MONTHS, (0, 1, 4)),  # 1,4,7
    ("0 0 * * */2", (0,), (0,), (0,), ALL_DAYS, ALL_MONTHS, (0, 2, 4, 6)),
    ("0 0 * * 0-7", (0,), (0,), (0,), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS),
    # Feb 29 exists (leap years)
    ("0 0 29 2 *", (0,), (0,), (0,), (29,), (2,), ALL_WEEKDAYS),
    ("0 0 30,31 1-3 *", (0,), (0,), (0,), (30, 31), (1, 2, 3), ALL_WEEKDAYS),
]


@pytest.mark.parametrize(
    ("text", "seconds", "minutes", "hours", "days", "months", "weekdays"), PARSED,
    ids=[case[0] for case in PARSED],
)
def test_parses_fields(text, seconds, minutes, hours, days, months, weekdays):
    expr = parse_cron(text)
    assert fields(expr) == (seconds, minutes, hours, days, months, weekdays)
    assert expr.text == text
    assert expr.has_seconds == (len(text.split()) == 6)


@pytest.mark.parametrize(
    ("macro", "same_as"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        # any case, surrounding whitespace
        ("@DAILY", "0 0 * * *"),
        ("@Hourly", "0 * * * *"),
        ("  @weekly\n", "0 0 * * 0"),
    ],
)
def test_macros(macro, same_as):
    expr, expected = parse_cron(macro), parse_cron(same_as)
    assert fields(expr) == fields(expected)
    assert (expr.dom_star, expr.dow_star, expr.hour_star, expr.day_or) == (
        expected.dom_star, expected.dow_star, expected.hour_star, expected.day_or)
    assert not expr.has_seconds
    assert expr.text == macro


def test_every_macro_is_in_the_table():
    assert set(MACROS) == {"@yearly", "@annually", "@monthly", "@weekly", "@daily",
                           "@midnight", "@hourly"}


@pytest.mark.parametrize(
    ("text", "dom_star", "dow_star", "hour_star", "day_or"),
    [
        ("0 0 * * *", True, True, False, False),
        ("0 0 1 * *", False, True, False, False),
        ("0 0 * * MON", True, False, False, False),
        # both restricted: the OR rule
        ("0 0 1 * MON", False, False, False, True),
        ("0 0 1,15 * 1-5", False, False, False, True),
        ("0 0 1-31 * 1", False, False, False, True),  # a full range is not a star
        ("0 0 1 * 0-7", False, False, False, True),
        # a field that starts with "*" counts as a star, as in cronie: */2 included
        ("0 0 */2 * MON", True, False, False, False),
        ("0 0 1 * */2", False, True, False, False),
        ("0 0 *,5 * MON", True, False, False, False),
        ("0 0 */1 * */1", True, True, False, False),
        # hour flag
        ("0 * * * *", True, True, True, False),
        ("0 */2 * * *", True, True, True, False),
        ("0 0-23 * * *", True, True, False, False),
        ("0 0 * * * *", True, True, True, False),  # 6 fields: the hour is the 3rd
        ("0 0 0 * * *", True, True, False, False),
        ("0 0 */3 * * *", True, True, True, False),
        ("0 * 5 * * *", True, True, False, False),
        ("@hourly", True, True, True, False),
        ("@daily", True, True, False, False),
        ("@weekly", True, False, False, False),
    ],
)
def test_star_flags_and_or_rule(text, dom_star, dow_star, hour_star, day_or):
    expr = parse_cron(text)
    assert (expr.dom_star, expr.dow_star, expr.hour_star, expr.day_or) == (
        dom_star, dow_star, hour_star, day_or)


@pytest.mark.parametrize(
    "text",
    [
        "0 0 29 2 *",  # leap years
        "0 0 29 FEB *",
        "0 0 31 1 *",
        "0 0 31 4,5 *",  # May has a 31st
        "0 0 30 2 MON",  # OR rule: every Monday in February fires
        "0 0 31 4,6,9,11 1",
        "0 0 29-31 2 *",
        "0 0 29 2 */7",  # Feb 29 that is a Sunday: 2004, 2032, ...
        "0 0 0 29 2 *",  # 6 fields
    ],
)
def test_rare_but_possible_days_are_accepted(text):
    parse_cron(text)


# -- errors, exactly -------------------------------------------------------------------

KNOWN_MACROS = "@annually @daily @hourly @midnight @monthly @weekly @yearly"
FIELD_COUNT = ("expected 5 fields (minute hour day-of-month month day-of-week), "
               "6 with seconds first, or a @macro; got {}")
NON_STANDARD = "non-standard cron syntax (L, W, #, ?, H) is not supported"

ERRORS = [
    # never fires
    ("0 0 30 2 *", "can never fire: day-of-month 30 does not occur in Feb"),
    ("0 0 31 4,6,9,11 *", "can never fire: day-of-month 31 does not occur in Apr,Jun,Sep,Nov"),
    ("0 0 30,31 FEB *", "can never fire: day-of-month 30,31 does not occur in Feb"),
    ("0 0 31 2,4 *", "can never fire: day-of-month 31 does not occur in Feb,Apr"),
    ("0 0 30 2 */2", "can never fire: day-of-month 30 does not occur in Feb"),  # */2: AND
    ("0 0 0 31 11 *", "can never fire: day-of-month 31 does not occur in Nov"),
    # out of range, every field
    ("60 * * * * *", "second 60 is out of range 0-59"),
    ("60 * * * *", "minute 60 is out of range 0-59"),
    ("060 * * * *", "minute 60 is out of range 0-59"),
    ("0 24 * * *", "hour 24 is out of range 0-23"),
    ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
    ("0 0 32 * *", "day-of-month 32 is out of range 1-31"),
    ("0 0 1 0 *", "month 0 is out of range 1-12"),
    ("0 0 1 13 *", "month 13 is out of range 1-12"),
    ("0 0 * * 8", "day-of-week 8 is out of range 0-7"),
    ("0-60 * * * *", "minute 60 is out of range 0-59"),
    ("0 0 * * 1-8", "day-of-week 8 is out of range 0-7"),
    ("70/5 * * * *", "minute 70 is out of range 0-59"),
    ("1,99 * * * *", "minute 99 is out of range 0-59"),
    ("99999999999999999999 * * * *", "minute 99999999999999999999 is out of range 0-59"),
    # bad tokens
    ("x * * * *", "minute 'x' is not a number"),
    ("0 noon * * *", "hour 'noon' is not a number"),
    ("0 0 1 JANUARY *", "month 'JANUARY' is not a number or a name"),
    ("0 0 1 MON *", "month 'MON' is not a number or a name"),  # day name in month field
    ("0 0 * * FUNDAY", "day-of-week 'FUNDAY' is not a number or a name"),
    ("0 0 * * JAN", "day-of-week 'JAN' is not a number or a name"),
    ("0 0 JAN * *", "day-of-month 'JAN' is not a number"),
    ("*-5 * * * *", "minute '*' is not a number"),
    ("1-2-3 * * * *", "minute '2-3' is not a number"),
    ("-5 * * * *", "minute '' is not a number"),
    ("5- * * * *", "minute '' is not a number"),
    ("+5 * * * *", "minute '+5' is not a number"),
    ("1.5 * * * *", "minute '1.5' is not a number"),
    ("\u0663 * * * *", "minute '\u0663' is not a number"),  # Arabic-Indic 3: not ASCII
    ("\u00b2 * * * *", "minute '\u00b2' is not a number"),  # superscript 2
    ("0 0 * * \u017fun", "day-of-week '\u017fun' is not a number or a name"),  # long s
    # empty list elements
    ("1,,2 * * * *", "minute field '': empty list element"),
    ("0 1, * * *", "hour field '': empty list element"),
    ("0 0 ,1 * *", "day-of-month field '': empty list element"),
    # steps
    ("*/0 * * * *", "minute step 0 is not allowed"),
    ("0 0 1-10/00 * *", "day-of-month step 0 is not allowed"),
    ("*/x * * * *", "minute step 'x' is not a positive number"),
    ("*/ * * * *", "minute step '' is not a positive number"),
    ("*/-1 * * * *", "minute step '-1' is not a positive number"),
    ("*/1/2 * * * *", "minute step '1/2' is not a positive number"),
    ("0 */\u00b2 * * *", "hour step '\u00b2' is not a positive number"),
    # backwards ranges
    ("30-10 * * * *", "minute range '30-10' runs backwards"),
    ("0 0 * * FRI-MON", "day-of-week range 'FRI-MON' runs backwards"),
    ("0 0 * DEC-JAN *", "month range 'DEC-JAN' runs backwards"),
    ("0 0 * * 7-1", "day-of-week range '7-1' runs backwards"),
    # field counts
    ("", FIELD_COUNT.format("0 fields")),
    ("   ", FIELD_COUNT.format("0 fields")),
    ("*", FIELD_COUNT.format("1 field")),
    ("* * * *", FIELD_COUNT.format("4 fields")),
    ("* * * * * * *", FIELD_COUNT.format("7 fields")),
    ("0 0 * * * 2025 extra", FIELD_COUNT.format("7 fields")),
    # macros
    ("@reboot", f"unknown macro '@reboot' (known: {KNOWN_MACROS})"),
    ("@every 5m", f"unknown macro '@every 5m' (known: {KNOWN_MACROS})"),
    ("@", f"unknown macro '@' (known: {KNOWN_MACROS})"),
    ("@daily *", f"unknown macro '@daily *' (known: {KNOWN_MACROS})"),
    # Quartz / Jenkins extensions
    ("0 0 L * *", f"day-of-month 'L': {NON_STANDARD}"),
    ("0 0 LW * *", f"day-of-month 'LW': {NON_STANDARD}"),
    ("0 0 15W * *", f"day-of-month '15W': {NON_STANDARD}"),
    ("0 0 l * *", f"day-of-month 'l': {NON_STANDARD}"),
    ("0 0 * * 5L", f"day-of-week '5L': {NON_STANDARD}"),
    ("0 0 * * 5#3", f"day-of-week '5#3': {NON_STANDARD}"),
    ("0 0 ? * MON", f"day-of-month '?': {NON_STANDARD}"),
    ("0 0 * * ?", f"day-of-week '?': {NON_STANDARD}"),
    ("H * * * *", f"minute 'H': {NON_STANDARD}"),
    ("H/15 * * * *", f"minute 'H': {NON_STANDARD}"),
    ("H(0-29) * * * *", f"minute 'H(0': {NON_STANDARD}"),
    ("0 H * * *", f"hour 'H': {NON_STANDARD}"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS, ids=[case[0] or "empty" for case in ERRORS])
def test_error_messages(text, message):
    with pytest.raises(CronSyntaxError) as caught:
        parse_cron(text)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("value", [None, 5, b"* * * * *", ["*"] * 5])
def test_non_string(value):
    with pytest.raises(CronSyntaxError) as caught:
        parse_cron(value)
    assert str(caught.value) == f"must be a string, got {value!r}"


def test_syntax_error_is_a_value_error():
    assert issubclass(CronSyntaxError, ValueError)


def test_huge_numbers_are_errors_not_crashes():
    # int() refuses numerals over 4300 digits with a bare ValueError.
    digits = "9" * 5000
    with pytest.raises(CronSyntaxError, match=r"^minute 9{5000} is out of range 0-59$"):
        parse_cron(f"{digits} * * * *")
    # A step wider than the field selects its start alone, however long.
    assert parse_cron(f"*/{digits} * * * *").minutes == (0,)
    assert parse_cron("5/99 * * * *").minutes == (5,)
    with pytest.raises(CronSyntaxError, match=r"^minute step 0 is not allowed$"):
        parse_cron(f"*/{'0' * 5000} * * * *")
    assert parse_cron(f"{'0' * 5000}7 * * * *").minutes == (7,)


# -- properties ------------------------------------------------------------------------

CRON_ALPHABET = "0123456789*/-,@ \tLWH#?JANFEBMONSUNjanmonxyz"


def parse_quickly(text: str) -> CronExpr | None:
    """parse_cron, which must either succeed or raise CronSyntaxError, in well under 1 s."""
    started = time.perf_counter()
    try:
        return parse_cron(text)
    except CronSyntaxError as error:
        assert str(error) and "\n" not in str(error)
        return None
    finally:
        assert time.perf_counter() - started < 1.0, f"parse_cron({text!r}) is slow"


@settings(max_examples=examples(300), deadline=None)
@given(st.text(max_size=80) | st.text(CRON_ALPHABET, max_size=60))
def test_arbitrary_text_only_raises_syntax_errors(text):
    parse_quickly(text)


MONTH_NAMES = [m.upper() for m in calendar.month_abbr if m]
DAY_NAMES = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "7"]  # no name ends 0-7


def field_text(low: int, high: int, names: list[str] | None = None) -> st.SearchStrategy[str]:
    """Valid field text: numbers or names (mixed case), ranges, steps, stars, lists."""

    @st.composite
    def token(draw, value: int) -> str:
        if names and draw(st.booleans()):
            name = names[value - low]
            return "".join(c.lower() if draw(st.booleans()) else c for c in name)
        return str(value)

    @st.composite
    def item(draw) -> str:
        kind = draw(st.sampled_from(["star", "value", "range", "step"]))
        step = draw(st.integers(1, high - low + 1))
        if kind == "star":
            return draw(st.sampled_from(["*", f"*/{step}"]))
        first, second = sorted(draw(st.lists(st.integers(low, high), min_size=2, max_size=2)))
        if kind == "value":
            return draw(token(first))
        text = f"{draw(token(first))}-{draw(token(second))}"
        if kind == "step":
            return draw(st.sampled_from([f"{text}/{step}", f"{draw(token(first))}/{step}"]))
        return text

    return st.lists(item(), min_size=1, max_size=3).map(",".join)


GENERATED = st.tuples(
    st.booleans(),
    field_text(0, 59),
    field_text(0, 59),
    field_text(0, 23),
    field_text(1, 31) | st.sampled_from(["29", "30", "31", "30,31", "29-31", "31/2"]),
    field_text(1, 12, MONTH_NAMES) | st.sampled_from(["2", "4,6", "FEB", "4-6/2", "9,11"]),
    # A star day-of-week (the AND rule) often, so that never-firing days come up.
    st.sampled_from(["*", "*/2", "*/7", "*,1"]) | field_text(0, 7, DAY_NAMES),
).map(lambda parts: " ".join(parts[1:] if parts[0] else parts[2:]))


def day_matches(expr: CronExpr, day: date) -> bool:
    dom = day.day in expr.days
    dow = (day.weekday() + 1) % 7 in expr.weekdays
    return (dom or dow) if expr.day_or else (dom and dow)


# 2000..2028 holds every (month, day-of-month, weekday) combination, Feb 29 included.
_DATES = [date(2000, 1, 1) + timedelta(days=i) for i in range((date(2029, 1, 1) -
                                                               date(2000, 1, 1)).days)]


def some_day_matches(expr: CronExpr) -> bool:
    return any(d.month in expr.months and day_matches(expr, d) for d in _DATES)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(GENERATED)
def test_generated_expressions(text):
    expr = parse_quickly(text)
    if expr is None:
        try:
            parse_cron(text)
        except CronSyntaxError as error:
            if str(error).startswith("can never fire"):
                # Rejected as never firing: really no calendar day matches.
                assert not _can_fire_brute_force(text)
        return
    # Accepted: every value in range, and some calendar day matches.
    for values, low, high in zip(
        fields(expr), (0, 0, 0, 1, 1, 0), (59, 59, 23, 31, 12, 6), strict=True
    ):
        assert values and all(low <= v <= high for v in values)
        assert list(values) == sorted(set(values))
    assert some_day_matches(expr)


def _can_fire_brute_force(text: str) -> bool:
    """Search the calendar for a day matching the day fields of ``text``, which
    parse_cron rejected as never firing (so parse them one at a time)."""
    dom, month, dow = text.split()[-3:]
    probe = parse_cron(f"0 0 1 {month} {dow}")  # day 1 exists in every month
    days = parse_cron(f"0 0 {dom} 1 *").days
    day_or = not (dom.startswith("*") or dow.startswith("*"))
    for d in _DATES:
        if d.month not in probe.months:
            continue
        dom_hit = d.day in days
        dow_hit = (d.weekday() + 1) % 7 in probe.weekdays
        if (dom_hit or dow_hit) if day_or else (dom_hit and dow_hit):
            return True
    return False
