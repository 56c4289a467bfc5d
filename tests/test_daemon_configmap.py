"""A real daemon on a jobs directory that is a Kubernetes ConfigMap volume.

The volume is updated exactly as the kubelet does it (``tests/configmap_volume.py``).
The safety-net rescan is set to 600 s, so only the watcher's events can explain a
change being picked up within the tests' waits.
"""

from __future__ import annotations

import json

import pytest

from tests.configmap_volume import ConfigMapVolume
from tests.daemon_harness import Daemon, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(tmp_path):
    daemon = Daemon(tmp_path, args=("--rescan-interval", "600"))
    yield daemon
    daemon.kill()


def job(job_id: str, command: str, schedule: str = "* * * * * *") -> str:
    return json.dumps({"job_id": job_id, "schedule": schedule,
                       "task": {"type": "execute_command", "command": command}})


def jobs(daemon: Daemon) -> dict[str, dict]:
    return {entry["job_id"]: entry for entry in daemon.client_json("status")["jobs"]}


def test_an_update_reschedules_the_job_with_its_new_schedule_and_command(daemon):
    volume = ConfigMapVolume(daemon.jobs)
    volume.write({"job-a.json": job("a", "echo v1")})
    daemon.start()
    daemon.wait_records("a", where=lambda r: r["output_tail"] == "v1\n")
    volume.write({"job-a.json": job("a", "echo v2", schedule="*/2 * * * * *")})
    wait_until(lambda: jobs(daemon)["a"]["schedule"] == "*/2 * * * * *",
               message="the new schedule in taskd status")
    daemon.wait_records("a", where=lambda r: r["output_tail"] == "v2\n")
    [updated] = daemon.events("job_updated")
    assert updated["job_id"] == "a" and updated["file"] == str(daemon.jobs / "job-a.json")
    assert jobs(daemon)["a"]["file"] == str(daemon.jobs / "job-a.json")
    assert daemon.events("job_invalid") == []


def test_an_update_adds_and_removes_keys(daemon):
    volume = ConfigMapVolume(daemon.jobs)
    volume.write({"job-a.json": job("a", "echo a"), "job-b.json": job("b", "echo b")})
    daemon.start()
    assert set(jobs(daemon)) == {"a", "b"}
    volume.write({"job-a.json": job("a", "echo a"), "job-c.json": job("c", "echo c")})
    daemon.wait_event("job_added", where=lambda e: e["job_id"] == "c")
    daemon.wait_event("job_removed", where=lambda e: e["job_id"] == "b")
    daemon.wait_records("c", where=lambda r: r["output_tail"] == "c\n")
    status = daemon.client_json("status")
    assert {entry["job_id"] for entry in status["jobs"]} == {"a", "c"}
    assert status["errors"] == []
    # The unchanged key is not reloaded; the dropped key's link, dangling for a moment
    # between the swap and its removal, is never reported invalid.
    assert daemon.events("job_updated") == [] and daemon.events("job_invalid") == []
