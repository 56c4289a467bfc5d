"""The worker's own logic without processes: holding an early run, and the heartbeat
thread's rule of never reading what belongs to the main thread."""

from __future__ import annotations

import multiprocessing
import threading
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection

import pytest

from supervisor.processes.channel import receive_message, send_message
from workers.execution import Execution
from workers.worker_main import MAX_HOLD_S, _Heartbeat, _hold_until_instant, _Link, _StopFlag


@pytest.fixture
def ends():
    worker_end, coordinator_end = multiprocessing.Pipe(duplex=True)
    yield _Link(worker_end), coordinator_end
    worker_end.close()
    coordinator_end.close()


def execution_at(epoch: float) -> Execution:
    return Execution(run_id="r1", job_id="j", scheduled_for=datetime.fromtimestamp(
        epoch, UTC).isoformat(), task_type="execute_command")


def busy_flag() -> _StopFlag:
    stop = _StopFlag()
    stop.busy = True
    return stop


def test_hold_returns_at_the_instant_never_before(ends):
    link, _ = ends
    instant = time.time() + 0.05
    assert _hold_until_instant(link, execution_at(instant), busy_flag())
    assert time.time() >= instant


def test_hold_of_a_past_instant_returns_at_once(ends):
    link, _ = ends
    began = time.monotonic()
    assert _hold_until_instant(link, execution_at(time.time() - 3600), busy_flag())
    assert time.monotonic() - began < MAX_HOLD_S


def test_a_stop_before_the_instant_drops_the_run(ends):
    link, coordinator = ends
    send_message(coordinator, {"stop": True})
    assert not _hold_until_instant(link, execution_at(time.time() + 0.5), busy_flag())
    assert link.leave_when_idle


def test_end_of_stream_before_the_instant_drops_the_run(ends):
    link, coordinator = ends
    coordinator.close()
    assert not _hold_until_instant(link, execution_at(time.time() + 0.5), busy_flag())


def test_heartbeat_reports_the_run_and_takes_a_stop_for_after_it(ends):
    link, coordinator = ends
    heartbeat = _Heartbeat(link, busy_flag(), start=False)
    heartbeat.run_id = "r1"
    send_message(coordinator, {"stop": True})
    heartbeat.beat_once()
    assert receive_message(coordinator) == {"heartbeat": "r1"}
    assert link.leave_when_idle and not heartbeat.stop.requested


def test_heartbeat_stops_the_run_when_the_coordinator_is_gone(ends):
    link, coordinator = ends
    heartbeat = _Heartbeat(link, busy_flag(), start=False)
    heartbeat.run_id = "r1"
    coordinator.close()
    heartbeat.beat_once()
    assert heartbeat.stop.requested


def test_heartbeat_never_reads_while_idle(ends):
    link, coordinator = ends
    heartbeat = _Heartbeat(link, busy_flag(), start=False)
    send_message(coordinator, {"run": {"run_id": "next"}})
    heartbeat.beat_once()
    assert not coordinator.poll(0)  # no heartbeat sent
    assert link.receive() == {"run": {"run_id": "next"}}  # still there for the main thread


class _EndsRunWhenTaken:
    """A lock that lets the run end (as the main thread would) while it is waited for."""

    def __init__(self, heartbeat: _Heartbeat) -> None:
        self.heartbeat = heartbeat

    def __enter__(self) -> None:
        self.heartbeat.run_id = None

    def __exit__(self, *exc: object) -> None:
        pass


def test_heartbeat_leaves_the_next_run_to_the_main_thread_if_the_run_ended_meanwhile(ends):
    link, coordinator = ends
    heartbeat = _Heartbeat(link, busy_flag(), start=False)
    heartbeat.run_id = "r1"
    link.reading = _EndsRunWhenTaken(heartbeat)  # type: ignore[assignment]
    send_message(coordinator, {"run": {"run_id": "next"}})
    heartbeat.beat_once()
    assert not coordinator.poll(0)
    assert link.receive() == {"run": {"run_id": "next"}}


class _PausingConnection:
    """The worker's connection, with a heartbeat's ``poll`` held between its check of the
    run and its read (as a preempted heartbeat thread would be)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.polling = threading.Event()
        self.go_on = threading.Event()

    def poll(self, timeout: float) -> bool:
        self.polling.set()
        assert self.go_on.wait(10)
        return self.conn.poll(timeout)

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


def test_a_run_cannot_end_while_the_heartbeat_is_between_its_check_and_its_read(ends):
    link, coordinator = ends
    heartbeat = _Heartbeat(link, busy_flag(), start=False)
    heartbeat.run_id = "r1"
    paused = _PausingConnection(link.conn)
    link.conn = paused  # type: ignore[assignment]
    beat = threading.Thread(target=heartbeat.beat_once)
    beat.start()
    assert paused.polling.wait(10)  # the heartbeat has checked the run and holds the lock
    ending = threading.Thread(target=heartbeat.run_ended)
    ending.start()
    ending.join(0.2)
    assert ending.is_alive()  # the run waits to end (and its result to go out)
    paused.go_on.set()
    beat.join(10)
    ending.join(10)
    assert heartbeat.run_id is None
    assert receive_message(coordinator) == {"heartbeat": "r1"}
    # Only now may the result go out and the coordinator send the next run: it is the
    # main thread's to read.
    send_message(coordinator, {"run": {"run_id": "next"}})
    heartbeat.beat_once()
    assert link.receive() == {"run": {"run_id": "next"}}


def test_hold_is_bounded_whatever_the_instant_says(ends, monkeypatch):
    import workers.worker_main as worker_main

    monkeypatch.setattr(worker_main, "MAX_HOLD_S", 0.05)
    link, _ = ends
    began = time.monotonic()
    assert _hold_until_instant(link, execution_at(time.time() + 3600), busy_flag())
    assert 0.05 <= time.monotonic() - began < 1.0
