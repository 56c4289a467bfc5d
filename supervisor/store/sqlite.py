"""The single-node state store: one SQLite file (the standard library's ``sqlite3``).

WAL mode: ``taskd history`` and a starting daemon read while the logger process writes.
``synchronous=NORMAL``: a committed batch survives the daemon's processes dying however
they die; a power loss may take the last batches (the JSON log stays the primary
record). Every ``sqlite3`` error becomes a StoreError naming the file.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from supervisor.store import migrations
from supervisor.store.abc import (
    HistoryQuery,
    JobMemory,
    Memory,
    StateStore,
    StoreError,
    history_filters,
)

BUSY_TIMEOUT_MS = 2000


class SQLiteStore(StateStore):
    def __init__(self, path: str, *, read_only: bool = False) -> None:
        """Open (as the writer: create or upgrade) the store at ``path``."""
        self.location = path
        self.read_only = read_only
        with self._errors():
            if read_only:
                if not os.path.exists(path):
                    raise StoreError(f"{path}: no such file")
                uri = f"file:{_quote(path)}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None,
                                           check_same_thread=False)
            else:
                self._db = sqlite3.connect(path, isolation_level=None,
                                           check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Before anything that writes (even the journal mode is in the file's header):
            # a store we must refuse is left exactly as it is.
            version = migrations.check_readable(self._db, path)
            if read_only and version == 0:
                raise StoreError(f"{path}: not a taskd state store (it is empty)")
            if not read_only:
                if self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                    raise StoreError(f"{path}: cannot use write-ahead logging")
                self._db.execute("PRAGMA synchronous = NORMAL")
                migrations.upgrade(self._db, path)
        self._identity = _identity(path)

    # -- reading -----------------------------------------------------------------------

    def load_memory(self) -> Memory:
        memory = Memory()
        with self._errors():
            for row in self._db.execute(
                    "SELECT job_id, known_since, last_scheduled, last_started, last_status, "
                    "last_error, last_success, last_failure, paused FROM jobs"):
                memory.jobs[row[0]] = JobMemory(*row[1:8], paused=bool(row[8]))
            memory.one_time_done = set(self._db.execute(
                "SELECT job_id, at FROM one_time_done"))
            row = self._db.execute("SELECT value FROM daemon WHERE key = 'last_alive'"
                                   ).fetchone()
            memory.last_alive = row[0] if row else None
            memory.unfinished = [
                {"run_id": run_id, "job_id": job_id, "scheduled_for": scheduled,
                 "dispatched_at": at, "manual": bool(manual)}
                for run_id, job_id, scheduled, at, manual in self._db.execute(
                    "SELECT run_id, job_id, scheduled_for, dispatched_at, manual "
                    "FROM unfinished ORDER BY dispatched_at")]
            memory.pending_retries = [
                {"job_id": job_id, "scheduled_for": scheduled, "attempt": attempt,
                 "due_at": due_at, "manual": bool(manual)}
                for job_id, scheduled, attempt, due_at, manual in self._db.execute(
                    "SELECT job_id, scheduled_for, attempt, due_at, manual "
                    "FROM pending_retries ORDER BY due_at")]
        return memory

    def history(self, query: HistoryQuery) -> list[dict[str, Any]]:
        where, args = history_filters(query, "?")
        # One job's runs are at most --history-per-job rows: walk those, never the
        # status index across every job (SQLite's pick for a job that never failed).
        sql = "SELECT record FROM executions"
        if query.job_id is not None:
            sql += " INDEXED BY executions_by_job"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started DESC, id DESC LIMIT ?"
        with self._errors():
            rows = self._db.execute(sql, (*args, max(0, query.limit))).fetchall()
        return [json.loads(record) for (record,) in rows]

    # -- writing -----------------------------------------------------------------------

    def apply(self, items: Sequence[dict[str, Any]]) -> None:
        with self._errors(), migrations.transaction(self._db):
            for item in items:
                record = item.get("record")
                if record is not None:
                    self._record(record)
                else:
                    _MARKS[item["mark"]](self._db, item)

    def _record(self, record: dict[str, Any]) -> None:
        db = self._db
        cursor = db.execute(
            "INSERT OR IGNORE INTO executions (run_id, job_id, started, status, record) "
            "VALUES (?, ?, ?, ?, ?)",
            (record["run_id"], record["job_id"], _epoch(record["timestamp"]),
             record["status"], json.dumps(record, ensure_ascii=False)))
        db.execute("DELETE FROM unfinished WHERE run_id = ?", (record["run_id"],))
        if cursor.rowcount == 0:
            return  # a replay of a record already stored
        job_id = record["job_id"]
        _ensure_job(db, job_id)
        db.execute("UPDATE jobs SET records = records + 1 WHERE job_id = ?", (job_id,))
        if record.get("hook"):
            return  # a hook's outcome is not its job's last run
        outcome = "last_success" if record["status"] == "SUCCESS" else "last_failure"
        db.execute(f"UPDATE jobs SET last_started = ?, last_status = ?, last_error = ?, "
                   f"{outcome} = ? WHERE job_id = ?",
                   (record["timestamp"], record["status"], record.get("error"),
                    record["timestamp"], job_id))
        if not record.get("manual"):
            _accounted(db, job_id, _epoch(record["scheduled_for"]))

    def prune(self, *, now: float, max_age_s: float, per_job: int, budget: int) -> int:
        deleted = 0
        with self._errors():
            with migrations.transaction(self._db):
                rows = self._db.execute(
                    "SELECT id, job_id FROM executions WHERE started < ? ORDER BY started "
                    "LIMIT ?", (now - max_age_s, budget)).fetchall()
                deleted += self._delete(rows)
                # One-time instants older than the history: the schedule never runs an
                # instant that old when it has a store (see Schedule.max_deadline_s).
                deleted += self._db.execute(
                    "DELETE FROM one_time_done WHERE (job_id, at) IN (SELECT job_id, at "
                    "FROM one_time_done WHERE at < ? LIMIT ?)",
                    (now - max_age_s, max(0, budget - deleted))).rowcount
            over = self._db.execute("SELECT job_id, records - ? FROM jobs WHERE records > ?",
                                    (per_job, per_job)).fetchall()
            for job_id, excess in over:
                if deleted >= budget:
                    break
                with migrations.transaction(self._db):
                    rows = self._db.execute(
                        "SELECT id, job_id FROM executions WHERE job_id = ? ORDER BY started, "
                        "id LIMIT ?", (job_id, min(excess, budget - deleted))).fetchall()
                    deleted += self._delete(rows)
        return deleted

    def _delete(self, rows: list[tuple[int, str]]) -> int:
        counts: dict[str, int] = {}
        for _, job_id in rows:
            counts[job_id] = counts.get(job_id, 0) + 1
        self._db.executemany("DELETE FROM executions WHERE id = ?", [(i,) for i, _ in rows])
        self._db.executemany("UPDATE jobs SET records = max(0, records - ?) WHERE job_id = ?",
                             [(count, job_id) for job_id, count in counts.items()])
        return len(rows)

    # -- health ------------------------------------------------------------------------

    def file_replaced(self) -> bool:
        """Whether the file at our path is no longer the one we opened (deleted, or
        replaced): writes would then go to a file nobody will read."""
        return _identity(self.location) != self._identity

    def close(self) -> None:
        with self._errors():
            self._db.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:
            reason = _reason(error)
            if _read_only_fs(self.location) and "read-only" not in reason:
                reason = f"read-only file system ({reason})"
            raise StoreError(f"{self.location}: {reason}") from None
        except OSError as error:
            raise StoreError(f"{self.location}: {error.strerror or error}") from None


# -- marks ---------------------------------------------------------------------------


def _dispatched(db: sqlite3.Connection, mark: dict[str, Any]) -> None:
    db.execute("INSERT OR REPLACE INTO unfinished (run_id, job_id, scheduled_for, "
               "dispatched_at, manual) VALUES (?, ?, ?, ?, ?)",
               (mark["run_id"], mark["job_id"], mark["scheduled_for"], mark["at"],
                int(bool(mark.get("manual")))))
    if not mark.get("manual"):
        _occurrence_done(db, mark)


def _missed(db: sqlite3.Connection, mark: dict[str, Any]) -> None:
    _occurrence_done(db, mark)


def _occurrence_done(db: sqlite3.Connection, mark: dict[str, Any]) -> None:
    at = _epoch(mark["scheduled_for"])
    _accounted(db, mark["job_id"], at)
    if mark.get("one_time"):
        db.execute("INSERT OR IGNORE INTO one_time_done (job_id, at) VALUES (?, ?)",
                   (mark["job_id"], at))


def _known(db: sqlite3.Connection, mark: dict[str, Any]) -> None:
    db.executemany("INSERT INTO jobs (job_id, known_since) VALUES (?, ?) ON CONFLICT (job_id) "
                   "DO UPDATE SET known_since = coalesce(known_since, excluded.known_since)",
                   [(job_id, mark["at"]) for job_id in mark["job_ids"]])


def _alive(db: sqlite3.Connection, mark: dict[str, Any]) -> None:
    db.execute("INSERT OR REPLACE INTO daemon (key, value) VALUES ('last_alive', ?)",
               (mark["at"],))


def _paused(db: sqlite3.Connection, mark: dict[str, Any]) -> None:
    _ensure_job(db, mark["job_id"])
    db.execute("UPDATE jobs SET paused = ? WHERE job_id = ?",
               (int(bool(mark["paused"])), mark["job_id"]))


def _retry(db: sqlite3.Connection, mark: dict[str, Any]) -> None:
    db.execute("INSERT OR REPLACE INTO pending_retries (job_id, scheduled_for, attempt, "
               "due_at, manual) VALUES (?, ?, ?, ?, ?)",
               (mark["job_id"], mark["scheduled_for"], mark["attempt"], mark["due_at"],
                int(bool(mark.get("manual")))))


def _retry_done(db: sqlite3.Connection, mark: dict[str, Any]) -> None:
    db.execute("DELETE FROM pending_retries WHERE job_id = ?", (mark["job_id"],))


_MARKS = {"dispatched": _dispatched, "missed": _missed, "known": _known, "alive": _alive,
          "paused": _paused, "retry": _retry, "retry_done": _retry_done}


def _ensure_job(db: sqlite3.Connection, job_id: str) -> None:
    db.execute("INSERT OR IGNORE INTO jobs (job_id) VALUES (?)", (job_id,))


def _accounted(db: sqlite3.Connection, job_id: str, at: float) -> None:
    db.execute("INSERT INTO jobs (job_id, last_scheduled) VALUES (?, ?) ON CONFLICT (job_id) "
               "DO UPDATE SET last_scheduled = max(coalesce(last_scheduled, ?), ?)",
               (job_id, at, at, at))


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _read_only_fs(path: str) -> bool:
    try:
        return bool(os.statvfs(os.path.dirname(path) or ".").f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


def _reason(error: sqlite3.Error) -> str:
    text = str(error)
    if "file is not a database" in text or "malformed" in text:
        return f"corrupt ({text})"
    if "readonly" in text:
        return f"read-only ({text})"
    if "locked" in text or "busy" in text:
        return f"locked by another process ({text})"
    if "full" in text:
        return f"disk full ({text})"
    return text
