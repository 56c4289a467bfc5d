"""A fixed pool of worker processes: the local ExecutionQueue.

Each worker has a private duplex pipe; the coordinator feeds a worker only when it is
idle, so at most one execution is ever in flight per pipe, and waiting executions stay
here, in scheduled order, counted as the queue depth. An execution is handed to an idle
worker as soon as it is put (it may be a little ahead of its instant: the worker holds it
until then, see ``workers.worker_main``).

One epoll instance holds every live worker's channel and sentinel: the loop waits on it
alone, and each ``service`` reads only the workers it reports ready (a loop step costs
one system call for the whole pool, not two per worker). Worker death, however it happens
(SIGKILL included, idle or busy), is seen through the process sentinel or the pipe's end
of stream; the worker is replaced and the execution it held is recorded FAILURE
``worker lost``: never re-run, a command may have had side effects. The processes left
behind by the lost run are found by their ``TASKD_RUN_ID`` and killed.

``cancel`` stops one execution wherever it is: one still waiting here is dropped and
recorded at once; one a worker holds is the worker's to stop, and to record, so each run
still has exactly one record (see ``workers.worker_main``).
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from supervisor.processes.channel import Channel
from workers.execution import Execution, failure_record
from workers.run_processes import kill_run_processes
from workers.worker_main import worker_main

# A worker that dies this many times within the window is restarted only after a pause,
# so a crash loop cannot eat the coordinator.
FLAP_DEATHS = 5
FLAP_WINDOW_S = 10.0
FLAP_PAUSE_S = 2.0
# A busy worker sends a heartbeat every second (workers.worker_main); one not heard from
# for this long is stopped or wedged: it is killed and replaced, its run recorded lost.
HEARTBEAT_TIMEOUT_S = 10.0


@dataclass
class WorkerSlot:
    """One position in the pool; its process is replaced when it dies."""

    worker_id: int
    process: BaseProcess | None = None
    channel: Channel | None = None
    execution: Execution | None = None
    started_at: datetime | None = None  # when the current execution was handed over
    deaths: deque[float] = field(default_factory=lambda: deque(maxlen=FLAP_DEATHS))
    restart_at: float | None = None  # monotonic; set while paused after flapping
    last_heard: float = 0.0  # monotonic; last message from the worker while busy
    spawns: int = 0

    @property
    def state(self) -> str:
        if self.process is None:
            return "down"
        return "busy" if self.execution is not None else "idle"


class WorkerPool:
    """``size`` worker processes behind the ExecutionQueue interface."""

    def __init__(
        self,
        size: int,
        *,
        context: BaseContext | None = None,
        monotonic: Callable[[], float],
        on_event: Callable[[dict[str, Any]], None] = lambda event: None,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
    ) -> None:
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.context = context or multiprocessing.get_context("forkserver")
        self.slots = [WorkerSlot(worker_id=i + 1) for i in range(size)]
        self.pending: deque[Execution] = deque()
        self.monotonic = monotonic
        self.on_event = on_event
        self.restarts = 0
        self._finished: list[dict[str, Any]] = []
        self._readiness = select.epoll()  # live workers' channels and sentinels
        self._slot_of_fd: dict[int, WorkerSlot] = {}

    # -- the ExecutionQueue interface --------------------------------------------------

    def put(self, execution: Execution) -> None:
        self.pending.append(execution)
        self._hand_out()

    def depth(self) -> int:
        return len(self.pending)

    def cancel(self, run_id: str, error: str) -> bool:
        for index, execution in enumerate(self.pending):
            if execution.run_id == run_id:  # never handed out: it never runs
                del self.pending[index]
                now = datetime.now(UTC)
                self._finished.append(failure_record(execution, started=now, finished=now,
                                                     worker=0, error=error))
                return True
        for slot in self.slots:
            if (slot.execution is not None and slot.execution.run_id == run_id
                    and slot.channel is not None):
                # Its result may be on the way already: then the worker ignores this.
                slot.channel.send({"cancel": run_id, "error": error})
                return True
        return False

    def wait_objects(self) -> list[Any]:
        objects: list[Any] = [self._readiness]
        for slot in self.slots:
            if slot.channel is not None:
                waiter = slot.channel.write_waiter()  # the rest of a large run message
                if waiter is not None:
                    objects.append(waiter)
        return objects

    def service(self) -> list[dict[str, Any]]:
        readable, exited = self._ready_slots()
        for slot in self.slots:
            self._service_slot(slot, readable=slot.worker_id in readable,
                               exited=slot.worker_id in exited)
        self._hand_out()
        finished, self._finished = self._finished, []
        return finished

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)

    def next_restart(self) -> float | None:
        """Monotonic time a paused slot is due to restart (the loop wakes for it)."""
        times = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        return min(times, default=None)

    def busy(self) -> list[WorkerSlot]:
        return [slot for slot in self.slots if slot.execution is not None]

    def drop_pending(self, error: str) -> list[dict[str, Any]]:
        """Record every waiting execution as FAILURE without running it (shutdown)."""
        now = datetime.now(UTC)
        records = [failure_record(execution, started=now, finished=now, worker=0, error=error)
                   for execution in self.pending]
        self.pending.clear()
        return records

    def signal_busy(self, sig: signal.Signals) -> None:
        for slot in self.busy():
            _send_signal(slot.process, sig)

    def stop_workers(self) -> None:
        """Ask every worker to leave (shutdown): idle ones at once, busy ones after their
        run; a worker still holding a run before its instant drops it (``shutdown``)."""
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.send({"stop": True})

    def kill_all(self, error: str) -> list[dict[str, Any]]:
        """Kill every worker now; the runs they held are recorded with ``error``."""
        records = []
        for slot in self.slots:
            if slot.process is None:
                continue
            if slot.process.exitcode is None:  # never signal a reaped pid: it may be reused
                _send_signal(slot.process, signal.SIGKILL)
            slot.process.join(timeout=5)
            if slot.execution is not None:
                records.append(self._lost(slot, error))
            self._discard(slot)
        return records

    def worker_status(self) -> list[dict[str, Any]]:
        return [{"id": slot.worker_id,
                 "pid": slot.process.pid if slot.process else None,
                 "state": slot.state,
                 "job_id": slot.execution.job_id if slot.execution else None,
                 "run_id": slot.execution.run_id if slot.execution else None,
                 "since": slot.started_at.isoformat() if slot.started_at else None,
                 "restarts": max(0, slot.spawns - 1)}
                for slot in self.slots]

    def worker_pids(self) -> list[int | None]:
        return [slot.process.pid if slot.process else None for slot in self.slots]

    def alive(self) -> int:
        return sum(1 for slot in self.slots if slot.process is not None
                   and slot.process.exitcode is None)

    def stopping_service(self) -> list[dict[str, Any]]:
        """During shutdown: collect results and reap exits, never respawn or hand out.

        Every worker has been told to leave (``stop_workers``); a busy one does once its
        run has ended.
        """
        readable, exited = self._ready_slots()
        for slot in self.slots:
            self._service_slot(slot, readable=slot.worker_id in readable,
                               exited=slot.worker_id in exited, respawn=False)
        finished, self._finished = self._finished, []
        return finished

    # -- internals ---------------------------------------------------------------------

    def _ready_slots(self) -> tuple[set[int], set[int]]:
        """Ids of the workers whose channel is readable now, and of those that exited
        (their sentinel is readable): only those need their exit code asked, which costs
        ``multiprocessing`` a selector of its own each time."""
        readable, exited = set(), set()
        for fd, _ in self._readiness.poll(0):
            slot = self._slot_of_fd.get(fd)
            if slot is not None:
                is_channel = slot.channel is not None and fd == slot.channel.fileno()
                (readable if is_channel else exited).add(slot.worker_id)
        return readable, exited

    def _service_slot(self, slot: WorkerSlot, *, readable: bool, exited: bool,
                      respawn: bool = True) -> None:
        if slot.process is None:
            if respawn and slot.restart_at is not None and self.monotonic() >= slot.restart_at:
                slot.restart_at = None
                self._spawn(slot)
            return
        assert slot.channel is not None
        now = self.monotonic()
        if slot.channel.unsent_bytes:
            # A run message larger than the socket buffer goes out in pieces as the
            # worker reads them; a worker that takes them is alive, though it cannot
            # say so before it has the whole message.
            unsent = slot.channel.unsent_bytes
            if slot.channel.flush() or slot.channel.unsent_bytes < unsent:
                slot.last_heard = now
        for message in slot.channel.receive() if readable else ():
            slot.last_heard = now
            record = message.get("result") if isinstance(message, dict) else None
            if record is None or slot.execution is None:
                continue
            if record.get("run_id") == slot.execution.run_id:
                self._finished.append(record)
                slot.execution = None
                slot.started_at = None
        if (slot.execution is not None and now - slot.last_heard > self.heartbeat_timeout_s
                and slot.process.exitcode is None):
            self.on_event({"event": "worker_unresponsive", "level": "error",
                           "worker": slot.worker_id, "pid": slot.process.pid,
                           "job_id": slot.execution.job_id,
                           "silent_for_s": round(now - slot.last_heard, 1)})
            _send_signal(slot.process, signal.SIGKILL)
            slot.process.join(timeout=5)
            exited = True  # dead now: handled below
        if slot.channel.closed or exited:
            self._on_death(slot, respawn=respawn)

    def _on_death(self, slot: WorkerSlot, *, respawn: bool) -> None:
        process = slot.process
        assert process is not None
        if process.exitcode is None:  # pipe closed but still running: make sure
            _send_signal(process, signal.SIGKILL)
        process.join(timeout=5)
        pid, exitcode = process.pid, process.exitcode
        if slot.execution is not None:
            self._finished.append(self._lost(slot, "worker lost"))
        self._discard(slot)
        if not respawn:
            return
        now = self.monotonic()
        slot.deaths.append(now)
        flapping = len(slot.deaths) == FLAP_DEATHS and now - slot.deaths[0] < FLAP_WINDOW_S
        self.on_event({"event": "worker_died", "level": "warning", "worker": slot.worker_id,
                       "pid": pid, "exitcode": exitcode,
                       "restart_in_s": FLAP_PAUSE_S if flapping else 0})
        if flapping:
            slot.restart_at = now + FLAP_PAUSE_S
        else:
            self._spawn(slot)

    def _lost(self, slot: WorkerSlot, error: str) -> dict[str, Any]:
        execution = slot.execution
        assert execution is not None
        kill_run_processes(execution.run_id)  # what the lost run left running
        record = failure_record(execution, started=slot.started_at or datetime.now(UTC),
                                finished=datetime.now(UTC), worker=slot.worker_id,
                                error=error)
        slot.execution = None
        slot.started_at = None
        return record

    def _discard(self, slot: WorkerSlot) -> None:
        for fd in [fd for fd, owner in self._slot_of_fd.items() if owner is slot]:
            self._readiness.unregister(fd)
            del self._slot_of_fd[fd]
        if slot.channel is not None:
            slot.channel.close()
        if slot.process is not None and slot.process.exitcode is not None:
            slot.process.close()  # releases its sentinel descriptor
        slot.process = None
        slot.channel = None

    def _spawn(self, slot: WorkerSlot) -> None:
        parent_end, child_end = self.context.Pipe(duplex=True)
        process = self.context.Process(
            target=worker_main,
            args=(child_end, slot.worker_id, os.getpid()),
            name=f"taskd-worker-{slot.worker_id}",
            daemon=True,
        )
        process.start()
        child_end.close()  # else the child's death never reads as end of stream here
        slot.process = process
        slot.channel = Channel(parent_end)
        for fd in (slot.channel.fileno(), process.sentinel):
            self._readiness.register(fd, select.EPOLLIN)
            self._slot_of_fd[fd] = slot
        if slot.spawns:  # a replacement, not the first start
            self.restarts += 1
            self.on_event({"event": "worker_restarted", "level": "info",
                           "worker": slot.worker_id, "pid": process.pid})
        slot.spawns += 1

    def _hand_out(self) -> None:
        for slot in self.slots:
            if not self.pending:
                return
            if slot.execution is None and slot.channel is not None and not slot.channel.closed:
                execution = self.pending.popleft()
                slot.execution = execution
                slot.started_at = datetime.now(UTC)
                slot.last_heard = self.monotonic()
                slot.channel.send({"run": execution.to_message()})


def _send_signal(process: BaseProcess | None, sig: signal.Signals) -> None:
    if process is None or process.pid is None:
        return
    try:
        os.kill(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
