"""The state store's interface, and the shapes that cross it.

Writes are *items*, plain JSON-able dicts, so they can travel over the logger's pipe and
be replayed to a replacement logger unchanged:

- ``{"record": {...}}``: an execution record, the log line's fields;
- ``{"mark": "dispatched", "job_id", "run_id", "scheduled_for", "at", "one_time",
  "manual"}``: an execution was handed to a worker (``at``: epoch seconds);
- ``{"mark": "missed", "job_id", "scheduled_for", "one_time"}``: occurrences up to this
  one were reported missed;
- ``{"mark": "known", "job_ids": [...], "at"}``: jobs that catch up were loaded (the
  occurrences they can catch up on start here);
- ``{"mark": "alive", "at"}``: the daemon was running at ``at``;
- ``{"mark": "paused", "job_id", "paused"}``: ``taskd pause`` / ``taskd resume``;
- ``{"mark": "retry", "job_id", "scheduled_for", "attempt", "due_at", "manual"}``: a
  retry waits (one per job: a newer one replaces it);
- ``{"mark": "retry_done", "job_id"}``: it ran, or was cancelled.

An implementation applies a batch of items in one transaction, in order. It reads back a
``Memory`` when a daemon starts, and history for ``taskd history``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class StoreError(Exception):
    """The store cannot be used. ``str()`` names the file and the problem."""


class StoreTooNew(StoreError):
    """Written by a newer taskd: refused, never rewritten."""


@dataclass(slots=True)
class JobMemory:
    """What the store remembers of one job."""

    known_since: float | None = None  # epoch: first loaded (jobs that catch up)
    last_scheduled: float | None = None  # epoch: latest occurrence run or missed
    last_started: str | None = None  # ISO: the start of its last recorded run
    last_status: str | None = None
    last_error: str | None = None
    last_success: str | None = None  # ISO: the start of its last successful run
    last_failure: str | None = None
    paused: bool = False


@dataclass(slots=True)
class Memory:
    """Everything a starting daemon reads back."""

    jobs: dict[str, JobMemory] = field(default_factory=dict)
    one_time_done: set[tuple[str, float]] = field(default_factory=set)  # (job_id, epoch)
    last_alive: float | None = None  # epoch: the previous daemon was running then
    # Handed to a worker by an earlier daemon, never recorded: it died with them.
    unfinished: list[dict[str, Any]] = field(default_factory=list)
    # Retries an earlier daemon had waiting: the "retry" marks' fields.
    pending_retries: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    job_id: str | None = None
    status: str | None = None  # SUCCESS or FAILURE
    since: float | None = None  # epoch: runs started at or after
    limit: int = 20


def history_filters(query: HistoryQuery, placeholder: str) -> tuple[list[str], list[Any]]:
    """The WHERE conditions of a history query and their arguments, in the driver's
    ``placeholder`` style (``?`` for sqlite3, ``%s`` for psycopg)."""
    where: list[str] = []
    args: list[Any] = []
    for column, operator, value in (("job_id", "=", query.job_id),
                                    ("status", "=", query.status),
                                    ("started", ">=", query.since)):
        if value is not None:
            where.append(f"{column} {operator} {placeholder}")
            args.append(value)
    return where, args


def refuse_newer(version: int, current: int, location: str) -> int:
    """``version`` if this taskd (schema ``current``) can read it; StoreTooNew if newer."""
    if version > current:
        raise StoreTooNew(f"{location}: written by a newer taskd (schema version {version}; "
                          f"this taskd knows up to {current}); refusing to use or change it")
    return version


class StateStore(ABC):
    """One place that remembers; every implementation passes tests/test_store_contract.py."""

    #: Named in every diagnostic about this store (a file, or a database without password).
    location: str

    @abstractmethod
    def load_memory(self) -> Memory:
        """What a starting daemon needs to know (StoreError if it cannot be read)."""

    @abstractmethod
    def apply(self, items: Sequence[dict[str, Any]]) -> None:
        """Apply records and marks in one transaction, in order (StoreError on failure:
        then none of them was applied)."""

    @abstractmethod
    def history(self, query: HistoryQuery) -> list[dict[str, Any]]:
        """Execution records, newest first."""

    @abstractmethod
    def prune(self, *, now: float, max_age_s: float, per_job: int, budget: int) -> int:
        """Delete up to ``budget`` records older than ``max_age_s`` or beyond the newest
        ``per_job`` of their job; the number deleted (less than ``budget``: done)."""

    @abstractmethod
    def close(self) -> None: ...
