"""The worker process: run one execution at a time, as the coordinator asks.

Its channel to the coordinator is a private duplex pipe (never a queue shared with other
workers: a process killed while holding a shared queue's lock hangs every other user of
it). Messages, JSON both ways:

- coordinator → worker: ``{"run": <Execution message>}`` or ``{"stop": true}``
- worker → coordinator: ``{"result": <execution record>}``

SIGTERM while idle ends the worker at once; while busy it asks the running task to stop
(the task kills its process group and the record says ``shutdown``), reports, and ends.
EOF on the channel (the coordinator is gone) ends it too.
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

from supervisor.channel import receive_message, send_message
from workers.child_process import become_child_process
from workers.execution import Execution, execution_record
from workers.task_type import RunContext, TaskOutcome, task_type_named


class _StopFlag:
    """Set by SIGTERM. Idle: leave now. Busy: the task polls it and winds down.

    A busy worker also stops when the coordinator is gone. It cannot count on a
    parent-death signal: its parent is the fork server, which lives on as long as any
    worker does. But the coordinator never writes to a busy worker's channel, so the
    channel turning readable while busy means end of stream: the coordinator died.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.requested = False
        self.busy = False

    def handle(self, signum: int, frame: object) -> None:
        self.requested = True
        if not self.busy:
            raise SystemExit(0)

    def __call__(self) -> bool:
        if not self.requested:
            try:
                self.requested = self.conn.poll(0)
            except (OSError, EOFError):
                self.requested = True
        return self.requested


def worker_main(conn: Connection, worker_id: int, coordinator_pid: int) -> None:
    stop = _StopFlag(conn)
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
        record = run_execution(Execution.from_message(message["run"]), worker_id, stop)
        try:
            send_message(conn, {"result": record})
        except OSError:
            return
        stop.busy = False


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

