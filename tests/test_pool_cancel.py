"""Cancelling one execution (``overlap: "replace"``): waiting, held before its instant,
running, or racing its own end; real worker processes, then the worker's rules alone."""

from __future__ import annotations

import multiprocessing
import random
import time
from collections import Counter
from datetime import UTC, datetime
from multiprocessing.connection import wait

import pytest

from supervisor.processes.channel import send_message
from supervisor.processes.pool import WorkerPool
from tests.daemon_harness import pid_alive, wait_until
from workers.execution import Execution, new_run_id
from workers.worker_main import _hold_until_instant, _Link, _RunStop, _StopFlag

CONTEXT = multiprocessing.get_context("forkserver")


def execution(command: str, scheduled_for: str = "2026-01-01T00:00:00+00:00") -> Execution:
    return Execution(run_id=new_run_id(), job_id="j", scheduled_for=scheduled_for,
                     task_type="execute_command",
                     task_params={"command": command, "env": {}, "cwd": None})


def ahead(seconds: float) -> str:
    return datetime.fromtimestamp(time.time() + seconds, UTC).isoformat()


def make_pool(size: int) -> WorkerPool:
    pool = WorkerPool(size, context=CONTEXT, monotonic=time.monotonic)
    pool.start()
    return pool


@pytest.fixture
def pool():
    pool = make_pool(1)
    yield pool
    pool.kill_all("test over")


def pump(pool: WorkerPool, records: list, until, timeout: float = 20.0) -> None:
    """The coordinator's loop in miniature: wait on the pool, service it."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"timed out; records so far: {records}"
        wait(pool.wait_objects(), 0.05)
        records.extend(pool.service())


def record_of(records: list, run: Execution) -> dict | None:
    return next((r for r in records if r["run_id"] == run.run_id), None)


def assert_worker_takes_the_next_run(pool: WorkerPool, records: list, pid: int) -> None:
    after = execution("echo next")
    pool.put(after)
    pump(pool, records, lambda: record_of(records, after))
    assert (record_of(records, after)["status"], record_of(records, after)["output_tail"]) == (
        "SUCCESS", "next\n")
    assert pool.worker_pids() == [pid]  # the same worker: a cancel does not end it


# -- running -----------------------------------------------------------------------------

@pytest.mark.parametrize("background", [
    "sleep 60 &",                        # in the run's process group
    "(trap '' TERM; exec sleep 60) &",   # ignores TERM: the KILL after the grace ends it
    "setsid sleep 60 &",                 # left the group: found by its TASKD_RUN_ID
])
def test_cancel_stops_a_running_command_and_what_it_started(pool, tmp_path, background):
    pidfile = tmp_path / "pid"
    records: list = []
    run = execution(f"echo begun; {background} echo $! > {pidfile}; wait")
    pool.put(run)
    pid = pool.worker_pids()[0]
    grandchild = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(),
                                message="the background process"))
    assert pool.cancel(run.run_id, "replaced")
    pump(pool, records, lambda: record_of(records, run))
    record = record_of(records, run)
    assert (record["status"], record["error"], record["output_tail"]) == (
        "FAILURE", "replaced", "begun\n")
    assert record["worker"] == 1
    wait_until(lambda: not pid_alive(grandchild), message="the background process killed")
    assert_worker_takes_the_next_run(pool, records, pid)
    assert [r["run_id"] for r in records].count(run.run_id) == 1


def test_a_second_cancel_of_the_same_run_changes_nothing(pool, tmp_path):
    began = tmp_path / "began"
    records: list = []
    run = execution(f"touch {began}; exec sleep 60")
    pool.put(run)
    wait_until(began.exists, message="the run to begin")
    assert pool.cancel(run.run_id, "replaced")
    assert pool.cancel(run.run_id, "something else")  # still the worker's until its result
    pump(pool, records, lambda: records)
    assert [(r["run_id"], r["error"]) for r in records] == [(run.run_id, "replaced")]
    assert not pool.cancel(run.run_id, "replaced")  # over now


# -- waiting, held, unknown --------------------------------------------------------------

def test_cancel_of_a_waiting_execution_drops_it_and_records_it_at_once(pool, tmp_path):
    marker = tmp_path / "ran"
    records: list = []
    busy = execution("exec sleep 60")
    waiting = execution(f"touch {marker}")
    pool.put(busy)
    pool.put(waiting)
    assert pool.depth() == 1
    assert pool.cancel(waiting.run_id, "replaced")
    assert pool.depth() == 0
    first = pool.service()
    assert [(r["run_id"], r["status"], r["error"], r["worker"], r["exit_code"])
            for r in first] == [(waiting.run_id, "FAILURE", "replaced", 0, None)]
    assert first[0]["timestamp"] == first[0]["finished_at"]
    assert pool.cancel(busy.run_id, "test over")
    pump(pool, records, lambda: record_of(records, busy))
    assert not marker.exists()
    assert [r["run_id"] for r in records] == [busy.run_id]  # never handed out afterwards


def test_cancel_of_a_run_held_before_its_instant_never_starts_it(pool, tmp_path):
    marker = tmp_path / "ran"
    records: list = []
    # Far ahead, so the worker holds it however slow it is to read it; a hold lasts at
    # most MAX_HOLD_S from then, and the cancel is on the channel right behind the run.
    held = execution(f"touch {marker}", scheduled_for=ahead(3600))
    pool.put(held)
    assert pool.depth() == 0  # handed out at once, held by the worker
    pid = pool.worker_pids()[0]
    assert pool.cancel(held.run_id, "replaced")
    pump(pool, records, lambda: records)
    assert [(r["run_id"], r["status"], r["error"]) for r in records] == [
        (held.run_id, "FAILURE", "replaced")]
    assert_worker_takes_the_next_run(pool, records, pid)
    assert not marker.exists()


def test_cancel_of_an_unknown_or_finished_run_is_false(pool):
    records: list = []
    assert not pool.cancel(new_run_id(), "replaced")
    done = execution("true")
    pool.put(done)
    pump(pool, records, lambda: records)
    assert not pool.cancel(done.run_id, "replaced")
    assert pool.service() == []
    assert [r["status"] for r in records] == ["SUCCESS"]


# -- racing the run's own end ------------------------------------------------------------

def test_a_cancel_racing_the_end_of_a_run_gives_exactly_one_record():
    pool = make_pool(2)
    try:
        pids = pool.worker_pids()
        chooser = random.Random(7)
        records: list = []
        runs = []
        for _ in range(60):
            run = execution("true")
            runs.append(run)
            pool.put(run)
            for _ in range(chooser.randrange(4)):  # cancel at a different moment each time
                wait(pool.wait_objects(), chooser.random() / 200)
                records.extend(pool.service())
            pool.cancel(run.run_id, "replaced")
        pump(pool, records, lambda: all(record_of(records, run) for run in runs))
        # A last run on each worker: a second record of any earlier run would come first.
        last = [execution("true"), execution("true")]
        for run in last:
            pool.put(run)
        pump(pool, records, lambda: all(record_of(records, run) for run in last))
        counts = Counter(r["run_id"] for r in records)
        assert set(counts.values()) == {1}
        assert set(counts) == {run.run_id for run in runs + last}
        outcomes = Counter((r["status"], r["error"]) for r in records)
        assert set(outcomes) <= {("SUCCESS", None), ("FAILURE", "replaced")}, outcomes
        assert pool.worker_pids() == pids  # no worker was lost or replaced
    finally:
        pool.kill_all("test over")


# -- the worker's rules, without processes -----------------------------------------------

@pytest.fixture
def ends():
    worker_end, coordinator_end = multiprocessing.Pipe(duplex=True)
    yield _Link(worker_end), coordinator_end
    worker_end.close()
    coordinator_end.close()


@pytest.mark.parametrize(("current", "messages", "cancel_error"), [
    ("r1", [{"cancel": "r1", "error": "replaced"}], "replaced"),
    ("r1", [{"cancel": "r0", "error": "replaced"}], None),  # the previous run's: over
    (None, [{"cancel": "r1", "error": "replaced"}], None),  # idle: nothing to cancel
    ("r1", [{"cancel": "r1", "error": "first"}, {"cancel": "r1", "error": "second"}], "first"),
    ("r1", [{"cancel": "r1"}], "cancelled"),
    ("r1", [{"stop": True}], None),
])
def test_a_cancel_applies_only_to_the_run_it_names(ends, current, messages, cancel_error):
    link, coordinator = ends
    link.take_run(current)
    for message in messages:
        send_message(coordinator, message)
        link.receive()
    assert link.cancel_error == cancel_error


def test_taking_the_next_run_forgets_the_last_cancel(ends):
    link, coordinator = ends
    link.take_run("r1")
    send_message(coordinator, {"cancel": "r1", "error": "replaced"})
    link.receive()
    link.take_run("r2")
    assert link.cancel_error is None


def test_the_task_reads_a_cancel_at_its_next_check(ends):
    link, coordinator = ends
    link.take_run("r1")
    check = _RunStop(link, _StopFlag())
    assert not check()
    send_message(coordinator, {"cancel": "r1", "error": "replaced"})
    wait_until(link.anything_waiting, message="the cancel on the channel")
    assert check() and check.cancel_error == "replaced"
    assert not coordinator.poll(0)  # nothing was sent back: the record comes later


def test_the_task_leaves_the_channel_alone_while_the_heartbeat_reads(ends):
    link, coordinator = ends
    link.take_run("r1")
    check = _RunStop(link, _StopFlag())
    send_message(coordinator, {"cancel": "r1", "error": "replaced"})
    with link.reading:  # the heartbeat thread, in the middle of its read
        assert not check()
    assert check()  # the next check reads it


def test_a_shutdown_told_first_stays_a_shutdown(ends):
    link, coordinator = ends
    link.take_run("r1")
    stop = _StopFlag()
    stop.requested = True
    check = _RunStop(link, stop)
    assert check()
    send_message(coordinator, {"cancel": "r1", "error": "replaced"})
    wait_until(link.anything_waiting, message="the cancel on the channel")
    assert check() and check.cancel_error is None


def test_the_task_stops_when_the_coordinator_is_gone(ends):
    link, coordinator = ends
    link.take_run("r1")
    stop = _StopFlag()
    check = _RunStop(link, stop)
    coordinator.close()
    assert check() and stop.requested and check.cancel_error is None


def record(status: str, error: str | None) -> dict:
    return {"run_id": "r1", "status": status, "error": error, "exit_code": None,
            "output_tail": "out"}


@pytest.mark.parametrize(("told_cancel", "outcome", "settled"), [
    (True, record("FAILURE", "shutdown"), record("FAILURE", "replaced")),
    (True, record("FAILURE", "exit code 1"), record("FAILURE", "replaced")),
    (True, record("SUCCESS", None), record("SUCCESS", None)),  # ended on its own first
    (False, record("FAILURE", "shutdown"), record("FAILURE", "shutdown")),  # a real shutdown
    (False, record("SUCCESS", None), record("SUCCESS", None)),
])
def test_the_record_says_the_cancel_only_if_the_task_was_told(ends, told_cancel, outcome,
                                                               settled):
    link, coordinator = ends
    link.take_run("r1")
    check = _RunStop(link, _StopFlag())
    if told_cancel:
        send_message(coordinator, {"cancel": "r1", "error": "replaced"})
        wait_until(lambda: check(), message="the task told")
    else:
        send_message(coordinator, {"cancel": "r1", "error": "replaced"})  # read too late
    assert check.settle(outcome) == settled


def test_a_cancel_during_the_hold_drops_the_run(ends):
    link, coordinator = ends
    run = execution("true", scheduled_for=ahead(3600))  # held MAX_HOLD_S at most
    link.take_run(run.run_id)
    stop = _StopFlag()
    stop.busy = True
    send_message(coordinator, {"cancel": run.run_id, "error": "replaced"})
    assert not _hold_until_instant(link, run, stop)
    assert link.cancel_error == "replaced" and not link.leave_when_idle


def test_a_cancel_of_another_run_during_the_hold_keeps_holding(ends, monkeypatch):
    import workers.worker_main as worker_main

    monkeypatch.setattr(worker_main, "MAX_HOLD_S", 0.3)
    link, coordinator = ends
    run = execution("true", scheduled_for=ahead(3600))
    link.take_run(run.run_id)
    stop = _StopFlag()
    stop.busy = True
    send_message(coordinator, {"cancel": "another", "error": "replaced"})
    began = time.monotonic()
    assert _hold_until_instant(link, run, stop)
    assert time.monotonic() - began >= 0.3  # held to the end, the cancel read and ignored
    assert not link.anything_waiting() and link.cancel_error is None
