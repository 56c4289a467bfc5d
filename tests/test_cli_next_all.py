"""``taskd next --all``: every job's fire times in a window, and the DST warnings of
``taskd validate``. In process, through click's CliRunner."""

from __future__ import annotations

import json
import re

import pytest

import supervisor.jobfiles.jobspec
from supervisor.timing.triggers import START_MACROS, StartTrigger
from tests.test_cli_validate_next import run, write

TASK = {"type": "execute_command", "command": "true"}
AFTER = ["--after", "2026-03-28T22:00:00Z"]


@pytest.fixture(autouse=True)
def host_zone(monkeypatch):
    """The host's zone, for jobs that name none, is UTC here whatever the machine's."""
    monkeypatch.setenv("TZ", "UTC")


def job(job_id, schedule, **keys):
    return {"job_id": job_id, "schedule": schedule, "task": TASK, **keys}


@pytest.fixture
def jobs(tmp_path):
    write(tmp_path, "berlin.json", job("backup", "30 2 * * *", timezone="Europe/Berlin"))
    write(tmp_path, "tokyo.json", job("report", "0 9 * * *", timezone="Asia/Tokyo"))
    write(tmp_path, "utc.json", job("sweep", "0 */6 * * *", timezone="UTC"))
    write(tmp_path, "plain.json", job("plain", "15 1 * * *"))  # no zone: --timezone's
    write(tmp_path, "once.json", job("once", "2026-03-29T12:00:00Z"))
    write(tmp_path, "later.json", job("later", "2026-04-29T12:00:00Z"))
    write(tmp_path, "off.json", job("off", "* * * * *", enabled=False))
    return tmp_path


def test_lines_sorted_by_time_in_the_hosts_zone(jobs):
    code, out, err = run("next", "--all", "--jobs-dir", str(jobs), *AFTER)
    assert code == 0, err
    assert out.splitlines() == [
        "2026-03-29T00:00:00+00:00  report",  # 09:00 in Tokyo; the same instant: by job_id
        "2026-03-29T00:00:00+00:00  sweep",
        "2026-03-29T01:00:00+00:00  backup",  # 02:30 in Berlin is skipped: 03:00 +02:00
        "2026-03-29T01:15:00+00:00  plain",
        "2026-03-29T06:00:00+00:00  sweep",
        "2026-03-29T12:00:00+00:00  once",
        "2026-03-29T12:00:00+00:00  sweep",
        "2026-03-29T18:00:00+00:00  sweep",
    ]
    assert err.splitlines() == ["taskd next: 1 disabled job (enabled: false) left out"]


def test_timezone_shows_every_line_in_it_and_reads_zoneless_jobs_in_it(jobs):
    code, out, _ = run("next", "--all", "--jobs-dir", str(jobs), *AFTER, "--window", "12h",
                       "--timezone", "Europe/Berlin")
    assert code == 0
    assert out.splitlines() == [
        "2026-03-29T01:00:00+01:00  report",
        "2026-03-29T01:00:00+01:00  sweep",
        "2026-03-29T01:15:00+01:00  plain",  # 01:15 in Berlin now, not in UTC
        "2026-03-29T03:00:00+02:00  backup",  # 02:30 does not exist that night
        "2026-03-29T08:00:00+02:00  sweep",
    ]


def test_json_is_one_array_of_job_id_file_and_at(jobs):
    code, out, _ = run("next", "--all", "--jobs-dir", str(jobs), *AFTER, "--window", "3h",
                       "--json")
    assert code == 0
    assert json.loads(out) == [
        {"job_id": "report", "file": f"{jobs}/tokyo.json", "at": "2026-03-29T00:00:00+00:00"},
        {"job_id": "sweep", "file": f"{jobs}/utc.json", "at": "2026-03-29T00:00:00+00:00"},
        {"job_id": "backup", "file": f"{jobs}/berlin.json", "at": "2026-03-29T01:00:00+00:00"},
    ]


def test_an_empty_window_prints_nothing(jobs):
    code, out, _ = run("next", "--all", "--jobs-dir", str(jobs), *AFTER, "--window", "90s",
                       "--json")
    assert code == 0 and json.loads(out) == []


def test_invalid_files_are_reported_and_the_rest_still_printed(jobs):
    write(jobs, "bad.json", job("bad", "61 * * * *"))
    write(jobs, "a-dup.json", job("backup", "@daily"))  # claims it first, in name order
    write(jobs, "junk.json", "{not json")
    code, out, err = run("next", "--all", "--jobs-dir", str(jobs), *AFTER, "--window", "3h")
    assert code == 1
    assert err.splitlines() == [
        f'{jobs}/bad.json: schedule "61 * * * *": minute 61 is out of range 0-59',
        f'{jobs}/berlin.json: job_id "backup" is already claimed by {jobs}/a-dup.json',
        f"{jobs}/junk.json: not valid JSON: Expecting property name enclosed in double "
        f"quotes (line 1, column 2)",
        "taskd next: 1 disabled job (enabled: false) left out",
    ]
    assert out.splitlines() == [
        "2026-03-29T00:00:00+00:00  backup",  # a-dup.json's @daily, in the host's zone
        "2026-03-29T00:00:00+00:00  report",
        "2026-03-29T00:00:00+00:00  sweep",
    ]


def test_limit_cuts_and_says_how_many_more(tmp_path):
    write(tmp_path, "a.json", job("a", "* * * * *", timezone="UTC"))
    write(tmp_path, "b.json", job("b", "* * * * *", timezone="UTC"))
    code, out, err = run("next", "--all", "--jobs-dir", str(tmp_path), *AFTER,
                         "--window", "1h", "--limit", "3")
    assert code == 0
    assert out.splitlines() == ["2026-03-28T22:01:00+00:00  a", "2026-03-28T22:01:00+00:00  b",
                                "2026-03-28T22:02:00+00:00  a"]
    assert err.splitlines() == [
        "taskd next: ... 117 more fire times within the window (--limit 3 reached)"]


@pytest.mark.parametrize(("window", "lines"),
                         [("90s", 1), ("30m", 30), ("1h30m", 90), ("24h", 1440), ("1d", 1440),
                          ("7d", 10_080), ("1w", 10_080)])
def test_window_durations(tmp_path, window, lines):
    write(tmp_path, "m.json", job("m", "* * * * *", timezone="UTC"))
    code, out, err = run("next", "--all", "--jobs-dir", str(tmp_path), *AFTER,
                         "--window", window, "--limit", "20000")
    assert code == 0, err
    assert len(out.splitlines()) == lines and err == ""


def test_a_per_second_job_over_a_day(tmp_path):
    write(tmp_path, "s.json", job("s", "* * * * * *", timezone="Europe/Berlin"))
    code, out, err = run("next", "--all", "--jobs-dir", str(tmp_path), *AFTER,
                         "--limit", "100000", "--timezone", "Europe/Berlin")
    lines = out.splitlines()
    assert code == 0 and err == ""
    # The night Berlin skips 02:00-02:59: a day of real time is still 86,400 seconds.
    assert len(lines) == 86_400
    assert lines[0] == "2026-03-28T23:00:01+01:00  s"
    assert lines[-1] == "2026-03-30T00:00:00+02:00  s"


def test_after_without_an_offset_is_read_in_the_timezone(tmp_path):
    write(tmp_path, "h.json", job("h", "0 * * * *"))
    code, out, _ = run("next", "--all", "--jobs-dir", str(tmp_path), "--timezone",
                       "Asia/Tokyo", "--after", "2026-03-29T09:30:00", "--window", "1h")
    assert code == 0 and out.splitlines() == ["2026-03-29T10:00:00+09:00  h"]


def test_start_jobs_are_listed_apart(tmp_path, monkeypatch):
    # The job parser takes @reboot soon; until then, give it the trigger directly.
    parse = supervisor.jobfiles.jobspec.schedule_trigger
    monkeypatch.setattr(supervisor.jobfiles.jobspec, "schedule_trigger",
                        lambda text, zone: StartTrigger(text) if text in START_MACROS
                        else parse(text, zone))
    write(tmp_path, "r.json", job("warm-cache", "@reboot"))
    write(tmp_path, "h.json", job("h", "0 * * * *", timezone="UTC"))
    code, out, _ = run("next", "--all", "--jobs-dir", str(tmp_path), *AFTER, "--window", "1h")
    assert code == 0
    assert out.splitlines() == ["at start                   warm-cache",
                                "2026-03-28T23:00:00+00:00  h"]
    code, out, _ = run("next", "--all", "--jobs-dir", str(tmp_path), *AFTER, "--window", "1h",
                       "--json")
    assert json.loads(out) == [
        {"job_id": "warm-cache", "file": f"{tmp_path}/r.json", "at": None},
        {"job_id": "h", "file": f"{tmp_path}/h.json", "at": "2026-03-28T23:00:00+00:00"}]


def test_an_empty_directory_is_a_note(tmp_path):
    code, out, err = run("next", "--all", "--jobs-dir", str(tmp_path))
    assert code == 0 and out == ""
    assert err.splitlines() == [f"{tmp_path}: no job files (*.json) found"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--all", "* * * * *", "--jobs-dir", "."], "give SCHEDULE_OR_JOB_FILE or --all"),
        (["--all"], "--all needs --jobs-dir DIR"),
        (["--all", "--jobs-dir", ".", "-n", "3"], "-n is for one schedule"),
        (["* * * * *", "--window", "1h"], "--window: only with --all"),
        (["* * * * *", "--jobs-dir", "."], "--jobs-dir: only with --all"),
        (["* * * * *", "--json"], "--json: only with --all"),
        ([], "missing SCHEDULE_OR_JOB_FILE"),
        (["--all", "--jobs-dir", ".", "--window", "400d"], "'400d': at most 366d"),
        (["--all", "--jobs-dir", ".", "--window", "0s"], "'0s': must be longer than 0s"),
        (["--all", "--jobs-dir", ".", "--window", "24"], "'24': expected a duration"),
        (["--all", "--jobs-dir", ".", "--window", "2026-01-01T00:00:00Z"],
         "expected a duration"),
        (["--all", "--jobs-dir", ".", "--limit", "0"], "--limit"),
    ],
)
def test_usage_errors_exit_2(args, message):
    code, _, err = run("next", *args)
    assert code == 2
    assert message in err


def test_a_missing_jobs_dir_exits_2(tmp_path):
    code, _, err = run("next", "--all", "--jobs-dir", str(tmp_path / "nope"))
    assert code == 2
    assert err.strip() == f"taskd: --jobs-dir {tmp_path / 'nope'}: no such directory"


# -- taskd validate: DST warnings ----------------------------------------------------------

DATE = r"\d{4}-\d{2}-\d{2}"


def warnings_of(err: str) -> list[str]:
    return [line for line in err.splitlines() if ": warning: " in line]


def test_validate_warns_of_a_fixed_time_in_a_gap_and_a_repeat(tmp_path):
    path = write(tmp_path, "x.json", job("x", "30 2 * * *", timezone="Europe/Berlin"))
    code, out, err = run("validate", path)
    assert code == 0
    assert out.splitlines() == [f"{path}: ok (x)"]
    lines = warnings_of(err)
    assert len(lines) == 2 and len(err.splitlines()) == 2
    prefix = re.escape(f'{path}: warning: schedule "30 2 * * *" in Europe/Berlin: ')
    patterns = [prefix + DATE + r" 02:30 does not exist \(DST gap\); runs at 03:00 \+02:00 "
                                r"instead",
                prefix + DATE + r" 02:30 occurs twice \(DST repeat\); runs once, on the "
                                r"first pass \(02:30 \+02:00\)"]
    for pattern in patterns:
        assert sum(bool(re.fullmatch(pattern, line)) for line in lines) == 1, lines


@pytest.mark.parametrize("schedule", ["* * * * * *", "0 * * * *", "*/5 * * * *"])
def test_validate_does_not_warn_of_jobs_that_keep_their_rhythm(tmp_path, schedule):
    """A job whose hour field is "*" runs by real time through both changes (an hourly
    job every 3600 s): nothing to warn of, and nearly every such job meets both."""
    path = write(tmp_path, "s.json", job("s", schedule, timezone="America/New_York"))
    code, _, err = run("validate", path)
    assert code == 0 and warnings_of(err) == []


@pytest.mark.parametrize("document", [
    job("u", "30 2 * * *", timezone="UTC"),
    job("t", "*/5 * * * *", timezone="Asia/Tokyo"),
    job("b", "0 4 * * *", timezone="Europe/Berlin"),
    job("o", "2030-03-31T02:30:00", timezone="Europe/Berlin"),  # one-time: not cron
])
def test_validate_does_not_warn_what_meets_no_change(tmp_path, document):
    path = write(tmp_path, "j.json", document)
    code, out, err = run("validate", path)
    assert code == 0 and err == "" and out.endswith("ok (" + document["job_id"] + ")\n")


def test_validate_exit_status_is_the_invalid_files_alone(tmp_path):
    write(tmp_path, "a.json", job("a", "30 2 * * *", timezone="Europe/Berlin"))
    write(tmp_path, "b.json", job("b", "61 * * * *"))
    code, out, err = run("validate", str(tmp_path))
    assert code == 1
    assert out.splitlines() == [f"{tmp_path}/a.json: ok (a)"]
    assert len(warnings_of(err)) == 2
    assert f'{tmp_path}/b.json: schedule "61 * * * *": minute 61 is out of range 0-59' in (
        err.splitlines())


def test_validate_reads_zoneless_jobs_in_the_timezone_option(tmp_path):
    path = write(tmp_path, "h.json", job("h", "0 2 * * *"))
    assert run("validate", path)[2] == ""  # in the host's zone, UTC here
    code, _, err = run("validate", path, "--timezone", "Australia/Lord_Howe")
    assert code == 0
    # Lord Howe skips 02:00-02:29 and repeats 01:30-01:59: only 02:00 is met.
    assert [re.sub(DATE, "DATE", line) for line in warnings_of(err)] == [
        f'{path}: warning: schedule "0 2 * * *" in Australia/Lord_Howe: DATE 02:00 does not '
        f"exist (DST gap); runs at 02:30 +11:00 instead"]
