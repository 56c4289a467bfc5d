"""The task-type plug-in interface and its registry.

A task type is a class registered under the ``taskd.task_types`` entry-point group. The
coordinator only ever calls ``validate`` (when a job file is read, so a bad task is
rejected before it is scheduled); ``run`` is called inside a worker process. Nothing in
the scheduling core names a concrete type: a new type is a new class plus an entry point.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar

ENTRY_POINT_GROUP = "taskd.task_types"

#: How much of a task's output a result carries (the log line's ``output_tail``).
OUTPUT_TAIL_BYTES = 4096


class TaskParamsError(ValueError):
    """A task's parameters are unusable; the message names the key and the expectation."""


@dataclass(frozen=True)
class RunContext:
    """What a task run knows about the execution it belongs to."""

    job_id: str
    run_id: str
    scheduled_for: str  # ISO 8601 with offset
    timeout_s: float | None
    # Polled by long-running tasks: True once the worker has been told to stop (shutdown).
    stop_requested: Callable[[], bool] = lambda: False


@dataclass(frozen=True)
class TaskOutcome:
    """How one run ended. ``error`` is a short phrase when it did not succeed."""

    success: bool
    exit_code: int | None = None
    error: str | None = None
    output_tail: str = ""


class TaskType(ABC):
    """One kind of task. Subclasses set ``name`` and implement both methods."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def validate(cls, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """Check the task object's keys (without ``type``); return the normalized params.

        Raise TaskParamsError with a one-line message naming the key at fault.
        """

    @classmethod
    @abstractmethod
    def run(cls, params: Mapping[str, Any], context: RunContext) -> TaskOutcome:
        """Run once inside a worker process with params that ``validate`` returned."""


class UnknownTaskType(LookupError):
    pass


@cache
def installed_task_types() -> dict[str, EntryPoint]:
    """The entry points of every installed task type, by name; nothing imported yet.

    The fork server calls this once (``workers.forkserver_init``), so every worker
    starts with the scan done; each worker imports a type only when it first runs one.
    """
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


@cache
def task_type_named(name: str) -> type[TaskType]:
    installed = installed_task_types()
    try:
        entry_point = installed[name]
    except KeyError:
        known = ", ".join(sorted(installed)) or "none installed"
        raise UnknownTaskType(f"unknown task type {name!r} (known: {known})") from None
    return entry_point.load()


def registered_task_types() -> dict[str, type[TaskType]]:
    """Every installed task type, by name, imported."""
    return {name: task_type_named(name) for name in installed_task_types()}
