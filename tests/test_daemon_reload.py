"""Live reload against a real daemon: each row of the contract's table.

Jobs fire every second (6-field cron), so each check is over within a few seconds.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.daemon_harness import Daemon, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(tmp_path):
    daemon = Daemon(tmp_path)
    yield daemon
    daemon.kill()


def job_text(job_id: str, command: str = "true", schedule: str = "* * * * * *") -> str:
    return json.dumps({"job_id": job_id, "schedule": schedule,
                       "task": {"type": "execute_command", "command": command}})


def test_added_file_is_scheduled_at_once(daemon):
    daemon.start()
    daemon.write_job("new.json", command="echo hello")
    daemon.wait_event("job_added", where=lambda e: e.get("job_id") == "new")
    record = daemon.wait_records("new")[0]
    assert record["status"] == "SUCCESS" and record["output_tail"] == "hello\n"


@pytest.mark.parametrize("save", ["in_place", "temp_then_rename", "vim"])
def test_each_save_reschedules_exactly_once(daemon, save):
    path = daemon.write_job("j.json", command="echo one")
    daemon.start()
    daemon.wait_records("j", where=lambda r: r["output_tail"] == "one\n")
    text = job_text("j", "echo two")
    if save == "in_place":
        with open(path, "w") as handle:  # truncate, then write: two events, one reload
            handle.write(text[:10])
            handle.flush()
            handle.write(text[10:])
    elif save == "temp_then_rename":
        daemon.write_raw("j.json", text)
    else:  # vim: rename the original away, write a new file, delete the backup
        os.rename(path, daemon.jobs / "j.json~")
        path.write_text(text)
        os.unlink(daemon.jobs / "j.json~")
    daemon.wait_records("j", where=lambda r: r["output_tail"] == "two\n")
    # Let any straggling event settle before counting (a later reload would show here).
    daemon.wait_records("j", count=2, where=lambda r: r["output_tail"] == "two\n")
    updates = daemon.events("job_updated")
    assert len(updates) == 1, updates
    assert daemon.events("job_removed") == [] and daemon.events("job_invalid") == []


def test_deleted_file_removes_the_job(daemon):
    path = daemon.write_job("gone.json")
    daemon.write_job("stays.json")
    daemon.start()
    daemon.wait_records("gone")
    path.unlink()
    daemon.wait_event("job_removed", where=lambda e: e.get("job_id") == "gone")
    count = len(daemon.records("gone"))
    seen = len(daemon.records("stays"))
    daemon.wait_records("stays", count=seen + 2)
    assert len(daemon.records("gone")) <= count + 1  # at most a run already under way


def test_moved_out_and_moved_in(daemon, tmp_path):
    path = daemon.write_job("m.json")
    daemon.start()
    daemon.wait_records("m")
    outside = tmp_path / "outside.json"
    os.rename(path, outside)
    daemon.wait_event("job_removed", where=lambda e: e.get("job_id") == "m")
    os.rename(outside, daemon.jobs / "back.json")
    daemon.wait_event("job_added", count=2, where=lambda e: e.get("job_id") == "m")


def test_rename_inside_the_directory_is_the_same_job(daemon):
    path = daemon.write_job("old.json", job_id="r", schedule="*/2 * * * * *")
    daemon.start()
    daemon.wait_records("r")
    os.rename(path, daemon.jobs / "new.json")
    event = daemon.wait_event("job_renamed")[0]
    assert event["file"].endswith("new.json") and event["old_file"].endswith("old.json")
    before = len(daemon.records("r"))
    records = daemon.wait_records("r", count=before + 2)
    assert daemon.events("job_removed") == []
    # Still one occurrence per instant: no duplicate job.
    scheduled = [r["scheduled_for"] for r in records]
    assert len(scheduled) == len(set(scheduled))


def test_editor_droppings_are_ignored(daemon):
    daemon.start()
    for name in (".j.json.swp", "j.json~", "#j.json#", "j.json.tmp", "notes.txt", ".hidden.json"):
        (daemon.jobs / name).write_text("not a job")
    daemon.write_job("real.json")
    daemon.wait_records("real")
    assert daemon.events("job_invalid") == []


def test_sighup_rescans_the_directory(daemon):
    daemon.start()
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("reload_requested")
    daemon.write_job("after.json")
    daemon.wait_records("after")


def test_bad_file_is_reported_and_touches_nothing_else(daemon):
    daemon.write_job("good.json")
    daemon.start()
    daemon.write_raw("bad.json", '{"job_id": "bad", "schedule": "61 * * * *", "task": {}}')
    event = daemon.wait_event("job_invalid")[0]
    assert event["file"].endswith("bad.json")
    assert "minute 61 is out of range 0-59" in event["error"]
    seen = len(daemon.records("good"))
    daemon.wait_records("good", count=seen + 2)


def test_invalid_edit_keeps_the_previous_version(daemon):
    path = daemon.write_job("keep.json", command="echo v1")
    daemon.start()
    daemon.wait_records("keep")
    daemon.write_raw("keep.json", '{"job_id": "keep", "schedule": "* * * * * *", "oops": 1}')
    event = daemon.wait_event("job_invalid")[0]
    assert "previous version stays scheduled" in event["error"]
    seen = len(daemon.records("keep"))
    records = daemon.wait_records("keep", count=seen + 2)
    assert records[-1]["output_tail"] == "v1\n"
    path.write_text(job_text("keep", "echo v2"))
    daemon.wait_records("keep", where=lambda r: r["output_tail"] == "v2\n")


def test_duplicate_job_id_belongs_to_the_first_file_until_it_lets_go(daemon):
    first = daemon.write_job("a.json", job_id="dup", command="echo a")
    daemon.start()
    daemon.wait_records("dup")
    daemon.write_job("b.json", job_id="dup", command="echo b")
    conflict = daemon.wait_event("job_conflict")[0]
    assert conflict["file"].endswith("b.json")
    first.unlink()
    daemon.wait_records("dup", where=lambda r: r["output_tail"] == "b\n")
    wait_until(lambda: all(r["output_tail"] == "b\n" for r in daemon.records("dup")[-2:]),
               message="only b runs")
