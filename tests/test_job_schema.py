"""docs/job.schema.json against the job parser, which stays the authority.

Every job document in the parser's own test tables (and a few more below) goes through
both: one the parser accepts must be valid under the schema (an editor must never flag a
good file), and one it rejects must be invalid under the schema unless its reason is one
a JSON Schema cannot state; those reasons are listed in BEYOND_THE_SCHEMA, each with why.
A new parser rule without a schema rule therefore fails here. Hypothesis then puts
generated valid jobs and arbitrary values in every key through both.
"""

from __future__ import annotations

import functools
import grp
import json
import math
import os
import pwd
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError, validators

from supervisor.jobfiles.jobspec import (
    CATCH_UP_POLICIES,
    DEFAULT_MAX_CATCH_UP,
    KNOWN_KEYS,
    MAX_FILE_BYTES,
    MAX_MAX_CATCH_UP,
    OVERLAP_POLICIES,
    JobFileError,
    parse_job,
)
from supervisor.jobfiles.policy_keys import (
    HOOK_KEYS,
    MAX_ATTEMPTS,
    MAX_JITTER_S,
    MAX_MAX_CONCURRENT,
    POLICY_KEYS,
    RETRY_KEYS,
)
from tests import test_execute_command, test_http_request, test_jobspec
from tests.property_settings import examples
from tests.test_fuzz_job_files import (
    EXECUTE,
    HTTP,
    JSON_VALUES,
    PLACES,
    SPECIAL_FILES,
    placed,
    valid_jobs,
)
from workers.execute_command import _KNOWN_KEYS as COMMAND_KEYS
from workers.http_request import _KNOWN_KEYS as HTTP_KEYS
from workers.http_request import DEFAULT_TIMEOUT_S, METHODS, HttpRequest
from workers.params import is_unicode, show
from workers.task_type import TaskParamsError

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "docs" / "job.schema.json"
SCHEMA = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
FILE = "jobs.d/x.json"
TASK = {"type": "execute_command", "command": "true"}
JOB = {"job_id": "x", "schedule": "@daily", "task": TASK}
# An account any daemon may run a job as: its own (a root daemon may name any).
OWN_USER = pwd.getpwuid(os.geteuid()).pw_name
OWN_GROUP = grp.getgrgid(os.getegid()).gr_name


# -- the validator ------------------------------------------------------------------------

_TRAILING_DOLLAR = re.compile(r"(?<!\\)\$\Z")


@functools.cache
def _ecma(pattern: str) -> re.Pattern[str]:
    """A schema pattern as ECMA-262 reads it (JSON Schema's dialect), where ``$`` is the
    end of the string; Python's ``$`` also matches before a final newline, which would let
    ``"x\\n"`` through as a job_id. The schema only ever puts ``$`` last."""
    return re.compile(_TRAILING_DOLLAR.sub(r"\\Z", pattern))


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _ecma(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = validators.extend(Draft202012Validator, {"pattern": _pattern})
VALIDATOR = EcmaValidator(SCHEMA)


def schema_errors(document: Any) -> list[str]:
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
            for error in VALIDATOR.iter_errors(document)]


# -- the parser's verdict -------------------------------------------------------------------

def parser_reason(data: bytes) -> str | None:
    """None when the parser accepts the file, else its reason (the message less the file)."""
    try:
        parse_job(data, FILE, default_zone="UTC")
    except JobFileError as error:
        return error.reason
    return None


def decoded(data: bytes) -> Any:
    """The document a schema validator sees (only asked once the parser decoded it too)."""
    return json.loads(data.decode("utf-8").removeprefix("\ufeff"))


def value_at(document: Any, dotted: str) -> Any:
    """``document["task"]["timeout_s"]`` for ``"task.timeout_s"``; None where absent."""
    for key in dotted.split("."):
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def _not_finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return not math.isfinite(float(value))
    except OverflowError:
        return True


def _unprintable(document: Any, key: str) -> bool:
    """A string of the right length and without NUL that is not printable text."""
    value = value_at(document, key)
    if key == "env_file" and isinstance(value, str):
        value = value.removeprefix("-")
    return (isinstance(value, str) and 1 <= len(value) <= 128 and "\0" not in value
            and not value.isprintable())


def _url_beyond(url: Any) -> bool:
    """An http(s) URL whose fault is in its port, its IPv6 brackets, a host left empty
    beside a user or a port (``http://:80/``), or a lone surrogate."""
    if not isinstance(url, str) or not re.match(r"https?://", url, re.IGNORECASE):
        return False
    if not is_unicode(url):
        return True
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return True
    return parts.hostname is None and bool(parts.netloc)


def _schedule_beyond(document: Any, reason: str) -> bool:
    """What a schedule means: a field's values, names and steps, whether it can ever
    fire, a macro's name, a real date and time. The schema checks only its shape: a
    macro, a timestamp with a time of day, or 5 or 6 fields of cron characters."""
    schedule = value_at(document, "schedule")
    prefix = f"schedule {show(schedule)}: "
    return (isinstance(schedule, str) and reason.startswith(prefix)
            and not reason[len(prefix):].startswith(("expected 5 fields",
                                                     "a one-time schedule needs a time")))


@dataclass(frozen=True)
class Beyond:
    """A reason the parser rejects a file for that a JSON Schema cannot state."""

    why: str
    reason: str  # a regular expression the parser's reason starts with
    applies: Callable[[Any, str], bool] = lambda document, reason: True
    document: bool = True  # False: the schema never sees a document (it is no JSON)


BEYOND_THE_SCHEMA = [
    # Not a JSON document at all: there is nothing for a schema to validate.
    Beyond("bytes that are not UTF-8 are not JSON text", r"not UTF-8 text", document=False),
    Beyond("a duplicate key: a decoder keeps one of the two values, so a schema sees one "
           "object", r"not valid JSON: duplicate key", document=False),
    Beyond("not JSON (a syntax error, NaN or Infinity, a number of more than 4300 digits, "
           "nesting deeper than the decoder goes)", r"not valid JSON", document=False),
    # A JSON document, but the fault is in something a schema cannot see or compute.
    Beyond("the 1 MiB limit is on the file; a schema sees the decoded value",
           r"larger than 1 MiB"),
    Beyond("whether a time zone exists is the IANA database's question",
           r"timezone .*: unknown time zone",
           lambda document, reason: bool(value_at(document, "timezone"))),
    Beyond("what a schedule means (ranges, names, steps, can it ever fire, a real date)",
           r"schedule ", _schedule_beyond),
    Beyond("task types are plug-ins: the schema allows any other type with any keys",
           r"(task|on_\w+)\.type: unknown task type"),
    Beyond("retry.max_delay_s must be at least retry.delay_s: JSON Schema cannot compare "
           "two values (without delay_s, its default 10 is the schema's minimum)",
           r"retry\.max_delay_s: must be at least retry\.delay_s",
           lambda document, reason: "delay_s" in value_at(document, "retry")),
    Beyond("a lone surrogate (\\ud800) is valid JSON but no UTF-8 text; a pattern that "
           "excluded it would also exclude every emoji in an ECMA-262 engine",
           r".*must be valid Unicode text"),
    Beyond("the same, in keys whose message does not say which rule failed",
           r"(env_file|concurrency_group): must be a",
           lambda document, reason: not is_unicode(str(value_at(document,
                                                                reason.split(":")[0])))),
    Beyond("printable (str.isprintable) follows the Unicode database; no pattern says it",
           r"(concurrency_group: must be a name of 1-128 printable|env_file: must be a path)",
           lambda document, reason: _unprintable(document, reason.split(":")[0])),
    Beyond("whether an account exists, and whether this daemon may run as it, is the "
           "host's question (it is asked again at each run)",
           r"(user|group)( .*: no such | .*: cannot list |: only a daemon running as root)"),
    Beyond("JSON Schema counts 2.0 as an integer; the parser wants 2",
           r"(max_catch_up|max_concurrent|retry\.attempts): must be a whole number",
           lambda document, reason: isinstance(value := value_at(
               document, reason.split(":")[0]), float) and value.is_integer()),
    Beyond("a number beyond any float (1e400 is read as infinity); a schema bound that "
           "excluded it would also exclude some 309-digit numbers the parser takes",
           r"((task|on_\w+|retry)\.)?\w+: must be a",
           lambda document, reason: _not_finite(value_at(document, reason.split(":")[0]))),
    Beyond("a URL's port, IPv6 brackets or empty host beside a port: urllib's parse",
           r"(task|on_\w+)\.url: must be an http or https URL",
           lambda document, reason: _url_beyond(value_at(
               document, reason.split(":")[0]))),
]


def beyond(document: Any, reason: str) -> Beyond | None:
    return next((entry for entry in BEYOND_THE_SCHEMA
                 if re.match(entry.reason, reason) and entry.applies(document, reason)), None)


# -- the cases: the parser's tables, and what they do not hold -------------------------------

def job(**keys: Any) -> dict[str, Any]:
    return {**JOB, **keys}


def encode(document: Any) -> bytes:
    return document if isinstance(document, bytes) else json.dumps(document).encode()


def task_cases(module: Any, type_name: str) -> Iterator[tuple[str, Any]]:
    """A task type's VALID and INVALID params, as a job's task and as a hook."""
    for table in ("VALID", "INVALID"):
        for index, (params, _) in enumerate(getattr(module, table)):
            task = {"type": type_name, **params} if isinstance(params, dict) else params
            name = f"{module.__name__.rsplit('.', 1)[1]}.{table}[{index}]"
            yield f"{name} as task", job(task=task)
            yield f"{name} as on_failure", job(on_failure=task)


# Cases the tables above do not hold: what the schema says beyond a key's own type.
MORE = [
    # null is the same as leaving the key out, for these keys only
    job(description=None, timeout_s=None, starting_deadline_s=None, retry=None,
        max_concurrent=None, concurrency_group=None, user=None, group=None, env_file=None),
    job(timezone=None), job(enabled=None), job(jitter_s=None), job(jitter_fixed=None),
    job(max_catch_up=None), job(catch_up=None), job(on_failure=None),
    job(task={**TASK, "cwd": None}),
    # rules between keys
    job(overlap="skip", max_concurrent=1), job(overlap="allow", max_concurrent=5),
    job(overlap="replace", max_concurrent=10_000), job(max_concurrent=10_001),
    job(group=None), job(user="nobody", group="nogroup"), job(user=None, group="wheel"),
    job(jitter_s=0.5, jitter_fixed=True), job(jitter_s=0, jitter_fixed=True),
    job(jitter_fixed=False), job(jitter_s=604800), job(jitter_s=604800.5),
    job(retry={"attempts": 2, "max_delay_s": 10}), job(retry={"attempts": 2, "max_delay_s": 9}),
    job(retry={"attempts": 2, "delay_s": 5, "max_delay_s": 5}),
    job(retry={"attempts": 100, "backoff": 1, "on_lost": False}),
    job(retry={"attempts": 101}), job(retry={"attempts": 2, "_c": 1}),
    # shapes of keys
    job(job_id="x\n"), job(job_id="A.b_c-9" * 18 + "xx"), job(user="nobody\n"),
    job(user="x" * 32), job(user="x" * 33), job(user="host$"), job(user="_svc"),
    job(env_file="/etc/x"), job(env_file="-"), job(env_file="--/x"), job(env_file="/a\0b"),
    job(env_file="-/a\u2028b"), job(env_file="/\ud800"),
    job(concurrency_group="x" * 128), job(concurrency_group="x" * 129),
    job(concurrency_group="a\u0007"), job(concurrency_group="\ud800"),
    job(schedule="* * * *"), job(schedule="* * * * * * *"), job(schedule=""),
    job(schedule="@every 5m"), job(schedule=" 2025-10-26 "), job(schedule="2025-10-26 15:00"),
    job(schedule="*\u3000*\x1c*\u00a0*\u2028*"), job(schedule="*/5 * * * *\n"),
    job(schedule="0 0 * * MON-FRI"), job(schedule="0 0 ? * *"), job(schedule="0 0 L * *"),
    job(max_catch_up=2.0), job(max_concurrent=3.0), job(retry={"attempts": 3.0}),
    job(task={"type": "http_request", "url": "http://h/", "method": "po\u017ft"}),
    job(task={"type": "http_request", "url": "http://h/", "method": "OPT\u0131ONS"}),
    job(task={"type": "http_request", "url": "http://h/", "headers": {"A": "x\n"}}),
    job(task={"type": "http_request", "url": "http://:80/"}),
    job(task={"type": "http_request", "url": "http://user@/"}),
    job(task={"type": "http_request", "url": "http://[::1/"}),
    job(task={"type": "http_request", "url": "hTTpS://h\u2028/"}),
    job(task={**TASK, "env": {"A": "1\n"}, "cwd": "/\n"}),
    job(task={"type": "a_plug_in", "anything": [1, {"goes": None}]}),
    job(on_success={"type": "a_plug_in"}), job(on_success={"type": "http_request"}),
    # every key at once
    job(description="d", timezone="Europe/Berlin", timeout_s=2.5, overlap="replace",
        enabled=False, catch_up="latest", max_catch_up=7, starting_deadline_s=0,
        retry={"attempts": 3, "delay_s": 5, "backoff": 1.5, "max_delay_s": 40, "on_lost": True},
        on_failure=TASK, on_success={"type": "http_request", "url": "https://h/x"},
        on_recovery={**TASK, "_c": 1}, on_give_up={**TASK, "env": {"A": ""}},
        max_concurrent=2, concurrency_group="db", jitter_s=30, jitter_fixed=True,
        user=OWN_USER, group=OWN_GROUP, env_file="-/etc/default/x", _note=[1]),
    # an editor's "$schema" key is an unknown key to the parser today, so to the schema too
    job(**{"$schema": "https://taskd.invalid/job.schema.json"}),
    # the file-only limits
    job(description="x" * MAX_FILE_BYTES),
    b'{"job_id": "x", "schedule": "@daily", "task": {"type": "execute_command", '
    b'"command": "true"}, "timeout_s": 1e400}',
]


def all_cases() -> Iterator[tuple[str, bytes]]:
    for index, (document, _) in enumerate(test_jobspec.ERRORS):
        yield f"test_jobspec.ERRORS[{index}]", encode(document)
    for module, type_name in ((test_execute_command, "execute_command"),
                              (test_http_request, "http_request")):
        for name, document in task_cases(module, type_name):
            yield name, encode(document)
    for index, data in enumerate(SPECIAL_FILES):
        yield f"test_fuzz_job_files.SPECIAL_FILES[{index}]", data
    yield "test_fuzz_job_files.EXECUTE", encode(EXECUTE)
    yield "test_fuzz_job_files.HTTP", encode(HTTP)
    for path in sorted((ROOT / "conf" / "jobs.d").glob("*.json")):
        yield f"conf/jobs.d/{path.name}", path.read_bytes()
    for index, document in enumerate(MORE):
        yield f"MORE[{index}]", encode(document)


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    reason: str | None  # the parser's; None: accepted
    beyond: Beyond | None

    @functools.cached_property
    def document(self) -> Any:
        return decoded(self.data)


def _case(name: str, data: bytes) -> Case:
    reason = parser_reason(data)
    if reason is None:
        return Case(name, data, None, None)
    entry = next((entry for entry in BEYOND_THE_SCHEMA
                  if not entry.document and re.match(entry.reason, reason)), None)
    return Case(name, data, reason, entry or beyond(decoded(data), reason))


CASES = [_case(name, data) for name, data in all_cases()]
ACCEPTED = [case for case in CASES if case.reason is None]
REJECTED = [case for case in CASES if case.reason is not None and case.beyond is None]


def ids(cases: list[Case]) -> list[str]:
    return [case.name for case in cases]


@pytest.mark.parametrize("case", ACCEPTED, ids=ids(ACCEPTED))
def test_a_file_the_parser_accepts_is_valid_under_the_schema(case: Case) -> None:
    assert schema_errors(case.document) == []


@pytest.mark.parametrize("case", REJECTED, ids=ids(REJECTED))
def test_a_file_the_parser_rejects_is_invalid_under_the_schema(case: Case) -> None:
    assert schema_errors(case.document), (
        f"the parser says {case.reason!r}; the schema has no rule for it (or add the reason "
        f"to BEYOND_THE_SCHEMA if no JSON Schema can state it)")


def test_the_cases_cover_acceptance_rejection_and_every_key() -> None:
    assert len(ACCEPTED) >= 20 and len(REJECTED) >= 100
    for key in KNOWN_KEYS:
        assert any(key in case.document for case in ACCEPTED if isinstance(case.document, dict))
        assert any(key in case.document for case in REJECTED if isinstance(case.document, dict))


@pytest.mark.parametrize("entry", BEYOND_THE_SCHEMA, ids=lambda entry: entry.reason)
def test_every_reason_beyond_the_schema_is_needed(entry: Beyond) -> None:
    """Each entry is some case's reason; and unless it is about text that is no JSON, the
    schema accepts at least one such case: the entry hides a rule the schema lacks."""
    cases = [case for case in CASES if case.beyond is entry]
    assert cases, "no case is rejected for this reason: drop the entry or add a case"
    if entry.document:
        assert any(schema_errors(case.document) == [] for case in cases), [
            case.name for case in cases]
    else:
        for case in cases:
            with pytest.raises((ValueError, RecursionError)):  # e.g. JSONDecodeError
                json.loads(case.data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                           parse_constant=_no_constant)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({key for key, _ in pairs}) != len(pairs):
        raise ValueError("duplicate key")
    return dict(pairs)


def _no_constant(name: str) -> None:
    raise ValueError(name)


# -- the schema's own form --------------------------------------------------------------------

def test_the_schema_is_a_draft_2020_12_schema() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["title"] and SCHEMA["description"] and SCHEMA["$id"]
    for example in SCHEMA["examples"]:
        assert parser_reason(encode(example)) is None
        assert schema_errors(example) == []


def test_every_known_key_has_a_property_and_every_property_is_a_known_key() -> None:
    assert set(SCHEMA["properties"]) == set(KNOWN_KEYS)
    assert set(SCHEMA["required"]) == {"job_id", "schedule", "task"}
    assert SCHEMA["additionalProperties"] is False
    assert list(SCHEMA["patternProperties"]) == ["^_"]
    assert set(SCHEMA["properties"]["retry"]["properties"]) == set(RETRY_KEYS)
    defs = SCHEMA["$defs"]
    assert set(defs["execute_command"]["properties"]) == {"type", *COMMAND_KEYS}
    assert set(defs["http_request"]["properties"]) == {"type", *HTTP_KEYS}
    for key in ("task", *HOOK_KEYS):
        assert SCHEMA["properties"][key]["$ref"] == "#/$defs/task"


def _properties(schema: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property a document can have, with its place; not the fragments inside
    if/then/not, which only restate a property's bounds."""
    if not isinstance(schema, dict):
        return
    for name, value in schema.get("properties", {}).items():
        yield f"{where}/{name}", value
        yield from _properties(value, f"{where}/{name}")
    for name, value in schema.get("$defs", {}).items():
        yield from _properties(value, f"{where}/$defs/{name}")


def test_every_property_has_a_description() -> None:
    places = dict(_properties(SCHEMA))
    assert len(places) >= len(KNOWN_KEYS) + len(RETRY_KEYS) + 9
    assert [place for place, schema in places.items() if not schema.get("description")] == []


def _prop(*path: str) -> dict[str, Any]:
    schema = SCHEMA
    for key in path:
        schema = schema[key]
    return schema


P = ("properties",)
RETRY = (*P, "retry", "properties")
COMMAND = ("$defs", "execute_command", "properties")
REQUEST = ("$defs", "http_request", "properties")
MINIMAL = parse_job(encode(JOB), FILE, default_zone="UTC")
MINIMAL_RETRY = parse_job(encode(job(retry={"attempts": 2})), FILE, default_zone="UTC")
MINIMAL_REQUEST = HttpRequest.validate({"url": "http://h/"})


@pytest.mark.parametrize(("path", "keyword", "expected"), [
    ((*P, "overlap"), "enum", list(OVERLAP_POLICIES)),
    ((*P, "catch_up"), "enum", list(CATCH_UP_POLICIES)),
    ((*P, "max_catch_up"), "maximum", MAX_MAX_CATCH_UP),
    ((*P, "max_concurrent"), "maximum", MAX_MAX_CONCURRENT),
    ((*P, "jitter_s"), "maximum", MAX_JITTER_S),
    ((*RETRY, "attempts"), "maximum", MAX_ATTEMPTS),
    ((*REQUEST, "method"), "examples", list(METHODS)),
    # the defaults are the parser's
    ((*P, "overlap"), "default", MINIMAL.overlap),
    ((*P, "enabled"), "default", MINIMAL.enabled),
    ((*P, "catch_up"), "default", MINIMAL.catch_up),
    ((*P, "max_catch_up"), "default", MINIMAL.max_catch_up),
    ((*P, "max_catch_up"), "default", DEFAULT_MAX_CATCH_UP),
    ((*P, "jitter_s"), "default", MINIMAL.policy.jitter_s),
    ((*P, "jitter_fixed"), "default", MINIMAL.policy.jitter_fixed),
    ((*RETRY, "delay_s"), "default", MINIMAL_RETRY.policy.retry.delay_s),
    ((*RETRY, "backoff"), "default", MINIMAL_RETRY.policy.retry.backoff),
    ((*RETRY, "max_delay_s"), "default", MINIMAL_RETRY.policy.retry.max_delay_s),
    ((*RETRY, "on_lost"), "default", MINIMAL_RETRY.policy.retry.on_lost),
    ((*COMMAND, "env"), "default", MINIMAL.task_params["env"]),
    ((*REQUEST, "method"), "default", MINIMAL_REQUEST["method"]),
    ((*REQUEST, "headers"), "default", MINIMAL_REQUEST["headers"]),
    ((*REQUEST, "timeout_s"), "default", DEFAULT_TIMEOUT_S),
])
def test_bounds_enums_and_defaults_are_the_parsers(path: tuple[str, ...], keyword: str,
                                                   expected: Any) -> None:
    assert _prop(*path)[keyword] == expected


# -- the text rules, exhaustively where the parser leans on Python's Unicode tables --------------

WHITESPACE = [chr(code) for code in range(sys.maxunicode + 1) if chr(code).isspace()]


@pytest.mark.parametrize("space", WHITESPACE, ids=[f"U+{ord(c):04X}" for c in WHITESPACE])
def test_every_whitespace_the_parser_splits_cron_fields_on_is_whitespace_to_the_schema(
        space: str) -> None:
    for schedule in (space.join("*/5 * * * *".split()), f"{space}@daily{space}",
                     f"{space}2030-01-01T00:00:00Z{space}", f"{space}0 0 1 * * *{space}"):
        assert parser_reason(encode(job(schedule=schedule))) is None, repr(schedule)
        assert schema_errors(job(schedule=schedule)) == [], repr(schedule)


def test_every_method_spelling_the_parser_takes_is_valid() -> None:
    """Any case of ASCII letters, and only that (not the letters whose ``.upper()`` is an
    ASCII capital, such as U+017F, U+0131 or U+FB05)."""
    method_schema = EcmaValidator(_prop(*REQUEST, "method"))  # just the key
    for method in METHODS:
        for mask in range(2 ** len(method)):
            spelling = "".join(char.lower() if mask >> n & 1 else char
                               for n, char in enumerate(method))
            assert HttpRequest.validate({"url": "http://h/", "method": spelling})
            assert method_schema.is_valid(spelling), spelling
    for method in ("FETCH", "GE", "GETS", " GET", "get\n", "P\u00d3ST", "\u0130",
                   "po\u017ft", "OPT\u0131ONS", "po\ufb05"):
        assert not method_schema.is_valid(method), method
        with pytest.raises(TaskParamsError):
            HttpRequest.validate({"url": "http://h/", "method": method})


# -- properties: generated documents through both ------------------------------------------------

# Generating a valid job is the slow part (~20 ms): fewer of those than of single values.
PROPERTY = settings(max_examples=examples(120), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEWER = settings(PROPERTY, max_examples=examples(40))

_SECONDS = st.integers(0, 10**6) | st.floats(0, 1e9)


VALID_TASKS = st.sampled_from(
    [{"type": "execute_command", **params} for params, _ in test_execute_command.VALID]
    + [{"type": "http_request", **params} for params, _ in test_http_request.VALID])


@st.composite
def policy_keys(draw: Any, overlap: str) -> dict[str, Any]:
    """A valid value for a random few of the policy keys."""
    keys: dict[str, Any] = {}
    if draw(st.booleans()):
        retry: dict[str, Any] = {"attempts": draw(st.integers(1, MAX_ATTEMPTS))}
        delay = draw(st.none() | _SECONDS)
        if delay is not None:
            retry["delay_s"] = delay
        if draw(st.booleans()):
            retry["max_delay_s"] = draw(st.floats(max(delay or 0, 10), 1e9))
        if draw(st.booleans()):
            retry["backoff"] = draw(st.integers(1, 10) | st.floats(1, 100))
        if draw(st.booleans()):
            retry["on_lost"] = draw(st.booleans())
        keys["retry"] = retry
    for hook in HOOK_KEYS:
        if draw(st.integers(0, 3)) == 0:
            keys[hook] = draw(VALID_TASKS)
    if draw(st.booleans()):
        most = 1 if overlap == "skip" else MAX_MAX_CONCURRENT
        keys["max_concurrent"] = draw(st.none() | st.integers(1, most))
    if draw(st.booleans()):
        printable = st.characters(categories=("L", "M", "N", "P", "S"), include_characters=" ")
        keys["concurrency_group"] = draw(st.text(printable, min_size=1, max_size=40))
    if draw(st.booleans()):
        keys["jitter_s"] = draw(st.integers(0, 604800) | st.floats(0, MAX_JITTER_S))
        if keys["jitter_s"] and draw(st.booleans()):
            keys["jitter_fixed"] = True
    if draw(st.booleans()):
        keys["user"] = OWN_USER  # the parser looks the account up
        if draw(st.booleans()):
            keys["group"] = OWN_GROUP
    if draw(st.booleans()):
        keys["env_file"] = draw(st.sampled_from(["", "-"])) + "/" + draw(st.text(
            st.characters(categories=("L", "M", "N", "P", "S"), include_characters=" "),
            max_size=20))
    return keys


@st.composite
def valid_documents(draw: Any) -> dict[str, Any]:
    document = draw(valid_jobs())
    document.update(draw(policy_keys(document.get("overlap", "allow"))))
    return document


@FEWER
@given(valid_documents())
def test_generated_valid_jobs_are_valid_under_the_schema(document: dict[str, Any]) -> None:
    assert parser_reason(encode(document)) is None, document
    assert schema_errors(document) == []


def check_agreement(document: Any) -> None:
    """Accepted: valid. Rejected for a reason the schema can state: invalid."""
    data = encode(document)
    reason = parser_reason(data)
    errors = schema_errors(decoded(data))
    if reason is None:
        assert errors == [], (document, errors)
    elif beyond(decoded(data), reason) is None:
        assert errors, (document, reason)


RETRYING = {**EXECUTE, "overlap": "allow", "retry": {"attempts": 3, "delay_s": 5}}
AS_USER = {**HTTP, "overlap": "allow", "user": OWN_USER, "jitter_s": 5}
MORE_PLACES = ([(RETRYING, ("retry", key)) for key in (*RETRY_KEYS, "_c")]
               + [(base, (key,)) for base in (RETRYING, AS_USER) for key in POLICY_KEYS]
               + [(AS_USER, (hook, "url")) for hook in HOOK_KEYS[:1]])
BOUNDARIES = st.sampled_from([
    0, 1, 2, 9, 10, 99, 100, 101, 127, 128, 129, 10_000, 10_001, 100_000, 100_001, 604_800,
    604_800.5, 0.5, 1.0, 2.0, 1e-9, -1e-9, -0.0, 10**400, -(10**400), "x" * 128, "x" * 129,
    "/abs", "-/abs", "rel", "nobody", "a b", "POST", "post", "OPTIONS", "http://h:1/",
    "http://:1/", "HTTPS://h/", "http:/h", {"type": "a_plug_in"}, {"attempts": 1},
    {"attempts": 1, "delay_s": 20, "max_delay_s": 15}, {"type": "execute_command"}, "@daily",
    "* * * *", "* * * * * *", "2030-01-01", "2030-01-01 00:00", "\u3000", "\ud800", "a\n",
])


@PROPERTY
@given(st.sampled_from([(base, path) for base, path, _ in PLACES] + MORE_PLACES),
       JSON_VALUES | BOUNDARIES)
def test_the_schema_agrees_with_the_parser_on_any_value_in_any_key(
        place: tuple[dict[str, Any], tuple[str, ...]], value: Any) -> None:
    base, path = place
    if value_at(base, ".".join(path[:-1])) is None and len(path) > 1:
        base = placed(base, path[:-1], {"type": "http_request"} if path[0] in HOOK_KEYS else {})
    check_agreement(placed(base, path, value))


_SCHEDULE_CHARS = st.sampled_from([*"0123456789*/-,@ \tJANMOSUaenoWL?#:TZ+.", "\u3000",
                                   "\x1c", "\u00a0", "\ufeff", "\u200b", "\n", "\u0663"])


@settings(PROPERTY, max_examples=examples(100))
@given(st.text(_SCHEDULE_CHARS, max_size=30), st.sampled_from(["UTC", "Europe/Berlin"]))
def test_the_schema_agrees_with_the_parser_on_schedule_like_text(schedule: str,
                                                                 zone: str) -> None:
    check_agreement(job(schedule=schedule, timezone=zone))

