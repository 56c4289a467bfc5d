"""The task-type plug-in interface and its registry.

A task type is a class registered under the ``taskd.task_types`` entry-point group. The
coordinator only ever calls ``validate`` (when a job file is read, so a bad task is
rejected before it is scheduled); ``run`` is called inside a worker process. Nothing in
the scheduling core names a concrete type: a new type is a new class plus an entry point.

The daemon's children do not look the entry points up again: the coordinator hands its
registry down in the environment (``REGISTRY_VARIABLE``), so a worker runs exactly the
types its jobs were validated against, and no worker holds importlib.metadata (~1.5 MB
of memory in each).
"""

from __future__ import annotations

import importlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from functools import cache
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple

ENTRY_POINT_GROUP = "taskd.task_types"
#: ``{"name": "module:qualified.name", ...}`` (JSON): the registry a parent process found.
#: Read and removed by the first lookup, so the tasks a worker runs never see it.
REGISTRY_VARIABLE = "TASKD_TASK_TYPES"

#: How much of a task's output a result carries (the log line's ``output_tail``).
OUTPUT_TAIL_BYTES = 4096


class TaskParamsError(ValueError):
    """A task's parameters are unusable; the message names the key and the expectation."""


#: The empty mapping a record's mapping field defaults to (read-only: it is shared).
NO_ENTRIES: Mapping[str, Any] = MappingProxyType({})


# The records of this package are NamedTuples, not dataclasses: ``dataclasses`` imports
# ``inspect`` (and ``ast``, ``dis``, ``tokenize``), ~1.3 MB in each worker's memory.
class RunContext(NamedTuple):
    """What a task run knows about the execution it belongs to."""

    job_id: str
    run_id: str
    scheduled_for: str  # ISO 8601 with offset
    timeout_s: float | None
    # Polled by long-running tasks: True once the worker has been told to stop (shutdown).
    stop_requested: Callable[[], bool] = lambda: False
    # A hook's input: the JSON of the execution record that set it off (a command's
    # stdin, a request's body); None for ordinary runs.
    payload: str | None = None
    # More TASKD_* variables for the task (a hook's TASKD_STATUS, ...).
    variables: Mapping[str, str] = NO_ENTRIES
    user: str | None = None  # run as this account (a root daemon only)
    group: str | None = None
    env_file: str | None = None  # KEY=VALUE lines merged under the task's own env


class TaskOutcome(NamedTuple):
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
def _handed_down() -> dict[str, str] | None:
    """The registry the parent process handed down, if any; read once, then removed."""
    handed = os.environ.pop(REGISTRY_VARIABLE, None)
    return None if handed is None else json.loads(handed)


@cache
def registered_task_types() -> dict[str, type[TaskType]]:
    """Every task type installed under the entry-point group, by name (or handed down)."""
    handed = _handed_down()
    if handed is not None:
        return {name: _resolve(target) for name, target in handed.items()}
    from importlib.metadata import entry_points

    found: dict[str, type[TaskType]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.load()
    return found


def registry_for_children() -> str:
    """This process's registry as ``REGISTRY_VARIABLE``'s value, for the processes it starts."""
    return json.dumps({name: f"{cls.__module__}:{cls.__qualname__}"
                       for name, cls in registered_task_types().items()})


def _resolve(target: str) -> type[TaskType]:
    module, _, qualified_name = target.partition(":")
    found: Any = importlib.import_module(module)
    for name in qualified_name.split("."):
        found = getattr(found, name)
    return found


@cache
def task_type_named(name: str) -> type[TaskType]:
    """One task type by name. With a handed-down registry only that type's module is
    imported: a worker's first run does not pay for every other type's imports."""
    handed = _handed_down()
    if handed is not None:
        if name in handed:
            return _resolve(handed[name])
        known = sorted(handed)
    else:
        types = registered_task_types()
        if name in types:
            return types[name]
        known = sorted(types)
    raise UnknownTaskType(f"unknown task type {name!r} (known: "
                          f"{', '.join(known) or 'none installed'})")
