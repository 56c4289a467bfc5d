"""The worker process: run one execution at a time, as the coordinator asks.

Its channel to the coordinator is a private duplex pipe (never a queue shared with other
workers: a process killed while holding a shared queue's lock hangs every other user of
it). Messages, JSON both ways:

- coordinator → worker: ``{"run": <Execution message>}`` or ``{"stop": true}``
- worker → coordinator: ``{"started": run_id}``, then ``{"heartbeat": run_id}`` every
  second while the run lasts, then ``{"result": <execution record>}``

SIGTERM while idle ends the worker at once; while busy it asks the running task to stop
(the task kills its process group and the record says ``shutdown``), reports, and ends.
EOF on the channel (the coordinator is gone) ends it too.
"""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

from supervisor.channel import receive_message, send_message
from workers.child_process import become_child_process
from workers.execution import Execution, execution_record, failure_record
from workers.task_type import RunContext, TaskOutcome, task_type_named

# How often a busy worker tells the coordinator it is alive; the coordinator replaces a
# busy worker it has not heard from for much longer (see pool.HEARTBEAT_TIMEOUT_S).
HEARTBEAT_INTERVAL_S = 1.0


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


def worker_main(conn: Connection, worker_id: int, coordinator_pid: int) -> None:
    stop = _StopFlag()
    signal.signal(signal.SIGTERM, stop.handle)
    become_child_process(coordinator_pid)
    while not stop.requested:
        try:
            message = receive_message(conn)
        except (EOFError, OSError):
            return  # the coordinator is gone or closed our channel
        if message.get("stop"):
            return
        stop.busy = True
        try:
            record = _run_with_heartbeats(conn, Execution.from_message(message["run"]),
                                          worker_id, stop)
            send_message(conn, {"result": record})
        except OSError:
            return
        stop.busy = False


def _run_with_heartbeats(conn: Connection, execution: Execution, worker_id: int,
                         stop: _StopFlag) -> dict[str, Any]:
    """Run the task on a thread while this, the work loop, reports that it is alive.

    The heartbeat comes from the work loop itself, so a worker that is stopped or wedged
    falls silent, whatever its task is doing. The loop also notices a coordinator that
    died: it never writes to a busy worker, so a readable channel now means end of
    stream. (A parent-death signal would not do: the worker's parent is the fork
    server, which lives as long as any worker does.)
    """
    outcome: list[dict[str, Any]] = []
    task = threading.Thread(target=lambda: outcome.append(
        run_execution(execution, worker_id, stop)), name="task", daemon=True)
    task.start()
    try:
        send_message(conn, {"started": execution.run_id})
    except OSError:
        stop.requested = True
    while True:
        task.join(HEARTBEAT_INTERVAL_S)
        if not task.is_alive():
            if outcome:
                return outcome[0]
            now = datetime.now(UTC)  # the task thread died in a way run_execution missed
            return failure_record(execution, started=now, finished=now, worker=worker_id,
                                  error="task error: the task thread died")
        if stop.requested:
            continue  # winding down: the task stops its processes, then we report
        try:
            if conn.poll(0):
                stop.requested = True
                continue
            send_message(conn, {"heartbeat": execution.run_id})
        except (OSError, EOFError):
            stop.requested = True


def run_execution(execution: Execution, worker_id: int, stop: _StopFlag) -> dict[str, Any]:
    """Run one execution; whatever the task does, produce its record."""
    started = datetime.now(UTC)
    context = RunContext(
        job_id=execution.job_id,
        run_id=execution.run_id,
        scheduled_for=execution.scheduled_for,
        timeout_s=execution.timeout_s,
        stop_requested=stop,
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

