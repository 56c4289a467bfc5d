"""The worker process: run one execution at a time, as the coordinator asks.

Its channel to the coordinator is a private duplex pipe (never a queue shared with other
workers: a process killed while holding a shared queue's lock hangs every other user of
it). Messages, JSON both ways:

- coordinator → worker: ``{"run": <Execution message>}``, or ``{"stop": true}`` (leave
  once idle; a run not started yet is dropped and recorded ``shutdown``)
- worker → coordinator: ``{"heartbeat": run_id}`` every second while the run lasts,
  then ``{"result": <execution record>}``. Nothing is sent as the run starts: the
  message would wake the coordinator, which then takes the CPU from the run's start
  (measured: 0.27 ms on a 2-core machine).

A run may arrive a little before its instant (the coordinator hands out early, so its
own wake-up and the hand-off are not part of the run's lateness): the worker holds it and
starts it at ``scheduled_for``, never earlier.

The task runs on the main thread; a long-lived heartbeat thread reports while a run
lasts. A worker that is stopped or wedged as a whole falls silent, whatever its task is
doing. The heartbeat thread also notices a coordinator that died (end of stream on the
channel) and then asks the task to stop. (A parent-death signal would not do: the
worker's parent is the fork server, which lives as long as any worker does.)

SIGTERM while idle ends the worker at once; while busy it asks the running task to stop
(the task kills its process group and the record says ``shutdown``), reports, and ends.
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

from supervisor.processes.channel import receive_message, send_message
from workers.child_process import become_child_process
from workers.execution import Execution, execution_record, failure_record
from workers.task_type import RunContext, TaskOutcome, task_type_named

# How often a busy worker tells the coordinator it is alive; the coordinator replaces a
# busy worker it has not heard from for much longer (see pool.HEARTBEAT_TIMEOUT_S).
HEARTBEAT_INTERVAL_S = 1.0
# A run handed out early is held at most this long, whatever its instant says (a wall
# clock stepped back after the hand-out must not park a run for hours).
MAX_HOLD_S = 1.0
# The hold ends with a plain sleep, which is precise to tens of microseconds; waiting on
# the channel (for a stop) rounds up to whole milliseconds.
_PRECISE_SLEEP_S = 0.002
_SPIN_S = 0.0005


class _StopFlag:
    """Set by SIGTERM. Idle: leave now. Busy: the task polls it and winds down."""

    def __init__(self) -> None:
        self.requested = False
        self.busy = False

    def handle(self, signum: int, frame: object) -> None:
        self.requested = True
        if not self.busy:
            raise SystemExit(0)

    def __call__(self) -> bool:
        return self.requested


class _Link:
    """The worker's end of its channel, shared by the main and the heartbeat thread."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._send_lock = threading.Lock()
        # Whoever reads holds this. The main thread reads while idle or holding a run;
        # the heartbeat thread only during a run, when the coordinator sends nothing but
        # "stop" (a next run comes only after this run's result).
        self.reading = threading.Lock()
        self.leave_when_idle = False  # the coordinator said stop while a run lasted

    def send(self, message: dict[str, Any]) -> None:
        with self._send_lock:
            send_message(self.conn, message)

    def receive(self) -> dict[str, Any]:
        message = receive_message(self.conn)
        if message.get("stop"):
            self.leave_when_idle = True
        return message


class _Heartbeat:
    """Reports ``{"heartbeat": run_id}`` every second while a run lasts.

    It wakes every second whatever the worker does: waking it when a run starts would
    cost the run's start a thread switch, an idle wake-up costs a few microseconds.
    """

    def __init__(self, link: _Link, stop: _StopFlag, *, start: bool = True) -> None:
        self.link = link
        self.stop = stop
        self.run_id: str | None = None  # set by the main thread while a run lasts
        if start:
            threading.Thread(target=self._beat, name="heartbeat", daemon=True).start()

    def _beat(self) -> None:
        while True:
            time.sleep(HEARTBEAT_INTERVAL_S)
            self.beat_once()

    def run_ended(self) -> None:
        """The main thread, before it sends the run's result. Once the result is out the
        coordinator may send the next run, which only the main thread may read: so the
        run ends under the reading lock, never while this thread holds it between its
        check of the run and its read of the channel."""
        with self.link.reading:
            self.run_id = None

    def beat_once(self) -> None:
        run_id = self.run_id
        if run_id is None or self.stop.requested:
            return  # idle, or winding down: the record comes soon
        try:
            with self.link.reading:
                if self.run_id != run_id:
                    return  # the run ended meanwhile: the main thread reads now
                # A "stop" means leave after the run; end of stream, the coordinator died.
                if self.link.conn.poll(0):
                    self.link.receive()
            self.link.send({"heartbeat": run_id})
        except (OSError, EOFError):
            self.stop.requested = True


def worker_main(conn: Connection, worker_id: int, coordinator_pid: int) -> None:
    stop = _StopFlag()
    signal.signal(signal.SIGTERM, stop.handle)
    become_child_process(coordinator_pid)
    link = _Link(conn)
    heartbeat = _Heartbeat(link, stop)
    while not stop.requested and not link.leave_when_idle:
        try:
            with link.reading:
                message = link.receive()
        except (EOFError, OSError):
            return  # the coordinator is gone or closed our channel
        if "run" not in message:
            continue  # "stop": the loop condition ends it
        execution = Execution.from_message(message["run"])
        stop.busy = True
        try:
            with link.reading:
                on_time = _hold_until_instant(link, execution, stop)
            if on_time:
                heartbeat.run_id = execution.run_id
                record = run_execution(execution, worker_id, stop)
                heartbeat.run_ended()
            else:
                now = datetime.now(UTC)
                record = failure_record(execution, started=now, finished=now,
                                        worker=worker_id, error="shutdown")
            link.send({"result": record})
        except OSError:
            return
        stop.busy = False


def _hold_until_instant(link: _Link, execution: Execution, stop: _StopFlag) -> bool:
    """Wait for the run's instant; False if told to stop (or orphaned) before it came."""
    hold_until = time.time() + MAX_HOLD_S
    due = min(execution.not_before(), hold_until)
    while not stop.requested:
        left = due - time.time()
        if left <= 0:
            return True
        if left <= _SPIN_S:
            continue  # spin: a sleeping CPU takes a few hundred microseconds to wake
        if left <= _PRECISE_SLEEP_S:
            time.sleep(left - _SPIN_S)
            continue
        try:
            if link.conn.poll(left - _PRECISE_SLEEP_S / 2):
                link.receive()  # "stop" before the instant: the run is not started
                return False
        except (OSError, EOFError):
            return False
    return False


def run_execution(execution: Execution, worker_id: int, stop: _StopFlag) -> dict[str, Any]:
    """Run one execution; whatever the task does, produce its record."""
    started = datetime.now(UTC)
    context = RunContext(
        job_id=execution.job_id,
        run_id=execution.run_id,
        scheduled_for=execution.scheduled_for,
        timeout_s=execution.timeout_s,
        stop_requested=stop,
        payload=execution.payload,
        variables=execution.variables,
        user=execution.user,
        group=execution.group,
        env_file=execution.env_file,
    )
    try:
        task_type = task_type_named(execution.task_type)
        outcome = task_type.run(execution.task_params, context)
    except Exception as error:  # a broken plug-in must not take the worker down
        outcome = TaskOutcome(success=False, error=f"task error: {type(error).__name__}: "
                                                   f"{error}"[:200])
    return execution_record(
        execution,
        started=started,
        finished=datetime.now(UTC),
        outcome=outcome,
        worker=worker_id,
    )
