"""The SQLite store's schema: one list of steps, each taking version N-1 to N.

A new store runs every step; an older one the steps it lacks, each in its own
transaction with its version bump, so a crash mid-upgrade leaves a store at some
complete version. A store whose version is above ``CURRENT`` was written by a newer
taskd: it is refused and never touched (``StoreTooNew``).

A step is never edited once released: the schema changes by adding a step, and
tests/test_store_migrations.py upgrades a store built at every earlier version.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from supervisor.store.abc import StoreError, refuse_newer

STEPS: list[str] = [
    # 1: the first schema.
    """
    CREATE TABLE executions (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL,
        started REAL NOT NULL,          -- epoch seconds of the record's "timestamp"
        status TEXT NOT NULL,
        record TEXT NOT NULL            -- the execution log line, JSON
    );
    CREATE INDEX executions_by_job ON executions (job_id, started);
    CREATE INDEX executions_by_start ON executions (started);
    CREATE INDEX executions_by_status ON executions (status, started);
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        known_since REAL,               -- first loaded (jobs that catch up)
        last_scheduled REAL,            -- latest occurrence run or reported missed
        last_started TEXT,
        last_status TEXT,
        last_error TEXT,
        last_success TEXT,
        last_failure TEXT,
        records INTEGER NOT NULL DEFAULT 0,
        paused INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE one_time_done (
        job_id TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (job_id, at)
    ) WITHOUT ROWID;
    CREATE INDEX one_time_done_by_time ON one_time_done (at);
    CREATE TABLE unfinished (           -- handed to a worker, not recorded yet
        run_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        scheduled_for TEXT NOT NULL,
        dispatched_at REAL NOT NULL,
        manual INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE daemon (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
    """,
    # 2: retries waiting (job key retry), so a run stopped by a shutdown is retried
    # after the next start.
    """
    CREATE TABLE pending_retries (
        job_id TEXT PRIMARY KEY,        -- at most one per job: its latest failed run's
        scheduled_for TEXT NOT NULL,
        attempt INTEGER NOT NULL,       -- the attempt to run
        due_at REAL NOT NULL,           -- epoch seconds
        manual INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
]
CURRENT = len(STEPS)
_MARKER = "taskd_schema"  # the version table's name: also how a store is told apart


def version_of(connection: sqlite3.Connection, location: str) -> int:
    """0 for an empty database; StoreError for a database that is not a taskd store."""
    tables = {name for (name,) in connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    if _MARKER in tables:
        row = connection.execute(f"SELECT version FROM {_MARKER}").fetchone()
        if row is None or not isinstance(row[0], int):
            raise StoreError(f"{location}: its schema version is unreadable")
        return row[0]
    if tables:
        raise StoreError(f"{location}: not a taskd state store (it has other tables)")
    return 0


def check_readable(connection: sqlite3.Connection, location: str) -> int:
    """The version, if this taskd can read the store as it is (StoreTooNew if newer)."""
    return refuse_newer(version_of(connection, location), CURRENT, location)


def upgrade(connection: sqlite3.Connection, location: str, target: int | None = None) -> int:
    """Bring the store to ``CURRENT`` (tests: to ``target``); the version it was at before."""
    before = check_readable(connection, location)
    for version in range(before + 1, (CURRENT if target is None else target) + 1):
        with transaction(connection):  # one per step, its version bump included
            if version == 1:
                connection.execute(f"CREATE TABLE {_MARKER} (version INTEGER NOT NULL)")
                connection.execute(f"INSERT INTO {_MARKER} VALUES (0)")
            for statement in _statements(STEPS[version - 1]):
                connection.execute(statement)
            connection.execute(f"UPDATE {_MARKER} SET version = ?", (version,))
    return before


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """One write transaction on a connection in autocommit mode (``isolation_level=None``),
    taking the write lock at its start, so it never fails half-way for a lock."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if connection.in_transaction:  # SQLite rolls back by itself after some errors
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """``executescript`` would commit on its own; the statements of a step, one by one."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]
