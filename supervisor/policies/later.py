"""LaterQueue: items that start at a later instant, cancellable by job.

Jitter delays and pending retries wait here, each kind in a heap of its own (they are
taken with different leads). A heap is ordered by instant, then by arrival (two items
due together come out in the order they went in); cancelling marks the job's items
dead and the heap drops them as they surface, so a cancel costs O(1).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any


@dataclass(order=True, slots=True)
class _Entry:
    at: float
    seq: int
    job_id: str = field(compare=False)
    kind: str = field(compare=False)
    item: Any = field(compare=False)
    live: bool = field(default=True, compare=False)


class LaterQueue:
    def __init__(self) -> None:
        self._heaps: dict[str, list[_Entry]] = {}
        self._by_job: dict[tuple[str, str], list[_Entry]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._by_job.values())

    def push(self, at: float, job_id: str, kind: str, item: Any) -> None:
        entry = _Entry(at, next(self._seq), job_id, kind, item)
        heapq.heappush(self._heaps.setdefault(kind, []), entry)
        self._by_job.setdefault((job_id, kind), []).append(entry)

    def pending(self, job_id: str, kind: str) -> list[Any]:
        return [entry.item for entry in self._by_job.get((job_id, kind), ())]

    def cancel(self, job_id: str, kind: str) -> list[Any]:
        """Take a job's items of one kind out; returns them."""
        entries = self._by_job.pop((job_id, kind), [])
        for entry in entries:
            entry.live = False
        return [entry.item for entry in entries]

    def take(self, job_id: str, kind: str, run_id: str) -> Any | None:
        """Take out the item whose ``run_id`` is ``run_id``; None if it is not waiting."""
        entries = self._by_job.get((job_id, kind), [])
        for entry in entries:
            if getattr(entry.item, "run_id", None) == run_id:
                entry.live = False
                entries.remove(entry)
                if not entries:
                    del self._by_job[(job_id, kind)]
                return entry.item
        return None

    def due(self, now_ts: float, kind: str) -> list[Any]:
        """The items of ``kind`` due by ``now_ts``, in instant order; taken out."""
        ready: list[Any] = []
        heap = self._heaps.get(kind, [])
        while heap and (heap[0].at <= now_ts or not heap[0].live):
            entry = heapq.heappop(heap)
            if not entry.live:
                continue
            key = (entry.job_id, entry.kind)
            entries = self._by_job[key]
            entries.remove(entry)
            if not entries:
                del self._by_job[key]
            ready.append(entry.item)
        return ready

    def time_to_next(self, now_ts: float, kind: str) -> float | None:
        heap = self._heaps.get(kind, [])
        while heap and not heap[0].live:
            heapq.heappop(heap)
        return None if not heap else max(0.0, heap[0].at - now_ts)

    def drain(self) -> list[tuple[str, Any]]:
        """Everything still waiting (at shutdown), in instant order."""
        entries = sorted(entry for heap in self._heaps.values() for entry in heap)
        items = [(entry.kind, entry.item) for entry in entries if entry.live]
        self._heaps.clear()
        self._by_job.clear()
        return items
