"""The logger process's side of the store: batched writes, background pruning, and
giving up cleanly.

The logger writes each record's JSON line first (the log stays the primary record),
then adds the record here. Items are committed in one transaction once the oldest has
waited the logger's ``COMMIT_DELAY_S`` (50 ms) with nothing more to read, or every
``BATCH_ITEMS``: a burst costs a few commits, and a quiet daemon's record is in the
store 50 ms after its line.

A store that fails (corrupt, read-only, disk full, locked too long, deleted or replaced
under us) is closed and never retried by this daemon: ``failed`` holds the one message
the coordinator turns into one diagnostic, and taskd goes on in memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from supervisor.store.abc import StateStore, StoreError
from supervisor.store.sqlite import SQLiteStore

BATCH_ITEMS = 500
PRUNE_EVERY_S = 60.0
PRUNE_CHUNK = 1000  # rows per transaction: a write waits at most one chunk


def open_store(location: str) -> StateStore:
    """The store at ``location``: a ``postgresql://`` URL (cluster mode, which imports
    psycopg) or an SQLite file."""
    if location.startswith(("postgresql://", "postgres://")):
        from supervisor.store.postgres import PostgresStore

        return PostgresStore(location)
    return SQLiteStore(location)


@dataclass(frozen=True)
class Retention:
    max_age_s: float = 30 * 86400.0
    per_job: int = 1000


class StoreWriter:
    def __init__(self, path: str, retention: Retention, *,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.retention = retention
        self._clock = clock
        self._monotonic = monotonic
        self._items: list[dict[str, Any]] = []
        self._first_pending_at = 0.0
        self.failed: str | None = None
        self._store: StateStore | None = None
        try:
            self._store = open_store(path)
        except StoreError as error:
            self.failed = str(error)
        self._next_prune = monotonic()  # once at start, then every PRUNE_EVERY_S

    @property
    def pending(self) -> int:
        return len(self._items)

    def add(self, items: list[dict[str, Any]]) -> bool:
        """Queue items; True when the batch is full and should be committed now."""
        if self._store is not None and items:
            if not self._items:
                self._first_pending_at = self._monotonic()
            self._items.extend(items)
        return len(self._items) >= BATCH_ITEMS

    def pending_for(self) -> float:
        """Seconds since the oldest item of the batch was added."""
        return self._monotonic() - self._first_pending_at if self._items else 0.0

    def commit(self) -> None:
        """Write the batch in one transaction (or give up on the store for good)."""
        items, self._items = self._items, []
        store = self._store
        if store is None or not items:
            return
        try:
            if getattr(store, "file_replaced", lambda: False)():  # an SQLite file's
                raise StoreError(f"{self.path}: deleted or replaced while taskd was using it")
            store.apply(items)
        except StoreError as error:
            self._give_up(str(error))

    def prune_due(self) -> bool:
        return self._store is not None and self._monotonic() >= self._next_prune

    def prune_chunk(self) -> bool:
        """Delete one chunk of expired history; True if there may be more to delete."""
        store = self._store
        if store is None:
            return False
        try:
            deleted = store.prune(now=self._clock(), max_age_s=self.retention.max_age_s,
                                  per_job=self.retention.per_job, budget=PRUNE_CHUNK)
        except StoreError as error:
            self._give_up(str(error))
            return False
        if deleted < PRUNE_CHUNK:
            self._next_prune = self._monotonic() + PRUNE_EVERY_S
            return False
        return True

    def close(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except StoreError:
                pass
            self._store = None

    def _give_up(self, message: str) -> None:
        self.failed = message
        self.close()
