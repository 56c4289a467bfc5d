"""The worker pool with real processes: hand-out, results, and worker death at any moment."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from datetime import UTC, datetime
from multiprocessing.connection import wait

import pytest

from supervisor.processes.pool import WorkerPool
from tests.daemon_harness import pid_alive, wait_until
from workers.execution import Execution, new_run_id

CONTEXT = multiprocessing.get_context("forkserver")


def execution(command: str, job_id: str = "j", timeout_s: float | None = None) -> Execution:
    return Execution(run_id=new_run_id(), job_id=job_id, scheduled_for="2026-01-01T00:00:00+00:00",
                     task_type="execute_command",
                     task_params={"command": command, "env": {}, "cwd": None},
                     timeout_s=timeout_s)


@pytest.fixture
def pool():
    events: list[dict] = []
    pool = WorkerPool(2, context=CONTEXT, monotonic=time.monotonic, on_event=events.append)
    pool.events = events
    pool.start()
    yield pool
    pool.kill_all("test over")


def pump(pool: WorkerPool, records: list, until, timeout: float = 20.0,
         stopping: bool = False) -> None:
    """The coordinator's loop in miniature: wait on the pool, service it."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"timed out; records so far: {records}"
        wait(pool.wait_objects(), 0.05)
        records.extend(pool.stopping_service() if stopping else pool.service())


def test_runs_executions_and_returns_records(pool):
    records: list = []
    runs = [execution(f"echo {i}", job_id=f"j{i}") for i in range(5)]
    for run in runs:
        pool.put(run)
    assert pool.depth() == 3  # two went straight to the two idle workers
    pump(pool, records, lambda: len(records) == 5)
    assert sorted(r["run_id"] for r in records) == sorted(r.run_id for r in runs)
    assert {r["status"] for r in records} == {"SUCCESS"}
    assert {r["output_tail"] for r in records} == {f"{i}\n" for i in range(5)}
    assert {r["worker"] for r in records} <= {1, 2}
    assert pool.depth() == 0


def test_waiting_executions_start_in_the_order_they_were_put():
    single = WorkerPool(1, context=CONTEXT, monotonic=time.monotonic)
    single.start()
    try:
        records: list = []
        runs = [execution("true", job_id=f"j{i}") for i in range(6)]
        for run in runs:
            single.put(run)
        pump(single, records, lambda: len(records) == 6)
        assert [r["run_id"] for r in records] == [r.run_id for r in runs]
        starts = [r["timestamp"] for r in records]
        assert starts == sorted(starts)
    finally:
        single.kill_all("test over")


@pytest.mark.parametrize("busy", [False, True])
def test_sigkilled_worker_is_replaced_and_its_run_recorded_lost(pool, busy):
    records: list = []
    victim = pool.slots[0]
    if busy:
        pool.put(execution("sleep 30", job_id="held"))
        pump(pool, records, lambda: victim.execution is not None or pool.slots[1].execution)
        victim = next(slot for slot in pool.slots if slot.execution is not None)
    old_pid = victim.process.pid
    os.kill(old_pid, signal.SIGKILL)
    pump(pool, records, lambda: victim.process is not None and victim.process.pid != old_pid)
    if busy:
        pump(pool, records, lambda: records)
        assert [(r["job_id"], r["status"], r["error"]) for r in records] == [
            ("held", "FAILURE", "worker lost")]
    else:
        assert records == []
    # The pool still works, on both workers.
    pool.put(execution("echo a", job_id="after1"))
    pool.put(execution("echo b", job_id="after2"))
    pump(pool, records, lambda: len([r for r in records if r["job_id"].startswith("after")]) == 2)
    assert any(e["event"] == "worker_died" for e in pool.events)


def test_lost_run_leaves_no_process_behind(pool):
    records: list = []
    marker = f"/tmp/taskd-lost-{os.getpid()}"
    pool.put(execution(f"sleep 60 & echo $! > {marker}; wait", job_id="held"))
    pump(pool, records, lambda: os.path.exists(marker) and open(marker).read().strip())
    grandchild = int(open(marker).read())
    os.unlink(marker)
    busy = next(slot for slot in pool.slots if slot.execution is not None)
    os.kill(busy.process.pid, signal.SIGKILL)
    pump(pool, records, lambda: records)
    wait_until(lambda: not pid_alive(grandchild), message="grandchild killed")


def test_many_kills_in_a_row_never_stall_the_pool(pool):
    records: list = []
    for _ in range(10):
        slot = pool.slots[0]
        old = slot.process.pid
        os.kill(old, signal.SIGKILL)
        pump(pool, records, lambda s=slot, o=old: (s.process is not None and s.process.pid != o)
             or s.restart_at is not None)
        if slot.restart_at is not None:  # flapping guard paused it: it comes back by itself
            pump(pool, records, lambda s=slot: s.process is not None, timeout=10)
    pool.put(execution("echo fine"))
    pump(pool, records, lambda: records)
    assert records[0]["status"] == "SUCCESS"
    assert pool.alive() == 2


def test_stopped_busy_worker_is_noticed_by_its_silence_and_replaced():
    events: list[dict] = []
    pool = WorkerPool(1, context=CONTEXT, monotonic=time.monotonic, on_event=events.append,
                      heartbeat_timeout_s=1.5)
    pool.start()
    try:
        records: list = []
        pool.put(execution("sleep 30", job_id="held"))
        slot = pool.slots[0]
        pump(pool, records, lambda: slot.execution is not None and slot.last_heard)
        old_pid = slot.process.pid
        os.kill(old_pid, signal.SIGSTOP)
        pump(pool, records, lambda: records)
        assert [(r["job_id"], r["error"]) for r in records] == [("held", "worker lost")]
        assert [e["event"] for e in events][:2] == ["worker_unresponsive", "worker_died"]
        assert not pid_alive(old_pid)
        pool.put(execution("echo alive"))
        pump(pool, records, lambda: len(records) == 2)
        assert records[1]["status"] == "SUCCESS"
    finally:
        pool.kill_all("test over")


def test_busy_worker_heartbeats_keep_a_long_run_alive():
    pool = WorkerPool(1, context=CONTEXT, monotonic=time.monotonic, heartbeat_timeout_s=1.5)
    pool.start()
    try:
        records: list = []
        pool.put(execution("sleep 3.5; echo done"))
        pump(pool, records, lambda: records)
        assert (records[0]["status"], records[0]["output_tail"]) == ("SUCCESS", "done\n")
    finally:
        pool.kill_all("test over")


def ahead(seconds: float) -> str:
    return datetime.fromtimestamp(time.time() + seconds, UTC).isoformat()


def test_a_run_handed_out_early_starts_at_its_instant_not_before(pool, tmp_path):
    stamp = tmp_path / "stamp"
    records: list = []
    early = Execution(run_id=new_run_id(), job_id="early", scheduled_for=ahead(0.4),
                      task_type="execute_command",
                      task_params={"command": f"date +%s.%N > {stamp}", "env": {},
                                   "cwd": None})
    pool.put(early)
    assert pool.depth() == 0  # handed out at once, before its instant
    pump(pool, records, lambda: records)
    instant = datetime.fromisoformat(early.scheduled_for).timestamp()
    started = datetime.fromisoformat(records[0]["timestamp"]).timestamp()
    assert records[0]["status"] == "SUCCESS"
    assert instant <= started < instant + 0.3
    assert float(stamp.read_text()) >= instant


def test_stop_drops_a_run_held_before_its_instant(pool, tmp_path):
    marker = tmp_path / "ran"
    records: list = []
    held = Execution(run_id=new_run_id(), job_id="held", scheduled_for=ahead(0.8),
                     task_type="execute_command",
                     task_params={"command": f"touch {marker}", "env": {}, "cwd": None})
    pool.put(held)
    pool.stop_workers()
    pump(pool, records, lambda: records and pool.alive() == 0, stopping=True)
    assert [(r["job_id"], r["status"], r["error"]) for r in records] == [
        ("held", "FAILURE", "shutdown")]
    assert not marker.exists()


def test_stop_lets_a_started_run_finish(pool, tmp_path):
    began = tmp_path / "began"
    records: list = []
    pool.put(execution(f"touch {began}; sleep 0.5; echo finished"))
    wait_until(began.exists, timeout=10)
    pool.stop_workers()
    pump(pool, records, lambda: records, stopping=True)
    assert (records[0]["status"], records[0]["output_tail"]) == ("SUCCESS", "finished\n")
    pump(pool, records, lambda: pool.alive() == 0, stopping=True)  # and then it leaves
