"""Concurrency groups: jobs that share a ``concurrency_group`` never run at once.

One run per group at a time; the others wait in scheduled order. The wait is bounded:
each job has at most one run waiting (a later occurrence while one waits is skipped,
as ``overlap: "skip"`` would), and a group at most ``MAX_WAITING`` in all.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from workers.execution import Execution

MAX_WAITING = 1000


@dataclass(slots=True)
class _Group:
    running: str | None = None  # run id
    waiting: deque[Execution] = field(default_factory=deque)


class GroupGate:
    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}
        self._group_of_run: dict[str, str] = {}

    def admit(self, group: str, execution: Execution) -> str:
        """``"run"`` (hand it out now), ``"queued"`` or ``"skipped"``."""
        state = self._groups.setdefault(group, _Group())
        if state.running is None:
            state.running = execution.run_id
            self._group_of_run[execution.run_id] = group
            return "run"
        if (len(state.waiting) >= MAX_WAITING
                or any(waiting.job_id == execution.job_id for waiting in state.waiting)):
            return "skipped"
        state.waiting.append(execution)
        return "queued"

    def finished(self, run_id: str) -> Execution | None:
        """A run ended (or was taken back): the group's next run to hand out, if any."""
        group = self._group_of_run.pop(run_id, None)
        if group is None:
            return None
        state = self._groups[group]
        state.running = None
        if not state.waiting:
            del self._groups[group]
            return None
        following = state.waiting.popleft()
        state.running = following.run_id
        self._group_of_run[following.run_id] = group
        return following

    def take_waiting(self, run_id: str) -> Execution | None:
        """Take a waiting run out (it was replaced or its job removed)."""
        for state in self._groups.values():
            for execution in state.waiting:
                if execution.run_id == run_id:
                    state.waiting.remove(execution)
                    return execution
        return None

    def drain(self) -> list[Execution]:
        """Every waiting run (at shutdown)."""
        waiting = [execution for state in self._groups.values() for execution in state.waiting]
        for state in self._groups.values():
            state.waiting.clear()
        return waiting

    def status(self) -> dict[str, dict[str, object]]:
        return {name: {"running": state.running,
                       "waiting": [execution.job_id for execution in state.waiting]}
                for name, state in sorted(self._groups.items())}
