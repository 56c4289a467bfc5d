"""The worker process: run one execution at a time, as the coordinator asks.

Its channel to the coordinator is a private duplex pipe (never a queue shared with other
workers: a process killed while holding a shared queue's lock hangs every other user of
it). Messages, JSON both ways:

- coordinator → worker: ``{"run": <Execution message>}``, ``{"stop": true}`` (leave
  once idle; a run not started yet is dropped and recorded ``shutdown``), or
  ``{"cancel": run_id, "error": phrase}`` (stop that run and record FAILURE ``phrase``;
  a cancel that finds its run over, or never started, changes nothing)
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

A cancel stops one run the same way, through ``stop_requested``, and the worker stays.
The task reads the channel itself each time it asks (the command runner does at least
every 0.1 s), so a cancel is seen at its next check, not at the next heartbeat. Whether
the run was cancelled is decided on the main thread: only a task that was told (its
``stop_requested`` answered True for the cancel) and did not succeed is recorded with the
cancel's error; a run that ended first keeps its own outcome, so there is one record.
"""

from __future__ import annotations

import select
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

from supervisor.processes.channel import receive_message, send_message
from workers.child_process import become_child_process
from workers.execution import FAILURE, Execution, execution_record, failure_record
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
        # Whoever reads holds this. The main thread reads while idle or holding a run
        # (and, during a run, in the task's stop checks); the heartbeat thread only
        # during a run, when the coordinator sends nothing but "stop" and "cancel" (a
        # next run comes only after this run's result).
        self.reading = threading.Lock()
        self.leave_when_idle = False  # the coordinator said stop while a run lasted
        # The run this worker holds or runs (set by the main thread), and the error of
        # the coordinator's cancel of it, whichever thread read that.
        self.run_id: str | None = None
        self.cancel_error: str | None = None
        self._readable = select.poll()  # a cheap "anything there?" for the task's checks
        self._readable.register(conn.fileno(), select.POLLIN)

    def send(self, message: dict[str, Any]) -> None:
        with self._send_lock:
            send_message(self.conn, message)

    def receive(self) -> dict[str, Any]:
        message = receive_message(self.conn)
        if message.get("stop"):
            self.leave_when_idle = True
        elif (self.run_id is not None and message.get("cancel") == self.run_id
              and self.cancel_error is None):
            self.cancel_error = str(message.get("error") or "cancelled")
        return message

    def take_run(self, run_id: str | None) -> None:
        """The main thread, while nobody else reads: from now on a cancel naming
        ``run_id`` applies (None: no run, a late cancel finds nothing)."""
        self.run_id = run_id
        self.cancel_error = None

    def anything_waiting(self) -> bool:
        return bool(self._readable.poll(0))


class _RunStop:
    """A run's ``stop_requested``: a shutdown (SIGTERM, coordinator gone) or a cancel of
    this run. Called by the task on the main thread; each call also reads what the
    channel holds, without waiting. The first reason it answered True for sticks."""

    def __init__(self, link: _Link, stop: _StopFlag) -> None:
        self.link = link
        self.stop = stop
        self.told = False
        self.cancel_error: str | None = None  # set once the task was told of a cancel

    def __call__(self) -> bool:
        if not self.told:
            self._read_waiting()
            if self.link.cancel_error is not None:
                self.told, self.cancel_error = True, self.link.cancel_error
            elif self.stop.requested:
                self.told = True
        return self.told

    def _read_waiting(self) -> None:
        if not self.link.reading.acquire(blocking=False):
            return  # the heartbeat thread is reading: the next check sees what it read
        try:
            while self.link.anything_waiting():
                self.link.receive()
        except (OSError, EOFError):
            self.stop.requested = True  # the coordinator is gone, as the heartbeat says
        finally:
            self.link.reading.release()

    def settle(self, record: dict[str, Any]) -> dict[str, Any]:
        """The run's record, with the cancel's error if the cancel is what stopped it."""
        if self.cancel_error is None or record["status"] != FAILURE:
            return record
        return {**record, "error": self.cancel_error}


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
                # A "stop" means leave after the run, a "cancel" is for the task's next
                # check; end of stream, the coordinator died.
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
            continue  # "stop": the loop condition ends it; a late "cancel": nothing
        execution = Execution.from_message(message["run"])
        link.take_run(execution.run_id)
        stop.busy = True
        try:
            with link.reading:
                on_time = _hold_until_instant(link, execution, stop)
            if on_time:
                run_stop = _RunStop(link, stop)
                heartbeat.run_id = execution.run_id
                record = run_execution(execution, worker_id, run_stop)
                heartbeat.run_ended()
                record = run_stop.settle(record)
            else:
                now = datetime.now(UTC)
                record = failure_record(execution, started=now, finished=now,
                                        worker=worker_id,
                                        error=link.cancel_error or "shutdown")
            link.take_run(None)  # the heartbeat thread no longer reads: only we do
            link.send({"result": record})
        except OSError:
            return
        stop.busy = False


def _hold_until_instant(link: _Link, execution: Execution, stop: _StopFlag) -> bool:
    """Wait for the run's instant; False if told to stop, cancelled (``link.cancel_error``)
    or orphaned before it came."""
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
                link.receive()
                if link.leave_when_idle or link.cancel_error is not None:
                    return False  # stopped or cancelled before the instant: not started
        except (OSError, EOFError):
            return False
    return False


def run_execution(execution: Execution, worker_id: int,
                  stop: Callable[[], bool]) -> dict[str, Any]:
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
