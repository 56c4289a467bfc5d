"""Hierarchical timing wheel (Varghese & Lauck) holding the coordinator's pending occurrences.

Design
------
Times are float epoch seconds in the API and integer millisecond ticks inside,
``tick = floor(t * 1000)``. A tick is read as base-``2**slot_bits`` digits; level ``k``
(``0 <= k < levels``) has ``2**slot_bits`` slots, each ``2**(slot_bits * k)`` ticks wide.
With the wheel at tick ``cur``, an entry due at tick ``d > cur`` lives at the level of the
highest digit where ``d`` and ``cur`` differ, in the slot named by ``d``'s digit there. So
every occupied slot lies ahead of ``cur`` in its level's current rotation, all of level
``k`` comes before all of level ``k + 1``, and an entry's location can be recomputed from
``(d, cur)`` instead of being stored. When time reaches a slot's start the slot is emptied:
level-0 entries become due, higher-level entries cascade to lower levels.

Entries more than the wheel's span away (``d`` differs from ``cur`` above the top level,
i.e. about ``2**(levels * slot_bits)`` ms: ~8900 years by default) wait in an overflow heap
until the wheel's time enters their span-sized epoch. Entries with ``d <= cur`` wait in a
small "ready" dict; advance() compares their float ``due`` with ``now``, so entries due later
within the current millisecond are kept, never returned early.

Each level has an occupancy bitmask (a Python int, bit i set = slot i non-empty). Its lowest
set bit is the next occupied slot, so advance() and time_to_next() jump over empty spans of
any length instead of ticking: a jump costs O(levels) per occupied slot it reaches, and an
idle wheel costs nothing.

Contract: the wheel never reads a clock; the caller passes ``now`` everywhere, and time never
goes backwards (an older ``now`` counts as the wheel's current time). ``advance(now)`` returns
every entry with ``due <= now`` exactly once, sorted by (due, scheduling order).
``time_to_next(now)`` is never later than the earliest due entry; it may be earlier (when a
higher-level slot must be cascaded), so the caller wakes, advances and asks again.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Hashable

__all__ = ["TimingWheel"]


def _tick(t: float) -> int:
    # The same monotonic function for dues and nows: due <= now implies tick(due) <= tick(now).
    return math.floor(t * 1000)


def _start_of(tick: int) -> float:
    """Smallest float whose tick is >= ``tick``; ``tick / 1000`` alone can be an ulp off."""
    x = tick / 1000
    while _tick(x) >= tick:
        x = math.nextafter(x, -math.inf)
    while _tick(x) < tick:
        x = math.nextafter(x, math.inf)
    return x


def _finite(t: float, what: str) -> float:
    t = float(t)  # float(f) is f itself: no copy per entry
    if not math.isfinite(t):
        raise ValueError(f"{what} must be a finite number of seconds, not {t!r}")
    return t


class _Entry:
    __slots__ = ("due", "key", "payload", "seq")

    def __init__(self, due: float, seq: int, key: Hashable, payload: object) -> None:
        self.due = due
        self.seq = seq
        self.key = key
        self.payload = payload


class TimingWheel:
    """Pending occurrences keyed by a hashable key; see the module docstring for the contract."""

    def __init__(self, now: float, *, slot_bits: int = 8, levels: int = 6) -> None:
        if slot_bits < 1 or levels < 1:
            raise ValueError("slot_bits and levels must both be >= 1")
        self._now = _finite(now, "now")  # the latest now seen (float)
        self._cur = _tick(self._now)  # the wheel's time, always _tick(self._now)
        self._bits = slot_bits
        self._levels = levels
        self._mask = (1 << slot_bits) - 1
        self._span_bits = slot_bits * levels
        # Slot dicts are created on first use and dropped when emptied.
        self._slots: list[list[dict[Hashable, _Entry] | None]] = [
            [None] * (1 << slot_bits) for _ in range(levels)
        ]
        self._occupied = [0] * levels  # per level: bit i set <=> slot i holds entries
        self._ready: dict[Hashable, _Entry] = {}  # tick <= cur: due, or due later this ms
        self._overflow: list[tuple[float, int, _Entry]] = []  # heap; cancel is lazy
        self._overflow_live = 0
        self._index: dict[Hashable, _Entry] = {}
        self._seq = itertools.count()

    @property
    def now(self) -> float:
        """The wheel's current time: the latest ``now`` passed in."""
        return self._now

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __repr__(self) -> str:
        return f"<TimingWheel now={self._now!r} entries={len(self._index)}>"

    def due_of(self, key: Hashable) -> float | None:
        entry = self._index.get(key)
        return None if entry is None else entry.due

    def schedule(self, key: Hashable, due: float, payload: object = None) -> None:
        """Add ``key`` due at ``due``, replacing any earlier schedule of it. O(1).

        A due at or before the wheel's time is returned by the next advance().
        """
        due = _finite(due, "due")
        old = self._index.pop(key, None)
        if old is not None:
            self._unlink(old)
        entry = _Entry(due, next(self._seq), key, payload)
        self._index[key] = entry
        self._place(entry, self._cur, self._cur)

    def cancel(self, key: Hashable) -> bool:
        """Remove ``key``; True if it was scheduled. O(1) (amortised for overflow entries)."""
        entry = self._index.pop(key, None)
        if entry is None:
            return False
        self._unlink(entry)
        return True

    def advance(self, now: float) -> list[tuple[float, Hashable, object]]:
        """Move to ``now`` and return (due, key, payload) of every entry with due <= now."""
        now = _finite(now, "now")
        if now > self._now:
            self._now = now
        now = self._now
        limit = _tick(now)
        cur = self._cur
        while True:
            level = next((lv for lv, m in enumerate(self._occupied) if m), None)
            if level is None:
                # Wheel empty: bring the overflow's next epoch in, if time has reached it.
                head = self._overflow_head()
                if head is None or self._epoch_start(head) > limit:
                    break
                cur = self._epoch_start(head)
                self._pull_overflow_epoch(cur, limit)
                continue
            mask = self._occupied[level]
            idx = (mask & -mask).bit_length() - 1
            start = self._slot_start(level, idx, cur)
            if start > limit:
                break
            # Time reaches this slot: its entries fire (tick <= limit) or move down a level.
            cur = start
            slot = self._slots[level][idx]
            self._slots[level][idx] = None
            self._occupied[level] = mask ^ (1 << idx)
            for entry in slot.values():
                self._place(entry, cur, limit)
        # No occupied slot starts in (cur, limit], so every placement stays valid at limit.
        self._cur = limit
        return self._take_ready(now)

    def time_to_next(self, now: float) -> float | None:
        """Seconds from ``now`` until the wheel needs advance(); None if empty.

        Exact when the earliest entry is in the ready set, a level-0 slot or the overflow; for a
        higher-level slot it is the time that slot must be cascaded. Never later than the
        earliest due entry. 0.0 if something is due at ``now``, and also when ``now`` is past
        a cascade time the wheel has not been advanced to yet.
        """
        now = _finite(now, "now")
        wake = self._earliest(exact=False)
        return None if wake is None else max(0.0, wake - now)

    def next_due(self) -> float | None:
        """The exact earliest due of all entries (scans the one slot holding it)."""
        return self._earliest(exact=True)

    # -- internals -------------------------------------------------------------------

    def _level_of(self, t: int, cur: int) -> int:
        """Where tick ``t`` lives with the wheel at ``cur``: -1 ready, levels overflow."""
        if t <= cur:
            return -1
        diff = t ^ cur
        if diff >> self._span_bits:  # also true for diff < 0 (times either side of 0)
            return self._levels
        return (diff.bit_length() - 1) // self._bits

    def _slot_start(self, level: int, idx: int, cur: int) -> int:
        """First tick of slot ``idx`` of ``level`` in the rotation ``cur`` is in."""
        shift = self._bits * level
        return (cur >> (shift + self._bits) << (shift + self._bits)) | (idx << shift)

    def _place(self, entry: _Entry, cur: int, limit: int) -> None:
        """File ``entry`` with the wheel at ``cur``; ticks <= ``limit`` go to the ready set."""
        t = _tick(entry.due)
        if t <= limit:
            self._ready[entry.key] = entry
            return
        level = self._level_of(t, cur)
        if level == self._levels:
            heapq.heappush(self._overflow, (entry.due, entry.seq, entry))
            self._overflow_live += 1
            return
        idx = (t >> (self._bits * level)) & self._mask
        slots = self._slots[level]
        slot = slots[idx]
        if slot is None:
            slot = slots[idx] = {}
            self._occupied[level] |= 1 << idx
        slot[entry.key] = entry

    def _unlink(self, entry: _Entry) -> None:
        """Remove an entry (already dropped from the index) from its container."""
        level = self._level_of(_tick(entry.due), self._cur)
        if level < 0:
            del self._ready[entry.key]
        elif level == self._levels:
            # Lazy: the heap item is skipped later; rebuild when stale items dominate.
            self._overflow_live -= 1
            heap = self._overflow
            if len(heap) > 64 and len(heap) > 2 * self._overflow_live:
                self._overflow = [it for it in heap if self._index.get(it[2].key) is it[2]]
                heapq.heapify(self._overflow)
        else:
            idx = (_tick(entry.due) >> (self._bits * level)) & self._mask
            slot = self._slots[level][idx]
            del slot[entry.key]
            if not slot:
                self._slots[level][idx] = None
                self._occupied[level] &= ~(1 << idx)

    def _epoch_start(self, entry: _Entry) -> int:
        """First tick of the span-sized epoch holding ``entry``'s tick."""
        return _tick(entry.due) >> self._span_bits << self._span_bits

    def _pull_overflow_epoch(self, cur: int, limit: int) -> None:
        """Move the overflow entries of the epoch starting at ``cur`` into the wheel."""
        heap = self._overflow
        while heap and self._epoch_start(heap[0][2]) == cur:
            entry = heapq.heappop(heap)[2]
            if self._index.get(entry.key) is entry:
                self._overflow_live -= 1
                self._place(entry, cur, limit)

    def _take_ready(self, now: float) -> list[tuple[float, Hashable, object]]:
        """Remove and return the ready entries with due <= now, in (due, seq) order."""
        ready = self._ready
        fired = [e for e in ready.values() if e.due <= now]
        if len(fired) == len(ready):
            ready.clear()
        else:
            for entry in fired:
                del ready[entry.key]
        for entry in fired:
            del self._index[entry.key]
        fired.sort(key=lambda e: (e.due, e.seq))
        return [(e.due, e.key, e.payload) for e in fired]

    def _overflow_head(self) -> _Entry | None:
        heap = self._overflow
        while heap and self._index.get(heap[0][2].key) is not heap[0][2]:
            heapq.heappop(heap)
        return heap[0][2] if heap else None

    def _earliest(self, *, exact: bool) -> float | None:
        """Earliest due (exact) or earliest time needing attention (cheap, never later)."""
        if self._ready:
            return min(e.due for e in self._ready.values())
        for level, mask in enumerate(self._occupied):
            if mask:
                idx = (mask & -mask).bit_length() - 1
                if level == 0 or exact:
                    return min(e.due for e in self._slots[level][idx].values())
                return _start_of(self._slot_start(level, idx, self._cur))
        head = self._overflow_head()
        return None if head is None else head.due
