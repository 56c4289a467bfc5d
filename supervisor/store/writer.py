"""The logger process's side of the store: batched writes, pruning, riding out a
database outage, and giving up cleanly.

The logger writes each record's JSON line first (the log stays the primary record),
then adds the entry (the record with the marks before it) here, under the entry's
``seq``. Entries are *sealed* once the oldest has waited the logger's ``COMMIT_DELAY_S``
(50 ms) with nothing more to read, or every ``BATCH_ITEMS``, and then committed, at
most ``BATCH_ITEMS`` items a transaction; ``stored_up_to`` says how far (with a byte on
``fileno()`` to wake the logger). So a burst costs a few commits, and a quiet daemon's
record is in the store 50 ms after its line.

Where the commits run:

- A PostgreSQL store is written from a thread of the writer's own, so the log never
  waits for the database: a slow commit, or a database that is away, holds back only
  the "stored" acks. The thread also prunes, when it has nothing to commit.
- An SQLite file is written inline (``commit`` returns once it is stored) and pruned
  in ``idle``, between records, as the logger's one thread always did. It is never
  away, only broken, and a thread costs the logger a third more CPU in a burst (the GIL
  goes back and forth at each of its system calls).

Failures:

- An outage: a PostgreSQL store's ``StoreUnreachable`` (the server restarting, the
  backend terminated, the network). The entries wait; the thread tries again after
  0.5 s, doubling up to 10 s, on a new connection, and says so once when it begins
  (``state_store_unavailable``) and once when it ends (``state_store_reconnected``). A
  batch whose commit's answer was lost is sent again: every write is idempotent (see
  store/postgres.py). If the outage outlasts ``Outage.max_waiting`` waiting items, the
  writer gives up as below, its message naming the database and the last error.
- Anything else (an SQLite file corrupt, read-only, full, locked too long, deleted or
  replaced under us; a database error about the data or the schema): the store is
  closed and never retried by this daemon: ``failed`` holds the one message the
  coordinator turns into one diagnostic, and taskd goes on in memory. An SQLite failure
  is always this kind: it says the disk or the file is wrong, not that it is away.

While the database answers but more than ``max_waiting`` items wait (it is slower than
the records come), ``has_room`` is False and the logger reads no more until it is True:
memory stays bounded, and only that case makes the log wait for the store.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any

from supervisor.store.abc import StateStore, StoreError
from supervisor.store.sqlite import SQLiteStore

BATCH_ITEMS = 500
PRUNE_EVERY_S = 60.0
PRUNE_CHUNK = 1000  # rows per transaction: a write waits at most one chunk
CLOSE_WAIT_S = 10.0  # a stopping logger waits this long for the commit under way

Entry = tuple[int, list[dict[str, Any]]]  # (seq, items)


def open_store(location: str) -> StateStore:
    """The store at ``location``: a ``postgresql://`` URL (cluster mode, which imports
    psycopg) or an SQLite file."""
    if _is_postgres(location):
        from supervisor.store.postgres import PostgresStore

        return PostgresStore(location)
    return SQLiteStore(location)


def _is_postgres(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def _passing_errors(location: str) -> tuple[type[StoreError], ...]:
    """The errors of the store at ``location`` that an outage raises (none for SQLite)."""
    if _is_postgres(location):
        from supervisor.store.postgres import StoreUnreachable

        return (StoreUnreachable,)
    return ()


def _display(location: str) -> str:
    """``location`` as a message names it (a URL without its password)."""
    if _is_postgres(location):
        from supervisor.store.postgres import redact_url

        return redact_url(location)
    return location


@dataclass(frozen=True)
class Retention:
    max_age_s: float = 30 * 86400.0
    per_job: int = 1000


@dataclass(frozen=True)
class Outage:
    """How the writer rides out a database that does not answer."""

    max_waiting: int = 100_000  # records and marks held; past that it gives up
    first_retry_s: float = 0.5
    max_retry_s: float = 10.0
    # A try that has not returned for this long is an outage too, for the bound: a
    # server that takes the bytes and never answers (no error would ever come).
    stuck_s: float = 60.0


class StoreWriter:
    def __init__(self, location: str, retention: Retention, *, outage: Outage = Outage(),
                 on_event: Callable[[dict[str, Any]], None] = lambda event: None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.location = location
        self.retention = retention
        self._outage = outage
        self._on_event = on_event
        self._clock = clock
        self._monotonic = monotonic
        self._passing = _passing_errors(location)
        self._lock = threading.Condition()
        # Guarded by the lock: entries not stored yet, oldest first; the first _sealed
        # of them are the thread's to commit.
        self._entries: deque[Entry] = deque()
        self._sealed = 0
        self._items = 0  # items in _entries
        self._unsealed_items = 0  # items in the entries after the first _sealed
        self._first_unsealed_at = 0.0
        self._closing = False
        self.failed: str | None = None
        self.stored_up_to = 0  # the last seq whose items are in the store
        # Set by the thread while the database does not answer: since when, and why.
        self._unreachable_since: float | None = None
        self._last_error = ""
        self._trying_since: float | None = None  # the thread's try under way began
        self._store: StateStore | None = None  # the thread's only
        self._next_prune = monotonic()  # once at start, then every PRUNE_EVERY_S
        self._news = False  # set before each byte written to the pipe
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._thread: threading.Thread | None = None
        if self._passing:
            self._thread = threading.Thread(target=self._run, name="taskd-store-writer",
                                            daemon=True)  # a logger told to exit never waits
            self._thread.start()
        else:
            try:  # now: a store that cannot be used is said at once
                self._store = open_store(location)
            except StoreError as error:
                self.failed = str(error)

    # -- the logger's side -------------------------------------------------------------

    def fileno(self) -> int:
        """Readable when ``stored_up_to`` or ``failed`` may have changed."""
        return self._wake_read

    def take_news(self) -> None:
        """Clear ``fileno()``'s readiness (then read ``stored_up_to`` and ``failed``)."""
        if not self._news:
            return  # no system call per record when nothing happened
        self._news = False
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    @property
    def pending(self) -> int:
        """Entries not sealed yet."""
        with self._lock:
            return self._pending()

    def pending_for(self) -> float:
        """Seconds since the oldest entry not sealed yet was added."""
        with self._lock:
            return self._monotonic() - self._first_unsealed_at if self._pending() else 0.0

    def add(self, seq: int, items: list[dict[str, Any]]) -> None:
        """Queue one entry's items; a full batch is sealed at once."""
        with self._lock:
            if self.failed is not None:
                return
            if not self._pending():
                self._first_unsealed_at = self._monotonic()
            self._entries.append((seq, items))
            self._items += len(items)
            self._unsealed_items += len(items)
            full = self._unsealed_items >= BATCH_ITEMS
        if full:
            self.commit()

    def commit(self) -> None:
        """Seal what is pending: the thread commits it as soon as it can (inline: now)."""
        with self._lock:
            self._seal()
        while self._thread is None:
            with self._lock:
                chunk = self._chunk() if self.failed is None else []
            if not chunk or not self._attempt(chunk):
                return

    def idle(self, busy: Callable[[], bool]) -> None:
        """Nothing waits: prune a little now, until ``busy()`` (inline only: the thread
        prunes when it has nothing to commit)."""
        while (self._thread is None and self._store is not None and self.failed is None
               and self._monotonic() >= self._next_prune and not self.pending
               and not busy()):
            self._attempt([])

    def has_room(self) -> bool:
        """False while more than ``max_waiting`` items wait on a database that answers;
        when it does not answer, that many waiting is where the writer gives up."""
        if self._thread is None:
            return True  # inline: at most a batch waits
        with self._lock:
            if self.failed is not None or self._items <= self._outage.max_waiting:
                return True
            now, since, trying = self._monotonic(), self._unreachable_since, self._trying_since
            if since is not None:
                reason = self._last_error.removeprefix(_display(self.location) + ": ")
                away = f"unreachable for {now - since:.0f} s"
                why = f"last error: {reason}"
            elif trying is not None and now - trying >= self._outage.stuck_s:
                away = f"no answer for {now - trying:.0f} s"  # a hung server
                why = "a commit under way has not returned"
            else:
                self._seal()  # the room is made by committing what waits
                return False
            self._fail(f"{_display(self.location)}: {away} with more than "
                       f"{self._outage.max_waiting} records and marks waiting to be "
                       f"stored; given up on it ({why})")
            return True

    def close(self) -> None:
        """Commit what waits (unless the database does not answer; the thread is given
        ``CLOSE_WAIT_S``), then close the store."""
        if self._thread is None:
            self.commit()
            self._close_store()
        else:
            with self._lock:
                self._seal()
                self._closing = True
                self._lock.notify_all()
            self._thread.join(CLOSE_WAIT_S)
            if self._thread.is_alive():
                return  # stuck on a server that does not answer: the process exits anyway
        os.close(self._wake_read)
        os.close(self._wake_write)

    # -- under the lock ------------------------------------------------------------------

    def _pending(self) -> int:
        return len(self._entries) - self._sealed

    def _seal(self) -> None:
        if self._pending():
            self._sealed = len(self._entries)
            self._unsealed_items = 0
            self._lock.notify_all()

    def _fail(self, message: str) -> None:
        """Give up for good: the waiting entries are dropped (they are in the log)."""
        if self.failed is None:
            self.failed = message
        self._entries.clear()
        self._sealed = self._items = self._unsealed_items = 0
        self._lock.notify_all()
        self._wake()

    def _idle(self) -> bool:
        return (self.failed is None and not self._closing and self._store is not None
                and not self._sealed and self._monotonic() < self._next_prune)

    def _finished(self) -> bool:
        return self.failed is not None or (self._closing and (
            not self._sealed or self._unreachable_since is not None))

    def _chunk(self) -> list[Entry]:
        """The oldest sealed entries, at most BATCH_ITEMS items (at least one entry)."""
        chunk: list[Entry] = []
        items = 0
        for entry in islice(self._entries, self._sealed):
            if chunk and items + len(entry[1]) > BATCH_ITEMS:
                break
            chunk.append(entry)
            items += len(entry[1])
        return chunk

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        retry_in = self._outage.first_retry_s
        while True:
            with self._lock:
                while self._idle():
                    self._lock.wait(max(0.0, self._next_prune - self._monotonic()))
                if self._finished():
                    break
                chunk = self._chunk()
            if self._attempt(chunk):
                retry_in = self._outage.first_retry_s
                continue
            with self._lock:
                self._lock.wait_for(lambda: self._closing or self.failed is not None,
                                    retry_in)
            retry_in = min(retry_in * 2, self._outage.max_retry_s)
        self._close_store()

    def _attempt(self, chunk: list[Entry]) -> bool:
        """One try at the store; False if the database did not answer (try again
        later). Any other failure gives up, and counts as done."""
        self._trying_since = self._monotonic()
        try:
            self._step(chunk)
        except Exception as error:
            if isinstance(error, self._passing):
                self._unreachable(str(error))
                return False
            with self._lock:  # (not a StoreError: a bug; say so, never stall)
                self._fail(str(error) if isinstance(error, StoreError) else
                           f"{_display(self.location)}: {type(error).__name__}: {error}")
            if self._thread is None:
                self._close_store()  # (the thread closes it on its way out)
            return True
        finally:
            self._trying_since = None
        self._done(chunk)
        return True

    def _step(self, chunk: list[Entry]) -> None:
        """Open the store if need be, then commit ``chunk`` or prune a little."""
        if self._store is None:
            self._store = open_store(self.location)
        store = self._store
        if getattr(store, "file_replaced", lambda: False)():  # an SQLite file's
            raise StoreError(f"{self.location}: deleted or replaced while taskd was using it")
        if chunk:
            items = [item for _, entry_items in chunk for item in entry_items]
            if items:
                store.apply(items)
        elif self._monotonic() >= self._next_prune:
            self._prune_chunk(store)

    def _prune_chunk(self, store: StateStore) -> None:
        deleted = store.prune(now=self._clock(), max_age_s=self.retention.max_age_s,
                              per_job=self.retention.per_job, budget=PRUNE_CHUNK)
        if deleted < PRUNE_CHUNK:  # done: else the next chunk comes when nothing waits
            self._next_prune = self._monotonic() + PRUNE_EVERY_S

    def _done(self, chunk: list[Entry]) -> None:
        with self._lock:
            if self.failed is not None:
                return
            for _ in chunk:
                _, items = self._entries.popleft()
                self._items -= len(items)
            self._sealed -= len(chunk)
            if chunk:
                self.stored_up_to = chunk[-1][0]
                self._wake()
            since, self._unreachable_since = self._unreachable_since, None
            waiting = self._items
        if since is not None:
            self._on_event({"event": "state_store_reconnected", "level": "info",
                            "database": _display(self.location),
                            "unavailable_s": round(self._monotonic() - since, 1),
                            "waiting": waiting + sum(len(items) for _, items in chunk)})

    def _unreachable(self, error: str) -> None:
        with self._lock:
            self._last_error = error
            if self._unreachable_since is not None:
                return
            self._unreachable_since = self._monotonic()
            self._wake()  # a logger waiting for room must now give up instead
        self._on_event({"event": "state_store_unavailable", "level": "warning",
                        "database": _display(self.location), "error": error,
                        "effect": "records and marks wait in memory (at most "
                                  f"{self._outage.max_waiting}) and are stored once it "
                                  "answers again; the execution log goes on"})

    def _wake(self) -> None:
        self._news = True
        try:
            os.write(self._wake_write, b"!")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def _close_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except StoreError:
                pass
