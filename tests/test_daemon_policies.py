"""Scheduling policies against a real daemon: overlap, misfire, one-time, enabled."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from tests.daemon_harness import Daemon

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(tmp_path):
    daemon = Daemon(tmp_path, args=("--misfire-grace", "30"))
    yield daemon
    daemon.kill()


def iso(delta_s: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat()


def test_overlap_skip_reports_skipped_occurrences(daemon):
    daemon.write_job("slow.json", command="sleep 2.5", overlap="skip")
    daemon.start()
    skipped = daemon.wait_event("skipped", count=2)
    assert {e["job_id"] for e in skipped} == {"slow"}
    records = daemon.wait_records("slow", count=2, timeout=20)
    starts = sorted(datetime.fromisoformat(r["timestamp"]) for r in records)
    assert (starts[1] - starts[0]).total_seconds() >= 2.5  # never two at once


def test_overlap_allow_runs_alongside(daemon):
    daemon.write_job("slow.json", command="sleep 2.5")
    daemon.start()
    daemon.wait_records("slow", count=2, timeout=20)
    assert daemon.events("skipped") == []


def test_one_time_job_in_the_future_runs_once(daemon):
    path = daemon.write_job("once.json", schedule=iso(1.5), command="echo once")
    daemon.start()
    record = daemon.wait_records("once")[0]
    assert record["output_tail"] == "once\n"
    # Touching or rewriting the file unchanged does not run it again.
    os.utime(path)
    daemon.write_raw("once.json", path.read_text())
    daemon.write_job("probe.json")
    daemon.wait_records("probe", count=3)
    assert len(daemon.records("once")) == 1


def test_past_one_time_job_runs_within_grace_else_is_missed(daemon):
    daemon.write_job("late.json", schedule=iso(-10), command="echo late")
    daemon.write_job("too-late.json", schedule=iso(-3600))
    daemon.start()
    assert daemon.wait_records("late")[0]["status"] == "SUCCESS"
    missed = daemon.wait_event("missed", where=lambda e: e["job_id"] == "too-late")[0]
    assert missed["file"].endswith("too-late.json")
    assert daemon.records("too-late") == []


def test_new_timestamp_reschedules_a_one_time_job(daemon):
    daemon.write_job("once.json", schedule=iso(1), command="echo first")
    daemon.start()
    daemon.wait_records("once")
    daemon.write_job("once.json", schedule=iso(1), command="echo second")
    daemon.wait_records("once", where=lambda r: r["output_tail"] == "second\n")


def test_disabled_job_never_runs(daemon):
    daemon.write_job("off.json", enabled=False)
    daemon.write_job("on.json")
    daemon.start()
    daemon.wait_records("on", count=3)
    assert daemon.records("off") == []


def test_command_environment_and_stdin(daemon):
    daemon.write_job("env.json", schedule=iso(1),
                     command='echo "$TASKD_JOB_ID $FOO $TASKD_SCHEDULED_FOR"; cat; echo done')
    document = (daemon.jobs / "env.json").read_text().replace(
        '"command"', '"env": {"FOO": "bar"}, "command"')
    daemon.write_raw("env.json", document)
    daemon.start()
    record = daemon.wait_records("env")[0]
    job_id, foo, scheduled, done = record["output_tail"].split()
    assert (job_id, foo, done) == ("env", "bar", "done")
    assert scheduled == record["scheduled_for"]
    assert len(record["run_id"]) == 32


def test_record_has_every_contract_field(daemon):
    daemon.write_job("fail.json", schedule=iso(1), command="echo oops >&2; exit 3")
    daemon.start()
    record = daemon.wait_records("fail")[0]
    assert list(record) == ["event", "job_id", "run_id", "timestamp", "status",
                            "scheduled_for", "finished_at", "duration_ms", "exit_code",
                            "error", "worker", "output_tail"]
    assert record["status"] == "FAILURE" and record["exit_code"] == 3
    assert record["error"] == "exit code 3" and record["output_tail"] == "oops\n"
    started = datetime.fromisoformat(record["timestamp"])
    assert started.utcoffset() == timedelta(0) and "." in record["timestamp"]
    assert record["worker"] in (1, 2)
