"""Fuzzed job files: whatever bytes a job file holds, reading it gives a JobSpec or one
clean error line naming the file, never a traceback; and valid generated jobs always load.

Four properties, each over the parser (``parse_job``) and over ``taskd validate``:
arbitrary bytes and mutations of valid files; arbitrary JSON values in every key of an
otherwise valid job; generated valid jobs round-trip; the CLI on files and directories.
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from supervisor.cli import main
from supervisor.jobfiles.jobspec import (
    KNOWN_KEYS,
    MAX_REASON_CHARS,
    JobFileError,
    JobSpec,
    parse_job,
)
from supervisor.jobfiles.policy_keys import POLICY_KEYS
from supervisor.timing.triggers import CronTrigger, OneTimeTrigger, StartTrigger
from tests.property_settings import examples as scaled
from workers.http_request import METHODS

FILE = "jobs.d/fuzz job.json"
ZONE = "UTC"
NOW = datetime(2025, 1, 1, tzinfo=UTC)

FUZZ = settings(deadline=None, max_examples=scaled(300),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])


def examples(count: int) -> settings:
    return settings(FUZZ, max_examples=scaled(count))


# -- the property every outcome must have ---------------------------------------------

def check_message(message: str, file: str = FILE) -> str:
    """One line of UTF-8 text starting with "<file>: "; returns the reason after it."""
    assert message.startswith(f"{file}: "), message
    assert len(message.splitlines()) == 1 and "\n" not in message and "\r" not in message, (
        message)
    message.encode("utf-8")  # no lone surrogate: printable and loggable as is
    reason = message[len(file) + 2:]
    assert reason.strip(), message
    assert len(reason) <= MAX_REASON_CHARS, message  # readable, however long the value
    return reason


def outcome(data: bytes, file: str = FILE) -> JobSpec | str:
    """The JobSpec, or the reason of a clean JobFileError. Anything else escapes (fails)."""
    try:
        return parse_job(data, file, default_zone=ZONE)
    except JobFileError as error:
        assert error.file == file
        return check_message(str(error), file)


# -- strategies: valid jobs -----------------------------------------------------------

_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


def _any_case(name: str):
    return st.sampled_from([name, name.lower(), name.capitalize()])


@st.composite
def cron_value(draw, low: int, high: int, names: list[str] | None, name_base: int):
    number = draw(st.integers(low, high))
    if names and number - name_base < len(names) and draw(st.booleans()):
        return draw(_any_case(names[number - name_base])), number
    text = str(number)
    if draw(st.integers(0, 9)) == 0:
        text = "0" + text  # leading zeros are allowed
    return text, number


@st.composite
def cron_field(draw, low: int, high: int, names: list[str] | None = None, name_base: int = 0):
    """A valid field: a list of *, */S, A, A-B, A-B/S, A/S items (numbers or names)."""
    value = cron_value(low, high, names, name_base)
    items = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["*", "*/S", "A", "A-B", "A-B/S", "A/S"]))
        step = str(draw(st.integers(1, high + 2)))
        if kind == "*":
            items.append("*")
        elif kind == "*/S":
            items.append(f"*/{step}")
        elif kind == "A":
            items.append(draw(value)[0])
        elif kind == "A/S":
            items.append(f"{draw(value)[0]}/{step}")
        else:
            (a, x), (b, y) = draw(value), draw(value)
            if x > y:
                a, b = b, a
            items.append(f"{a}-{b}" + (f"/{step}" if kind == "A-B/S" else ""))
    return ",".join(items)


@st.composite
def cron_expressions(draw):
    macro = st.sampled_from(["@yearly", "@annually", "@monthly", "@weekly", "@daily",
                             "@midnight", "@hourly", "@Daily", "@HOURLY"])
    if draw(st.integers(0, 5)) == 0:
        return draw(macro)
    month = draw(cron_field(1, 12, _MONTHS, 1))
    # Every month has at least 29 days (February in a leap year): such a day always fires.
    # "*" months include January, so any day does.
    days_high = 31 if month.startswith("*") else 29
    fields = [
        draw(cron_field(0, 59)),
        draw(cron_field(0, 23)),
        draw(cron_field(1, days_high)),
        month,
        draw(cron_field(0, 7, _DAYS, 0)),
    ]
    if draw(st.booleans()):
        fields.insert(0, draw(cron_field(0, 59)))  # seconds first
    spaces = st.sampled_from([" ", "  ", "\t", " \t "])
    text = "".join(f + draw(spaces) for f in fields[:-1]) + fields[-1]
    return draw(st.sampled_from(["", " "])) + text + draw(st.sampled_from(["", " ", "\n"]))


@st.composite
def timestamps(draw):
    moment = draw(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)))
    spec = draw(st.sampled_from(["minutes", "seconds", "milliseconds", "microseconds"]))
    text = moment.isoformat(sep=draw(st.sampled_from(["T", " "])), timespec=spec)
    offset = draw(st.sampled_from(["", "Z", "+00:00", "+02:00", "-05:00", "+05:30",
                                   "-09:30", "+14:00", "-12:00"]))
    return text + offset


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe",
         "Pacific/Chatham", "America/Sao_Paulo", "Africa/Casablanca", "Etc/GMT+12",
         "Pacific/Kiritimati", "America/St_Johns", "Asia/Kathmandu", "Europe/Dublin"]

_ID_CHARS = string.ascii_letters + string.digits + "._-"
# Text a job may hold: anything but NUL and lone surrogates (both rejected on purpose).
_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"), max_size=40)
_NON_EMPTY_TEXT = _TEXT.filter(bool)
_COMMENTS = st.dictionaries(st.text(max_size=10).map(lambda key: "_" + key),
                            st.none() | st.integers() | _TEXT, max_size=2)


@st.composite
def execute_command_tasks(draw):
    task = {"type": "execute_command", "command": draw(_NON_EMPTY_TEXT)}
    if draw(st.booleans()):
        names = _NON_EMPTY_TEXT.filter(lambda name: "=" not in name)
        task["env"] = draw(st.dictionaries(names, _TEXT, max_size=4))
    if draw(st.booleans()):
        task["cwd"] = draw(_NON_EMPTY_TEXT)
    return task


_HEADER_NAME = st.text(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~", min_size=1,
                       max_size=20)
_HEADER_VALUE = st.text(st.characters(max_codepoint=255, exclude_characters="\r\n\0"),
                        max_size=40)


@st.composite
def urls(draw):
    scheme = draw(st.sampled_from(["http", "https", "HTTP"]))
    host = draw(st.sampled_from(["localhost", "example.com", "127.0.0.1", "[::1]",
                                 "a-b.c-d.example", "xn--bcher-kva.example"]))
    port = draw(st.none() | st.integers(1, 65535))
    path = draw(st.text(string.ascii_letters + string.digits + "/-._~%?=&#", max_size=30))
    return f"{scheme}://{host}{'' if port is None else f':{port}'}/{path}"


@st.composite
def http_request_tasks(draw):
    task = {"type": "http_request", "url": draw(urls())}
    if draw(st.booleans()):
        task["method"] = draw(st.sampled_from(METHODS).flatmap(_any_case))
    if draw(st.booleans()):
        task["headers"] = draw(st.dictionaries(_HEADER_NAME, _HEADER_VALUE, max_size=4))
    if draw(st.booleans()):
        task["body"] = draw(_TEXT)
    if draw(st.booleans()):
        task["timeout_s"] = draw(positive_numbers())
    return task


def positive_numbers():
    return st.integers(1, 10**6) | st.floats(min_value=1e-3, max_value=1e9)


@st.composite
def valid_jobs(draw):
    """A valid job document (a dict), optional keys included at random."""
    document = {
        "job_id": draw(st.text(_ID_CHARS, min_size=1, max_size=128)),
        "schedule": draw(cron_expressions() | timestamps()),
        "task": draw(execute_command_tasks() | http_request_tasks()),
    }
    if draw(st.booleans()):
        document["timezone"] = draw(st.sampled_from(ZONES))
    if draw(st.booleans()):
        document["timeout_s"] = draw(positive_numbers())
    if draw(st.booleans()):
        document["overlap"] = draw(st.sampled_from(["allow", "skip"]))
    if draw(st.booleans()):
        document["enabled"] = draw(st.booleans())
    if draw(st.booleans()):
        document["description"] = draw(_TEXT)
    if draw(st.booleans()):
        document["catch_up"] = draw(st.sampled_from(["none", "latest", "all"]))
    if draw(st.booleans()):
        document["max_catch_up"] = draw(st.integers(1, 100_000))
    if draw(st.booleans()):
        document["starting_deadline_s"] = draw(st.integers(0, 10**6) | st.floats(0, 1e9))
    document.update(draw(_COMMENTS))
    if draw(st.booleans()):
        document["task"].update(draw(_COMMENTS))
    keys = draw(st.permutations(list(document)))
    return {key: document[key] for key in keys}


@st.composite
def encoded(draw, document):
    """JSON text of ``document`` in one of the ways an editor might save it."""
    indent = draw(st.sampled_from([None, 2, "\t"]))
    try:
        text = json.dumps(document, indent=indent, ensure_ascii=draw(st.booleans()))
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: JSON can still say it, escaped
        data = json.dumps(document, indent=indent).encode("utf-8")
    if draw(st.integers(0, 9)) == 0:
        data = b"\xef\xbb\xbf" + data  # a byte order mark
    return data + draw(st.sampled_from([b"", b"\n", b"\r\n", b"  \n\n"]))


def valid_job_bytes():
    return valid_jobs().flatmap(encoded)


# -- strategies: arbitrary and broken input -------------------------------------------

_ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=20)  # surrogates too
INTERESTING = st.sampled_from([
    "", " ", "\n", "a\nb", "\r", "\u2028", "\u0085", "\ud800", "\udfff", "a\0b", "x" * 300,
    "allow", "skip", "UTC", "Europe/Berlin", "../../etc/passwd", "execute_command",
    "http_request", "* * * * *", "*/2 * * * * *", "@daily", "@reboot", "61 * * * *",
    "0 0 30 2 *", "2025-01-01T00:00:00Z", "9999-12-31T23:59:59", "0001-01-01T00:00:00+05:00",
    "2025-01-01", "http://example.com/", "ftp://x/", 10**400, -(10**400), 2**63, -1, 0,
    1e308, -0.0, 5e-324, True, False, None, [], {}, [[[[[]]]]], {"type": "execute_command"},
])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | _ANY_TEXT | INTERESTING,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)

# Pieces of JSON and of broken encodings, to splice into valid files.
TOKENS = [b'"', b"\\", b"\\u", b'"\\ud800"', b'"\\udc00\\ud800"', b"{", b"}", b"[", b"]",
          b",", b":", b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1" * 5000,
          b"0." + b"0" * 5000 + b"1", b"null", b"true", b"\xef\xbb\xbf", b"\xff", b"\xc3",
          b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00", b"\n", b"\xe2\x80\xa8", b"[" * 5000,
          b'{"a":' * 3000, b'"job_id"', b'"_c":1,', b'"job_id":"dup",', b"//", b"/*"]


@st.composite
def mutated_job_bytes(draw):
    """A valid job file after a few byte flips, truncations, insertions and deletions."""
    data = bytearray(draw(valid_job_bytes()))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            data = bytearray(draw(st.binary(max_size=8)))
            continue
        at = draw(st.integers(0, len(data) - 1))
        operation = draw(st.sampled_from(["flip", "truncate", "insert", "token", "delete",
                                          "repeat"]))
        if operation == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "truncate":
            del data[at:]
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif operation == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        else:
            end = draw(st.integers(at, min(len(data), at + 64)))
            data[end:end] = data[at:end] * draw(st.integers(1, 3))
    return bytes(data)


def any_json_bytes():
    return JSON_VALUES.flatmap(encoded)


ANY_BYTES = (st.binary(max_size=4096) | mutated_job_bytes() | any_json_bytes()
             | valid_job_bytes())


# -- 1. arbitrary bytes ----------------------------------------------------------------

def nested(depth: int, opening: bytes = b"[", closing: bytes = b"]", inner: bytes = b"") -> bytes:
    return opening * depth + inner + closing * depth


SPECIAL_FILES = [
    b"", b" \n", b"null", b"0", b'"job"', b"[]", b"[{}]", b"true", b"1e400", b"\xef\xbb\xbf",
    b"\xef\xbb\xbf{}", b"\xef\xbb\xbf\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b"\xfe\xff\x00{\x00}",
    nested(100_000), nested(100_000, b'{"a":', b"}", b"1"), nested(100_000, b'[{"a":', b"}]"),
    b"[" * 100_000, b'{"a":' * 100_000, b"1" * 5000, b"-" + b"1" * 5000, b"1" * 4300,
    b"1e" + b"9" * 5000, b"0." + b"1" * 100_000, b"NaN", b"-Infinity", b'{"job_id": NaN}',
    b'{"timeout_s": Infinity}', b'{"job_id": "\\ud800"}', b'{"\\ud800": 1}',
    b'{"a": 1, "a": 2}', b'{"a\\nb": 1, "a\\nb": 2}', b'{"\\u2028": 1}',
    b'{"job_id": "x", "job_id": "x"}', b'{"job_id": "x"', b'{"job_id": "x",}', b"{'a': 1}",
    b"\x00" * 100, b"\xed\xa0\x80", b"\xc0\x80", b"\xf8\x88\x80\x80\x80",
    b"\xef\xbb\xbf" + json.dumps({"job_id": "bom", "schedule": "@daily",
                                  "task": {"type": "execute_command", "command": "true"}}).encode(),
]


@pytest.mark.parametrize("data", SPECIAL_FILES, ids=range(len(SPECIAL_FILES)))
def test_special_files_give_a_job_or_one_clean_line(data):
    outcome(data)


def test_a_bom_prefixed_job_file_loads():
    assert isinstance(outcome(SPECIAL_FILES[-1]), JobSpec)


@pytest.mark.parametrize(("literal", "reason"), [
    ("1" * 400, "timeout_s: must be a positive number"),  # no float is that large
    ("-" + "1" * 400, "timeout_s: must be a positive number"),
    ("1e400", "timeout_s: must be a positive number"),  # read as infinity
    ("-1e400", "timeout_s: must be a positive number"),
    ("1" * 5000, "not valid JSON: a number has too many digits"),  # int() refuses
])
def test_numbers_beyond_any_float_or_int_are_clean_errors(literal, reason):
    base = {"job_id": "x", "schedule": "@daily", "timeout_s": "@",
            "task": {"type": "http_request", "url": "http://h/", "timeout_s": 1}}
    text = json.dumps(base).replace('"@"', literal)
    assert outcome(text.encode()).startswith(reason)
    base["timeout_s"] = 1
    base["task"]["timeout_s"] = "@"
    text = json.dumps(base).replace('"@"', literal)
    assert outcome(text.encode()).startswith(reason.replace("timeout_s", "task.timeout_s"))


LONG = "9" * 300_000


@pytest.mark.parametrize("document", [
    {"timezone": LONG}, {"timezone": "A/" + LONG}, {"schedule": LONG + " * * * *"},
    {"schedule": f"* * * * {LONG}"}, {"schedule": f"H({LONG}) * * * *"},
    {"schedule": f"*/x{LONG} * * * *"}, {"schedule": f"5-1{LONG} * * * *"},
    {"schedule": f"{LONG}-1 * * * *"}, {"schedule": "@" + LONG}, {"schedule": "2025-01-01T" + LONG},
    {"task": {"type": LONG}}, {"task": {"type": "execute_command", "command": "t", LONG: 1}},
    {"task": {"type": "execute_command", "command": "t", "env": {LONG: 1}}},
    {"task": {"type": "http_request", "url": "http://h/" + LONG, "headers": {LONG + " ": "x"}}},
    {"task": {"type": "http_request", "url": "http://h/" + LONG + "\n"}},
    {LONG: 1}, {"job_id": LONG}, {"overlap": LONG}, {"enabled": LONG}, {"timeout_s": LONG},
])
def test_errors_about_huge_values_stay_short(document):
    result = outcome(json.dumps({**EXECUTE, **document}).encode())
    assert isinstance(result, str)


@pytest.mark.parametrize("key", ["job_id", "description", "timezone", "schedule", "task",
                                 "timeout_s", "_comment", "env", "headers", "top"])
def test_values_nested_up_to_and_past_the_recursion_limit(key):
    """Around the depth where the decoder stops, the value parses but may be too deep to
    show in a message: either way one clean line."""
    valid = {"job_id": "deep", "schedule": "@daily",
             "task": {"type": "execute_command", "command": "true", "env": {"A": "b"}}}
    for depth in range(880, 1040, 3):
        for opening, closing in [(b"[", b"]"), (b'{"k":', b"}")]:
            value = nested(depth, opening, closing, b"1" if opening != b"[" else b"")
            if key == "top":
                data = value
            elif key == "env":
                data = json.dumps(valid).replace('"b"', "@").encode().replace(b"@", value)
            elif key == "headers":
                task = {"type": "http_request", "url": "http://h/", "headers": {"A": "@"}}
                data = json.dumps({**valid, "task": task}).encode().replace(b'"@"', value)
            else:
                data = json.dumps({**valid, key: "@"}).encode().replace(b'"@"', value)
            result = outcome(data)
            if key == "_comment":
                assert isinstance(result, JobSpec) or "nested too deeply" in result


@FUZZ
@given(ANY_BYTES)
@example(b'{"job_id": "x", "schedule": "9999-12-31T23:59:59-05:00", '
         b'"task": {"type": "execute_command", "command": "true"}}')
@example(b'{"job_id": "x", "schedule": "0001-01-01T00:00:00", "timezone": "Asia/Tokyo", '
         b'"task": {"type": "execute_command", "command": "true"}}')
@example(b'{"job_id": "x", "schedule": "@daily", '
         b'"task": {"type": "execute_command", "command": "\\ud800"}}')
@example(b'{"job_id": "x", "schedule": "@daily", '
         b'"task": {"type": "execute_command", "command": "t", "env": {"A\\nB": 1}}}')
def test_any_bytes_give_a_job_or_one_clean_line(data):
    outcome(data)


# -- 2. arbitrary values in each key of a valid job -------------------------------------

EXECUTE = {"job_id": "job-1", "schedule": "*/5 * * * *", "timezone": "Europe/Berlin",
           "task": {"type": "execute_command", "command": "echo hi", "env": {"A": "1"},
                    "cwd": "/tmp"},
           "timeout_s": 10, "overlap": "skip", "enabled": True, "description": "d",
           "catch_up": "all", "max_catch_up": 5, "starting_deadline_s": 600,
           "_comment": "c"}
HTTP = {**EXECUTE, "schedule": "2030-01-01T00:00:00Z",
        "task": {"type": "http_request", "url": "http://example.com/", "method": "POST",
                 "headers": {"X-A": "1"}, "body": "{}", "timeout_s": 5}}

# (document, path to the key, what the error must start with)
TOP_KEYS = ["job_id", "schedule", "timezone", "task", "timeout_s", "overlap", "enabled",
            "description", "catch_up", "max_catch_up", "starting_deadline_s", "_comment", "_",
            *POLICY_KEYS]
PLACES = (
    [(base, (key,), key) for base in (EXECUTE, HTTP) for key in TOP_KEYS]
    + [(EXECUTE, ("task", key), "task") for key in ("type", "command", "env", "cwd", "_c")]
    + [(EXECUTE, ("task", "env", "A"), "task.env"), (EXECUTE, ("task", "env", "B"), "task.env")]
    + [(HTTP, ("task", key), "task")
       for key in ("type", "url", "method", "headers", "body", "timeout_s", "_c")]
    + [(HTTP, ("task", "headers", "X-A"), "task.headers"),
       (HTTP, ("task", "headers", "X-B"), "task.headers")]
)


def placed(base: dict, path: tuple[str, ...], value) -> dict:
    document = json.loads(json.dumps(base))
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return document


@FUZZ
@given(st.sampled_from(PLACES), JSON_VALUES, st.data())
def test_any_value_in_any_key_gives_a_job_or_an_error_naming_the_key(place, value, data):
    base, path, prefix = place
    result = outcome(data.draw(encoded(placed(base, path, value))))
    if isinstance(result, str):
        assert result.startswith(prefix), (path, value, result)
    elif path == ("description",):
        assert result.description == value
    elif path[0].startswith("_"):
        assert result.job_id == "job-1"


@FUZZ
@given(st.sampled_from([EXECUTE, HTTP]), st.sampled_from([(), ("task",), ("task", "env"),
                                                          ("task", "headers")]),
       _ANY_TEXT | INTERESTING.filter(lambda v: isinstance(v, str)), JSON_VALUES, st.data())
def test_unknown_and_comment_keys(base, where, key, value, data):
    if where and where[-1] not in (base["task"] if len(where) == 2 else base):
        where = where[:1]
    document = placed(base, (*where, key), value)
    result = outcome(data.draw(encoded(document)))
    known = {(): KNOWN_KEYS, ("task",): base["task"]}.get(where, {})
    if key.startswith("_") and where in ((), ("task",)):
        assert isinstance(result, JobSpec), result  # comments are free, whatever they hold
    elif where in ((), ("task",)) and key not in known:
        assert isinstance(result, str) and "unknown key" in result, result
        assert result.startswith("unknown key" if not where else "task: unknown key"), result


_CRON_PIECES = st.sampled_from([
    *"0123456789*/-,@ \t?#LWH", "\u3000", "\u0663", "\u00b2", "\uff11", "60", "24", "32",
    "13", "8", "JAN", "mon", "Sun", "FEBRUARY", "L", "5W", "3#2", "H(0-29)", "@daily",
    "@reboot", "1" * 12, "0" * 12 + "5", "9" * 5000, "*/0", "1-", "-1", "5-1"])
_TIMESTAMP_PIECES = st.sampled_from([
    *"0123456789-:T+Z. tz", "2025-01-01", "T12:00", ":60", "+24:00", "-00:00", "Z", ".1234567",
    ",5", "W01", "--", "9999-12-31", "0001-01-01", "+14:00", "-14:00", "23:59:59.999999",
    "\u0663\u0663"])


@FUZZ
@given(st.lists(_CRON_PIECES, max_size=14).map("".join)
       | st.lists(_TIMESTAMP_PIECES, max_size=8).map("".join)
       | (cron_expressions() | timestamps()).flatmap(
           lambda text: st.lists(_CRON_PIECES | _TIMESTAMP_PIECES, max_size=2).map(
               lambda extra: text + "".join(extra))),
       st.sampled_from([*ZONES, "Nowhere/Land", "", "utc"]))
def test_schedule_like_text_gives_a_job_or_a_schedule_error(schedule, zone):
    document = {**EXECUTE, "schedule": schedule, "timezone": zone}
    result = outcome(json.dumps(document, ensure_ascii=False).encode())
    if isinstance(result, str):
        assert result.startswith(("schedule ", "timezone ")), result
    else:
        # A cron schedule always fires again; a one-time or a start schedule need not.
        assert result.trigger.next_after(NOW) is not None or isinstance(
            result.trigger, OneTimeTrigger | StartTrigger)


@FUZZ
@given(st.lists(st.sampled_from([*"AEGMTUacdehilnorstuvy/_+-0123456789.", "Europe/",
                                  "America/", "Etc/GMT", "UTC", "posix/", "right/", "../",
                                  "/", "\0"]), max_size=6).map("".join))
def test_zone_like_text_gives_a_job_or_a_timezone_error(zone):
    result = outcome(json.dumps({**EXECUTE, "timezone": zone}).encode())
    assert isinstance(result, JobSpec) or result.startswith("timezone "), result


@FUZZ
@given(JSON_VALUES.filter(lambda value: not isinstance(value, dict)), st.data())
def test_a_top_level_that_is_not_an_object_is_one_clean_line(value, data):
    result = outcome(data.draw(encoded(value)))
    assert isinstance(result, str) and "expected a JSON object" in result, result


# -- 3. valid generated jobs always load -------------------------------------------------

def expected_params(task: dict) -> dict:
    given = {key: value for key, value in task.items() if not key.startswith("_")}
    if task["type"] == "execute_command":
        return {"command": given["command"], "env": given.get("env", {}),
                "cwd": given.get("cwd")}
    return {"url": given["url"], "method": given.get("method", "GET").upper(),
            "headers": given.get("headers", {}), "body": given.get("body"),
            "timeout_s": float(given.get("timeout_s", 30.0))}


def check_round_trip(spec: JobSpec, document: dict) -> None:
    assert spec.job_id == document["job_id"]
    assert spec.schedule == document["schedule"]
    assert spec.timezone == document.get("timezone", ZONE)
    expected_timeout = document.get("timeout_s")
    assert spec.timeout_s == (None if expected_timeout is None else float(expected_timeout))
    assert spec.overlap == document.get("overlap", "allow")
    assert spec.enabled is document.get("enabled", True)
    assert spec.description == document.get("description")
    assert spec.catch_up == document.get("catch_up", "none")
    assert spec.max_catch_up == document.get("max_catch_up", 100)
    deadline = document.get("starting_deadline_s")
    assert spec.starting_deadline_s == (None if deadline is None else float(deadline))
    assert spec.task_type == document["task"]["type"]
    assert dict(spec.task_params) == expected_params(document["task"])
    if isinstance(spec.trigger, OneTimeTrigger):
        moment = datetime.fromisoformat(document["schedule"].strip())
        if moment.tzinfo is not None:
            assert spec.trigger.at == moment
    else:
        assert isinstance(spec.trigger, CronTrigger)
        assert spec.trigger.next_after(NOW) is not None  # a valid expression fires


@FUZZ
@given(valid_jobs(), st.data())
def test_valid_generated_jobs_load_and_round_trip(document, data):
    spec = outcome(data.draw(encoded(document)))
    assert isinstance(spec, JobSpec), (document, spec)
    check_round_trip(spec, document)


@examples(150)
@given(cron_expressions(), st.sampled_from(ZONES))
def test_valid_cron_expressions_fire_in_every_zone(expression, zone):
    document = {"job_id": "c", "schedule": expression, "timezone": zone,
                "task": {"type": "execute_command", "command": "true"}}
    spec = outcome(json.dumps(document).encode())
    assert isinstance(spec, JobSpec), (expression, spec)
    assert spec.trigger.next_after(NOW) is not None


@FUZZ
@given(timestamps(), st.sampled_from(ZONES))
def test_valid_timestamps_load_in_every_zone(text, zone):
    document = {"job_id": "t", "schedule": text, "timezone": zone,
                "task": {"type": "execute_command", "command": "true"}}
    spec = outcome(json.dumps(document).encode())
    assert isinstance(spec, JobSpec), (text, spec)
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:  # read in the zone: within a gap's width of the wall time
        wall = spec.trigger.at.astimezone(UTC).replace(tzinfo=None)
        assert abs(wall - moment) <= timedelta(hours=15)
    else:
        assert spec.trigger.at == moment


# -- 4. through `taskd validate` ------------------------------------------------------------

def validate(*paths: str):
    result = CliRunner().invoke(main, ["validate", "--timezone", ZONE, *paths])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exc_info)
    assert result.exit_code in (0, 1), (result.exit_code, result.output)
    return result


def write(directory: str, name: str, data: bytes) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def stderr_lines(result) -> list[str]:
    """stderr's lines, less the DST warnings of valid jobs (``FILE: warning: ...``)."""
    text = result.stderr
    assert text == "" or text.endswith("\n"), text
    lines = text.split("\n")[:-1] if text else []
    return [line for line in lines if ": warning: schedule " not in line]


@examples(150)
@given(ANY_BYTES)
def test_validate_a_fuzzed_file_exits_0_or_1_with_lines_naming_it(data):
    with tempfile.TemporaryDirectory() as directory:
        path = write(directory, "job.json", data)
        result = validate(path)
        expected = outcome(data, path)
    lines = stderr_lines(result)
    if isinstance(expected, JobSpec):
        assert result.exit_code == 0 and lines == [], result.output
        assert result.stdout == f"{path}: ok ({expected.job_id})\n"
    else:
        assert result.exit_code == 1 and lines == [f"{path}: {expected}"], result.output
        assert result.stdout == ""


@examples(100)
@given(valid_job_bytes())
# A DST warning once quoted a schedule with a line break in it: two lines.
@example(b'\xef\xbb\xbf{"job_id": "0", "schedule": "* 00,* * * *\\n", "task": {"type": '
         b'"execute_command", "command": "0"}, "timezone": "Europe/Berlin"}')
def test_validate_a_valid_generated_file_exits_0(data):
    with tempfile.TemporaryDirectory() as directory:
        path = write(directory, "valid.json", data)
        result = validate(path)
    assert result.exit_code == 0 and stderr_lines(result) == [], result.output


@examples(60)
@given(st.lists(ANY_BYTES | valid_job_bytes(), min_size=1, max_size=8))
def test_validate_a_directory_of_mixed_files(contents):
    with tempfile.TemporaryDirectory() as directory:
        paths = [write(directory, f"{index:02d}.json", data)
                 for index, data in enumerate(contents)]
        write(directory, "ignored.txt", b"\xff not a job")
        write(directory, ".hidden.json", b"\xff not a job")
        result = validate(directory)
        outcomes = [outcome(data, path) for path, data in zip(paths, contents, strict=True)]
    claimed: set[str] = set()
    bad: list[str] = []
    for path, result_of_file in zip(paths, outcomes, strict=True):
        if isinstance(result_of_file, str):
            bad.append(path)
        elif result_of_file.job_id in claimed:
            bad.append(path)  # a second claim of the same job_id
        else:
            claimed.add(result_of_file.job_id)
    lines = stderr_lines(result)
    for line in lines:
        assert any(line.startswith(f"{path}: ") for path in paths), line
    assert [line.split(": ", 1)[0] for line in lines] == bad
    assert result.exit_code == (1 if bad else 0), result.output
    assert len(result.stdout.splitlines()) == len(paths) - len(bad)
