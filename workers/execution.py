"""One execution of a job: the request a worker receives and the record it produces.

Both sides of the hand-off use these shapes, so they live here, beside the worker. They
travel as plain JSON-able dicts: nothing taskd-specific has to be unpickled on the
other side, and a later queue (a database table) can carry them unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from workers.task_type import NO_ENTRIES, TaskOutcome

SUCCESS = "SUCCESS"
FAILURE = "FAILURE"


def new_run_id() -> str:
    """A random (version 4) UUID in 32 hex digits, as ``uuid.uuid4().hex`` spells it.
    Made here, not by ``uuid``: that module (and the ``platform`` it imports) would be
    in every worker's memory for this one call."""
    octets = bytearray(os.urandom(16))
    octets[6] = octets[6] & 0x0F | 0x40  # version 4
    octets[8] = octets[8] & 0x3F | 0x80  # the RFC 4122 variant
    return octets.hex()


class Execution(NamedTuple):
    """A request to run one occurrence of a job once (a NamedTuple: see task_type)."""

    run_id: str
    job_id: str
    scheduled_for: str  # ISO 8601 with offset
    task_type: str
    task_params: Mapping[str, Any] = NO_ENTRIES
    timeout_s: float | None = None
    manual: bool = False  # asked for by `taskd run`, not by the schedule
    catch_up: bool = False  # an occurrence that fell while no taskd ran (job key catch_up)
    # Policies (each None or empty unless the job asks for it; see the job keys):
    attempt: int | None = None  # with ``retry``: 1 for the first run, 2 for the first retry
    hook: str | None = None  # "on_failure" etc.: this run is that hook of job_id
    payload: str | None = None  # a hook's input: the JSON of the record that set it off
    variables: Mapping[str, str] = NO_ENTRIES  # more TASKD_* for the task
    user: str | None = None  # run as this account (a root daemon only)
    group: str | None = None
    env_file: str | None = None  # KEY=VALUE lines, read at each run, under the task's env
    delayed_s: float | None = None  # jitter: started this long after scheduled_for

    def to_message(self) -> dict[str, Any]:
        message = {"run_id": self.run_id, "job_id": self.job_id,
                   "scheduled_for": self.scheduled_for, "task_type": self.task_type,
                   "task_params": self.task_params or {}, "timeout_s": self.timeout_s,
                   "manual": self.manual, "catch_up": self.catch_up}
        for key in _POLICY_FIELDS:  # only what is set: most runs carry none of them
            value = getattr(self, key)
            if value:
                message[key] = value
        return message

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Execution:
        return cls(**message)

    def not_before(self) -> float:
        """The epoch second before which the run must not start (its instant, or later
        by its jitter delay)."""
        at = datetime.fromisoformat(self.scheduled_for).timestamp()
        return at + (self.delayed_s or 0.0)


_POLICY_FIELDS = ("attempt", "hook", "payload", "variables", "user", "group", "env_file",
                  "delayed_s")


def execution_record(
    execution: Execution,
    *,
    started: datetime,
    finished: datetime,
    outcome: TaskOutcome,
    worker: int,
) -> dict[str, Any]:
    """The execution log line, keys in the contract's order. Times are aware UTC."""
    record = {
        "event": "execution",
        "job_id": execution.job_id,
        "run_id": execution.run_id,
        "timestamp": started.isoformat(timespec="microseconds"),
        "status": SUCCESS if outcome.success else FAILURE,
        "scheduled_for": execution.scheduled_for,
        "finished_at": finished.isoformat(timespec="microseconds"),
        "duration_ms": round((finished - started).total_seconds() * 1000, 3),
        "exit_code": outcome.exit_code,
        "error": None if outcome.success else (outcome.error or "failed"),
        "worker": worker,
        "output_tail": outcome.output_tail,
    }
    if execution.manual:
        record["manual"] = True
    if execution.catch_up:
        record["catch_up"] = True
    if execution.attempt is not None:
        record["attempt"] = execution.attempt
    if execution.hook is not None:
        record["hook"] = execution.hook
    if execution.delayed_s:
        record["delayed_s"] = round(execution.delayed_s, 3)
    return record


def failure_record(
    execution: Execution, *, started: datetime, finished: datetime, worker: int, error: str
) -> dict[str, Any]:
    """The record of a run that ended without a task outcome (worker lost, shutdown)."""
    return execution_record(
        execution,
        started=started,
        finished=finished,
        outcome=TaskOutcome(success=False, error=error),
        worker=worker,
    )
