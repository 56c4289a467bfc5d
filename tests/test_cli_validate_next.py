"""``taskd validate`` and ``taskd next``: the commands that need no daemon."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from supervisor.cli import main

TASK = {"type": "execute_command", "command": "true"}


def run(*args):
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def write(directory, name, document):
    path = directory / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return str(path)


def test_validate_a_valid_directory_exits_0(tmp_path):
    write(tmp_path, "a.json", {"job_id": "a", "schedule": "@daily", "task": TASK})
    write(tmp_path, "b.json", {"job_id": "b", "schedule": "2030-01-01T00:00:00Z", "task": TASK})
    write(tmp_path, ".hidden.json", "garbage")
    write(tmp_path, "a.json.swp", "garbage")
    write(tmp_path, "notes.txt", "garbage")
    code, out, err = run("validate", str(tmp_path))
    assert code == 0, err
    assert out.splitlines() == [f"{tmp_path}/a.json: ok (a)", f"{tmp_path}/b.json: ok (b)"]


def test_validate_reports_one_line_per_problem_and_exits_1(tmp_path):
    good = write(tmp_path, "good.json", {"job_id": "a", "schedule": "@daily", "task": TASK})
    write(tmp_path, "bad.json", {"job_id": "b", "schedule": "61 * * * *", "task": TASK})
    write(tmp_path, "dup.json", {"job_id": "a", "schedule": "@daily", "task": TASK})
    code, out, err = run("validate", str(tmp_path), str(tmp_path / "missing.json"))
    assert code == 1
    assert err.splitlines() == [
        f'{tmp_path}/bad.json: schedule "61 * * * *": minute 61 is out of range 0-59',
        f'{tmp_path}/good.json: job_id "a" is already claimed by {tmp_path}/dup.json',
        f"{tmp_path}/missing.json: no such file or directory",
    ]
    assert out.splitlines() == [f"{tmp_path}/dup.json: ok (a)"]
    assert good  # the file exists; its claim lost to dup.json, first in name order


def test_validate_single_file(tmp_path):
    path = write(tmp_path, "x.json", "{not json")
    code, _, err = run("validate", path)
    assert code == 1 and err.startswith(f"{path}: not valid JSON")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["*/20 * * * *", "--after", "2026-01-01T00:00:00Z", "-n", "3", "--timezone", "UTC"],
         ["2026-01-01T00:20:00+00:00", "2026-01-01T00:40:00+00:00", "2026-01-01T01:00:00+00:00"]),
        (["*/2 * * * * *", "--after", "2026-01-01T00:00:00Z", "-n", "2", "--timezone", "UTC"],
         ["2026-01-01T00:00:02+00:00", "2026-01-01T00:00:04+00:00"]),
        (["30 2 * * *", "--timezone", "Europe/Berlin", "--after", "2026-03-28T12:00:00Z",
          "-n", "2"],
         ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]),
        # --after without an offset is read in the schedule's zone.
        (["@hourly", "--timezone", "America/New_York", "--after", "2026-11-01T00:30:00",
          "-n", "3"],
         ["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00",
          "2026-11-01T02:00:00-05:00"]),
        (["2030-05-01T12:00:00Z", "--after", "2026-01-01T00:00:00Z", "--timezone", "UTC"],
         ["2030-05-01T12:00:00+00:00"]),
        (["2020-05-01T12:00:00Z", "--after", "2026-01-01T00:00:00Z", "--timezone", "UTC"], []),
    ],
)
def test_next_prints_fire_times_with_offsets(args, expected):
    code, out, err = run("next", *args)
    assert code == 0, err
    assert out.splitlines() == expected


def test_next_reads_a_job_file_in_its_zone(tmp_path):
    path = write(tmp_path, "j.json", {"job_id": "j", "schedule": "0 9 * * MON",
                                      "timezone": "Asia/Tokyo", "task": TASK})
    code, out, _ = run("next", path, "--after", "2026-11-26T00:00:00Z", "-n", "2")
    assert code == 0
    assert out.splitlines() == ["2026-11-30T09:00:00+09:00", "2026-12-07T09:00:00+09:00"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["61 * * * *"], 'taskd: schedule "61 * * * *": minute 61 is out of range 0-59'),
        (["* * * * *", "--timezone", "Nowhere/City"], "taskd: --timezone: unknown time zone"),
        (["* * * * *", "--after", "yesterday"], "taskd: --after 'yesterday': not a valid"),
        (["/nonexistent/job.json"], "taskd: /nonexistent/job.json: cannot read"),
    ],
)
def test_next_errors(args, message):
    code, _, err = run("next", *args)
    assert code == 1
    assert err.startswith(message)


def test_next_default_is_after_now():
    code, out, _ = run("next", "* * * * *", "-n", "1", "--timezone", "UTC")
    assert code == 0 and len(out.splitlines()) == 1
