"""Job file parsing: a table for every rule and every error message."""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest

from supervisor.jobfiles.jobspec import (
    MAX_FILE_BYTES,
    JobFileError,
    _read_all,
    parse_job,
    read_job_file,
)
from supervisor.jobfiles.policy_keys import NO_POLICY, RetryPolicy
from supervisor.timing.triggers import CronTrigger, OneTimeTrigger, StartTrigger
from supervisor.timing.zones import UTC

FILE = "jobs.d/x.json"
TASK = {"type": "execute_command", "command": "true"}


def job(**overrides):
    document = {"job_id": "x", "schedule": "*/5 * * * *", "task": TASK}
    document.update(overrides)
    return {k: v for k, v in document.items() if v is not DROP}


DROP = object()


def parse(document, zone="UTC"):
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    return parse_job(data, FILE, default_zone=zone)


def test_minimal_job_has_contract_defaults():
    spec = parse(job())
    assert spec.job_id == "x" and spec.file == FILE
    assert spec.overlap == "allow" and spec.enabled is True
    assert spec.timeout_s is None and spec.description is None
    assert (spec.catch_up, spec.max_catch_up, spec.starting_deadline_s) == ("none", 100, None)
    assert spec.timezone == "UTC" and isinstance(spec.trigger, CronTrigger)
    assert spec.task_type == "execute_command"
    assert spec.task_params["command"] == "true"


def test_every_key_is_read():
    spec = parse(job(description="d", timezone="Europe/Berlin", timeout_s=2.5,
                     overlap="skip", enabled=False, _note="comment"))
    assert (spec.description, spec.timezone, spec.timeout_s, spec.overlap, spec.enabled) == (
        "d", "Europe/Berlin", 2.5, "skip", False)
    spec = parse(job(catch_up="all", max_catch_up=7, starting_deadline_s=3600))
    assert (spec.catch_up, spec.max_catch_up, spec.starting_deadline_s) == ("all", 7, 3600.0)
    assert parse(job(starting_deadline_s=0)).starting_deadline_s == 0.0


def test_every_policy_key_is_read():
    hook = {"type": "execute_command", "command": "notify"}
    spec = parse(job(retry={"attempts": 3, "delay_s": 5, "backoff": 3, "max_delay_s": 40,
                            "on_lost": True},
                     on_failure=hook, on_success=hook, on_recovery=hook, on_give_up=hook,
                     overlap="replace", max_concurrent=2, concurrency_group="db",
                     jitter_s=30, jitter_fixed=True, user="nobody", group="nogroup",
                     env_file="-/etc/default/x"))
    policy = spec.policy
    assert policy.retry == RetryPolicy(3, 5.0, 3.0, 40.0, True)
    assert [h.name for h in policy.hooks] == ["on_failure", "on_success", "on_recovery",
                                              "on_give_up"]
    assert policy.hook("on_failure").task_params["command"] == "notify"
    assert (spec.overlap, policy.max_concurrent, policy.concurrency_group) == (
        "replace", 2, "db")
    assert (policy.jitter_s, policy.jitter_fixed) == (30.0, True)
    assert (policy.user, policy.group, policy.env_file) == ("nobody", "nogroup",
                                                            "-/etc/default/x")


def test_retry_defaults_and_delays():
    retry = parse(job(retry={"attempts": 4})).policy.retry
    assert (retry.delay_s, retry.backoff, retry.max_delay_s, retry.on_lost) == (
        10.0, 2.0, 300.0, False)
    assert [retry.delay_before(attempt) for attempt in (2, 3, 4)] == [10.0, 20.0, 40.0]
    capped = RetryPolicy(100, delay_s=100, backoff=10, max_delay_s=500)
    assert [capped.delay_before(n) for n in (2, 3, 50)] == [100.0, 500.0, 500.0]


def test_jobs_without_policy_keys_share_one_policy_object():
    assert parse(job()).policy is NO_POLICY
    assert parse(job(job_id="y", timeout_s=3)).policy is NO_POLICY


@pytest.mark.parametrize("schedule", ["@reboot", "@start", "@REBOOT", " @start "])
def test_start_schedules(schedule):
    spec = parse(job(schedule=schedule))
    assert spec.at_start and isinstance(spec.trigger, StartTrigger)
    assert spec.trigger.next_after(datetime(2026, 1, 1, tzinfo=UTC)) is None


def test_default_zone_comes_from_the_daemon():
    assert parse(job(), zone="America/New_York").timezone == "America/New_York"


@pytest.mark.parametrize(
    ("schedule", "zone", "expected"),
    [
        ("2025-10-26T15:00:00Z", "UTC", "2025-10-26T15:00:00+00:00"),
        ("2025-10-26T15:00:00+02:00", "UTC", "2025-10-26T13:00:00+00:00"),
        ("2025-10-26T15:00:00", "Europe/Berlin", "2025-10-26T14:00:00+00:00"),
        # A naive instant repeated by fall-back is its first pass; one skipped by
        # spring-forward is the first instant after the gap (cronie's rules).
        ("2026-10-25T02:30:00", "Europe/Berlin", "2026-10-25T00:30:00+00:00"),
        ("2026-03-29T02:30:00", "Europe/Berlin", "2026-03-29T01:00:00+00:00"),
        ("2025-10-26 15:00:00.5Z", "UTC", "2025-10-26T15:00:00.500000+00:00"),
    ],
)
def test_one_time_schedules(schedule, zone, expected):
    spec = parse(job(schedule=schedule), zone=zone)
    assert isinstance(spec.trigger, OneTimeTrigger) and spec.one_time
    assert spec.trigger.at.isoformat() == expected


def test_identical_cron_schedules_share_one_trigger():
    first = parse(job(schedule="0 1 * * *"))
    second = parse(job(job_id="y", schedule="0 1 * * *"))
    other_zone = parse(job(schedule="0 1 * * *", timezone="Asia/Tokyo"))
    assert first.trigger is second.trigger
    assert first.trigger is not other_zone.trigger


def test_unchanged_content_gives_an_equal_spec():
    assert parse(job(timeout_s=3)) == parse(job(timeout_s=3))
    assert parse(job(timeout_s=3)) != parse(job(timeout_s=4))


SAME_BYTES = json.dumps(job()).encode()


@pytest.mark.parametrize(("left", "right", "same"), [
    ((SAME_BYTES, "UTC"), (SAME_BYTES, "UTC"), True),
    # Any byte is a new version, even one JSON ignores: the nodes' files differ.
    ((SAME_BYTES, "UTC"), (SAME_BYTES + b"\n", "UTC"), False),
    ((json.dumps(job(timeout_s=1)).encode(), "UTC"),
     (json.dumps(job(timeout_s=2)).encode(), "UTC"), False),
    # Without its own timezone a job is read in its node's default zone ...
    ((SAME_BYTES, "UTC"), (SAME_BYTES, "Europe/Paris"), False),
    # ... with one, the default plays no part.
    ((json.dumps(job(timezone="Asia/Tokyo")).encode(), "UTC"),
     (json.dumps(job(timezone="Asia/Tokyo")).encode(), "Europe/Paris"), True),
])
def test_a_version_is_the_files_bytes_and_the_zone_they_are_read_in(left, right, same):
    one, other = (parse_job(data, FILE, default_zone=zone, versioned=True)
                  for data, zone in (left, right))
    assert (one.version == other.version) is same
    assert len(one.version) == 12 and int(one.version, 16) >= 0
    assert (one == other) is same  # a new version is a changed spec: it is published


def test_a_spec_read_without_version_has_none():
    assert parse(job()).version is None


ERRORS = [
    (b"\xff\xfe{}", 'not UTF-8 text (invalid byte at offset 0)'),
    (b'{"job_id": "x",', "not valid JSON: Expecting property name enclosed in double quotes"
                        " (line 1, column 16)"),
    (b"[1, 2]", "expected a JSON object at the top level, got array"),
    (b'"text"', "expected a JSON object at the top level, got string"),
    (b'{"job_id": "x", "job_id": "y"}', 'not valid JSON: duplicate key "job_id"'),
    (b'{"timeout_s": NaN}', "not valid JSON: NaN is not a number JSON allows"),
    (job(timout_s=3), 'unknown key "timout_s" (did you mean "timeout_s"?); keys starting '
                      'with "_" are free for comments'),
    (job(job_id=DROP), "job_id: required key is missing"),
    (job(schedule=DROP), "schedule: required key is missing"),
    (job(task=DROP), "task: required key is missing"),
    (job(job_id="a b"), 'job_id "a b": must be 1-128 characters from A-Z a-z 0-9 . _ -'),
    (job(job_id=""), 'job_id "": must be 1-128 characters from A-Z a-z 0-9 . _ -'),
    (job(job_id="x" * 129), "job_id \"" + "x" * 56 + "...: must be 1-128 characters from "
                            "A-Z a-z 0-9 . _ -"),
    (job(job_id=7), "job_id 7: must be 1-128 characters from A-Z a-z 0-9 . _ -"),
    (job(schedule="61 * * * *"), 'schedule "61 * * * *": minute 61 is out of range 0-59'),
    (job(schedule="0 0 30 2 *"), 'schedule "0 0 30 2 *": can never fire: day-of-month 30 '
                                 "does not occur in Feb"),
    (job(schedule=5), "schedule 5: must be a string (a cron expression or an ISO 8601 "
                      "timestamp)"),
    (job(schedule="2025-13-40T00:00:00Z"), 'schedule "2025-13-40T00:00:00Z": not a valid '
                                           "ISO 8601 timestamp (expected e.g. "
                                           "2025-10-26T15:00:00Z)"),
    (job(schedule="2025-10-26"), 'schedule "2025-10-26": a one-time schedule needs a time '
                                 "of day (e.g. 2025-10-26T00:00:00Z)"),
    (job(timezone="Mars/Base"), "timezone \"Mars/Base\": unknown time zone 'Mars/Base' "
                                "(expected an IANA name such as 'Europe/Berlin' or 'UTC')"),
    (job(timezone=1), "timezone 1: must be a string"),
    (job(task="echo"), 'task: must be an object with a "type" key'),
    (job(task={"command": "x"}), 'task: must be an object with a "type" key'),
    (job(task={"type": 3}), "task.type 3: must be a string"),
    (job(task={"type": "nope"}), "task.type: unknown task type 'nope' (known: "),
    (job(task={"type": "execute_command"}), "task.command: required key is missing"),
    (job(task={"type": "execute_command", "command": ""}),
     'task.command: must be a non-empty string, got ""'),
    (job(timeout_s=0), "timeout_s: must be a positive number of seconds, got 0"),
    (job(timeout_s=-1), "timeout_s: must be a positive number of seconds, got -1"),
    (job(timeout_s="5"), 'timeout_s: must be a positive number of seconds, got "5"'),
    (job(timeout_s=True), "timeout_s: must be a positive number of seconds, got true"),
    (job(overlap="never"), 'overlap: must be "allow" or "skip" or "replace", got "never"'),
    (job(overlap=None), 'overlap: must be "allow" or "skip" or "replace", got null'),
    (job(retry=3), 'retry: must be an object such as {"attempts": 3}, got 3'),
    (job(retry={}), "retry.attempts: required key is missing (how many runs in all, the "
                    "first included)"),
    (job(retry={"attempts": 0}), "retry.attempts: must be a whole number from 1 to 100 (the "
                                 "first run included), got 0"),
    (job(retry={"attempts": 2, "delay": 5}), 'retry: unknown key "delay" (known: attempts, '
                                             "delay_s, backoff, max_delay_s, on_lost)"),
    (job(retry={"attempts": 2, "delay_s": -1}),
     "retry.delay_s: must be a number of seconds, 0 or more, got -1"),
    (job(retry={"attempts": 2, "backoff": 0.5}),
     "retry.backoff: must be a number, 1 or more, got 0.5"),
    (job(retry={"attempts": 2, "delay_s": 60, "max_delay_s": 10}),
     "retry.max_delay_s: must be at least retry.delay_s (60), got 10"),
    (job(retry={"attempts": 2, "on_lost": "yes"}),
     'retry.on_lost: must be true or false, got "yes"'),
    (job(on_failure="mail root"), 'on_failure: must be an object with a "type" key'),
    (job(on_success={"type": "nope"}), "on_success.type: unknown task type 'nope' (known: "),
    (job(on_give_up={"type": "execute_command"}), "on_give_up.command: required key is "
                                                  "missing"),
    (job(on_recovery={"type": "execute_command", "command": "x", "cmd": 1}),
     'on_recovery: unknown key "cmd"'),
    (job(max_concurrent=0), "max_concurrent: must be a whole number from 1 to 10,000, got 0"),
    (job(max_concurrent=True),
     "max_concurrent: must be a whole number from 1 to 10,000, got true"),
    (job(overlap="skip", max_concurrent=2),
     'max_concurrent: overlap "skip" runs one at a time; with max_concurrent 2 use '
     'overlap "allow" (it skips beyond the limit)'),
    (job(concurrency_group=""), 'concurrency_group: must be a name of 1-128 printable '
                                'characters, got ""'),
    (job(concurrency_group=["a"]), 'concurrency_group: must be a name of 1-128 printable '
                                   'characters, got ["a"]'),
    (job(jitter_s=-1), "jitter_s: must be a number of seconds from 0 to 604800 (a week), "
                       "got -1"),
    (job(jitter_s="5m"), 'jitter_s: must be a number of seconds from 0 to 604800 (a week), '
                         'got "5m"'),
    (job(jitter_fixed=1, jitter_s=5), "jitter_fixed: must be true or false, got 1"),
    (job(jitter_fixed=True), "jitter_fixed: needs jitter_s (the range the fixed offset is "
                             "drawn from)"),
    (job(user="bad name"), 'user: must be an account name, got "bad name"'),
    (job(user=0), "user: must be an account name, got 0"),
    (job(group="wheel"), "group: needs user (the account the command runs as)"),
    (job(user="root", group="a b"), 'group: must be a group name, got "a b"'),
    (job(env_file=""), 'env_file: must be a path, got ""'),
    (job(env_file=7), "env_file: must be a path, got 7"),
    (job(env_file="vars.env"), "env_file vars.env: must be an absolute path"),
    (job(user="no-such-user-x"), 'user "no-such-user-x": no such user'),
    (job(user="nobody", group="no-such-group-x"), 'group "no-such-group-x": no such group'),
    (job(enabled="yes"), 'enabled: must be true or false, got "yes"'),
    (job(catch_up="missed"), 'catch_up: must be "none" or "latest" or "all", got "missed"'),
    (job(catch_up=True), 'catch_up: must be "none" or "latest" or "all", got true'),
    (job(max_catch_up=0), "max_catch_up: must be a whole number from 1 to 100,000, got 0"),
    (job(max_catch_up=2.5), "max_catch_up: must be a whole number from 1 to 100,000, got 2.5"),
    (job(max_catch_up=10**6),
     "max_catch_up: must be a whole number from 1 to 100,000, got 1000000"),
    (job(starting_deadline_s=-1),
     "starting_deadline_s: must be a number of seconds, 0 or more, got -1"),
    (job(starting_deadline_s="1h"),
     'starting_deadline_s: must be a number of seconds, 0 or more, got "1h"'),
    (job(description=["x"]), 'description: must be a string, got ["x"]'),
]


@pytest.mark.parametrize(("document", "reason"), ERRORS)
def test_errors_name_the_file_and_the_problem_on_one_line(document, reason):
    with pytest.raises(JobFileError) as caught:
        parse(document)
    message = str(caught.value)
    assert message.startswith(f"{FILE}: {reason}")
    assert "\n" not in message
    assert caught.value.file == FILE


def test_oversized_file_is_rejected_before_reading(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_FILE_BYTES + 1))
    with pytest.raises(JobFileError, match=r"big.json: larger than 1 MiB \(1048577 bytes\)"):
        read_job_file(str(big), default_zone="UTC")


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(JobFileError, match=r"missing\.json: cannot read: No such file"):
        read_job_file(str(tmp_path / "missing.json"), default_zone="UTC")
    with pytest.raises(JobFileError, match=r"not a regular file \(a directory\)"):
        read_job_file(str(tmp_path), default_zone="UTC")


def test_read_job_file_round_trip(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(job(schedule="2030-01-01T00:00:00Z")))
    spec = read_job_file(str(path), default_zone="UTC")
    assert spec.file == str(path)
    assert spec.trigger.next_after(datetime(2029, 1, 1, tzinfo=UTC)) == datetime(
        2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("actual", "stat_said", "expected"), [
    (100, 100, 100),  # as the stat said: one read
    (100, 60, 100),  # grew after the stat: read on to the end
    (100, 140, 100),  # shrank, or a short read: read on to the end
    (0, 0, 0),
    (MAX_FILE_BYTES + 50, 10, MAX_FILE_BYTES + 1),  # grew past the limit: just over it
])
def test_read_all_returns_the_whole_file_whatever_the_stat_said(
        tmp_path, actual, stat_said, expected):
    path = tmp_path / "f.json"
    path.write_bytes(bytes(range(256)) * (actual // 256) + b"x" * (actual % 256))
    fd = os.open(path, os.O_RDONLY)
    try:
        data = _read_all(fd, stat_said)
    finally:
        os.close(fd)
    assert len(data) == expected
    assert data == path.read_bytes()[:expected]
