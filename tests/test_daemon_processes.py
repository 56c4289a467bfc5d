"""Processes against a real daemon: timeouts, floods, lost workers and logger, shutdown."""

from __future__ import annotations

import http.server
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from tests.daemon_harness import Daemon, descendants, pid_alive, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(tmp_path):
    daemon = Daemon(tmp_path)
    yield daemon
    daemon.kill()


def iso(delta_s: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat()


def current_worker_pids(daemon: Daemon) -> dict[int, int]:
    """Worker id -> pid, from the ready event and every restart since."""
    ready = daemon.events("ready")[0]
    pids = {i + 1: pid for i, pid in enumerate(ready["worker_pids"])}
    for event in daemon.events("worker_restarted"):
        pids[event["worker"]] = event["pid"]
    return pids


def test_timeout_kills_the_whole_group_including_a_grandchild(daemon, tmp_path):
    marker = tmp_path / "grandchild.pid"
    daemon.write_job("slow.json", schedule=iso(1), timeout_s=1,
                     command=f"sleep 60 & echo $! > {marker}; sleep 60")
    daemon.start()
    record = daemon.wait_records("slow")[0]
    assert record["status"] == "FAILURE" and record["error"] == "timeout after 1s"
    grandchild = int(marker.read_text())
    wait_until(lambda: not pid_alive(grandchild), message="grandchild gone")


def test_output_flood_does_not_disturb_another_jobs_schedule(daemon):
    daemon.write_job("flood.json", schedule=iso(1),
                     command="head -c 50000000 /dev/zero | tr '\\0' x")
    daemon.write_job("tick.json")
    daemon.start()
    flood = daemon.wait_records("flood", timeout=60)[0]
    assert flood["status"] == "SUCCESS"
    assert flood["output_tail"] == "x" * 4096
    ticks = daemon.wait_records("tick", count=3)
    for record in ticks:
        lateness = (datetime.fromisoformat(record["timestamp"])
                    - datetime.fromisoformat(record["scheduled_for"])).total_seconds()
        assert lateness < 0.5


@pytest.mark.parametrize("busy", [False, True])
def test_sigkilled_worker_is_replaced_and_nothing_stalls(daemon, busy):
    daemon.write_job("long.json", schedule=iso(1.5) if busy else "0 0 1 1 *",
                     command="sleep 30")
    daemon.write_job("tick.json")
    daemon.start()
    for round_number in range(3):
        pids = current_worker_pids(daemon)
        if busy and round_number == 0:
            # The long run occupies one worker; find it by its shell's parent.
            # The worker holding the long run, as the daemon reports it (a worker with a
            # child process could also be one running a tick at that moment).
            victim_id = wait_until(partial(_worker_running, daemon, "long"),
                                   message="long run started")
        else:
            victim_id = 1 + round_number % 2
        os.kill(pids[victim_id], signal.SIGKILL)
        daemon.wait_event("worker_restarted", count=round_number + 1)
    if busy:
        lost = daemon.wait_records("long")[0]
        assert (lost["status"], lost["error"]) == ("FAILURE", "worker lost")
    seen = len(daemon.records("tick"))
    daemon.wait_records("tick", count=seen + 2)
    assert all(pid_alive(pid) for pid in current_worker_pids(daemon).values())


def test_sigkilled_logger_loses_no_record(daemon):
    for i in range(4):
        daemon.write_job(f"t{i}.json")
    daemon.start()
    logger_pid = daemon.events("ready")[0]["logger_pid"]
    daemon.wait_records(count=8)
    os.kill(logger_pid, signal.SIGKILL)
    daemon.wait_event("logger_restarted")
    records = daemon.wait_records(count=len(daemon.records()) + 8)
    assert daemon.stop() == 0
    records = daemon.records()
    # Each occurrence of each job is recorded exactly once, with no gap (duplicates of
    # the one record in flight at the kill are allowed, never a hole).
    for i in range(4):
        instants = sorted({r["scheduled_for"] for r in records if r["job_id"] == f"t{i}"})
        seconds = [datetime.fromisoformat(s) for s in instants]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(seconds)]
        assert all(gap == 1 for gap in gaps), gaps


def test_graceful_shutdown_lets_runs_finish_within_the_grace_period(tmp_path):
    daemon = Daemon(tmp_path, args=("--grace-period", "10"))
    daemon.write_job("short.json", schedule=iso(1), command="sleep 1; echo finished")
    daemon.start()
    wait_until(lambda: descendants(daemon.pid) and any(
        "sleep 1" in _cmdline(pid) for pid in descendants(daemon.pid)), message="run started")
    assert daemon.stop() == 0
    record = daemon.records("short")[0]
    assert (record["status"], record["output_tail"]) == ("SUCCESS", "finished\n")
    assert daemon.events("stopped")[0]["records_flushed"] is True


def test_shutdown_after_the_grace_period_kills_runs_and_leaves_nothing(tmp_path):
    daemon = Daemon(tmp_path, args=("--grace-period", "1"))
    marker = tmp_path / "trap"
    daemon.write_job("stubborn.json", schedule=iso(1),
                     command=f"trap 'echo term > {marker}' TERM; sleep 60 & wait; sleep 60")
    daemon.start()
    wait_until(lambda: any("sleep 60" in _cmdline(p) for p in descendants(daemon.pid)),
               message="run started")
    everything = descendants(daemon.pid)
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 1 + 4  # grace, then TERM, KILL, records
    record = daemon.records("stubborn")[0]
    assert (record["status"], record["error"]) == ("FAILURE", "shutdown")
    assert marker.read_text() == "term\n"  # the group got SIGTERM first
    wait_until(lambda: not any(pid_alive(pid) for pid in everything), 2,
               message="every process of taskd and of the task gone")


def test_second_signal_skips_the_grace_period(tmp_path):
    daemon = Daemon(tmp_path, args=("--grace-period", "60"))
    daemon.write_job("long.json", schedule=iso(1), command="sleep 60")
    daemon.start()
    wait_until(lambda: any("sleep 60" in _cmdline(p) for p in descendants(daemon.pid)),
               message="run started")
    everything = descendants(daemon.pid)
    daemon.signal(signal.SIGTERM)
    daemon.wait_event("stopping")
    daemon.signal(signal.SIGINT)
    assert daemon.process.wait(timeout=10) == 0
    assert daemon.records("long")[0]["error"] == "shutdown"
    wait_until(lambda: not any(pid_alive(pid) for pid in everything), 2,
               message="nothing left behind")


def test_sigkilled_coordinator_leaves_nothing_behind(daemon):
    daemon.write_job("long.json", schedule=iso(1), command="sleep 60 & sleep 60")
    daemon.start()
    wait_until(lambda: sum(_cmdline(p).startswith("sleep 60") for p in descendants(daemon.pid))
               == 2, message="run started")
    everything = descendants(daemon.pid)
    daemon.process.kill()
    daemon.process.wait()
    wait_until(lambda: not any(pid_alive(pid) for pid in everything), 3,
               message="workers, logger and the task's processes gone")


def test_http_request_task_against_a_local_server(daemon):
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers["X-Taskd-Job-Id"])
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"pong")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        daemon.write_raw("ping.json", json.dumps({
            "job_id": "ping", "schedule": iso(1),
            "task": {"type": "http_request", "url": f"http://127.0.0.1:{server.server_port}/"}}))
        daemon.start()
        record = daemon.wait_records("ping")[0]
        assert record["status"] == "SUCCESS" and record["output_tail"].endswith("pong")
        assert seen == ["ping"]
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--jobs-dir", "/nonexistent"], "--jobs-dir /nonexistent: no such directory"),
        (["--jobs-dir", ".", "--workers", "0"], "Invalid value for '--workers'"),
        (["--jobs-dir", ".", "--log-file", "/nonexistent/x.log"], "cannot open for appending"),
        (["--jobs-dir", ".", "--timezone", "Nowhere/Land"], "unknown time zone"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(args, message):
    result = subprocess.run([sys.executable, "-m", "supervisor", "start", *args],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr


def _worker_running(daemon: Daemon, job_id: str) -> int | None:
    workers = daemon.client_json("status")["workers"]
    return next((w["id"] for w in workers if w["job_id"] == job_id), None)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_shutdown_kills_what_finished_runs_left_in_the_background(daemon, tmp_path):
    marker = tmp_path / "leftover.pid"
    daemon.write_job("bg.json", schedule=iso(1), command=f"sleep 300 & echo $! > {marker}")
    daemon.start()
    assert daemon.wait_records("bg")[0]["status"] == "SUCCESS"
    leftover = int(marker.read_text())
    assert pid_alive(leftover)  # as cron: a finished job's background process is left alone
    assert daemon.stop() == 0
    wait_until(lambda: not pid_alive(leftover), message="leftover killed at shutdown")
    assert daemon.events("leftovers_killed")[0]["pids"] == [leftover]


def test_jobs_do_not_inherit_systemds_notify_socket(tmp_path):
    daemon = Daemon(tmp_path)
    daemon.write_job("env.json", schedule=iso(1),
                     command='echo "[$NOTIFY_SOCKET][$TASKD_INSTANCE]"')
    daemon.start()
    try:
        tail = daemon.wait_records("env")[0]["output_tail"]
        assert tail.startswith("[][") and len(tail.strip()) > 4
    finally:
        daemon.kill()
