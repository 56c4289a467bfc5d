"""Cron expression syntax: text in, the set of allowed values of every field out.

We parse cron ourselves instead of handing the text to croniter because the meaning of an
expression is part of our outside contract and must not drift with a dependency upgrade
(croniter 7.0 silently changed ``59/15``; earlier releases disagreed with cronie on
others). croniter only ever sees the explicit numeric lists we produce here
(see ``cron_calendar.py``).

Semantics, as cronie and Vixie cron:
- 5 fields ``minute hour day-of-month month day-of-week``, or 6 with **seconds first**.
- ``*``, ``A``, ``A-B``, ``*/S``, ``A-B/S``, and ``A/S`` meaning ``A-max/S``; lists with ``,``.
- Month names JAN-DEC and day names SUN-SAT, any case; day-of-week 0 and 7 are Sunday.
- When both day-of-month and day-of-week are restricted (neither starts with ``*``), a day
  matches if either does; otherwise both must (the classic OR rule).
- The macros ``@yearly @annually @monthly @weekly @daily @midnight @hourly``.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass


class CronSyntaxError(ValueError):
    """The expression is unusable; the message says which field and why, on one line."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None


_MONTH_NAMES = {name.upper(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAY_NAMES = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}

SECOND = _Field("second", 0, 59)
MINUTE = _Field("minute", 0, 59)
HOUR = _Field("hour", 0, 23)
DAY_OF_MONTH = _Field("day-of-month", 1, 31)
MONTH = _Field("month", 1, 12, _MONTH_NAMES)
DAY_OF_WEEK = _Field("day-of-week", 0, 7, _DAY_NAMES)

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

# Quartz/Jenkins extensions that cronie does not know: named in the error so it is clear.
_NON_STANDARD = re.compile(r"^(L|LW|\d+[LW]|\d+#\d+|\?|H(\(.*)?)$", re.IGNORECASE)

# Any number with more digits than this is out of every field's range.
_MAX_DIGITS = 9

# Longest month length for each month (February: 29, leap years exist).
_MAX_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


@dataclass(frozen=True)
class CronExpr:
    """A parsed cron expression: sorted allowed values per field plus the star flags."""

    text: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]  # 0 = Sunday .. 6 = Saturday
    dom_star: bool  # the day-of-month field starts with "*"
    dow_star: bool  # the day-of-week field starts with "*"
    hour_star: bool  # the hour field starts with "*": keeps real-time rhythm across DST
    has_seconds: bool

    @property
    def day_or(self) -> bool:
        """True when a day matches on day-of-month OR day-of-week."""
        return not (self.dom_star or self.dow_star)


def parse_cron(text: str) -> CronExpr:
    """Parse a cron expression or macro; raise CronSyntaxError naming the field at fault."""
    if not isinstance(text, str):
        raise CronSyntaxError(f"must be a string, got {text!r}")
    stripped = text.strip()
    if stripped.startswith("@"):
        expanded = MACROS.get(stripped.lower())
        if expanded is None:
            known = " ".join(sorted(set(MACROS)))
            raise CronSyntaxError(f"unknown macro {stripped!r} (known: {known})")
        stripped = expanded
    parts = stripped.split()
    if len(parts) == 5:
        parts = ["0", *parts]
        has_seconds = False
    elif len(parts) == 6:
        has_seconds = True
    else:
        raise CronSyntaxError(
            f"expected 5 fields (minute hour day-of-month month day-of-week), 6 with seconds "
            f"first, or a @macro; got {len(parts)} field{'s' if len(parts) != 1 else ''}"
        )
    sec, minute, hour, dom, month, dow = parts
    weekdays = tuple(sorted({d % 7 for d in _parse_field(dow, DAY_OF_WEEK)}))
    expr = CronExpr(
        text=text,
        seconds=_parse_field(sec, SECOND),
        minutes=_parse_field(minute, MINUTE),
        hours=_parse_field(hour, HOUR),
        days=_parse_field(dom, DAY_OF_MONTH),
        months=_parse_field(month, MONTH),
        weekdays=weekdays,
        dom_star=dom.startswith("*"),
        dow_star=dow.startswith("*"),
        hour_star=hour.startswith("*"),
        has_seconds=has_seconds,
    )
    _check_can_fire(expr)
    return expr


def _parse_field(text: str, field: _Field) -> tuple[int, ...]:
    values: set[int] = set()
    for item in text.split(","):
        values.update(_parse_item(item, field))
    return tuple(sorted(values))


def _parse_item(item: str, field: _Field) -> range:
    if item == "":
        raise CronSyntaxError(f"{field.name} field {item!r}: empty list element")
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not _is_decimal(step_text):
            raise CronSyntaxError(f"{field.name} step {step_text!r} is not a positive number")
        digits = step_text.lstrip("0")
        if not digits:
            raise CronSyntaxError(f"{field.name} step 0 is not allowed")
        # A step wider than the field selects its start alone, however many digits it has.
        step = int(digits) if len(digits) <= _MAX_DIGITS else field.high + 1
    if base == "*":
        start, end = field.low, field.high
    elif "-" in base:
        start_text, _, end_text = base.partition("-")
        start, end = _value(start_text, field), _value(end_text, field)
        if start > end:
            raise CronSyntaxError(f"{field.name} range {base!r} runs backwards")
    else:
        start = _value(base, field)
        # "A/S" means "A-max/S", as cronie and cronsim read it.
        end = field.high if slash else start
    return range(start, end + 1, step)


def _is_decimal(text: str) -> bool:
    """Plain ASCII digits. ``str.isdigit`` alone also takes other scripts' digits and
    superscripts (``int`` reads "٣" as 3 and raises ValueError on "²")."""
    return text.isascii() and text.isdigit()


def _value(text: str, field: _Field) -> int:
    if _is_decimal(text):
        digits = text.lstrip("0") or "0"
        # int() refuses numerals over 4300 digits (ValueError); these are out of range.
        number = int(digits) if len(digits) <= _MAX_DIGITS else field.high + 1
        if not field.low <= number <= field.high:
            raise CronSyntaxError(
                f"{field.name} {digits} is out of range {field.low}-{field.high}"
            )
        return number
    elif field.names and text.isascii() and text.upper() in field.names:
        return field.names[text.upper()]
    else:
        if _NON_STANDARD.match(text):
            raise CronSyntaxError(
                f"{field.name} {text!r}: non-standard cron syntax (L, W, #, ?, H) is not supported"
            )
        what = "a number or a name" if field.names else "a number"
        raise CronSyntaxError(f"{field.name} {text!r} is not {what}")


def _check_can_fire(expr: CronExpr) -> None:
    """Reject expressions no calendar day can ever satisfy, such as ``0 0 30 2 *``.

    With the OR rule any allowed weekday fires, so only the day-of-month-only case can be
    empty: some allowed month must have one of the allowed days.
    """
    if expr.day_or:
        return
    if any(day <= _MAX_DAYS[month] for month in expr.months for day in expr.days):
        return
    days = ",".join(map(str, expr.days))
    months = ",".join(calendar.month_abbr[m] for m in expr.months)
    raise CronSyntaxError(f"can never fire: day-of-month {days} does not occur in {months}")
