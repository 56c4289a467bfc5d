"""The seam between scheduling and running: where due executions are handed over.

The coordinator only ever talks to an ExecutionQueue: it puts executions in, in
scheduled order, and gets finished execution records back. The local implementation
is a fixed pool of worker processes (``pool.WorkerPool``); a clustered one can keep the
queue in a database table shared by several hosts without the scheduler changing.
"""

from __future__ import annotations

from typing import Any, Protocol

from workers.execution import Execution


class ExecutionQueue(Protocol):
    def put(self, execution: Execution) -> None:
        """Accept an execution; it runs when a worker is free. Never blocks."""

    def depth(self) -> int:
        """Executions waiting for a worker."""

    def cancel(self, run_id: str, error: str) -> bool:
        """Stop that execution wherever it is; False if no such run is waiting or running.

        Still waiting: dropped, never run; its record (FAILURE ``error``, started and
        finished now, worker 0) comes back from the next ``service``. Handed out and not
        started yet: never started, recorded FAILURE ``error``. Running: stopped as a
        shutdown stops it (TERM to its process group and its ``TASKD_RUN_ID``
        descendants, KILL after the stop grace), recorded FAILURE ``error`` with its exit
        code and output; the worker stays and takes the next run. A run that ends on its
        own before its task sees the cancel keeps its own record. Either way the record
        comes from ``service``, exactly one per run.
        """

    def wait_objects(self) -> list[Any]:
        """What the coordinator's loop waits on for this queue (fds, sentinels)."""

    def service(self) -> list[dict[str, Any]]:
        """Do pending I/O, hand waiting work to free workers, replace lost workers.

        Returns the execution records that are complete, lost runs included.
        """

    restarts: int  # worker processes replaced since start

    def worker_status(self) -> list[dict[str, Any]]:
        """One object per worker: id, pid, state (idle/busy/down), job_id, run_id, since."""

    def worker_pids(self) -> list[int | None]:
        """Pids of the local worker processes (for diagnostics and status)."""

    # -- shutdown, in this order --------------------------------------------------------

    def drop_pending(self, error: str) -> list[dict[str, Any]]:
        """Record every execution still waiting as FAILURE ``error``; none will run."""

    def stop_workers(self) -> None:
        """Let the workers go: idle ones now, busy ones after their run; a run handed
        out ahead of its instant and not started yet is recorded FAILURE ``shutdown``."""

    def busy(self) -> list[Any]:
        """The runs still in progress."""

    def signal_busy(self, sig: int) -> None:
        """Ask busy workers to stop their runs now (they record ``shutdown``)."""

    def stopping_service(self) -> list[dict[str, Any]]:
        """Like ``service`` during shutdown: collect results, never start anything."""

    def alive(self) -> int:
        """Worker processes still running."""

    def kill_all(self, error: str) -> list[dict[str, Any]]:
        """Kill what is left; the runs they held are recorded FAILURE ``error``."""
